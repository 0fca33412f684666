"""The trading core (the composition the live agent runs): same records as the
engines driven by hand in the pinned order, redelivery changes nothing,
unauthenticated control changes nothing (time included), records pass the
strict codec."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from agents.clock import StreamClock
from agents.control.signing import Keyring, new_control_event
from agents.execution.interface import client_order_id_for
from agents.execution.paper import PaperConfig
from agents.trading.core import BarSkip, TradingConfig, TradingCore
from agents.trading.settings import TradingSettings
from tests import builders
from tests.unit.test_trading_determinism import KEYRING, load_bars, run, stub_signal
from topics.records import (
    Alert,
    Bar,
    ControlAudit,
    ControlCommand,
    ControlEvent,
    Fill,
    ModelRegistryEvent,
    ModelStage,
    OrderIntent,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    RiskVerdict,
    Timeframe,
)
from topics.schema import Record, codec_for, event_id_for

H = Timeframe.H1.nanos
ENGINE_RECORDS = (OrderIntent, RiskDecision, OrderUpdate, Fill)


def _core(**overrides: Any) -> TradingCore:
    overrides.setdefault("paper", PaperConfig(default_timeout_probability=0.05, seed=11))
    cfg = TradingConfig(**overrides)
    return TradingCore(cfg, KEYRING)


def _kill(bar: Bar, nonce: str, command: ControlCommand = ControlCommand.KILL_SWITCH_ON) -> ControlEvent:
    return new_control_event(
        command=command,
        scope="global",
        target="*",
        params={"duration_s": 6 * 3600} if command.value.endswith("on") else {},
        reason="drill",
        operator="alice",
        key_id="ops1",
        nonce=nonce,
        ts_event=bar.ts_event,
        ts_init=bar.ts_event,
        expires_at=None,
        keyring=KEYRING,
    )


def drive(
    core: TradingCore,
    bars: list[Bar],
    *,
    redeliver: bool = False,
    arrival: int | None = None,
    commands: bool = True,
) -> list[Record]:
    """The determinism test's inputs (bars, stub signals, a halt and a forged release at bar 100)."""
    out: list[Record] = []
    for i, bar in enumerate(bars):
        out += core.on_bar(bar, arrival).records
        if redeliver:
            assert core.on_bar(bar, arrival).bar_skipped == BarSkip.NOT_NEWER
        if i == 100 and commands:
            cmd = _kill(bar, "n-100")
            out += core.on_control(cmd, arrival).records
            forged = dataclasses.replace(cmd, command=ControlCommand.KILL_SWITCH_OFF, nonce="n-101")
            out += core.on_control(forged, arrival).records
        signal = stub_signal(bars, i)
        out += core.on_signal(signal, arrival).records
        if redeliver:
            assert core.on_signal(signal, arrival).records == ()
    return out


def _wire(rec: Record) -> bytes:
    return codec_for(type(rec)).encode(rec)


def test_core_when_driven_then_same_engine_records_as_the_hand_driven_engines() -> None:
    bars = load_bars()
    expected = [line for line in run(bars) if line.split(b":", 1)[0] in {c.__name__.encode() for c in ENGINE_RECORDS}]
    got: list[bytes] = []
    for rec in drive(_core(), bars):
        if isinstance(rec, ENGINE_RECORDS):
            if isinstance(rec, OrderIntent):
                assert rec.reason in (None, "stop_loss", "take_profit")
                rec = dataclasses.replace(rec, reason=None)  # the hand-driven run does not label exits
            got.append(type(rec).__name__.encode() + b":" + _wire(rec))
    assert len(got) == len(expected) and got == expected
    assert sum(x.startswith(b"Fill:") for x in got) > 20


@pytest.mark.determinism
def test_core_twice_and_with_redelivery_then_byte_identical() -> None:
    bars = load_bars()
    first = [_wire(r) for r in drive(_core(), bars)]
    assert first == [_wire(r) for r in drive(_core(), bars)]
    assert first == [_wire(r) for r in drive(_core(), bars, redeliver=True)]


def test_core_with_a_later_arrival_bound_then_same_as_replay() -> None:
    """The live agent bounds market time by the arrival time; for market records from the past that is replay.
    A command is judged in arrival time: one that arrives ten hours after it was signed is stale."""
    bars = load_bars()[:150]
    late = bars[-1].ts_event + 10 * H
    replay = [_wire(r) for r in drive(_core(), bars, commands=False)]
    live = [_wire(r) for r in drive(_core(), bars, arrival=late, commands=False)]
    assert live == replay
    audits = [r for r in drive(_core(), bars, arrival=late) if isinstance(r, ControlAudit)]
    assert [(a.outcome.value, a.reason, a.ts_init) for a in audits] == [
        ("rejected", "stale", late),
        ("rejected", "bad_signature", late),
    ]


def test_every_output_when_encoded_then_decodes_with_the_strict_codec() -> None:
    kinds: set[type[Record]] = set()
    for rec in drive(_core(), load_bars()):
        assert codec_for(type(rec)).decode(_wire(rec)) == rec
        kinds.add(type(rec))
    assert {OrderIntent, RiskDecision, OrderUpdate, Fill, PortfolioSnapshot, ControlAudit, Alert} <= kinds


def test_kill_switch_then_intents_rejected_and_audit_id_is_the_record_identity() -> None:
    bars = load_bars()
    core = _core()
    for i in range(30):
        core.on_bar(bars[i])
    step = core.on_control(_kill(bars[29], "k-1"))
    (audit,) = step.records
    assert isinstance(audit, ControlAudit) and audit.outcome.value == "accepted" and audit.reason == "applied"
    assert audit.event_id == event_id_for(
        "control_audit", audit.component, audit.control_event_id, audit.outcome.value, audit.reason
    )
    strong = dataclasses.replace(stub_signal(bars, 29), score=0.9, expected_return=0.02, shadow=False)
    strong = dataclasses.replace(strong, event_id="strong-29")
    out = core.on_signal(strong).records
    decisions = [r for r in out if isinstance(r, RiskDecision)]
    assert decisions and all(d.verdict is RiskVerdict.REJECTED and "kill_switch_global" in d.reasons for d in decisions)
    assert not [r for r in out if isinstance(r, Fill)]


def test_forged_and_unsigned_control_then_nothing_changes_and_an_alert_is_raised() -> None:
    bars = load_bars()
    core = _core()
    for i in range(10):
        core.on_bar(bars[i])
    now = core.clock.now_ns()
    genuine = _kill(bars[9], "g-1")
    future = bars[9].ts_event + H // 2
    forged = dataclasses.replace(genuine, nonce="f-1", ts_event=future)  # signature no longer matches
    unsigned = dataclasses.replace(genuine, nonce="u-1", ts_event=future, signature="")
    other_key = new_control_event(
        command=ControlCommand.KILL_SWITCH_ON,
        scope="global",
        target="*",
        params={},
        reason="x",
        operator="mallory",
        key_id="ops1",
        nonce="o-1",
        ts_event=future,
        ts_init=future,
        expires_at=None,
        keyring=Keyring({"ops1": b"not-the-real-key-0123456789abcdef"}),
    )
    for bad, reason in ((forged, "bad_signature"), (unsigned, "unsigned"), (other_key, "bad_signature")):
        step = core.on_control(bad, arrival_ns=future + H)
        audit, alert = step.records
        assert isinstance(audit, ControlAudit) and audit.outcome.value == "rejected" and audit.reason == reason
        assert audit.alert and audit.ts_init == future  # stamped at the command's time ...
        assert isinstance(alert, Alert) and alert.code == "control_rejected" and alert.labels["reason"] == reason
        assert core.clock.now_ns() == now  # ... but time did not move
        assert core.active_kill_switches() == ()
    # the genuine command still works afterwards, and its replay is refused and alerted
    assert core.on_control(genuine).audit is not None
    assert len(core.active_kill_switches()) == 1
    replay = core.on_control(genuine)
    assert replay.audit is not None and replay.audit.reason == "replayed" and replay.audit.alert


def test_authentic_command_arriving_after_it_expired_then_refused_as_expired_and_nothing_engaged() -> None:
    bars = load_bars()[:10]
    core = _core()
    drive(core, bars)
    t = bars[-1].ts_event
    base = _kill(bars[-1], "late-1")
    late = new_control_event(
        command=base.command,
        scope=base.scope,
        target=base.target,
        params=dict(base.params),
        reason=base.reason,
        operator=base.operator,
        key_id=base.key_id,
        nonce=base.nonce,
        ts_event=t,
        ts_init=t,
        expires_at=t + 5 * 10**9,  # valid for 5 s ...
        keyring=KEYRING,
    )
    step = core.on_control(late, arrival_ns=t + 10 * 10**9)  # ... delivered 10 s after it was signed
    assert step.audit is not None and step.audit.outcome.value == "rejected" and step.audit.reason == "expired"
    assert core.active_kill_switches() == ()
    in_time = new_control_event(
        command=late.command,
        scope=late.scope,
        target=late.target,
        params=dict(late.params),
        reason=late.reason,
        operator=late.operator,
        key_id=late.key_id,
        nonce="late-2",
        ts_event=t + 20 * 10**9,
        ts_init=t + 20 * 10**9,
        expires_at=t + 25 * 10**9,
        keyring=KEYRING,
    )
    assert core.on_control(in_time, arrival_ns=t + 21 * 10**9).audit.outcome.value == "accepted"  # type: ignore[union-attr]
    assert len(core.active_kill_switches()) == 1


def test_duplicate_signal_and_bar_then_one_order_and_one_fill() -> None:
    bars = load_bars()
    core = _core(paper=PaperConfig())
    for i in range(10):
        core.on_bar(bars[i])
    signal = dataclasses.replace(stub_signal(bars, 9), score=0.9, expected_return=0.02, shadow=False)
    first = core.on_signal(signal).records
    intents = [r for r in first if isinstance(r, OrderIntent)]
    assert len(intents) == 1
    assert core.on_signal(signal).records == ()
    fills = [r for r in core.on_bar(bars[10]).records if isinstance(r, Fill)]
    assert core.on_bar(bars[10]).bar_skipped == BarSkip.NOT_NEWER
    assert fills and {f.client_order_id for f in fills} == {client_order_id_for(intents[0].event_id)}
    assert core.portfolio_state().quantity("BTC/USDT") == pytest.approx(sum(f.quantity for f in fills))


def test_bars_not_closed_or_not_traded_then_skipped() -> None:
    bar = load_bars()[0]
    core = _core()
    assert core.on_bar(dataclasses.replace(bar, is_closed=False)).bar_skipped == BarSkip.NOT_CLOSED
    assert core.on_bar(dataclasses.replace(bar, timeframe=Timeframe.M1)).bar_skipped == BarSkip.TIMEFRAME_NOT_TRADED
    assert core.clock.now_ns() == 0


def test_snapshot_when_encoded_then_carries_positions_per_symbol() -> None:
    bars = load_bars()
    core = _core(paper=PaperConfig())
    snaps: list[PortfolioSnapshot] = []
    for i in range(60):
        snaps += [r for r in core.on_bar(bars[i]).records if isinstance(r, PortfolioSnapshot)]
        core.on_signal(dataclasses.replace(stub_signal(bars, i), shadow=False))
    assert len(snaps) == 60
    last = orjson.loads(_wire(snaps[-1]))
    state = core.portfolio_state()
    assert last["equity"] == state.equity and last["account"] == "paper"
    assert last["quantities"] == {s: p.quantity for s, p in state.positions.items()}


def test_clock_when_advanced_then_bounded_by_arrival_and_monotone() -> None:
    clock = StreamClock()
    clock.advance(100, arrival_ns=50)
    assert clock.now_ns() == 50
    clock.advance(40)
    assert clock.now_ns() == 50
    clock.advance(70)
    assert clock.now_ns() == 70


def test_settings_when_read_from_env_then_parsed_or_refused() -> None:
    s = TradingSettings.from_env(
        {
            "TRADEFLOW_TRADING_SYMBOLS": "BTC/USDT, ETH/USD",
            "TRADEFLOW_TRADING_TIMEFRAMES": "1h,30m",
            "TRADEFLOW_TRADING_ACCOUNT": "acct1",
        }
    )
    cfg = s.config()
    assert cfg.account == "acct1" and cfg.risk.allowed_symbols == ("BTC/USDT", "ETH/USD")
    assert cfg.timeframes == (Timeframe.H1, Timeframe.M30)
    assert TradingSettings.from_env({}).config().risk.allowed_symbols == TradingConfig().risk.allowed_symbols
    with pytest.raises(ValueError, match="set TRADEFLOW_EXECUTION_VENUE"):  # ccxt needs a venue
        TradingSettings.from_env({"TRADEFLOW_EXECUTION_ADAPTER": "ccxt"})
    with pytest.raises(ValueError, match="TRADEFLOW_EXECUTION_ADAPTER"):
        TradingSettings.from_env({"TRADEFLOW_EXECUTION_ADAPTER": "carrier-pigeon"})
    with pytest.raises(ValueError, match="TIMEFRAMES"):
        TradingSettings.from_env({"TRADEFLOW_TRADING_TIMEFRAMES": "7h"})
    assert cfg.signal_bar_wait_ns == 60 * 10**9
    assert (
        TradingSettings.from_env({"TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S": "2.5"}).config().signal_bar_wait_ns
        == 2_500_000_000
    )
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="SIGNAL_BAR_WAIT_S"):
            TradingSettings.from_env({"TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S": bad})


# -- event-time alignment: a signal that overtakes its own bar ------------------------------


def _overtaken(bars: list[Bar], arrival: int | None = None, **overrides: Any) -> tuple[TradingCore, list[Record]]:
    """Every signal arrives *before* the bar it was derived from (the trading consumer's race)."""
    core = _core(**overrides)
    out: list[Record] = list(core.on_bar(bars[0], arrival).records)
    for i in range(1, len(bars)):
        out += core.on_signal(stub_signal(bars, i), arrival).records
        out += core.on_bar(bars[i], arrival).records
    return core, out


def _in_order(bars: list[Bar], arrival: int | None = None) -> list[Record]:
    core = _core()
    out: list[Record] = list(core.on_bar(bars[0], arrival).records)
    for i in range(1, len(bars)):
        out += core.on_bar(bars[i], arrival).records
        out += core.on_signal(stub_signal(bars, i), arrival).records
    return out


def test_signal_before_its_bar_when_replayed_then_byte_identical_to_bar_first() -> None:
    bars = load_bars()[:300]
    core, overtaken = _overtaken(bars)
    in_order = _in_order(bars)
    assert sum(isinstance(r, Fill) for r in in_order) >= 5  # the scenario trades
    assert [_wire(r) for r in overtaken] == [_wire(r) for r in in_order]
    assert core.held_signals() == ()


def test_signal_before_its_bar_live_then_held_until_the_bar_and_identical() -> None:
    bars = load_bars()[:120]
    arrival = bars[-1].ts_event + H  # live: every message arrives after its event time, within the wait
    core = _core()
    core.on_bar(bars[0], arrival)
    step = core.on_signal(stub_signal(bars, 1), arrival)
    assert step.held and step.records == () and step.sizings == ()
    assert core.held_signals() == (stub_signal(bars, 1),)
    released = core.on_bar(bars[1], arrival)
    assert len(released.sizings) == 1 and released.sizings[0].signal_event_id == stub_signal(bars, 1).event_id
    assert core.held_signals() == ()
    _, overtaken = _overtaken(bars, arrival)
    assert [_wire(r) for r in overtaken] == [_wire(r) for r in _in_order(bars, arrival)]


def test_signal_off_the_bar_grid_then_applied_at_once() -> None:
    bars = load_bars()[:10]
    core = _core()
    core.on_bar(bars[5])
    sub_bar = dataclasses.replace(stub_signal(bars, 5), ts_event=bars[5].ts_event + H // 2)  # inside the next bar
    step = core.on_signal(sub_bar)
    assert not step.held and len(step.sizings) == 1
    coarser = dataclasses.replace(stub_signal(bars, 5), ts_event=bars[5].ts_event + 4 * H)  # a 4h close: on the grid
    assert core.on_signal(coarser).held
    assert core.on_bar(bars[6]).sizings == ()  # 1 h later: not its bar yet
    assert core.held_signals() == (coarser,)


def test_signal_whose_bar_never_comes_then_applied_after_the_wait_and_counted() -> None:
    bars = load_bars()[:10]
    core = _core(signal_bar_wait_ns=30 * 10**9)
    t = bars[5].ts_event
    core.on_bar(bars[5], t)
    late = stub_signal(bars, 6)  # its bar is lost
    assert core.on_signal(late, t + 10**9).held
    other = dataclasses.replace(stub_signal(bars, 6), symbol="ETH/USDT")  # no ETH bar yet: waits too
    assert core.on_signal(other, t + 2 * 10**9).held
    # control traffic never releases (forged messages must not move anything)
    assert core.on_control(_kill(bars[5], "n-w"), t + 60 * 10**9).sizings == ()
    assert len(core.held_signals()) == 2
    step = core.on_bar(dataclasses.replace(bars[5], symbol="SOL/USDT"), t + 33 * 10**9)  # > 30 s after both
    assert step.released_unaligned == 2 and [s.signal_event_id for s in step.sizings] == [late.event_id, other.event_id]
    assert core.held_signals() == ()
    # a replay passes no arrival time: a held signal then waits for its bar, however far the stream goes
    replayed = _core(signal_bar_wait_ns=0)
    replayed.on_bar(bars[5])
    assert replayed.on_signal(late).held and replayed.on_signal(other).held
    assert replayed.on_bar(dataclasses.replace(bars[5], symbol="SOL/USDT")).released_unaligned == 0


def test_more_signals_held_than_the_capacity_then_the_oldest_is_applied() -> None:
    bars = load_bars()[:10]
    core = _core(max_held_signals=2)
    core.on_bar(bars[2])
    sigs = [
        dataclasses.replace(stub_signal(bars, 3), ts_event=bars[2].ts_event + k * H, event_id=f"s{k}")
        for k in (1, 2, 3)
    ]
    assert core.on_signal(sigs[0]).held and core.on_signal(sigs[1]).held
    step = core.on_signal(sigs[2])
    assert step.held and step.released_unaligned == 1 and step.sizings[0].signal_event_id == "s1"
    assert core.held_signals() == (sigs[1], sigs[2])
    off = _core(max_held_signals=0)  # alignment off: applied as they come
    off.on_bar(bars[2])
    assert not off.on_signal(sigs[0]).held


def test_held_signals_survive_a_checkpoint() -> None:
    from agents.trading.checkpoint import dump_core, load_core

    bars = load_bars()[:10]
    core = _core()
    core.on_bar(bars[2])
    assert core.on_signal(stub_signal(bars, 3)).held
    restored = load_core(dump_core(core), KEYRING)
    assert restored.held_signals() == core.held_signals()
    assert [_wire(r) for r in restored.on_bar(bars[3]).records] == [_wire(r) for r in core.on_bar(bars[3]).records]


def _registry(stage: ModelStage, ts: int, version: str = "1") -> ModelRegistryEvent:
    return builders.registry_event(
        version=version,
        stage=stage,
        ts=ts,
        model_id="stub-momentum",
        config={"symbol": "BTC/USDT", "timeframe": "1h"},
        data_start=ts - 100 * H,
        data_end=ts - H,
    )


@pytest.mark.parametrize(
    ("stage", "fraction"), [(ModelStage.CANARY_10, 0.1), (ModelStage.CANARY_30, 0.3), (ModelStage.ACTIVE, 1.0)]
)
def test_rollout_stage_of_the_signals_model_then_order_scaled_to_its_capital_fraction(
    stage: ModelStage, fraction: float
) -> None:
    bars = load_bars()
    signal = dataclasses.replace(stub_signal(bars, 9), score=0.9, expected_return=0.02, shadow=False)

    def intent_qty(registry: ModelRegistryEvent | None) -> tuple[float, tuple[str, ...]]:
        core = _core(paper=PaperConfig())
        for i in range(10):
            core.on_bar(bars[i])
        if registry is not None:
            assert core.on_registry(registry).records == ()
        step = core.on_signal(signal)
        (intent,) = [r for r in step.records if isinstance(r, OrderIntent)]
        assert step.sizing is not None
        return intent.quantity, tuple(a.value for a in step.sizing.adjustments)

    full, _ = intent_qty(None)  # a version the registry never announced: ungoverned, full size
    qty, adjustments = intent_qty(_registry(stage, bars[5].ts_event))
    assert qty == pytest.approx(full * fraction, rel=1e-3)
    assert ("rollout_fraction" in adjustments) == (fraction < 1.0)


@pytest.mark.parametrize(
    "stage", [ModelStage.ROLLED_BACK, ModelStage.RETIRED, ModelStage.REGISTERED, ModelStage.SHADOW]
)
def test_model_version_off_the_ladder_then_its_signal_trades_nothing(stage: ModelStage) -> None:
    bars = load_bars()
    core = _core(paper=PaperConfig())
    for i in range(10):
        core.on_bar(bars[i])
    core.on_registry(_registry(ModelStage.ACTIVE, bars[4].ts_event))
    core.on_registry(_registry(stage, bars[6].ts_event))  # the later event wins
    core.on_registry(_registry(ModelStage.ACTIVE, bars[2].ts_event))  # a late, older event does not
    signal = dataclasses.replace(stub_signal(bars, 9), score=0.9, expected_return=0.02, shadow=False)
    step = core.on_signal(signal)
    assert step.records == () and step.sizing is not None and step.sizing.reason.value == "model_not_live"
