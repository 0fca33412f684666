"""Pre-trade risk engine: every order intent gets exactly one decision.

Pure and deterministic. Inputs: order intents, marks (bars), the portfolio
state, and signed control events; outputs: :class:`~topics.records.RiskDecision`
records, protective exit intents, kill-switch changes and control audits.
Time is injected: market time (decisions, marks, the breaker, the loss-streak pause) and
wall/arrival time (control verification, operator kill switches); no I/O, no randomness.
A denial is a decision with reason codes, never an exception.

Decision procedure (``on_intent``): the quantity is split into a closing and an opening part;
hard rejects refuse everything (bad quantity, a symbol not traded or on a monitor-only track,
no or stale price, no portfolio state, far from market, order rate, a kill switch); loss and drawdown limits block the
opening part only; the warn tier and the symbol cap shrink it; ``max_order_notional`` cuts
the whole order. ``reasons`` lists every rule that acted, in :class:`RiskReason` order. A
redelivered intent gets its cached decision; exposure counts the orders still in flight.
``on_mark`` runs the volatility breaker (:mod:`agents.risk.breaker`: a global kill switch for
``vol_halt_ns`` of market time) and stop-loss / take-profit exits; ``on_round_trip`` counts each
strategy's losses in a row (its own pause, besides the account's); ``opening_report`` lists every
rule blocking new exposure with its end (:mod:`agents.risk.opening`); ``on_control`` applies
verified commands only, each audited; a ``set_limit`` that relaxes a limit releases the pause
it caused and the audit names the pauses still in force.

Design: docs/risk.md#risk-engine
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from agents.clock import Clock, TimeDomain
from agents.confighash import stable_config_hash
from agents.control.signing import AuditOutcome, ControlAudit, ControlVerifier, audit_for
from agents.execution.interface import InFlightOrders, client_order_id_for
from agents.portfolio.engine import PortfolioState
from agents.risk.breaker import VolatilityBreaker
from agents.risk.config import LimitSpec, RiskConfig, coerce_limit, resolve_limit
from agents.risk.killswitch import KillScope, KillSwitch, KillSwitchBoard, OpeningStatus
from agents.risk.opening import ACCOUNT_SCOPE, Blocker, OpeningReport
from runtime.seen import SeenIds
from topics.records import (
    Bar,
    ControlCommand,
    ControlEvent,
    Fill,
    OrderIntent,
    OrderType,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Side,
)
from topics.units import NS_PER_DAY, NS_PER_SECOND

__all__ = [
    "COMPONENT",
    "VOLATILITY_BREAKER_SETTER",
    "ControlReason",
    "DelegatedLimits",
    "MarkOutcome",
    "ProtectiveExit",
    "RiskEngine",
    "RiskReason",
]

COMPONENT = "risk"
VOLATILITY_BREAKER_SETTER = "risk:volatility_breaker"
#: Quantities at or below this are nothing (float residue of the splits).
_QTY_EPS = 1e-12
_K = TypeVar("_K")
_V = TypeVar("_V")


class RiskReason(enum.StrEnum):
    """Stable reason codes on risk decisions; the order is the output order."""

    INVALID_QUANTITY = "invalid_quantity"
    UNKNOWN_SYMBOL = "unknown_symbol"
    #: The symbol is on a monitor-only track (agents/tracks.py): never an order, exits included.
    MONITOR_ONLY_TRACK = "monitor_only_track"
    NO_MARKET_PRICE = "no_market_price"
    STALE_MARKET_PRICE = "stale_market_price"
    #: No portfolio state yet: drawdown and loss limits cannot be checked, so nothing passes.
    NO_PORTFOLIO_STATE = "no_portfolio_state"
    PRICE_FAR_FROM_MARKET = "price_far_from_market"
    KILL_SWITCH_GLOBAL = "kill_switch_global"
    KILL_SWITCH_TRACK = "kill_switch_track"
    KILL_SWITCH_STRATEGY = "kill_switch_strategy"
    KILL_SWITCH_SYMBOL = "kill_switch_symbol"
    ORDER_RATE_LIMIT = "order_rate_limit"
    REDUCE_ONLY_VIOLATION = "reduce_only_violation"
    MAX_DRAWDOWN = "max_drawdown"
    DRAWDOWN_NEAR_LIMIT = "drawdown_near_limit"
    DRAWDOWN_WARN = "drawdown_warn"
    INTRADAY_DRAWDOWN_HALT = "intraday_drawdown_halt"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    CONSECUTIVE_LOSS_LIMIT = "consecutive_loss_limit"
    #: The intent's strategy lost ``strategy_consecutive_loss_limit`` round trips in a row.
    STRATEGY_CONSECUTIVE_LOSS_LIMIT = "strategy_consecutive_loss_limit"
    MAX_SYMBOL_NOTIONAL = "max_symbol_notional"
    MAX_ORDER_NOTIONAL = "max_order_notional"
    #: Informational on protective exits the engine emitted.
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    #: Reason of the kill switch the breaker engages.
    VOLATILITY_BREAKER = "volatility_breaker"


_REASON_ORDER = {r: i for i, r in enumerate(RiskReason)}

_KILL_REASON = {
    KillScope.GLOBAL: RiskReason.KILL_SWITCH_GLOBAL,
    KillScope.TRACK: RiskReason.KILL_SWITCH_TRACK,
    KillScope.STRATEGY: RiskReason.KILL_SWITCH_STRATEGY,
    KillScope.SYMBOL: RiskReason.KILL_SWITCH_SYMBOL,
}


class ControlReason(enum.StrEnum):
    """Audit reason codes for authentic commands (failed verification uses
    :class:`~agents.control.signing.VerifyReason`)."""

    APPLIED = "applied"
    NO_CHANGE = "no_change"
    NOT_FOR_RISK = "not_for_risk"
    UNKNOWN_SCOPE = "unknown_scope"
    MISSING_TARGET = "missing_target"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_LIMIT = "unknown_limit"
    INVALID_VALUE = "invalid_value"


@dataclass(frozen=True, slots=True)
class ProtectiveExit:
    intent: OrderIntent
    reason: RiskReason
    detail: str


@dataclass(frozen=True, slots=True)
class MarkOutcome:
    """What one bar caused: exits to publish and kill switches engaged."""

    exits: tuple[ProtectiveExit, ...] = ()
    engaged: tuple[KillSwitch, ...] = ()


@dataclass(slots=True)
class _Mark:
    price: float
    ts_ns: int


class RiskEngine:
    """Pre-trade rules, kill switches and verified control for one account."""

    def __init__(
        self,
        config: RiskConfig,
        clock: Clock,
        verifier: ControlVerifier,
        *,
        max_cached_decisions: int = 100_000,
        wall_clock: Clock | None = None,
    ) -> None:
        self.config = config
        #: Market time: decisions, marks, the breaker, the loss-streak pause.
        self.clock = clock
        #: Wall/arrival time: control verification and operator kill switches (default: ``clock``).
        self.wall_clock = clock if wall_clock is None else wall_clock
        self.verifier = verifier
        self.kill_switches = KillSwitchBoard()
        #: The breaker's window of recent bars (market time; part of the checkpointed state).
        self.breaker = VolatilityBreaker()
        self._portfolio: PortfolioState | None = None
        self._marks: dict[str, _Mark] = {}
        self._order_times: deque[int] = deque()
        #: intent event id -> its decision as a row of plain values (:func:`_decision_row`): the
        #: checkpoint pickles this cache, and plain tuples pickle at C speed where records do not.
        self._decisions: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._max_cached = max_cached_decisions
        #: intent event id -> trigger, for exits this engine emitted.
        self._protective: OrderedDict[str, RiskReason] = OrderedDict()
        #: (symbol, opened_at_ns, quantity) of positions an exit was emitted for.
        self._exited: SeenIds[tuple[str, int | None, float]] = SeenIds(max_cached_decisions)
        self._loss_streak_served = 0
        self._loss_cooldown_until: int | None = None
        #: strategy -> round trips it opened lost in a row since its last win or pause (market time).
        self._strategy_losses: dict[str, int] = {}
        #: strategy -> end (exclusive, market time) of its consecutive-loss pause.
        self._strategy_paused_until: dict[str, int] = {}
        self._in_flight = InFlightOrders(ttl_ns=config.pending_order_ttl_ns)

    # ------------------------------------------------------------------
    # Inputs other than intents
    # ------------------------------------------------------------------

    def on_portfolio(self, state: PortfolioState) -> None:
        """Latest portfolio/risk state; older snapshots (event time) are ignored."""
        if self._portfolio is None or state.as_of_ns >= self._portfolio.as_of_ns:
            self._portfolio = state

    def portfolio(self) -> PortfolioState | None:
        return self._portfolio

    def on_execution(self, record: OrderUpdate | Fill) -> None:
        """Track in-flight orders from the execution stream (see the module docstring)."""
        self._in_flight.on_execution(record)

    def exposure(self, symbol: str) -> float:
        """Signed position the next order is measured against: portfolio + in flight."""
        held = self._portfolio.quantity(symbol) if self._portfolio is not None else 0.0
        return held + self._in_flight.net(symbol, self.clock.now_ns())

    def opening_status(self, strategy_id: str, track: str, symbol: str) -> OpeningStatus:
        return self.kill_switches.opening_status(
            strategy_id, track, symbol, self.clock.now_ns(), self.wall_clock.now_ns()
        )

    def on_round_trip(self, strategy_id: str, lost: bool) -> None:
        """A round trip ``strategy_id`` opened has closed (market time): a loss counts towards its pause.

        At ``strategy_consecutive_loss_limit`` losses in a row (0: off) the strategy may not open for
        ``strategy_consecutive_loss_cooldown_ns``, starting now; the count then starts afresh.
        """
        if not lost:
            self._strategy_losses.pop(strategy_id, None)
            return
        streak = self._strategy_losses.get(strategy_id, 0) + 1
        limit = self.config.strategy_consecutive_loss_limit
        if limit > 0 and streak >= limit:
            self._strategy_paused_until[strategy_id] = (
                self.clock.now_ns() + self.config.strategy_consecutive_loss_cooldown_ns
            )
            streak = 0
        self._strategy_losses[strategy_id] = streak

    def strategy_losses(self, strategy_id: str) -> int:
        """Losing round trips in a row of ``strategy_id`` since its last win or pause."""
        return self._strategy_losses.get(strategy_id, 0)

    def on_mark(self, bar: Bar) -> MarkOutcome:
        """Update the mark; run the volatility breaker and stop-loss / take-profit."""
        now = self.clock.now_ns()
        mark = self._marks.get(bar.symbol)
        if mark is None or bar.ts_event >= mark.ts_ns:
            self._marks[bar.symbol] = _Mark(bar.close, bar.ts_event)
        engaged: list[KillSwitch] = []
        # -- volatility breaker ------------------------------------------------
        trip = self.breaker.on_bar(bar, self.config)
        if trip is not None:
            engaged.append(
                self.kill_switches.engage(
                    KillScope.GLOBAL,
                    "*",
                    reason=f"{RiskReason.VOLATILITY_BREAKER.value}: {trip.describe()}",
                    set_by=VOLATILITY_BREAKER_SETTER,
                    now_ns=now,
                    expires_at_ns=now + self.config.vol_halt_ns,
                )
            )
        # -- stop-loss / take-profit --------------------------------------------
        exits: list[ProtectiveExit] = []
        exit_ = self._protective_exit(bar, now)
        if exit_ is not None:
            exits.append(exit_)
        return MarkOutcome(exits=tuple(exits), engaged=tuple(engaged))

    def _protective_exit(self, bar: Bar, now: int) -> ProtectiveExit | None:
        state = self._portfolio
        pos = state.position(bar.symbol) if state is not None else None
        if pos is None or pos.quantity == 0.0 or pos.avg_price <= 0.0:
            return None
        exposure = self.exposure(bar.symbol)
        if exposure * pos.quantity <= 0.0 or abs(exposure) <= _QTY_EPS:
            return None  # an exit is already in flight
        direction = 1.0 if pos.quantity > 0 else -1.0
        ret = direction * (bar.close / pos.avg_price - 1.0)
        if ret <= -self.config.stop_loss:
            reason = RiskReason.STOP_LOSS
        elif ret >= self.config.take_profit:
            reason = RiskReason.TAKE_PROFIT
        else:
            return None
        key = (bar.symbol, pos.opened_at_ns, exposure)
        if not self._exited.add(key):
            return None
        intent = OrderIntent.new(
            ts_init=now,
            correlation_id=bar.correlation_id,
            causation_id=bar.event_id,
            ts_event=bar.ts_event,
            strategy_id=self.config.protective_strategy_id,
            track=self.config.track,
            symbol=bar.symbol,
            side=Side.SELL if exposure > 0 else Side.BUY,
            quantity=abs(exposure),
            order_type=OrderType.MARKET,
            limit_price=None,
            reduce_only=True,
            target_position=0.0,
            signal_event_id=bar.event_id,
        )
        _bounded_put(self._protective, intent.event_id, reason, self._max_cached)
        detail = f"{reason.value}: return {ret:.4f} at close {bar.close} vs avg {pos.avg_price}"
        return ProtectiveExit(intent=intent, reason=reason, detail=detail)

    # ------------------------------------------------------------------
    # Intents
    # ------------------------------------------------------------------

    def on_intent(self, intent: OrderIntent) -> RiskDecision:
        """Decide one intent (see the module docstring for the rules)."""
        cached = self._decisions.get(intent.event_id)
        if cached is not None:
            return _decision_from_row(cached)
        now = self.clock.now_ns()
        cfg = self.config
        reasons: set[RiskReason] = set()
        hard = False

        qty = intent.quantity
        valid_qty = isinstance(qty, (int, float)) and math.isfinite(qty) and qty > 0
        if not valid_qty:
            reasons.add(RiskReason.INVALID_QUANTITY)
            hard = True
            qty = 0.0
        if intent.symbol in cfg.monitor_only_symbols:
            reasons.add(RiskReason.MONITOR_ONLY_TRACK)
            hard = True
        elif intent.symbol not in cfg.allowed_symbols:
            reasons.add(RiskReason.UNKNOWN_SYMBOL)
            hard = True
        mark = self._marks.get(intent.symbol)
        if mark is None:
            reasons.add(RiskReason.NO_MARKET_PRICE)
            hard = True
        elif now - mark.ts_ns > cfg.max_mark_age_ns:
            reasons.add(RiskReason.STALE_MARKET_PRICE)
            hard = True
        if intent.limit_price is not None and mark is not None:
            lp = intent.limit_price
            if not (math.isfinite(lp) and lp > 0) or abs(lp / mark.price - 1.0) > cfg.max_price_deviation:
                reasons.add(RiskReason.PRICE_FAR_FROM_MARKET)
                hard = True

        if self._portfolio is None:
            reasons.add(RiskReason.NO_PORTFOLIO_STATE)
            hard = True

        # -- split into closing and opening parts -----------------------------
        state = self._portfolio or PortfolioState.initial(1.0)  # only reached with a hard reject
        current = self.exposure(intent.symbol)
        buying = intent.side is Side.BUY
        reduces = current != 0.0 and (current > 0) != buying
        closing = min(qty, abs(current)) if reduces else 0.0
        opening = qty - closing
        if opening <= _QTY_EPS:
            opening = 0.0

        # -- kill switches ---------------------------------------------------------
        status = self.kill_switches.opening_status(
            intent.strategy_id, intent.track, intent.symbol, now, self.wall_clock.now_ns()
        )
        if not status.allowed:
            kill_reasons = {_KILL_REASON[s.scope] for s in status.switches}
            if cfg.kill_switch_allows_reduce_only:
                if opening > 0:
                    reasons |= kill_reasons
                    opening = 0.0
            else:
                reasons |= kill_reasons
                hard = True

        # -- order rate (event time, rolling window) -------------------------------
        horizon = now - cfg.order_rate_window_ns
        while self._order_times and self._order_times[0] <= horizon:
            self._order_times.popleft()
        if len(self._order_times) >= cfg.max_orders_per_window:
            reasons.add(RiskReason.ORDER_RATE_LIMIT)
            hard = True

        # -- rules that block opening exposure ---------------------------------------
        if opening > 0:
            blockers = self._opening_blockers(intent, state, now)
            if blockers:
                reasons |= blockers
                opening = 0.0
        if opening > 0 and state.drawdown >= cfg.drawdown_warn:
            reasons.add(RiskReason.DRAWDOWN_WARN)
            opening *= cfg.warn_size_scale

        # -- notional caps ----------------------------------------------------------------
        if mark is not None and mark.price > 0:
            price = mark.price
            if opening > 0:
                cap_qty = cfg.symbol_notional_cap(intent.symbol) / price
                held_after_close = abs(current) - closing  # 0 on a flip
                room = max(0.0, cap_qty - held_after_close)
                if opening > room:
                    reasons.add(RiskReason.MAX_SYMBOL_NOTIONAL)
                    opening = room if room > _QTY_EPS else 0.0
            max_qty = cfg.max_order_notional / price
            if closing + opening > max_qty:
                reasons.add(RiskReason.MAX_ORDER_NOTIONAL)
                opening = min(opening, max_qty)
                closing = min(closing, max_qty - opening)

        # -- verdict --------------------------------------------------------------------------
        approved = 0.0 if hard else closing + opening
        if not hard and not reasons:
            approved = qty  # nothing cut: do not let the split's float residue read as a reduction
        approved = min(approved, qty)
        if hard or approved <= _QTY_EPS:
            verdict, approved = RiskVerdict.REJECTED, 0.0
        elif approved < qty:
            verdict = RiskVerdict.REDUCED
        else:
            verdict = RiskVerdict.APPROVED
        trigger = self._protective.get(intent.event_id)
        if trigger is not None:
            reasons.add(trigger)
        if verdict is not RiskVerdict.REJECTED:
            self._order_times.append(now)
            self._in_flight.add(client_order_id_for(intent.event_id), intent.symbol, intent.side, approved, now)
        decision = RiskDecision.new(
            ts_init=now,
            correlation_id=intent.correlation_id,
            causation_id=intent.event_id,
            ts_event=intent.ts_event,
            intent_event_id=intent.event_id,
            strategy_id=intent.strategy_id,
            symbol=intent.symbol,
            verdict=verdict,
            requested_quantity=qty,
            approved_quantity=approved,
            reasons=tuple(r.value for r in sorted(reasons, key=_REASON_ORDER.__getitem__)),
        )
        _bounded_put(self._decisions, intent.event_id, _decision_row(decision), self._max_cached)
        return decision

    def _opening_blockers(self, intent: OrderIntent, state: PortfolioState, now: int) -> set[RiskReason]:
        cfg = self.config
        out: set[RiskReason] = set()
        if intent.reduce_only:
            out.add(RiskReason.REDUCE_ONLY_VIOLATION)
        if state.drawdown >= cfg.max_drawdown:
            out.add(RiskReason.MAX_DRAWDOWN)
        elif state.drawdown >= cfg.drawdown_near_limit:
            out.add(RiskReason.DRAWDOWN_NEAR_LIMIT)
        if state.intraday_drawdown >= cfg.intraday_drawdown_halt:
            out.add(RiskReason.INTRADAY_DRAWDOWN_HALT)
        if state.daily_return <= -cfg.daily_loss_limit:
            out.add(RiskReason.DAILY_LOSS_LIMIT)
        if self._loss_streak_blocks(state, now):
            out.add(RiskReason.CONSECUTIVE_LOSS_LIMIT)
        if now < self._strategy_paused_until.get(intent.strategy_id, now):
            out.add(RiskReason.STRATEGY_CONSECUTIVE_LOSS_LIMIT)
        return out

    def _loss_streak_blocks(self, state: PortfolioState, now: int) -> bool:
        streak = state.consecutive_losses
        if streak < self._loss_streak_served:
            self._loss_streak_served = 0  # a win reset the streak: start counting afresh
        if streak >= self.config.consecutive_loss_limit and streak > self._loss_streak_served:
            self._loss_streak_served = streak
            self._loss_cooldown_until = now + self.config.consecutive_loss_cooldown_ns
        return self._loss_cooldown_until is not None and now < self._loss_cooldown_until

    # ------------------------------------------------------------------
    # Control
    # ------------------------------------------------------------------
    # ------------------------------------------------------------------

    def on_control(self, event: ControlEvent, delegated: DelegatedLimits | None = None) -> ControlAudit:
        """Verify and apply one control command; always one audit, never an exception.

        Time is the wall clock's (verification, an operator switch's start and expiry, the
        audit's ``ts_init``). ``delegated``: another engine's limits a ``set_limit`` may name;
        the audit then carries that engine's configuration hashes.
        """
        now = self.wall_clock.now_ns()
        owner = _limit_owner(event, delegated)
        config_hash = self._config_hash if owner is None else owner.config_hash
        before = config_hash()
        verdict = self.verifier.verify(event, now)
        if not verdict.ok:
            return self._audit(
                event, AuditOutcome.REJECTED, verdict.reason.value, verdict.detail, (), before, config_hash(), now, True
            )
        try:
            outcome, reason, detail, changes = self._apply(event, now, owner)
        except Exception as exc:  # an authentic but malformed command is still only a rejection
            outcome, reason, detail, changes = (
                AuditOutcome.REJECTED,
                ControlReason.INVALID_PARAMS,
                type(exc).__name__,
                (),
            )
        return self._audit(event, outcome, reason.value, detail, changes, before, config_hash(), now, False)

    def _config_hash(self) -> str:
        return self.config.config_hash()

    def _audit(
        self,
        event: ControlEvent,
        outcome: AuditOutcome,
        reason: str,
        detail: str,
        changes: tuple[str, ...],
        before: str,
        after: str,
        now: int,
        alert: bool,
    ) -> ControlAudit:
        return audit_for(
            event,
            component=COMPONENT,
            outcome=outcome,
            reason=reason,
            detail=detail,
            alert=alert,
            changes=changes,
            config_hash_before=before,
            config_hash_after=after,
            ts_init=now,
        )

    def _apply(
        self, event: ControlEvent, now: int, owner: DelegatedLimits | None
    ) -> tuple[AuditOutcome, ControlReason, str, tuple[str, ...]]:
        command = event.command
        if command in (ControlCommand.ROLLOUT_PROMOTE, ControlCommand.ROLLOUT_ROLLBACK):
            return AuditOutcome.IGNORED, ControlReason.NOT_FOR_RISK, "handled by governance", ()
        if command is ControlCommand.SET_LIMIT:
            return self._set_limit(event, owner)
        try:
            scope = KillScope(event.scope)
        except ValueError:
            return AuditOutcome.REJECTED, ControlReason.UNKNOWN_SCOPE, f"scope {event.scope!r}", ()
        if scope is not KillScope.GLOBAL and not event.target:
            return AuditOutcome.REJECTED, ControlReason.MISSING_TARGET, f"scope {scope.value} needs a target", ()
        if command is ControlCommand.KILL_SWITCH_OFF:
            released = self.kill_switches.release(scope, event.target, self.clock.now_ns(), now)
            if not released:
                return AuditOutcome.ACCEPTED, ControlReason.NO_CHANGE, "nothing engaged", ()
            return AuditOutcome.ACCEPTED, ControlReason.APPLIED, "", tuple(f"released {s.describe()}" for s in released)
        # KILL_SWITCH_ON: an operator's switch lives in wall time (started now, expiring after its duration)
        expires = _expiry_from_params(event, now)
        if isinstance(expires, str):
            return AuditOutcome.REJECTED, ControlReason.INVALID_PARAMS, expires, ()
        switch = self.kill_switches.engage(
            scope,
            event.target,
            reason=event.reason or "operator kill switch",
            set_by=f"operator:{event.operator}",
            now_ns=now,
            expires_at_ns=expires,
            domain=TimeDomain.WALL,
        )
        return AuditOutcome.ACCEPTED, ControlReason.APPLIED, "", (f"engaged {switch.describe()}",)

    def _set_limit(
        self, event: ControlEvent, owner: DelegatedLimits | None
    ) -> tuple[AuditOutcome, ControlReason, str, tuple[str, ...]]:
        if event.scope != KillScope.GLOBAL.value:
            return AuditOutcome.REJECTED, ControlReason.UNKNOWN_SCOPE, "set_limit applies to scope 'global'", ()
        name = event.params.get("name")
        value = event.params.get("value")
        if not isinstance(name, str) or set(event.params) != {"name", "value"}:
            return AuditOutcome.REJECTED, ControlReason.INVALID_PARAMS, "params must be {name, value}", ()
        apply: Callable[[int | float | str], Any]
        spec: LimitSpec
        config: Any
        if owner is not None:
            field = name[len(owner.prefix) :]
            spec, config = owner.specs[field], owner.get()
            old_value = getattr(config, field)
            apply = partial(_replace_field, config, field)
        else:
            resolved = resolve_limit(name, self.config)
            if isinstance(resolved, str):
                return AuditOutcome.REJECTED, ControlReason.UNKNOWN_LIMIT, resolved, ()
            spec, config = resolved, self.config
            old_value = config.limit_value(name)
            apply = partial(config.with_limit, name)
        try:
            new_value = coerce_limit(name, spec, value)
            new_config = apply(new_value)
        except ValueError as exc:
            return AuditOutcome.REJECTED, ControlReason.INVALID_VALUE, str(exc), ()
        if new_config == config:
            return AuditOutcome.ACCEPTED, ControlReason.NO_CHANGE, f"{name} already {old_value!r}", ()
        change = f"{name}: {old_value!r} -> {new_value!r}"
        if owner is not None:
            owner.put(new_config)
            return AuditOutcome.ACCEPTED, ControlReason.APPLIED, "", (change,)
        return self._relax(name, new_config, change)

    # ------------------------------------------------------------------
    # Pauses: the rules that stop opening exposure until a limit is back
    # ------------------------------------------------------------------

    def _relax(
        self, name: str, new_config: RiskConfig, change: str
    ) -> tuple[AuditOutcome, ControlReason, str, tuple[str, ...]]:
        """Apply a new risk config; release the pause a relaxed limit started, and say which pauses stay."""
        now = self.clock.now_ns()  # pauses are market time
        before = self.pauses(now)
        before_limit = self.config.strategy_consecutive_loss_limit
        self.config = new_config
        state = self._portfolio
        if name == RiskReason.CONSECUTIVE_LOSS_LIMIT and name in before and state is not None:
            streak = state.consecutive_losses
            if streak < new_config.consecutive_loss_limit:  # this streak is served: it never pauses again
                self._loss_cooldown_until = None
                self._loss_streak_served = max(self._loss_streak_served, streak)
        if name == RiskReason.STRATEGY_CONSECUTIVE_LOSS_LIMIT and name in before:
            old = before_limit
            if new_config.strategy_consecutive_loss_limit == 0 or new_config.strategy_consecutive_loss_limit > old:
                self._strategy_paused_until.clear()  # a relaxed limit: the pauses it started are over
        after = self.pauses(now)
        changes = [change] + [f"released the {k} pause (was: {v})" for k, v in before.items() if k not in after]
        notes = []
        for k, v in after.items():
            if k not in before:
                notes.append(f"opening now paused by {k}: {v}")
            elif k == name:
                notes.append(f"{k} pause not released: {v}")
            else:
                notes.append(f"opening still paused by {k}: {v}")
        return AuditOutcome.ACCEPTED, ControlReason.APPLIED, "; ".join(notes), tuple(changes)

    def pauses(self, now_ns: int | None = None) -> dict[str, str]:
        """The limits that pause opening exposure now (limit name -> why), in :class:`RiskReason` order.

        Market time (``now_ns``, default the clock's). Kill switches are not pauses of a limit: they
        are listed by :attr:`kill_switches`.
        """
        now = self.clock.now_ns() if now_ns is None else now_ns
        state, cfg = self._portfolio, self.config
        out: dict[str, str] = {}
        if state is None:
            return out
        if state.drawdown >= cfg.max_drawdown:
            out[RiskReason.MAX_DRAWDOWN] = f"drawdown {state.drawdown:.4f} >= {cfg.max_drawdown}"
        elif state.drawdown >= cfg.drawdown_near_limit:
            out[RiskReason.DRAWDOWN_NEAR_LIMIT] = f"drawdown {state.drawdown:.4f} >= {cfg.drawdown_near_limit}"
        if state.intraday_drawdown >= cfg.intraday_drawdown_halt:
            out[RiskReason.INTRADAY_DRAWDOWN_HALT] = (
                f"intraday drawdown {state.intraday_drawdown:.4f} >= {cfg.intraday_drawdown_halt}"
            )
        if state.daily_return <= -cfg.daily_loss_limit:
            out[RiskReason.DAILY_LOSS_LIMIT] = f"daily return {state.daily_return:.4f} <= -{cfg.daily_loss_limit}"
        streak, limit = state.consecutive_losses, cfg.consecutive_loss_limit
        served = 0 if streak < self._loss_streak_served else self._loss_streak_served
        until = self._loss_cooldown_until
        if until is not None and now < until:
            out[RiskReason.CONSECUTIVE_LOSS_LIMIT] = (
                f"{streak} consecutive losses ({'>=' if streak >= limit else '<'} limit {limit}), "
                f"paused until {until} (market time)"
            )
        elif streak >= limit and streak > served:
            out[RiskReason.CONSECUTIVE_LOSS_LIMIT] = f"{streak} consecutive losses >= limit {limit}"
        paused = {s: u for s, u in sorted(self._strategy_paused_until.items()) if now < u}
        if paused:
            out[RiskReason.STRATEGY_CONSECUTIVE_LOSS_LIMIT] = ", ".join(
                f"strategy {s} paused until {u} (market time)" for s, u in paused.items()
            )
        return {str(k): v for k, v in out.items()}

    # ------------------------------------------------------------------
    # Opening status: every blocker, with why and until when
    # ------------------------------------------------------------------

    def opening_report(self) -> OpeningReport:
        """Every rule that stops opening exposure now (:mod:`agents.risk.opening`), in :class:`RiskReason`
        order; kill switches by scope and target. Reads the engine's state without changing it."""
        now, wall = self.clock.now_ns(), self.wall_clock.now_ns()
        cfg, state = self.config, self._portfolio
        found: list[Blocker] = []
        for s in self.kill_switches.active(now, wall):
            breaker = s.set_by == VOLATILITY_BREAKER_SETTER
            code = RiskReason.VOLATILITY_BREAKER if breaker else _KILL_REASON[s.scope]
            found.append(
                Blocker(
                    code=code.value,
                    scope=s.scope.value,
                    target=s.target,
                    detail=f"{s.reason} (set by {s.set_by})",
                    until_ns=s.expires_at_ns,
                    domain=s.domain,
                )
            )
        # ``_order_times`` is in time order (market time only moves forward): the limit is reached when the
        # k-th most recent order is still inside the window. Asked after every input, so never a scan of
        # every order in the window (thousands when the limit is lifted) unless it is reached.
        times, k = self._order_times, cfg.max_orders_per_window
        horizon = now - cfg.order_rate_window_ns
        if len(times) >= k and times[-k] > horizon:
            in_window = sum(1 for _ in itertools.takewhile(lambda t: t > horizon, reversed(times)))
            found.append(
                _account(
                    RiskReason.ORDER_RATE_LIMIT,
                    f"{in_window} orders in {cfg.order_rate_window_ns / NS_PER_SECOND:g} s >= {k}",
                    times[-k] + cfg.order_rate_window_ns,
                )
            )
        if state is None:
            found.append(_account(RiskReason.NO_PORTFOLIO_STATE, "no portfolio state yet (first bar pending)", None))
        else:
            found += self._limit_blockers(state, now)
        order = _REASON_ORDER
        found.sort(key=lambda b: order[RiskReason(b.code)])  # stable: switches keep their sorted order
        return OpeningReport(market_ns=now, wall_ns=wall, blockers=tuple(found))

    def _limit_blockers(self, state: PortfolioState, now: int) -> list[Blocker]:
        cfg = self.config
        out: list[Blocker] = []
        next_day = state.day_start_ns + NS_PER_DAY
        if state.drawdown >= cfg.max_drawdown:
            out.append(_account(RiskReason.MAX_DRAWDOWN, f"drawdown {state.drawdown:.4f} >= {cfg.max_drawdown}", None))
        elif state.drawdown >= cfg.drawdown_near_limit:
            out.append(
                _account(
                    RiskReason.DRAWDOWN_NEAR_LIMIT,
                    f"drawdown {state.drawdown:.4f} >= {cfg.drawdown_near_limit} (reduce-only)",
                    None,
                )
            )
        if state.intraday_drawdown >= cfg.intraday_drawdown_halt:
            out.append(
                _account(
                    RiskReason.INTRADAY_DRAWDOWN_HALT,
                    f"intraday drawdown {state.intraday_drawdown:.4f} >= {cfg.intraday_drawdown_halt}, "
                    "until the next UTC day",
                    next_day,
                )
            )
        if state.daily_return <= -cfg.daily_loss_limit:
            out.append(
                _account(
                    RiskReason.DAILY_LOSS_LIMIT,
                    f"daily return {state.daily_return:.4f} <= -{cfg.daily_loss_limit}, until the next UTC day",
                    next_day,
                )
            )
        streak, limit = state.consecutive_losses, cfg.consecutive_loss_limit
        served = 0 if streak < self._loss_streak_served else self._loss_streak_served
        until = self._loss_cooldown_until
        if until is not None and now < until:
            out.append(
                _account(RiskReason.CONSECUTIVE_LOSS_LIMIT, f"{streak} consecutive losses (limit {limit})", until)
            )
        elif streak >= limit and streak > served:
            cool = cfg.consecutive_loss_cooldown_ns / NS_PER_SECOND
            out.append(
                _account(
                    RiskReason.CONSECUTIVE_LOSS_LIMIT,
                    f"{streak} consecutive losses >= limit {limit}; a {cool:g} s pause starts at the next "
                    "opening order",
                    None,
                )
            )
        for strategy, end in sorted(self._strategy_paused_until.items()):
            if now < end:
                out.append(
                    Blocker(
                        code=RiskReason.STRATEGY_CONSECUTIVE_LOSS_LIMIT.value,
                        scope=KillScope.STRATEGY.value,
                        target=strategy,
                        detail=f"{cfg.strategy_consecutive_loss_limit} losing round trips in a row",
                        until_ns=end,
                    )
                )
        return out


def _account(reason: RiskReason, detail: str, until_ns: int | None) -> Blocker:
    """An account-wide blocker in market time."""
    return Blocker(code=reason.value, scope=ACCOUNT_SCOPE, target="*", detail=detail, until_ns=until_ns)


@dataclass(frozen=True, slots=True)
class DelegatedLimits:
    """Another engine's limits a signed ``set_limit`` may change through :meth:`RiskEngine.on_control`.

    Names are ``prefix + field`` for the fields of ``specs``; the risk engine verifies, validates
    (range, then the config's own invariants) and audits the command as for its own limits.
    ``get`` reads that engine's config (a frozen dataclass), ``put`` installs the new one.
    """

    prefix: str
    specs: Mapping[str, LimitSpec]
    get: Callable[[], Any]
    put: Callable[[Any], None]

    def config_hash(self) -> str:
        return stable_config_hash(self.get())


def _replace_field(config: Any, field: str, value: int | float | str) -> Any:
    return dataclasses.replace(config, **{field: value})


def _limit_owner(event: ControlEvent, delegated: DelegatedLimits | None) -> DelegatedLimits | None:
    """``delegated`` when ``event`` is a ``set_limit`` naming one of its limits."""
    if delegated is None or event.command is not ControlCommand.SET_LIMIT or not isinstance(event.params, dict):
        return None
    name = event.params.get("name")
    if isinstance(name, str) and name.startswith(delegated.prefix) and name[len(delegated.prefix) :] in delegated.specs:
        return delegated
    return None


def _expiry_from_params(event: ControlEvent, now: int) -> int | str | None:
    """Kill-switch expiry from ``duration_s`` or ``until_ns``; a string is an error."""
    params = event.params
    unknown = set(params) - {"duration_s", "until_ns"}
    if unknown or len(params) > 1:
        return f"kill switch params are one of duration_s / until_ns, got {sorted(params)}"
    if "duration_s" in params:
        d = params["duration_s"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0:
            return "duration_s must be a positive number"
        return now + int(d * NS_PER_SECOND)
    if "until_ns" in params:
        u = params["until_ns"]
        if type(u) is not int or u <= now:
            return "until_ns must be an integer in the future"
        return u
    return None


_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(RiskDecision))
_VERDICT_AT = _DECISION_FIELDS.index("verdict")


def _decision_row(decision: RiskDecision) -> tuple[Any, ...]:
    """``decision``'s field values in declaration order, the verdict as its value."""
    row = [getattr(decision, name) for name in _DECISION_FIELDS]
    row[_VERDICT_AT] = decision.verdict.value
    return tuple(row)


def _decision_from_row(row: tuple[Any, ...]) -> RiskDecision:
    """Inverse of :func:`_decision_row`: the same record, field for field."""
    values = dict(zip(_DECISION_FIELDS, row, strict=True))
    values["verdict"] = RiskVerdict(values["verdict"])
    return RiskDecision(**values)


def _bounded_put(cache: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> None:
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
