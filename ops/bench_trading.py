"""Trading-core benchmark, part 1 (``python -m ops.bench_trading [N]``): risk decisions per second.

The pure risk engine alone (every rule evaluated, kill-switch board checked)
over N distinct small intents alternating buy/sell on BTC and ETH, the order
rate limit lifted. No fills come back, so every approved order stays in flight:
the figure shows how the decision cost grows with the orders in flight
(measured: ~18.7k/s at 500, ~6.2k/s at 2,000, ~2.4k/s at 5,000 - linear in the
in-flight book, to be fixed). Baseline in the same run: the strict decode of
the same intents. Median of 5. The broker-level figures of issue #5 (intent ->
fill latency, kill-command-to-blocked time) are not measured yet.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time

from agents.clock import EventClock
from agents.control.signing import ControlVerifier, Keyring
from agents.portfolio.engine import PortfolioState
from agents.risk.config import RiskConfig
from agents.risk.engine import RiskEngine
from topics.records import Bar, OrderIntent, OrderType, Side, Timeframe
from topics.schema import codec_for

H = 3_600_000_000_000
NOW = 1_609_459_200_000_000_000 + 2 * H


def _bar(symbol: str, close: float) -> Bar:
    return Bar.new(ts_init=NOW, ts_event=NOW, venue="binance", symbol=symbol, timeframe=Timeframe.H1,
                   open_time=NOW - H, open=close, high=close, low=close, close=close, volume=1_000.0,
                   trade_count=None, is_closed=True, revision=0, source="bench")


def _intents(n: int) -> list[OrderIntent]:
    out = []
    for i in range(n):
        out.append(OrderIntent.new(
            ts_init=NOW, ts_event=NOW, strategy_id="s1", track="paper", symbol=("BTC/USDT", "ETH/USDT")[i % 2],
            side=(Side.BUY, Side.SELL)[(i // 2) % 2], quantity=0.01 if i % 2 == 0 else 0.1,
            order_type=OrderType.MARKET, limit_price=None, reduce_only=False, target_position=0.0,
            signal_event_id=f"sig-{i}"))
    return out


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    intents = _intents(n)
    codec = codec_for(OrderIntent)
    encoded = [codec.encode(i) for i in intents]
    rates, base = [], []
    for _ in range(5):
        cfg = dataclasses.replace(RiskConfig(), max_orders_per_window=1_000_000)
        clock = EventClock(NOW)
        engine = RiskEngine(cfg, clock, ControlVerifier(Keyring({"k": b"k" * 40})))
        engine.on_mark(_bar("BTC/USDT", 30_000.0))
        engine.on_mark(_bar("ETH/USDT", 1_000.0))
        engine.on_portfolio(PortfolioState.initial(100_000.0, NOW))
        t = time.perf_counter()
        verdicts: dict[str, int] = {}
        for it in intents:
            d = engine.on_intent(it)
            verdicts[d.verdict.value] = verdicts.get(d.verdict.value, 0) + 1
        rates.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        base.append(n / (time.perf_counter() - t))
    m, b = statistics.median(rates), statistics.median(base)
    print(json.dumps({"intents": n, "repeats": 5, "risk_decisions_per_s_median": round(m),
                      "baseline_intent_decode_per_s_median": round(b), "ratio": round(m / b, 3),
                      "verdicts_last_run": verdicts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
