"""Sizing engine: the documented score curve, hysteresis, volatility buckets,
the cost penalty, caps, drawdown tiers, shadow signals and determinism."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

import pytest

from agents.clock import EventClock
from agents.portfolio.engine import PortfolioState, Position
from agents.strategy.config import StrategyConfig
from agents.strategy.engine import SizingAdjustment, SizingReason, StrategyEngine
from tests import builders
from topics.records import OrderIntent, OrderStatus, OrderType, OrderUpdate, Side, Signal
from topics.schema import codec_for
from topics.units import NS_PER_HOUR as H

T0 = 1_609_459_200_000_000_000  # 2021-01-01 00:00 UTC
NOW = T0 + 3 * H  # signals of the 02:00 bar close at 03:00 UTC
BTC, ETH = "BTC/USDT", "ETH/USDT"
PRICES = {BTC: 30_000.0, ETH: 1_000.0}


def make_engine(
    config: StrategyConfig | None = None, *, now: int = NOW, state: PortfolioState | None = None
) -> StrategyEngine:
    engine = StrategyEngine(config or StrategyConfig(), EventClock(now))
    for symbol, price in PRICES.items():
        engine.on_bar(builders.bar(symbol=symbol, open_time=now - H, open=price, volume=1e3, ts_event=now))
    engine.on_portfolio(state or PortfolioState.initial(100_000.0, now))
    return engine


def holding(symbol: str, qty: float, *, drawdown: float = 0.0, equity: float = 100_000.0) -> PortfolioState:
    pos = Position(
        symbol=symbol,
        quantity=qty,
        avg_price=PRICES[symbol],
        mark_price=PRICES[symbol],
        mark_ts_ns=NOW,
        realized_pnl=0.0,
        fees=0.0,
        opened_at_ns=NOW - H,
    )
    return dataclasses.replace(
        PortfolioState.initial(equity, NOW),
        drawdown=drawdown,
        positions=MappingProxyType({symbol: pos} if qty else {}),
    )


_feature_ids = builders.Numbered("fe-")


def signal(score: float, *, symbol: str = BTC, er: float = 0.01, shadow: bool = False, ts: int = NOW) -> Signal:
    return builders.signal(
        score=score,
        symbol=symbol,
        ts=ts,
        model_id="m1",
        model_version="v1",
        expected_return=er,
        shadow=shadow,
        feature_event_id=_feature_ids(),
        lineage_id="lin",
    )


def curve(score: float, gain: float = 2.0) -> float:
    return math.tanh(gain * score) / math.tanh(gain)


def test_score_curve_then_tanh_shape_documented() -> None:
    cfg = StrategyConfig()
    assert cfg.size(0.0) == 0.0 and cfg.size(1.0) == pytest.approx(1.0) and cfg.size(-1.0) == pytest.approx(-1.0)
    assert cfg.size(0.5) == pytest.approx(0.7900, abs=1e-4)  # concave: more than linear
    assert cfg.size(3.0) == pytest.approx(1.0)  # clipped


def test_strong_signal_from_flat_then_buy_intent_sized_by_formula() -> None:
    engine = make_engine()
    sig = signal(0.5)
    decision = engine.on_signal(sig)
    assert decision.reason is SizingReason.ORDER
    it = decision.intent
    assert it is not None
    expected_qty = round(curve(0.5) * 0.20 * 100_000 / 30_000, 8)
    assert it.side is Side.BUY and it.quantity == pytest.approx(expected_qty)
    assert it.target_position == pytest.approx(expected_qty)
    assert it.order_type is OrderType.MARKET and not it.reduce_only
    assert it.causation_id == sig.event_id and it.signal_event_id == sig.event_id
    assert it.correlation_id == sig.correlation_id and it.ts_init == NOW


@pytest.mark.determinism
def test_same_signal_in_two_engines_then_identical_intent_bytes() -> None:
    sig = signal(-0.7, er=-0.01)
    a = make_engine().on_signal(sig).intent
    b = make_engine().on_signal(sig).intent
    assert a is not None and b is not None
    codec = codec_for(OrderIntent)
    assert codec.encode(a) == codec.encode(b)
    assert a.side is Side.SELL


def test_shadow_signal_then_never_an_intent() -> None:
    engine = make_engine()
    decision = engine.on_signal(signal(0.99, shadow=True))
    assert decision.intent is None and decision.reason is SizingReason.SHADOW


def test_duplicate_signal_then_no_second_intent() -> None:
    engine = make_engine()
    sig = signal(0.5)
    assert engine.on_signal(sig).intent is not None
    again = engine.on_signal(sig)
    assert again.intent is None and again.reason is SizingReason.DUPLICATE_SIGNAL


def test_stale_signal_or_no_price_then_skipped() -> None:
    engine = make_engine(now=NOW + 3 * H)
    assert engine.on_signal(signal(0.9)).reason is SizingReason.STALE_SIGNAL
    assert make_engine().on_signal(signal(0.9, symbol="SOL/USDT")).reason is SizingReason.NO_PRICE
    bare = StrategyEngine(StrategyConfig(), EventClock(NOW))
    assert bare.on_signal(signal(0.9)).reason is SizingReason.NO_PORTFOLIO_STATE


def test_score_below_entry_from_flat_then_no_trade() -> None:
    decision = make_engine().on_signal(signal(0.19))
    assert decision.intent is None and decision.reason is SizingReason.BELOW_ENTRY_THRESHOLD


def test_held_long_with_score_between_thresholds_then_kept_not_exited() -> None:
    held = curve(0.10) * 0.2 * 100_000 / 30_000
    engine = make_engine(state=holding(BTC, held))
    decision = engine.on_signal(signal(0.10))  # between exit 0.05 and entry 0.20
    assert decision.intent is None and decision.reason is SizingReason.HOLD


def test_held_long_with_score_below_exit_then_reduce_only_sell_to_flat() -> None:
    engine = make_engine(state=holding(BTC, 0.4))
    decision = engine.on_signal(signal(0.04, er=0.0))  # exits are never cost-penalised
    it = decision.intent
    assert it is not None and it.side is Side.SELL and it.quantity == 0.4 and it.reduce_only
    assert it.target_position == 0.0 and SizingAdjustment.EXIT_HYSTERESIS in decision.adjustments


def test_held_long_with_strong_opposite_score_then_flip_in_one_order() -> None:
    engine = make_engine(state=holding(BTC, 0.4))
    decision = engine.on_signal(signal(-0.6, er=-0.01))
    it = decision.intent
    target = -curve(0.6) * 0.2 * 100_000 / 30_000
    assert it is not None and it.side is Side.SELL and not it.reduce_only
    assert it.quantity == pytest.approx(0.4 - target) and it.target_position == pytest.approx(target)
    assert SizingAdjustment.FLIP in decision.adjustments


def test_edge_below_round_trip_cost_then_no_new_exposure() -> None:
    cfg = StrategyConfig()
    assert cfg.round_trip_cost == pytest.approx(0.0024)  # 2 x (10 + 2) bps
    decision = make_engine(cfg).on_signal(signal(0.8, er=0.0023))
    assert decision.intent is None and decision.reason is SizingReason.EDGE_BELOW_COST
    wrong_way = make_engine(cfg).on_signal(signal(0.8, er=-0.01))  # edge must point the trade's way
    assert wrong_way.reason is SizingReason.EDGE_BELOW_COST
    assert make_engine(cfg).on_signal(signal(0.8, er=0.0024)).intent is not None


def test_flip_with_edge_below_cost_then_only_closes() -> None:
    engine = make_engine(state=holding(BTC, 0.4))
    decision = engine.on_signal(signal(-0.6, er=-0.001))
    it = decision.intent
    assert it is not None and it.quantity == 0.4 and it.target_position == 0.0 and it.reduce_only
    assert SizingAdjustment.COST_PENALTY in decision.adjustments


def test_eth_in_us_open_hour_then_bucket_and_hour_scales_multiply() -> None:
    ts = T0 + 14 * H
    engine = make_engine(now=ts)
    it = engine.on_signal(signal(1.0, symbol=ETH, ts=ts)).intent
    assert it is not None
    assert it.quantity == pytest.approx(round(1.0 * 0.2 * 100_000 * 0.8 * 0.8 / 1_000, 8))


def test_large_equity_then_position_capped_at_symbol_notional() -> None:
    engine = make_engine(state=PortfolioState.initial(10_000_000.0, NOW))
    decision = engine.on_signal(signal(1.0))
    assert decision.intent is not None
    assert decision.intent.quantity == pytest.approx(round(50_000 / 30_000, 8))
    assert SizingAdjustment.POSITION_CAP in decision.adjustments


def test_small_resize_then_skipped_by_rebalance_band() -> None:
    current = curve(0.5) * 0.2 * 100_000 / 30_000
    engine = make_engine(state=holding(BTC, current))
    decision = engine.on_signal(signal(0.55))
    assert decision.intent is None and decision.reason is SizingReason.WITHIN_REBALANCE_BAND


def test_drawdown_warn_then_target_halved() -> None:
    engine = make_engine(state=holding(BTC, 0.0, drawdown=0.09))
    it = engine.on_signal(signal(0.5)).intent
    assert it is not None and it.quantity == pytest.approx(round(curve(0.5) * 0.2 * 100_000 / 30_000 / 2, 8))


def test_drawdown_near_limit_then_no_new_position_and_long_may_only_shrink() -> None:
    flat = make_engine(state=holding(BTC, 0.0, drawdown=0.10)).on_signal(signal(0.9))
    assert flat.intent is None and SizingAdjustment.DRAWDOWN_REDUCE_ONLY in flat.adjustments
    engine = make_engine(state=holding(BTC, 0.2, drawdown=0.10))
    decision = engine.on_signal(signal(0.9))  # wants more: may not add
    assert decision.intent is None and decision.reason is SizingReason.HOLD


def test_drawdown_at_max_then_whole_position_sold() -> None:
    engine = make_engine(state=holding(BTC, 0.2, drawdown=0.12))
    decision = engine.on_signal(signal(0.9))
    it = decision.intent
    assert it is not None and it.side is Side.SELL and it.quantity == 0.2 and it.reduce_only
    assert SizingAdjustment.DRAWDOWN_FLAT in decision.adjustments


def test_invalid_config_then_refused_with_reason() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        StrategyConfig(entry_threshold=0.1, exit_threshold=0.2)
    assert StrategyConfig().config_hash() != StrategyConfig(curve_gain=3.0).config_hash()


def _update(it: OrderIntent, status: OrderStatus, qty: float, filled: float) -> OrderUpdate:
    return builders.update(it, status=status, quantity=qty, filled=filled, ts=NOW)


def test_order_still_in_flight_then_next_signal_does_not_order_it_again() -> None:
    engine = make_engine()
    first = engine.on_signal(signal(0.5)).intent
    assert first is not None
    engine.on_execution(_update(first, OrderStatus.ACKNOWLEDGED, first.quantity, 0.0))
    again = engine.on_signal(signal(0.5))
    assert again.intent is None and again.reason is SizingReason.HOLD
    assert engine.position(BTC) == pytest.approx(first.quantity)


def test_order_rejected_downstream_then_next_signal_orders_again() -> None:
    engine = make_engine()
    first = engine.on_signal(signal(0.5)).intent
    assert first is not None
    engine.on_execution(_update(first, OrderStatus.REJECTED, first.quantity, 0.0))
    assert engine.position(BTC) == 0.0
    second = engine.on_signal(signal(0.5)).intent
    assert second is not None and second.quantity == first.quantity
