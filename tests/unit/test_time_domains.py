"""Market time and wall/arrival time are separate domains in the trading core
(docs/trading_engines.md#time-domains): recorded market data replayed as a live
stream keeps trading through operator commands given now, a command never moves
market time, an operator's kill switch expires in wall time, and the audit
replay of such a run reproduces it byte for byte."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from agents.clock import TimeDomain
from agents.control.signing import new_control_event
from agents.execution.paper import PaperConfig
from agents.governance.config import GovernanceConfig
from agents.governance.engine import GovernanceEngine
from agents.risk.config import RiskConfig
from agents.strategy.engine import SizingReason
from agents.trading.core import Step, TradingConfig, TradingCore
from backtest.audit import replay_outputs
from tests import builders
from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal
from topics.records import (
    Bar,
    ControlAudit,
    ControlCommand,
    ControlEvent,
    ModelRegistryEvent,
    ModelStage,
    RiskDecision,
    RiskVerdict,
    Signal,
)
from topics.schema import JsonScalar, Record, codec_for
from topics.units import NS_PER_DAY, NS_PER_SECOND

#: Wall time of the "live" run: years after the recorded market data.
WALL0 = 1_764_000_000_000_000_000
MODEL = "stub-momentum"
S = NS_PER_SECOND


def _core() -> TradingCore:
    """The volatility breaker is off (thresholds beyond any bar): every kill switch here is an operator's."""
    risk = RiskConfig(vol_thresholds={"BTC": 10.0})
    return TradingCore(TradingConfig(paper=PaperConfig(seed=11), risk=risk), KEYRING)


def _command(
    command: ControlCommand, nonce: str, ts: int, params: dict[str, JsonScalar] | None = None, **fields: Any
) -> ControlEvent:
    defaults: dict[str, Any] = {"scope": "global", "target": "*", "reason": "drill"}
    defaults.update(fields)
    return new_control_event(
        command=command,
        params=params or {},
        operator="alice",
        key_id="ops1",
        nonce=nonce,
        ts_event=ts,
        ts_init=ts,
        expires_at=None,
        keyring=KEYRING,
        **defaults,
    )


def _registry(stage: ModelStage, ts: int) -> ModelRegistryEvent:
    return builders.registry_event(model_id=MODEL, version="1", stage=stage, ts=ts, config={"symbol": "BTC/USDT"})


def _wire(rec: Record) -> bytes:
    return codec_for(type(rec)).encode(rec)


class LiveRun:
    """Recorded bars published as a live stream, one bar per wall second: the core fed with arrival times
    (as the agent does), every input journaled with its arrival (as the agent does)."""

    def __init__(self) -> None:
        self.core = _core()
        self.governance = GovernanceEngine(GovernanceConfig(), KEYRING)
        self.journal: list[tuple[Record, int | None]] = []
        self.outputs: list[Record] = []
        self.sizings: list[tuple[int, SizingReason]] = []
        self.decisions: list[tuple[int, RiskDecision]] = []

    def feed(self, rec: Record, arrival: int, index: int = -1) -> Step:
        self.journal.append((rec, arrival))
        if isinstance(rec, Bar):
            step = self.core.on_bar(rec, arrival)
        elif isinstance(rec, Signal):
            step = self.core.on_signal(rec, arrival)
        elif isinstance(rec, ControlEvent):
            step = self.core.on_control(rec, arrival)
        else:
            assert isinstance(rec, ModelRegistryEvent)
            step = self.core.on_registry(rec, arrival)
        self.outputs += step.records
        self.sizings += [(index, s.reason) for s in step.sizings]
        self.decisions += [(index, r) for r in step.records if isinstance(r, RiskDecision)]
        return step

    def command(self, event: ControlEvent, arrival: int, index: int) -> Step:
        """An operator command: through governance (its registry changes reach the core) and the core."""
        gov = self.governance.on_control(event, arrival)
        for rec in gov.records:
            if isinstance(rec, ModelRegistryEvent):
                self.governance.on_registry(rec, arrival)
                self.feed(rec, arrival, index)
        return self.feed(event, arrival, index)

    def registry(self, rec: ModelRegistryEvent) -> None:
        self.governance.on_registry(rec, rec.ts_event)
        self.feed(rec, rec.ts_event)


def _stream(bars: list[Bar]) -> Iterator[tuple[int, Bar, Signal, int]]:
    """(index, bar, its signal, wall second of the bar's arrival); the signal arrives half a second later."""
    for i, bar in enumerate(bars):
        yield i, bar, stub_signal(bars, i), WALL0 + i * S


def _live_run() -> LiveRun:
    """Shadow model; promote --to active at bar 30; kill switch at 100; released at 140."""
    bars = load_bars()[:200]
    run = LiveRun()
    run.registry(_registry(ModelStage.REGISTERED, WALL0 - 20 * S))
    run.registry(_registry(ModelStage.SHADOW, WALL0 - 10 * S))
    for i, bar, signal, wall in _stream(bars):
        run.feed(bar, wall, i)
        if i == 30:
            promote = _command(
                ControlCommand.ROLLOUT_PROMOTE,
                "p-30",
                wall + S // 4,
                {"model_id": MODEL, "version": "1", "to": "active"},
                scope="model",
                target=MODEL,
            )
            run.command(promote, wall + S // 4 + 1_000_000, i)
        if i == 100:
            run.command(_command(ControlCommand.KILL_SWITCH_ON, "k-100", wall + S // 4), wall + S // 4 + 1_000_000, i)
        if i == 140:
            run.command(_command(ControlCommand.KILL_SWITCH_OFF, "k-140", wall + S // 4), wall + S // 4 + 1_000_000, i)
        run.feed(signal, wall + S // 2, i)
    return run


def test_recorded_market_as_live_stream_when_promote_kill_release_then_trading_follows_each_command() -> None:
    run = _live_run()
    reasons = [r for _, r in run.sizings]
    assert SizingReason.STALE_SIGNAL not in reasons  # commands given now never age the recorded signals
    # shadow: nothing traded before the promote; orders from the promote on
    assert {r for i, r in run.sizings if i < 30} <= {SizingReason.MODEL_NOT_LIVE, SizingReason.SHADOW}
    assert SizingReason.ORDER in {r for i, r in run.sizings if 30 <= i < 100}
    # every promote stage reached the core, the last one wins: active, full capital
    assert run.core.capital_fraction(MODEL, "1") == 1.0
    # the kill switch stops every order until it is released; trading resumes afterwards
    during = [d for i, d in run.decisions if 100 <= i < 140]
    assert during and all(d.verdict is RiskVerdict.REJECTED and "kill_switch_global" in d.reasons for d in during)
    after = [d for i, d in run.decisions if i >= 140]
    assert any(d.verdict is not RiskVerdict.REJECTED for d in after)
    assert not any("kill_switch_global" in d.reasons for d in after)
    audits = [r for r in run.outputs if isinstance(r, ControlAudit)]
    assert [(a.command, a.outcome.value, a.reason) for a in audits] == [
        ("rollout_promote", "ignored", "not_for_risk"),
        ("kill_switch_on", "accepted", "applied"),
        ("kill_switch_off", "accepted", "applied"),
    ]
    # market outputs carry market time, control audits wall time
    assert all(d.ts_init < WALL0 for _, d in run.decisions)
    assert all(a.ts_init >= WALL0 for a in audits)
    assert run.core.clock.now_ns() < WALL0 <= run.core.wall_clock.now_ns()


@pytest.mark.determinism
def test_recorded_market_as_live_stream_when_audited_from_its_journal_then_byte_identical() -> None:
    run = _live_run()
    replayed = replay_outputs(run.core.config, KEYRING, run.journal)
    assert [_wire(r) for r in replayed] == [_wire(r) for r in run.outputs]


def _market_records(records: list[Record]) -> list[bytes]:
    return [_wire(r) for r in records if not isinstance(r, ControlAudit)]


def test_command_with_a_far_future_wall_time_then_later_signals_not_stale_and_decisions_unchanged() -> None:
    bars = load_bars()[:120]
    far = bars[-1].ts_event + 3650 * NS_PER_DAY
    for arrival in (None, far + S):  # a replay (no arrival bound) and a live run
        plain, commanded = _core(), _core()
        plain_out: list[Record] = []
        commanded_out: list[Record] = []
        reasons: list[SizingReason] = []
        for i, bar in enumerate(bars):
            signal = stub_signal(bars, i)
            bar_arrival = None if arrival is None else bar.ts_event + S
            plain_out += plain.on_bar(bar, bar_arrival).records + plain.on_signal(signal, bar_arrival).records
            commanded_out += commanded.on_bar(bar, bar_arrival).records
            if i == 20:
                set_limit = _command(ControlCommand.SET_LIMIT, "far", far, {"name": "stop_loss", "value": 0.018})
                step = commanded.on_control(set_limit, arrival)
                assert step.audit is not None and step.audit.reason == "no_change"
                assert commanded.clock.now_ns() == bar.ts_event  # market time did not move
            step = commanded.on_signal(signal, bar_arrival)
            commanded_out += step.records
            reasons += [s.reason for s in step.sizings]
        assert SizingReason.STALE_SIGNAL not in reasons and SizingReason.ORDER in reasons
        assert _market_records(commanded_out) == _market_records(plain_out)


def test_operator_kill_switch_with_a_duration_then_it_expires_in_wall_time_not_market_time() -> None:
    bars = load_bars()[:80]
    core = _core()
    for i in range(10):
        core.on_bar(bars[i], WALL0 + i * S)
    wall = WALL0 + 10 * S
    step = core.on_control(_command(ControlCommand.KILL_SWITCH_ON, "ttl", wall, {"duration_s": 30}), wall)
    assert step.audit is not None and step.audit.reason == "applied"
    (switch,) = core.active_kill_switches()
    assert (switch.domain, switch.set_at_ns, switch.expires_at_ns) == (TimeDomain.WALL, wall, wall + 30 * S)
    # 20 market hours at one bar per wall second: still on (20 s of wall time)
    for i in range(10, 30):
        core.on_bar(bars[i], WALL0 + i * S)
    assert core.active_kill_switches() == (switch,)
    strong = dataclasses.replace(stub_signal(bars, 29), score=0.9, expected_return=0.02, shadow=False, event_id="s29")
    decisions = [r for r in core.on_signal(strong, WALL0 + 29 * S).records if isinstance(r, RiskDecision)]
    assert decisions and all("kill_switch_global" in d.reasons for d in decisions)
    # 30 s of wall time later it is off, whatever the market time
    for i in range(30, 45):
        core.on_bar(bars[i], WALL0 + i * S)
    assert core.active_kill_switches() == ()


def test_forged_command_then_neither_clock_moves() -> None:
    bars = load_bars()[:10]
    core = _core()
    for i, bar in enumerate(bars):
        core.on_bar(bar, WALL0 + i * S)
    market, wall = core.clock.now_ns(), core.wall_clock.now_ns()
    genuine = _command(ControlCommand.KILL_SWITCH_ON, "g", WALL0 + 3600 * S)
    forged = dataclasses.replace(genuine, nonce="f")  # the signature no longer matches
    step = core.on_control(forged, WALL0 + 7200 * S)
    assert step.audit is not None and step.audit.reason == "bad_signature"
    assert (core.clock.now_ns(), core.wall_clock.now_ns()) == (market, wall)
    late = _command(ControlCommand.KILL_SWITCH_ON, "late", WALL0 + 3600 * S)
    step = core.on_control(late, WALL0 + 7200 * S)  # authentic, but it arrived an hour after it was signed
    assert step.audit is not None and step.audit.reason == "stale"
    assert core.active_kill_switches() == ()
    step = core.on_control(genuine, WALL0 + 7201 * S)  # an authentic one moves wall time only (to its arrival)
    assert step.audit is not None and step.audit.reason == "stale"  # the same hour-old command
    fresh = _command(ControlCommand.KILL_SWITCH_ON, "g2", WALL0 + 7202 * S)
    step = core.on_control(fresh, WALL0 + 7203 * S)
    assert step.audit is not None and step.audit.reason == "applied"
    assert (core.clock.now_ns(), core.wall_clock.now_ns()) == (market, WALL0 + 7203 * S)
