"""Trading-core benchmarks (``python -m ops.bench_trading [--quick] [--out artifacts/bench_trading.json]``).

(a) risk decisions per second: the pure risk engine alone (every rule
    evaluated, kill-switch board checked) deciding distinct small intents
    alternating buy/sell on BTC and ETH, the order rate limit lifted, with
    0 / 500 / 5,000 orders already in flight (no fills come back, so every
    approved order stays in flight). Median of 5 runs; baseline in the same
    run: the strict decode of the same intents. Before the in-flight book
    became O(1) (issue #5) this fell linearly: ~18.7k/s at 500, ~2.4k/s at
    5,000 in flight.
(d) checkpoint cost: sealing the whole trading core (pickle + HMAC) after the
    determinism scenario (real BTC candles, stub signals), median of 5: what
    the trading agent adds per micro-batch for exact restart recovery.

Not measured yet (issue #5): signal -> fill latency on the broker, kill
command -> last order blocked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

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


def _risk_rate(in_flight: int, measured: int) -> tuple[float, float, dict[str, int]]:
    """Decisions/s over ``measured`` intents after ``in_flight`` approved ones; decode/s of the same."""
    intents = _intents(in_flight + measured)
    codec = codec_for(OrderIntent)
    encoded = [codec.encode(i) for i in intents[in_flight:]]
    cfg = dataclasses.replace(RiskConfig(), max_orders_per_window=1_000_000)
    clock = EventClock(NOW)
    engine = RiskEngine(cfg, clock, ControlVerifier(Keyring({"k": b"k" * 40})))
    engine.on_mark(_bar("BTC/USDT", 30_000.0))
    engine.on_mark(_bar("ETH/USDT", 1_000.0))
    engine.on_portfolio(PortfolioState.initial(100_000.0, NOW))
    for it in intents[:in_flight]:
        engine.on_intent(it)
    verdicts: dict[str, int] = {}
    t = time.perf_counter()
    for it in intents[in_flight:]:
        d = engine.on_intent(it)
        verdicts[d.verdict.value] = verdicts.get(d.verdict.value, 0) + 1
    rate = measured / (time.perf_counter() - t)
    t = time.perf_counter()
    for e in encoded:
        codec.decode(e)
    return rate, measured / (time.perf_counter() - t), verdicts


def _checkpoint_cost(n_bars: int) -> dict[str, float]:
    from agents.trading.checkpoint import open_checkpoint, seal
    from agents.trading.core import TradingConfig, TradingCore
    from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal

    bars = load_bars()[:n_bars]
    core = TradingCore(TradingConfig(), KEYRING)
    for i, bar in enumerate(bars):
        core.on_bar(bar)
        core.on_signal(stub_signal(bars, i))
    seal_ms, open_ms, size = [], [], 0
    for _ in range(5):
        t = time.perf_counter()
        cp = seal(core, config_hash="bench", offsets={"signals": {0: 1}}, events_applied=2 * n_bars, keyring=KEYRING)
        seal_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        open_checkpoint(cp, KEYRING, account=core.config.account, config_hash="bench")
        open_ms.append((time.perf_counter() - t) * 1e3)
        size = len(cp.state)
    return {"inputs": 2 * n_bars, "state_bytes": size, "seal_ms_median": round(statistics.median(seal_ms), 3),
            "restore_ms_median": round(statistics.median(open_ms), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.bench_trading", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer intents (smoke run, a few seconds)")
    ap.add_argument("--out", default="artifacts/bench_trading.json", help="JSON result file")
    a = ap.parse_args(argv)
    measured = 1_000 if a.quick else 5_000
    result: dict[str, object] = {"repeats": 5, "measured_intents": measured, "risk": []}
    rows = []
    for in_flight in (0, 500, 5_000):
        runs = [_risk_rate(in_flight, measured) for _ in range(5)]
        m = statistics.median(r[0] for r in runs)
        b = statistics.median(r[1] for r in runs)
        row = {"in_flight_at_start": in_flight, "risk_decisions_per_s_median": round(m),
               "baseline_intent_decode_per_s_median": round(b), "ratio": round(m / b, 3),
               "verdicts_last_run": runs[-1][2]}
        rows.append(row)
    result["risk"] = rows
    result["checkpoint"] = _checkpoint_cost(100 if a.quick else 400)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'in flight':>10} {'decisions/s':>12} {'decode/s':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['in_flight_at_start']:>10} {row['risk_decisions_per_s_median']:>12} "
              f"{row['baseline_intent_decode_per_s_median']:>10} {row['ratio']:>6}")
    cp = result["checkpoint"]
    print(f"checkpoint after {cp['inputs']} inputs: {cp['state_bytes']} bytes, "  # type: ignore[index]
          f"seal {cp['seal_ms_median']} ms, restore {cp['restore_ms_median']} ms")  # type: ignore[index]
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
