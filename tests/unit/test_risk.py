"""Risk engine: every rule with its reason code, each drawdown tier, each
kill-switch scope, the volatility breaker, protective exits, and signed
control (applied only when authentic, audited always)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType

import pytest

from agents.clock import EventClock
from agents.control.signing import AuditOutcome, ControlVerifier, Keyring, VerifyReason, new_control_event
from agents.portfolio.engine import PortfolioState, Position
from agents.risk.config import BreakerMode, RiskConfig
from agents.risk.engine import ControlReason, RiskEngine, RiskReason
from agents.risk.killswitch import KillScope, KillSwitchBoard
from tests import builders
from topics.records import (
    Bar,
    ControlCommand,
    ControlEvent,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Side,
    Timeframe,
)
from topics.schema import JsonScalar, codec_for
from topics.units import NS_PER_HOUR as H
from topics.units import NS_PER_SECOND as S

T0 = 1_609_459_200_000_000_000  # 2021-01-01 00:00 UTC
NOW = T0 + 2 * H + 30 * 60 * S  # 02:30 UTC
BTC, ETH = "BTC/USDT", "ETH/USDT"
KEYRING = Keyring({"ops1": b"k" * 40})

_signal_ids = builders.Numbered("sig-")


def make_engine(config: RiskConfig | None = None) -> tuple[RiskEngine, EventClock]:
    clock = EventClock(NOW)
    engine = RiskEngine(config or RiskConfig(), clock, ControlVerifier(KEYRING))
    for symbol, price in ((BTC, 30_000.0), (ETH, 1_000.0)):
        engine.on_mark(bar(symbol, price))
    engine.on_portfolio(PortfolioState.initial(100_000.0, NOW))
    return engine, clock


def bar(
    symbol: str,
    close: float,
    *,
    open_: float | None = None,
    high: float | None = None,
    low: float | None = None,
    open_time: int = NOW - H,
    tf: Timeframe = Timeframe.H1,
) -> Bar:
    return builders.bar(
        symbol=symbol,
        open_time=open_time,
        timeframe=tf,
        open=close if open_ is None else open_,
        high=high,
        low=low,
        close=close,
        volume=1_000.0,
    )


def intent(
    side: Side = Side.BUY,
    qty: float = 0.1,
    *,
    symbol: str = BTC,
    strategy: str = "s1",
    track: str = "paper",
    reduce_only: bool = False,
    limit_price: float | None = None,
) -> OrderIntent:
    return builders.intent(
        side=side,
        quantity=qty,
        symbol=symbol,
        strategy_id=strategy,
        track=track,
        reduce_only=reduce_only,
        limit_price=limit_price,
        signal_event_id=_signal_ids(),
        ts=NOW,
    )


def state(
    *,
    drawdown: float = 0.0,
    intraday: float = 0.0,
    daily_return: float = 0.0,
    losses: int = 0,
    positions: dict[str, tuple[float, float]] | None = None,
    as_of: int = NOW,
) -> PortfolioState:
    pos = {
        sym: Position(
            symbol=sym,
            quantity=q,
            avg_price=avg,
            mark_price=avg,
            mark_ts_ns=as_of,
            realized_pnl=0.0,
            fees=0.0,
            opened_at_ns=as_of - H,
        )
        for sym, (q, avg) in (positions or {}).items()
    }
    return dataclasses.replace(
        PortfolioState.initial(100_000.0, as_of),
        drawdown=drawdown,
        intraday_drawdown=intraday,
        daily_return=daily_return,
        consecutive_losses=losses,
        positions=MappingProxyType(pos),
    )


_nonce = 0


def control(
    cmd: ControlCommand,
    scope: str = "global",
    target: str = "*",
    *,
    ts: int = NOW,
    keyring: Keyring = KEYRING,
    param_map: dict[str, JsonScalar] | None = None,
    **params: JsonScalar,
) -> ControlEvent:
    global _nonce
    params = {**(param_map or {}), **params}
    _nonce += 1
    return new_control_event(
        command=cmd,
        scope=scope,
        target=target,
        params=params,
        reason="test",
        operator="alice",
        key_id="ops1",
        nonce=f"n{_nonce}",
        ts_event=ts,
        ts_init=ts,
        expires_at=ts + 60 * S,
        keyring=keyring,
    )


def reasons(decision: RiskDecision) -> set[str]:
    return set(decision.reasons)


# ---------------------------------------------------------------------------
# Defaults and the clean path
# ---------------------------------------------------------------------------


def test_default_config_then_matches_design_md_risk_defaults() -> None:
    cfg = RiskConfig()
    assert (cfg.max_drawdown, cfg.drawdown_warn, cfg.drawdown_near_limit) == (0.12, 0.08, 0.10)
    assert (cfg.stop_loss, cfg.take_profit, cfg.intraday_drawdown_halt) == (0.018, 0.036, 0.05)
    assert cfg.vol_thresholds["BTC"] == 0.05 and cfg.vol_thresholds["ETH"] == 0.06
    assert cfg.vol_breaker_mode is BreakerMode.RETURN and cfg.vol_halt_ns == 60 * S
    assert cfg.vol_hour_multipliers == (1.4,) * 8 + (1.0,) * 9 + (1.2,) * 7
    assert cfg.config_hash() == RiskConfig().config_hash()
    assert cfg.config_hash() != RiskConfig(max_drawdown=0.11).config_hash()


def test_invalid_tier_order_then_config_refused() -> None:
    with pytest.raises(ValueError, match="drawdown tiers"):
        RiskConfig(drawdown_warn=0.11)


def test_clean_intent_then_approved_with_no_reasons() -> None:
    engine, _ = make_engine()
    it = intent()
    d = engine.on_intent(it)
    assert d.verdict is RiskVerdict.APPROVED and d.approved_quantity == 0.1 and d.reasons == ()
    assert d.intent_event_id == it.event_id and d.causation_id == it.event_id
    assert codec_for(RiskDecision).decode(codec_for(RiskDecision).encode(d)) == d


def test_redelivered_intent_then_same_decision_and_counted_once() -> None:
    engine, _ = make_engine(RiskConfig(max_orders_per_window=1))
    it = intent()
    first = engine.on_intent(it)
    assert engine.on_intent(it) == first
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED  # the rate window holds one


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_zero_quantity_then_rejected_invalid_quantity() -> None:
    engine, _ = make_engine()
    d = engine.on_intent(intent(qty=0.0))
    assert d.verdict is RiskVerdict.REJECTED and RiskReason.INVALID_QUANTITY in reasons(d)


@pytest.mark.parametrize("qty", [float("nan"), -1.0, float("inf")])
def test_nan_or_negative_quantity_built_in_process_then_rejected(qty: float) -> None:
    engine, _ = make_engine()
    it = dataclasses.replace(intent(), quantity=qty)
    d = engine.on_intent(it)
    assert d.verdict is RiskVerdict.REJECTED and d.requested_quantity == 0.0
    assert RiskReason.INVALID_QUANTITY in reasons(d)


def test_unknown_symbol_then_rejected_with_every_reason() -> None:
    engine, _ = make_engine()
    d = engine.on_intent(intent(symbol="DOGE/USDT"))
    assert d.verdict is RiskVerdict.REJECTED
    assert reasons(d) == {RiskReason.UNKNOWN_SYMBOL, RiskReason.NO_MARKET_PRICE}


def test_limit_price_far_from_market_then_rejected() -> None:
    engine, _ = make_engine()
    d = engine.on_intent(intent(limit_price=40_000.0))
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.PRICE_FAR_FROM_MARKET}
    assert engine.on_intent(intent(limit_price=30_300.0)).verdict is RiskVerdict.APPROVED


def test_no_portfolio_state_yet_then_everything_rejected() -> None:
    engine = RiskEngine(RiskConfig(), EventClock(NOW), ControlVerifier(KEYRING))
    engine.on_mark(bar(BTC, 30_000.0))
    d = engine.on_intent(intent())
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.NO_PORTFOLIO_STATE}


def test_mark_older_than_max_age_then_rejected_stale() -> None:
    engine, clock = make_engine()
    clock.advance(NOW + 4 * H)
    d = engine.on_intent(intent())
    assert reasons(d) == {RiskReason.STALE_MARKET_PRICE}


# ---------------------------------------------------------------------------
# Kill switch
# ---------------------------------------------------------------------------


def test_global_kill_switch_then_every_intent_rejected_and_after_release_none() -> None:
    engine, clock = make_engine()
    engine.on_portfolio(state(positions={BTC: (1.0, 30_000.0)}))
    audit = engine.on_control(control(ControlCommand.KILL_SWITCH_ON))
    assert audit.outcome is AuditOutcome.ACCEPTED
    flow = [
        intent(side, 0.01, symbol=sym, strategy=strat, track=track)
        for side in Side
        for sym in (BTC, ETH)
        for strat in ("s1", "s2")
        for track in ("paper", "live")
    ]
    flow.append(intent(Side.SELL, 0.5, reduce_only=True))  # an exit is an order too
    decisions = [engine.on_intent(i) for i in flow]
    assert all(d.verdict is RiskVerdict.REJECTED and d.approved_quantity == 0.0 for d in decisions)
    assert all(RiskReason.KILL_SWITCH_GLOBAL in reasons(d) for d in decisions)
    clock.advance(NOW + S)
    released = engine.on_control(control(ControlCommand.KILL_SWITCH_OFF, ts=NOW + S))
    assert released.outcome is AuditOutcome.ACCEPTED and released.reason == ControlReason.APPLIED
    after = [engine.on_intent(intent(Side.BUY, 0.01, symbol=sym)) for sym in (BTC, ETH)]
    assert all(d.verdict is RiskVerdict.APPROVED for d in after)


def test_kill_switch_with_duration_then_orders_flow_after_expiry() -> None:
    engine, clock = make_engine()
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON, duration_s=60))
    status = engine.opening_status("s1", "paper", BTC)
    assert not status.allowed and status.until_ns == NOW + 60 * S
    assert "global:*" in status.reasons[0]
    clock.advance(NOW + 59 * S)
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED
    clock.advance(NOW + 60 * S)
    assert engine.opening_status("s1", "paper", BTC).allowed
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED


@pytest.mark.parametrize(
    ("scope", "target", "blocked", "free", "reason"),
    [
        ("track", "live", ("s1", "live", BTC), ("s1", "paper", BTC), RiskReason.KILL_SWITCH_TRACK),
        ("strategy", "s2", ("s2", "paper", BTC), ("s1", "paper", BTC), RiskReason.KILL_SWITCH_STRATEGY),
        ("symbol", ETH, ("s1", "paper", ETH), ("s1", "paper", BTC), RiskReason.KILL_SWITCH_SYMBOL),
    ],
)
def test_scoped_kill_switch_then_only_its_scope_blocked(
    scope: str, target: str, blocked: tuple[str, str, str], free: tuple[str, str, str], reason: RiskReason
) -> None:
    engine, _ = make_engine()
    assert engine.on_control(control(ControlCommand.KILL_SWITCH_ON, scope, target)).outcome is AuditOutcome.ACCEPTED
    hit = engine.on_intent(intent(qty=0.01, strategy=blocked[0], track=blocked[1], symbol=blocked[2]))
    miss = engine.on_intent(intent(qty=0.01, strategy=free[0], track=free[1], symbol=free[2]))
    assert hit.verdict is RiskVerdict.REJECTED and reasons(hit) == {reason}
    assert miss.verdict is RiskVerdict.APPROVED


def test_kill_switch_allowing_reduce_only_then_exit_passes_and_opening_blocked() -> None:
    engine, _ = make_engine(RiskConfig(kill_switch_allows_reduce_only=True))
    engine.on_portfolio(state(positions={BTC: (0.5, 30_000.0)}))
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON))
    flip = engine.on_intent(intent(Side.SELL, 0.8))
    assert flip.verdict is RiskVerdict.REDUCED and flip.approved_quantity == pytest.approx(0.5)
    assert reasons(flip) == {RiskReason.KILL_SWITCH_GLOBAL}
    assert engine.on_intent(intent(Side.BUY, 0.1)).verdict is RiskVerdict.REJECTED
    # The approved exit is in flight: a second exit would open a short, so it is blocked too.
    again = engine.on_intent(intent(Side.SELL, 0.5, reduce_only=True))
    assert again.verdict is RiskVerdict.REJECTED


def test_board_same_setter_reengaged_then_expiry_only_extends() -> None:
    board = KillSwitchBoard()
    board.engage(KillScope.GLOBAL, "*", reason="a", set_by="x", now_ns=0, expires_at_ns=100)
    board.engage(KillScope.GLOBAL, "*", reason="b", set_by="x", now_ns=10, expires_at_ns=50)
    (switch,) = board.active(20)
    assert switch.expires_at_ns == 100 and switch.reason == "b"
    board.engage(KillScope.GLOBAL, "*", reason="human", set_by="op", now_ns=20)
    status = board.opening_status("s", "t", BTC, 30)
    assert not status.allowed and status.until_ns is None  # one lasts until released
    assert len(board.release(KillScope.GLOBAL, "ignored-for-global", 30)) == 2
    assert board.opening_status("s", "t", BTC, 30).allowed


# ---------------------------------------------------------------------------
# Drawdown tiers and loss limits
# ---------------------------------------------------------------------------


def test_drawdown_at_warn_tier_then_opening_halved_with_reason() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(drawdown=0.085))
    d = engine.on_intent(intent(qty=0.2))
    assert d.verdict is RiskVerdict.REDUCED and d.approved_quantity == pytest.approx(0.1)
    assert reasons(d) == {RiskReason.DRAWDOWN_WARN}


@pytest.mark.parametrize(
    ("drawdown", "reason"), [(0.10, RiskReason.DRAWDOWN_NEAR_LIMIT), (0.12, RiskReason.MAX_DRAWDOWN)]
)
def test_drawdown_at_near_limit_or_max_then_reduce_only(drawdown: float, reason: RiskReason) -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(drawdown=drawdown, positions={BTC: (0.3, 30_000.0)}))
    opening = engine.on_intent(intent(Side.BUY, 0.1))
    assert opening.verdict is RiskVerdict.REJECTED and reasons(opening) == {reason}
    exit_ = engine.on_intent(intent(Side.SELL, 0.3))
    assert exit_.verdict is RiskVerdict.APPROVED and exit_.reasons == ()


@pytest.mark.parametrize(
    ("daily_return", "intraday", "reason"),
    [(-0.031, 0.0, RiskReason.DAILY_LOSS_LIMIT), (0.0, 0.05, RiskReason.INTRADAY_DRAWDOWN_HALT)],
)
def test_daily_loss_or_intraday_halt_then_opening_rejected(
    daily_return: float, intraday: float, reason: RiskReason
) -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(daily_return=daily_return, intraday=intraday))
    d = engine.on_intent(intent())
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {reason}


def test_consecutive_loss_limit_then_paused_for_cooldown_then_resumes() -> None:
    engine, clock = make_engine(RiskConfig(consecutive_loss_cooldown_ns=2 * H))
    engine.on_portfolio(state(losses=4))
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED
    engine.on_portfolio(state(losses=5))
    d = engine.on_intent(intent())
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.CONSECUTIVE_LOSS_LIMIT}
    clock.advance(NOW + 2 * H)
    for sym, price in ((BTC, 30_000.0),):
        engine.on_mark(bar(sym, price, open_time=NOW + H))
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED  # cool-down served
    engine.on_portfolio(state(losses=6, as_of=NOW + 2 * H))
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED  # the streak grew: pause again


def test_reduce_only_intent_that_would_open_then_rejected() -> None:
    engine, _ = make_engine()
    d = engine.on_intent(intent(Side.BUY, 0.1, reduce_only=True))
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.REDUCE_ONLY_VIOLATION}


# ---------------------------------------------------------------------------
# Notional and rate
# ---------------------------------------------------------------------------


def test_order_above_max_notional_then_cut_to_cap() -> None:
    engine, _ = make_engine()
    d = engine.on_intent(intent(qty=1.0))  # 30,000 > 25,000
    assert d.verdict is RiskVerdict.REDUCED
    assert d.approved_quantity == pytest.approx(25_000 / 30_000)
    assert reasons(d) == {RiskReason.MAX_ORDER_NOTIONAL}


def test_position_near_symbol_cap_then_opening_cut_to_room_and_rejected_at_cap() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(positions={BTC: (1.5, 30_000.0)}))  # 45,000 of 50,000
    d = engine.on_intent(intent(qty=0.5))
    assert d.verdict is RiskVerdict.REDUCED and reasons(d) == {RiskReason.MAX_SYMBOL_NOTIONAL}
    assert d.approved_quantity == pytest.approx(5_000 / 30_000)
    engine.on_portfolio(state(positions={BTC: (50_000 / 30_000, 30_000.0)}))
    full = engine.on_intent(intent(qty=0.1))
    assert full.verdict is RiskVerdict.REJECTED and reasons(full) == {RiskReason.MAX_SYMBOL_NOTIONAL}


def test_order_rate_above_window_limit_then_rejected_until_window_passes() -> None:
    engine, clock = make_engine(RiskConfig(max_orders_per_window=3, order_rate_window_ns=60 * S))
    assert [engine.on_intent(intent(qty=0.01)).verdict for _ in range(3)] == [RiskVerdict.APPROVED] * 3
    d = engine.on_intent(intent(qty=0.01))
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.ORDER_RATE_LIMIT}
    clock.advance(NOW + 60 * S)
    assert engine.on_intent(intent(qty=0.01)).verdict is RiskVerdict.APPROVED


def test_several_rules_at_once_then_every_reason_listed_in_stable_order() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(drawdown=0.13, daily_return=-0.05, intraday=0.06, losses=9))
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON, "strategy", "s1"))
    d = engine.on_intent(intent(qty=0.1))
    assert d.verdict is RiskVerdict.REJECTED
    assert d.reasons == (
        RiskReason.KILL_SWITCH_STRATEGY,
        RiskReason.MAX_DRAWDOWN,
        RiskReason.INTRADAY_DRAWDOWN_HALT,
        RiskReason.DAILY_LOSS_LIMIT,
        RiskReason.CONSECUTIVE_LOSS_LIMIT,
    )


def _update(it: OrderIntent, status: OrderStatus, qty: float, filled: float) -> OrderUpdate:
    return builders.update(
        it,
        status=status,
        quantity=qty,
        filled=filled,
        order_type=OrderType.MARKET,
        avg_fill_price=30_000.0 if filled else None,
        ts=NOW,
    )


def test_exit_in_flight_then_second_exit_rejected_and_fill_releases_it() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(positions={BTC: (0.4, 30_000.0)}))
    (stop,) = engine.on_mark(bar(BTC, 29_000.0, open_time=NOW - H)).exits
    assert engine.on_intent(stop.intent).verdict is RiskVerdict.APPROVED
    assert engine.exposure(BTC) == pytest.approx(0.0)
    late = engine.on_intent(intent(Side.SELL, 0.4, reduce_only=True))  # the strategy's own exit, same bar
    assert late.verdict is RiskVerdict.REJECTED and reasons(late) == {RiskReason.REDUCE_ONLY_VIOLATION}
    # The fill lands: the portfolio is flat and the order has ended.
    engine.on_execution(_update(stop.intent, OrderStatus.FILLED, 0.4, 0.4))
    engine.on_portfolio(state(positions={}))
    assert engine.exposure(BTC) == 0.0
    assert engine.on_intent(intent(Side.BUY, 0.1)).verdict is RiskVerdict.APPROVED


def test_partial_fills_and_cancel_then_exposure_counts_each_fill_once() -> None:
    engine, clock = make_engine()
    it = intent(Side.BUY, 0.5)
    engine.on_intent(it)
    engine.on_execution(_update(it, OrderStatus.ACKNOWLEDGED, 0.5, 0.0))
    engine.on_execution(_update(it, OrderStatus.PARTIALLY_FILLED, 0.5, 0.2))
    engine.on_portfolio(state(positions={BTC: (0.2, 30_000.0)}))
    assert engine.exposure(BTC) == pytest.approx(0.5)
    engine.on_execution(_update(it, OrderStatus.ACKNOWLEDGED, 0.5, 0.0))  # an older update redelivered late
    assert engine.exposure(BTC) == pytest.approx(0.5)
    engine.on_execution(_update(it, OrderStatus.CANCELLED, 0.5, 0.2))
    assert engine.exposure(BTC) == pytest.approx(0.2)
    engine.on_intent(intent(Side.BUY, 0.1))
    assert engine.exposure(BTC) == pytest.approx(0.3)
    clock.advance(NOW + 7 * H)  # no update ever ends it: after the TTL it stops counting
    assert engine.exposure(BTC) == pytest.approx(0.2)


# ---------------------------------------------------------------------------
# Marks: protective exits and the volatility breaker
# ---------------------------------------------------------------------------


def test_long_below_stop_loss_then_one_reduce_only_exit_tagged_stop_loss() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(positions={BTC: (0.4, 30_000.0)}))
    out = engine.on_mark(bar(BTC, 30_000 * (1 - 0.0185), open_time=NOW - H))
    (exit_,) = out.exits
    assert exit_.reason is RiskReason.STOP_LOSS
    it = exit_.intent
    assert it.side is Side.SELL and it.quantity == 0.4 and it.reduce_only and it.target_position == 0.0
    assert it.strategy_id == "risk-protect"
    # The same position on the next bar: no second exit.
    assert engine.on_mark(bar(BTC, 29_000.0, open_time=NOW)).exits == ()
    d = engine.on_intent(it)
    assert d.verdict is RiskVerdict.APPROVED and d.reasons == (RiskReason.STOP_LOSS,)


def test_short_above_take_profit_then_buy_back_exit() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(positions={ETH: (-2.0, 1_000.0)}))
    assert engine.on_mark(bar(ETH, 970.0)).exits == ()  # +3 %: not yet
    (exit_,) = engine.on_mark(bar(ETH, 964.0, open_time=NOW)).exits
    assert exit_.reason is RiskReason.TAKE_PROFIT
    assert exit_.intent.side is Side.BUY and exit_.intent.quantity == 2.0


def test_btc_bar_range_above_threshold_in_range_mode_then_global_kill_switch_for_halt_time() -> None:
    engine, clock = make_engine(RiskConfig(vol_breaker_mode=BreakerMode.RANGE))
    # range 10 % at 01:30 UTC (x1.4: threshold 7 %), no return at all
    out = engine.on_mark(bar(BTC, 30_000.0, open_=30_000.0, high=32_400.0, low=29_400.0))
    (switch,) = out.engaged
    assert switch.scope is KillScope.GLOBAL and switch.expires_at_ns == NOW + 60 * S
    assert "volatility_breaker" in switch.reason and "range 0.1000 > 0.0700" in switch.reason
    d = engine.on_intent(intent(symbol=ETH, qty=1.0))
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.KILL_SWITCH_GLOBAL}
    clock.advance(NOW + 60 * S)
    engine.on_mark(bar(ETH, 1_000.0, open_time=NOW))
    assert engine.on_intent(intent(symbol=ETH, qty=1.0)).verdict is RiskVerdict.APPROVED


@pytest.mark.parametrize(
    ("symbol", "range_", "hour", "trips"),
    [
        (ETH, 0.059, 9, False),  # ETH's threshold is 6 % (08-16 UTC: x1.0)
        (ETH, 0.061, 9, True),
        (BTC, 0.059, 17, False),  # 17-23 UTC: x1.2 -> 6 %
        (BTC, 0.061, 17, True),
        ("XRP/USDT", 0.075, 9, False),  # the default 8 %
    ],
)
def test_breaker_range_mode_thresholds_per_symbol_and_hour_then_trip_as_configured(
    symbol: str, range_: float, hour: int, trips: bool
) -> None:
    engine, _ = make_engine(RiskConfig(vol_breaker_mode=BreakerMode.RANGE))
    out = engine.on_mark(bar(symbol, 100.0, open_=100.0, high=100.0 * (1 + range_), low=100.0, open_time=T0 + hour * H))
    assert bool(out.engaged) is trips


def test_breaker_range_mode_on_4h_bar_then_threshold_scaled_by_sqrt_time() -> None:
    engine, _ = make_engine(RiskConfig(vol_breaker_mode=BreakerMode.RANGE))
    # 00:00 UTC: 5 % x1.4 x sqrt(4) = 14 %
    quiet = bar(BTC, 100.0, open_=100.0, high=113.0, low=100.0, open_time=T0, tf=Timeframe.H4)
    assert engine.on_mark(quiet).engaged == ()
    wild = bar(BTC, 100.0, open_=100.0, high=115.0, low=100.0, open_time=T0 + 4 * H, tf=Timeframe.H4)
    assert len(engine.on_mark(wild).engaged) == 1


# ---------------------------------------------------------------------------
# Control: only authentic commands act; every command is audited
# ---------------------------------------------------------------------------


def test_signed_set_limit_then_applied_and_audited_with_hashes() -> None:
    engine, _ = make_engine()
    before = engine.config.config_hash()
    audit = engine.on_control(control(ControlCommand.SET_LIMIT, name="max_order_notional", value=10_000))
    assert audit.outcome is AuditOutcome.ACCEPTED and audit.reason == ControlReason.APPLIED
    assert audit.changes == ("max_order_notional: 25000.0 -> 10000.0",)
    assert audit.config_hash_before == before != audit.config_hash_after == engine.config.config_hash()
    assert not audit.alert
    d = engine.on_intent(intent(qty=1.0))
    assert d.approved_quantity == pytest.approx(10_000 / 30_000)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"name": "allowed_symbols", "value": 1}, ControlReason.UNKNOWN_LIMIT),
        ({"name": "drawdown_warn", "value": 0.11}, ControlReason.INVALID_VALUE),  # above near-limit
        ({"name": "max_orders_per_window", "value": 2.5}, ControlReason.INVALID_VALUE),
        ({"name": "stop_loss", "value": "big"}, ControlReason.INVALID_VALUE),
        ({"name": "stop_loss"}, ControlReason.INVALID_PARAMS),
    ],
)
def test_bad_set_limit_then_rejected_and_config_unchanged(params: dict[str, JsonScalar], reason: ControlReason) -> None:
    engine, _ = make_engine()
    before = engine.config
    audit = engine.on_control(control(ControlCommand.SET_LIMIT, param_map=params))
    assert audit.outcome is AuditOutcome.REJECTED and audit.reason == reason
    assert engine.config is before and audit.config_hash_after == audit.config_hash_before


def _forged(event: ControlEvent) -> ControlEvent:
    return dataclasses.replace(event, params={"duration_s": 1})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _forged(control(ControlCommand.KILL_SWITCH_ON)), VerifyReason.BAD_SIGNATURE),
        (
            lambda: control(ControlCommand.KILL_SWITCH_ON, keyring=Keyring({"ops1": b"z" * 40})),
            VerifyReason.BAD_SIGNATURE,
        ),
        (lambda: dataclasses.replace(control(ControlCommand.KILL_SWITCH_ON), signature=""), VerifyReason.UNSIGNED),
        (lambda: control(ControlCommand.KILL_SWITCH_ON, ts=NOW - 10 * 60 * S), VerifyReason.EXPIRED),
        (
            lambda: control(ControlCommand.SET_LIMIT, name="max_drawdown", value=0.5, ts=NOW - 10 * 60 * S),
            VerifyReason.EXPIRED,
        ),
    ],
)
def test_forged_unsigned_or_expired_command_then_nothing_changes_and_alerting_audit(
    make: Callable[[], ControlEvent], reason: VerifyReason
) -> None:
    engine, _ = make_engine()
    config = engine.config
    event = make()
    audit = engine.on_control(event)
    assert audit.outcome is AuditOutcome.REJECTED and audit.reason == reason and audit.alert
    assert audit.control_event_id == event.event_id and audit.operator == "alice"
    assert engine.config is config
    assert engine.kill_switches.active(NOW) == ()
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED


def test_replayed_kill_switch_off_then_rejected_and_switch_stays() -> None:
    engine, clock = make_engine()
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON))
    off = control(ControlCommand.KILL_SWITCH_OFF)
    first = engine.on_control(off)
    assert first.outcome is AuditOutcome.ACCEPTED
    clock.advance(NOW + S)
    engine.on_control(control(ControlCommand.KILL_SWITCH_ON, ts=NOW + S))
    replay = engine.on_control(off)
    assert replay.outcome is AuditOutcome.REJECTED and replay.reason == VerifyReason.REPLAYED
    assert replay.audit_id != first.audit_id
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED


def test_rollout_command_at_risk_then_ignored_and_audited() -> None:
    engine, _ = make_engine()
    audit = engine.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "model", "m1"))
    assert audit.outcome is AuditOutcome.IGNORED and audit.reason == ControlReason.NOT_FOR_RISK


def test_kill_switch_with_bad_scope_or_params_then_rejected() -> None:
    engine, _ = make_engine()
    assert (
        engine.on_control(control(ControlCommand.KILL_SWITCH_ON, "planet", "x")).reason == ControlReason.UNKNOWN_SCOPE
    )
    assert engine.on_control(control(ControlCommand.KILL_SWITCH_ON, "track", "")).reason == ControlReason.MISSING_TARGET
    bad = engine.on_control(control(ControlCommand.KILL_SWITCH_ON, duration_s=-5))
    assert bad.reason == ControlReason.INVALID_PARAMS
    assert engine.kill_switches.active(NOW) == ()
