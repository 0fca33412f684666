"""Opening status: every blocker of new exposure with its reason code, scope and end, on the clock
its rule lives in (market or wall time); per-strategy consecutive losses; the ``risk.opening`` record."""

from __future__ import annotations

import dataclasses

import pytest

from agents.clock import EventClock, TimeDomain
from agents.control.signing import ControlVerifier
from agents.risk.config import BreakerMode, RiskConfig
from agents.risk.engine import RiskEngine, RiskReason
from agents.risk.killswitch import KillScope
from agents.risk.opening import Blocker
from agents.trading.core import TradingConfig, TradingCore
from tests import builders
from tests.unit.test_risk import BTC, ETH, KEYRING, NOW, bar, control, intent, make_engine, reasons, state
from topics.records import Bar, ControlCommand, OpeningStatus, RiskVerdict, Side, Timeframe
from topics.schema import codec_for
from topics.units import NS_PER_DAY as DAY
from topics.units import NS_PER_HOUR as H
from topics.units import NS_PER_SECOND as S


def codes(engine: RiskEngine) -> list[str]:
    return [b.code for b in engine.opening_report().blockers]


def only(engine: RiskEngine) -> Blocker:
    (blocker,) = engine.opening_report().blockers
    return blocker


# ---------------------------------------------------------------------------
# One blocker at a time: code, scope, end, remaining time
# ---------------------------------------------------------------------------


def test_clean_account_then_opening_allowed_and_no_blocker() -> None:
    engine, _ = make_engine()
    report = engine.opening_report()
    assert report.allowed and report.blockers == () and report.market_ns == NOW


def test_no_portfolio_state_then_blocked_until_it_arrives() -> None:
    engine = RiskEngine(RiskConfig(), EventClock(NOW), ControlVerifier(KEYRING))
    b = only(engine)
    assert (b.code, b.scope, b.until_ns) == ("no_portfolio_state", "account", None)


@pytest.mark.parametrize(
    ("scope", "target", "code"),
    [
        ("global", "*", "kill_switch_global"),
        ("symbol", ETH, "kill_switch_symbol"),
        ("strategy", "s1", "kill_switch_strategy"),
        ("track", "paper", "kill_switch_track"),
    ],
)
def test_operator_kill_switch_then_blocker_in_wall_time_with_remaining_and_cleared_on_release(
    scope: str, target: str, code: str
) -> None:
    engine, clock = make_engine()
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON, scope, target, duration_s=600))
    b = only(engine)
    assert (b.code, b.scope, b.target, b.domain) == (code, scope, target, TimeDomain.WALL)
    assert b.until_ns == NOW + 600 * S and "operator:alice" in b.detail and "test" in b.detail
    report = engine.opening_report()
    assert b.remaining_ns(report.market_ns, report.wall_ns) == 600 * S
    clock.advance(NOW + 100 * S)
    assert engine.opening_report().blockers[0].remaining_ns(NOW, NOW + 100 * S) == 500 * S
    assert report.blocks("s1", "paper", ETH) == (b,)
    assert report.blocks("other", "live", BTC) == (() if scope != "global" else (b,))
    engine.on_control(control(ControlCommand.KILL_SWITCH_OFF, scope, target, ts=NOW + 100 * S))
    assert engine.opening_report().allowed


def test_volatility_breaker_then_its_own_code_in_market_time_until_the_halt_ends() -> None:
    engine, clock = make_engine(RiskConfig(vol_breaker_mode=BreakerMode.RANGE))
    engine.on_mark(bar(BTC, 30_000.0, open_=30_000.0, high=32_400.0, low=29_400.0))
    b = only(engine)
    assert (b.code, b.scope, b.domain, b.until_ns) == ("volatility_breaker", "global", TimeDomain.MARKET, NOW + 60 * S)
    assert "range 0.1000 > 0.0700" in b.detail and "risk:volatility_breaker" in b.detail
    assert b.remaining_ns(NOW + 45 * S, 0) == 15 * S
    clock.advance(NOW + 60 * S)
    assert engine.opening_report().allowed


@pytest.mark.parametrize(
    ("kwargs", "code", "until"),
    [
        ({"drawdown": 0.13}, "max_drawdown", None),
        ({"drawdown": 0.11}, "drawdown_near_limit", None),
        ({"intraday": 0.06}, "intraday_drawdown_halt", "next_day"),
        ({"daily_return": -0.04}, "daily_loss_limit", "next_day"),
    ],
)
def test_limit_in_force_then_account_blocker_with_its_end(
    kwargs: dict[str, float], code: str, until: str | None
) -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(**kwargs))
    b = only(engine)
    day_start = NOW - NOW % DAY
    assert (b.code, b.scope, b.target, b.domain) == (code, "account", "*", TimeDomain.MARKET)
    assert b.until_ns == (day_start + DAY if until else None)
    if until:
        assert b.remaining_ns(NOW, NOW) == day_start + DAY - NOW == 21 * H + 30 * 60 * S
    assert code in engine.pauses()


def test_drawdown_warn_tier_then_no_blocker_it_only_shrinks() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(drawdown=0.09))
    assert engine.opening_report().allowed


def test_account_consecutive_losses_then_blocker_until_the_cooldown_ends() -> None:
    engine, clock = make_engine(RiskConfig(consecutive_loss_cooldown_ns=2 * H))
    engine.on_portfolio(state(losses=5))
    b = only(engine)
    assert b.code == "consecutive_loss_limit" and b.until_ns is None and "next opening order" in b.detail
    engine.on_intent(intent())  # the pause starts
    b = only(engine)
    assert (b.until_ns, b.remaining_ns(NOW, NOW)) == (NOW + 2 * H, 2 * H)
    clock.advance(NOW + 2 * H)
    assert engine.opening_report().allowed


def test_order_rate_window_full_then_blocker_until_the_oldest_order_leaves_it() -> None:
    engine, clock = make_engine(RiskConfig(max_orders_per_window=3, order_rate_window_ns=60 * S))
    for dt in (0, 10, 20):
        clock.advance(NOW + dt * S)
        engine.on_intent(intent(qty=0.01))
    b = only(engine)
    assert (b.code, b.until_ns, b.domain) == ("order_rate_limit", NOW + 60 * S, TimeDomain.MARKET)
    assert b.remaining_ns(NOW + 20 * S, 0) == 40 * S
    clock.advance(NOW + 60 * S)
    assert engine.opening_report().allowed
    assert engine.on_intent(intent(qty=0.01)).verdict is RiskVerdict.APPROVED  # the report agreed with the rule


def test_several_blockers_then_all_listed_in_reason_order() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(drawdown=0.13, daily_return=-0.05))
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON, "symbol", ETH))
    assert codes(engine) == ["kill_switch_symbol", "max_drawdown", "daily_loss_limit"]
    report = engine.opening_report()
    assert not report.allowed and [b.code for b in report.blocks("s1", "paper", BTC)] == [
        "max_drawdown",
        "daily_loss_limit",
    ]


# ---------------------------------------------------------------------------
# Consecutive losses per strategy
# ---------------------------------------------------------------------------


def test_strategy_losing_streak_then_only_that_strategy_paused_until_cooldown_ends() -> None:
    engine, clock = make_engine(RiskConfig(strategy_consecutive_loss_limit=2, strategy_consecutive_loss_cooldown_ns=H))
    engine.on_round_trip("s1", lost=True)
    engine.on_round_trip("s2", lost=True)
    assert engine.opening_report().allowed and engine.strategy_losses("s1") == 1
    engine.on_round_trip("s1", lost=True)
    b = only(engine)
    assert (b.code, b.scope, b.target, b.until_ns) == ("strategy_consecutive_loss_limit", "strategy", "s1", NOW + H)
    d = engine.on_intent(intent(strategy="s1"))
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.STRATEGY_CONSECUTIVE_LOSS_LIMIT}
    assert engine.on_intent(intent(strategy="s2")).verdict is RiskVerdict.APPROVED  # its own count: 1
    closing = engine.on_intent(intent(Side.SELL, strategy="s1"))  # it only closes what is in flight: passes
    assert closing.verdict is RiskVerdict.APPROVED
    clock.advance(NOW + H)
    engine.on_mark(bar(BTC, 30_000.0, open_time=NOW))
    assert engine.opening_report().allowed
    assert engine.on_intent(intent(strategy="s1")).verdict is RiskVerdict.APPROVED


def test_strategy_win_then_its_streak_starts_afresh() -> None:
    engine, _ = make_engine(RiskConfig(strategy_consecutive_loss_limit=2))
    engine.on_round_trip("s1", lost=True)
    engine.on_round_trip("s1", lost=False)
    engine.on_round_trip("s1", lost=True)
    assert engine.opening_report().allowed and engine.strategy_losses("s1") == 1


def test_strategy_limit_off_by_default_then_losses_counted_but_never_pause() -> None:
    engine, _ = make_engine()
    for _ in range(10):
        engine.on_round_trip("s1", lost=True)
    assert engine.opening_report().allowed and engine.strategy_losses("s1") == 10


def test_strategy_limit_relaxed_by_signed_set_limit_then_its_pauses_released_and_audited() -> None:
    engine, _ = make_engine(RiskConfig(strategy_consecutive_loss_limit=1))
    engine.on_round_trip("s1", lost=True)
    assert codes(engine) == ["strategy_consecutive_loss_limit"]
    audit = engine.on_control(control(ControlCommand.SET_LIMIT, name="strategy_consecutive_loss_limit", value=3))
    assert audit.reason == "applied" and any(
        "released the strategy_consecutive_loss_limit pause" in c for c in audit.changes
    )
    assert engine.opening_report().allowed


def _fill_bar(open_time: int, price: float, close: float | None = None) -> Bar:
    return builders.bar(
        symbol=BTC,
        open_time=open_time,
        timeframe=Timeframe.H1,
        open=price,
        close=price if close is None else close,
        volume=1e6,
    )


def test_core_round_trips_then_credited_to_the_strategy_that_opened_them() -> None:
    """Through the core: a paper position the sizer opened from a signal and the risk engine's stop-loss
    exit (strategy ``risk-protect``) closed at a loss counts for the sizer; at its limit the sizer is
    paused, in market time from the bar that filled the close."""
    risk = RiskConfig(
        strategy_consecutive_loss_limit=1, strategy_consecutive_loss_cooldown_ns=3 * H, allowed_symbols=(BTC,)
    )
    core = TradingCore(TradingConfig(risk=risk), KEYRING)
    sizer = core.config.strategy.strategy_id
    t = NOW - NOW % H
    core.on_bar(_fill_bar(t - H, 30_000.0))
    step = core.on_signal(builders.signal(score=0.9, symbol=BTC, ts=t, expected_return=0.02))
    assert step.sizing is not None and step.sizing.intent is not None
    core.on_bar(_fill_bar(t, 30_000.0, 29_000.0))  # bought at the open; the close is 3.3 % lower: stop-loss exit
    assert core.portfolio_state().quantity(BTC) > 0
    core.on_bar(_fill_bar(t + H, 29_000.0))  # the exit fills: a losing round trip
    assert core.portfolio_state().quantity(BTC) == 0.0 and core.portfolio_state().losing_trades == 1
    assert core.risk.strategy_losses(sizer) == 0  # reached the limit of 1: paused, then counted afresh
    assert core.risk.strategy_losses(core.config.risk.protective_strategy_id) == 0  # the closer is not charged
    (b,) = core.opening_report().blockers
    assert (b.code, b.target, b.until_ns) == ("strategy_consecutive_loss_limit", sizer, t + 2 * H + 3 * H)
    record = core.opening_update()
    assert isinstance(record, OpeningStatus) and not record.allowed
    assert record.blocker_codes == ("strategy_consecutive_loss_limit",) and record.blocker_targets == (sizer,)
    assert record.blocker_remaining_ns == (3 * H,) and record.blocker_domains == ("market",)
    assert codec_for(OpeningStatus).decode(codec_for(OpeningStatus).encode(record)) == record
    assert core.opening_update() is None  # unchanged: nothing new to publish


def test_core_opening_update_then_published_on_change_only() -> None:
    core = TradingCore(TradingConfig(), KEYRING)
    first = core.opening_update()
    assert first is None  # no input yet: no time to stamp it with
    core.on_bar(_fill_bar(NOW - NOW % H - 2 * H, 30_000.0))
    allowed = core.opening_update()
    assert allowed is not None and allowed.allowed and allowed.blocker_codes == ()
    core.on_bar(_fill_bar(NOW - NOW % H - H, 30_000.0))
    assert core.opening_update() is None  # still allowed, only time moved
    step = core.on_control(control(ControlCommand.KILL_SWITCH_ON, "global", "*", ts=NOW), NOW)
    assert step.audit is not None and step.audit.reason == "applied"
    halted = core.opening_update()
    assert halted is not None and not halted.allowed and halted.blocker_codes == ("kill_switch_global",)
    assert halted.blocker_domains == ("wall",) and halted.blocker_until_ns == (None,)
    assert halted.blocker_scopes == ("global",) and "test" in halted.blocker_details[0]
    core.on_control(control(ControlCommand.KILL_SWITCH_OFF, "global", "*", ts=NOW + S), NOW + S)
    cleared = core.opening_update()
    assert cleared is not None and cleared.allowed


def test_opening_record_with_mismatched_arrays_then_refused_on_decode() -> None:
    core = TradingCore(TradingConfig(), KEYRING)
    core.on_bar(_fill_bar(NOW - NOW % H - H, 30_000.0))
    core.on_control(control(ControlCommand.KILL_SWITCH_ON, "symbol", BTC, ts=NOW), NOW)
    rec = core.opening_update()
    assert rec is not None
    codec = codec_for(OpeningStatus)
    bad = dataclasses.replace(rec, blocker_domains=())
    with pytest.raises(ValueError, match="differ in length"):
        codec.decode(codec.encode(bad))
    with pytest.raises(ValueError, match="allowed"):
        codec.decode(codec.encode(dataclasses.replace(rec, allowed=True)))
    assert KillScope.SYMBOL.value in rec.blocker_scopes
