"""Sizing engine: a model signal becomes a target position and, when the
position must change, one order intent.

Pure and deterministic: the clock is injected (``ts_init``), state is the
last portfolio snapshot, the last price per symbol and the ids of signals
already handled; no I/O, no randomness. Every signal yields a
:class:`SizingDecision` saying what was done and why, with the intent (if any).

Procedure (parameters in :class:`~agents.strategy.config.StrategyConfig`): skip duplicates,
shadow signals, symbols of a monitor-only track and stale signals; direction with hysteresis
(``entry_threshold`` / ``exit_threshold``); size ``tanh`` x ``max_position_fraction`` x equity x
bucket and hour scales, capped per symbol; drawdown tiers 0.08 / 0.10 / 0.12 shrink,
reduce-only, flat; added exposure needs an edge of at least the round-trip cost; the delta
becomes one market intent unless inside the rebalance band or below ``min_order_notional``.
The current position includes the orders still in flight, so a signal arriving before the
previous fill never orders the same change twice.

Design: docs/trading_engines.md#strategy-engine
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from agents.clock import Clock
from agents.execution.interface import ExecutionRecord, InFlightOrders, client_order_id_for
from agents.portfolio.engine import PortfolioState
from agents.strategy.config import StrategyConfig
from runtime.seen import SeenIds
from topics.records import Bar, OrderIntent, OrderType, Side, Signal
from topics.schema import keyword_constructor
from topics.units import NS_PER_HOUR

__all__ = ["SizingAdjustment", "SizingDecision", "SizingReason", "StrategyEngine"]

_QTY_EPS = 1e-12


class SizingReason(enum.StrEnum):
    """What became of a signal. Stable: metric label."""

    ORDER = "order"
    DUPLICATE_SIGNAL = "duplicate_signal"
    SHADOW = "shadow"
    STALE_SIGNAL = "stale_signal"
    NO_PRICE = "no_price"
    NO_PORTFOLIO_STATE = "no_portfolio_state"
    BELOW_ENTRY_THRESHOLD = "below_entry_threshold"
    HOLD = "hold"
    EDGE_BELOW_COST = "edge_below_cost"
    WITHIN_REBALANCE_BAND = "within_rebalance_band"
    BELOW_MIN_ORDER = "below_min_order"
    #: The signal's model version is registered at a stage that trades no capital
    #: (registered, retired, rolled back): governance took it off the ladder.
    MODEL_NOT_LIVE = "model_not_live"
    #: The symbol is on a monitor-only track (the vc track): scored and recorded, never ordered.
    MONITOR_ONLY_TRACK = "monitor_only_track"
    #: The signal failed verification (unsigned where signatures are required, or a signature that
    #: does not verify): not sized, an alert instead (agents/signals/signing.py).
    SIGNAL_UNAUTHENTICATED = "signal_unauthenticated"


class SizingAdjustment(enum.StrEnum):
    """Modifiers that shaped the target (several may apply)."""

    POSITION_CAP = "position_cap"
    DRAWDOWN_WARN = "drawdown_warn"
    DRAWDOWN_REDUCE_ONLY = "drawdown_reduce_only"
    DRAWDOWN_FLAT = "drawdown_flat"
    COST_PENALTY = "cost_penalty"
    EXIT_HYSTERESIS = "exit_hysteresis"
    FLIP = "flip"
    #: Scaled by the model version's rollout stage (canary: 10 % / 30 % of capital).
    ROLLOUT_FRACTION = "rollout_fraction"


@dataclass(frozen=True, slots=True, kw_only=True)
class SizingDecision:
    signal_event_id: str
    symbol: str
    reason: SizingReason
    #: Target position (signed base quantity); the current one when nothing is traded.
    target_position: float
    current_position: float
    adjustments: tuple[SizingAdjustment, ...]
    intent: OrderIntent | None


#: ``SizingDecision(...)`` without the frozen ``__init__``'s per-field cost (one per signal).
_make_decision = keyword_constructor(SizingDecision)


class StrategyEngine:
    """Signals -> target positions -> order intents, for one strategy id."""

    def __init__(self, config: StrategyConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._portfolio: PortfolioState | None = None
        self._prices: dict[str, tuple[int, float]] = {}
        self._seen: SeenIds[str] = SeenIds(config.max_seen_signals)
        self._in_flight = InFlightOrders(ttl_ns=config.pending_order_ttl_ns)

    # ------------------------------------------------------------------
    # State inputs
    # ------------------------------------------------------------------

    def on_portfolio(self, state: PortfolioState) -> None:
        """Latest portfolio snapshot (older ones by event time are ignored)."""
        if self._portfolio is None or state.as_of_ns >= self._portfolio.as_of_ns:
            self._portfolio = state

    def on_bar(self, bar: Bar) -> None:
        """Last close per symbol: the price targets are converted at."""
        seen = self._prices.get(bar.symbol)
        if seen is None or bar.ts_event >= seen[0]:
            self._prices[bar.symbol] = (bar.ts_event, bar.close)

    def on_execution(self, record: ExecutionRecord) -> None:
        """Order updates of this strategy's intents: what is still in flight."""
        self._in_flight.on_execution(record)

    def position(self, symbol: str) -> float:
        """Portfolio position plus this strategy's orders in flight."""
        held = self._portfolio.quantity(symbol) if self._portfolio is not None else 0.0
        return held + self._in_flight.net(symbol, self.clock.now_ns())

    # ------------------------------------------------------------------
    # Signals
    # ------------------------------------------------------------------

    def on_signal(self, signal: Signal, capital_fraction: float = 1.0) -> SizingDecision:
        """Size one signal. ``capital_fraction`` is the share of capital its model
        version may trade at its rollout stage (1.0 active or ungoverned, 0.1 / 0.3
        canary, 0.0 off the ladder -> ``MODEL_NOT_LIVE``)."""
        cfg = self.config
        now = self.clock.now_ns()
        state = self._portfolio
        current = self.position(signal.symbol)

        def skip(reason: SizingReason, adjustments: tuple[SizingAdjustment, ...] = ()) -> SizingDecision:
            return _make_decision(
                signal_event_id=signal.event_id,
                symbol=signal.symbol,
                reason=reason,
                target_position=current,
                current_position=current,
                adjustments=adjustments,
                intent=None,
            )

        # -- 1. skip outright -------------------------------------------------
        if not self._seen.add(signal.event_id):
            return skip(SizingReason.DUPLICATE_SIGNAL)
        if signal.shadow:
            return skip(SizingReason.SHADOW)
        if signal.symbol in cfg.monitor_only_symbols:
            return skip(SizingReason.MONITOR_ONLY_TRACK)
        if not capital_fraction > 0.0:
            return skip(SizingReason.MODEL_NOT_LIVE)
        if now - signal.ts_event > cfg.max_signal_age_ns:
            return skip(SizingReason.STALE_SIGNAL)
        if state is None:
            return skip(SizingReason.NO_PORTFOLIO_STATE)
        price = self._price(signal.symbol, state)
        if price is None:
            return skip(SizingReason.NO_PRICE)

        # -- 2. direction with hysteresis -------------------------------------------
        adjustments: list[SizingAdjustment] = []
        score = signal.score if math.isfinite(signal.score) else 0.0
        held = 0 if current == 0.0 else (1 if current > 0 else -1)
        if held == 0:
            direction = 0 if abs(score) < cfg.entry_threshold else (1 if score > 0 else -1)
            if direction == 0:
                return skip(SizingReason.BELOW_ENTRY_THRESHOLD)
        elif score * held >= cfg.exit_threshold:
            direction = held
        elif score * held <= -cfg.entry_threshold:
            direction = -held
            adjustments.append(SizingAdjustment.FLIP)
        else:
            direction = 0
            adjustments.append(SizingAdjustment.EXIT_HYSTERESIS)

        # -- 3. size -----------------------------------------------------------------------
        target_notional = 0.0
        if direction != 0:
            hour = (signal.ts_event // NS_PER_HOUR) % 24
            magnitude = abs(cfg.size(score)) * cfg.max_position_fraction * max(state.equity, 0.0)
            magnitude *= cfg.vol_scale(signal.symbol, hour)
            cap = cfg.cap_notional(signal.symbol)
            if capital_fraction < 1.0:
                magnitude *= capital_fraction
                cap *= capital_fraction
                adjustments.append(SizingAdjustment.ROLLOUT_FRACTION)
            if magnitude > cap:
                magnitude = cap
                adjustments.append(SizingAdjustment.POSITION_CAP)
            target_notional = direction * magnitude
        target = target_notional / price

        # -- 4. drawdown-aware caps ----------------------------------------------------------
        dd = state.drawdown
        if dd >= cfg.drawdown_flat:
            target = 0.0
            adjustments.append(SizingAdjustment.DRAWDOWN_FLAT)
        elif dd >= cfg.drawdown_reduce_only:
            target = 0.0 if target * current <= 0 else math.copysign(min(abs(target), abs(current)), current)
            adjustments.append(SizingAdjustment.DRAWDOWN_REDUCE_ONLY)
        elif dd >= cfg.drawdown_warn:
            target *= cfg.drawdown_warn_scale
            adjustments.append(SizingAdjustment.DRAWDOWN_WARN)

        # -- 5. cost penalty on added exposure ----------------------------------------------------
        flips = target * current < 0
        grows = flips or abs(target) > abs(current) + _QTY_EPS
        if grows and target != 0.0:
            edge = signal.expected_return * (1.0 if target > 0 else -1.0)
            if not (math.isfinite(edge) and edge >= cfg.round_trip_cost):
                adjustments.append(SizingAdjustment.COST_PENALTY)
                if not flips:
                    return skip(SizingReason.EDGE_BELOW_COST, tuple(adjustments))
                target = 0.0  # close the old side, do not pay to open the new one

        # -- 6. order ---------------------------------------------------------------------------------
        delta = round(target - current, cfg.quantity_decimals)
        if abs(delta) <= _QTY_EPS:
            return skip(SizingReason.HOLD, tuple(adjustments))
        resize = target != 0.0 and target * current > 0
        if resize and abs(delta) * price < cfg.rebalance_band * cfg.cap_notional(signal.symbol):
            return skip(SizingReason.WITHIN_REBALANCE_BAND, tuple(adjustments))
        if abs(delta) * price < cfg.min_order_notional:
            return skip(SizingReason.BELOW_MIN_ORDER, tuple(adjustments))
        reduce_only = target * current >= 0 and abs(target) < abs(current)
        target = round(target, cfg.quantity_decimals)
        intent = OrderIntent.new(
            ts_init=now,
            correlation_id=signal.correlation_id,
            causation_id=signal.event_id,
            ts_event=signal.ts_event,
            strategy_id=cfg.strategy_id,
            track=cfg.track,
            symbol=signal.symbol,
            side=Side.BUY if delta > 0 else Side.SELL,
            quantity=abs(delta),
            order_type=OrderType.MARKET,
            limit_price=None,
            reduce_only=reduce_only,
            target_position=target,
            signal_event_id=signal.event_id,
        )
        self._in_flight.add(client_order_id_for(intent.event_id), intent.symbol, intent.side, intent.quantity, now)
        return SizingDecision(
            signal_event_id=signal.event_id,
            symbol=signal.symbol,
            reason=SizingReason.ORDER,
            target_position=target,
            current_position=current,
            adjustments=tuple(adjustments),
            intent=intent,
        )

    def _price(self, symbol: str, state: PortfolioState) -> float | None:
        seen = self._prices.get(symbol)
        if seen is not None:
            return seen[1]
        pos = state.position(symbol)
        if pos is not None and pos.mark_price > 0:
            return pos.mark_price
        return None
