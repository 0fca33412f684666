"""Pure helpers of ``ops/bench/trading.py`` (b)/(c): percentiles, matching, kill-trial judging, and that
the synthetic stream really trades through the real in-process core (so the broker run measures orders,
not skips)."""

from __future__ import annotations

import math

from agents.control.signing import Keyring, new_control_event
from agents.risk.config import RiskConfig
from agents.trading.core import TradingConfig, TradingCore
from ops.bench.trading import (
    BASE_PRICE,
    PHASE_SYMBOLS,
    Decision,
    bench_bar,
    bench_signal,
    fill_bar,
    first_latencies,
    judge_kill_trial,
    paced_times,
    percentiles,
)
from topics.records import ControlCommand, Fill, OrderUpdate, RiskDecision, Timeframe
from topics.units import NS_PER_MINUTE
from topics.units import NS_PER_MS as MS

T = 1_800_000_000_000_000_000


def test_percentiles_nearest_rank_and_missing_is_none() -> None:
    p = percentiles([float(x) for x in range(1, 101)])
    assert (p["samples"], p["p50_ms"], p["p95_ms"], p["p99_ms"], p["max_ms"]) == (100, 51.0, 96.0, 100.0, 100.0)
    empty = percentiles([])
    assert empty["samples"] == 0 and empty["p50_ms"] is None and empty["p99_ms"] is None


def test_first_latencies_first_record_only_ignores_foreign_ids_and_drops_warmup() -> None:
    sent = {f"s{i}": T + i * 10 * MS for i in range(10)}
    received = [(T + 5 * MS, "other")] + [(sent[f"s{i}"] + (i + 1) * MS, f"s{i}") for i in range(10)]
    received.append((sent["s9"] + 500 * MS, "s9"))  # a later record of the same signal does not count
    assert first_latencies(sent, received) == [float(i + 1) for i in range(1, 10)]  # s0 is the warm-up tenth
    assert first_latencies(sent, received[:5], drop_first=0.0) == [1.0, 2.0, 3.0, 4.0]


def _d(offset: int, recv_ms: int, verdict: str, killed: bool = False) -> Decision:
    return Decision(offset, T + recv_ms * MS, verdict, ("kill_switch_global",) if killed else ())


def test_kill_trial_latency_window_and_no_violation() -> None:
    on, off, end = T + 100 * MS, T + 600 * MS, T + 2000 * MS
    ds = [
        _d(1, 50, "approved"),
        _d(2, 120, "approved"),
        _d(3, 180, "rejected", True),
        _d(4, 300, "rejected", True),
        _d(5, 650, "rejected", True),
        _d(6, 700, "approved"),
    ]
    j = judge_kill_trial(ds, on, off, end)
    assert j.latency_ms == 80.0
    assert (j.approved_in_window, j.approved_while_on, j.rejected_after_release) == (1, 0, 0)


def test_kill_trial_flags_orders_out_while_on_and_reversals() -> None:
    on, off, end = T, T + 500 * MS, T + 2000 * MS
    ds = [_d(3, 200, "rejected", True), _d(4, 250, "reduced"), _d(5, 300, "rejected", True)]
    j = judge_kill_trial(ds, on, off, end)
    assert j.approved_while_on == 1 and j.rejected_after_release == 1
    never = judge_kill_trial([_d(1, 10, "approved")], on, off, end)
    assert never.latency_ms is None and never.approved_in_window == 1


def test_paced_times_are_steady() -> None:
    assert paced_times(4, 100.0) == [0.0, 0.01, 0.02, 0.03]


def test_synthetic_stream_trades_fills_profitably_and_the_kill_switch_blocks() -> None:
    """Every signal flips the position into an approved order; its bar fills it; kill on rejects all."""
    keyring = Keyring({"bench": b"k" * 40})
    cfg = TradingConfig(
        account="bench", timeframes=(Timeframe.M1,), risk=RiskConfig(allowed_symbols=tuple(PHASE_SYMBOLS.values()))
    )
    core = TradingCore(cfg, keyring)

    def control(command: ControlCommand, params: dict[str, str | int], now: int) -> str:
        ev = new_control_event(
            command=command,
            scope="global",
            target="*",
            params=params,
            reason="t",
            operator="t",
            key_id="bench",
            nonce=f"n{now}",
            ts_event=now,
            ts_init=now,
            expires_at=None,
            keyring=keyring,
        )
        audit = core.on_control(ev, now + MS).audit
        assert audit is not None
        return audit.outcome.value

    assert control(ControlCommand.SET_LIMIT, {"name": "max_orders_per_window", "value": 1_000_000}, T) == "accepted"
    symbol = PHASE_SYMBOLS["paired_100"]
    core.on_bar(bench_bar(symbol, T - 2 * NS_PER_MINUTE, BASE_PRICE[symbol]), T)
    now = T
    verdicts: list[str] = []
    fills = 0
    for i in range(200):
        now += 10 * MS
        sig = bench_signal(symbol, i, now)
        out = core.on_signal(sig, now + MS).records
        verdicts += [r.verdict.value for r in out if isinstance(r, RiskDecision)]
        assert any(isinstance(r, OrderUpdate) and r.correlation_id == sig.event_id for r in out)
        bar_out = core.on_bar(fill_bar(symbol, i, now), now + 2 * MS).records
        fills += sum(isinstance(r, Fill) and r.correlation_id == sig.event_id for r in bar_out)
    assert verdicts == ["approved"] * 200 and fills == 200
    state = core.portfolio_state()
    assert state.consecutive_losses == 0 and state.equity > 100_000.0 and math.isfinite(state.equity)
    assert control(ControlCommand.KILL_SWITCH_ON, {}, now) == "accepted"
    blocked = core.on_signal(bench_signal(symbol, 200, now + 10 * MS), now + 11 * MS).records
    assert [r.reasons for r in blocked if isinstance(r, RiskDecision)] == [("kill_switch_global",)]
