"""Paper execution: a deterministic fill model against the next bar.

Pure and deterministic: orders are buffered by :meth:`PaperExecutionEngine.submit`
and filled by :meth:`PaperExecutionEngine.on_bar`; the clock is injected and
the only randomness is a ``random.Random(seed)`` held in the engine, drawn in
submission order. :class:`PaperExecutionAdapter` wraps it in the async
:class:`~agents.execution.interface.ExecutionAdapter` interface.

Fill model (:class:`PaperConfig`): an approved order trades from the first bar opening at or
after its decision (no look-ahead), at the open moved against it by slippage plus
participation-scaled impact, capped at ``max_participation`` of the bar's volume, taker fee
on notional; the rest carries for at most ``1 + max_retries`` bars. Every refusal has a reason code
(:class:`~agents.execution.interface.ExecReason`). A redelivered order (same client order id)
is ignored: no second order, no second fill.

Design: docs/trading_engines.md#paper-execution
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agents.clock import Clock
from agents.confighash import stable_config_hash
from agents.execution.interface import (
    ExecReason,
    ExecutionRecord,
    MarketContext,
    build_update,
    client_order_id_for,
)
from runtime.seen import SeenIds
from topics.records import Bar, Fill, Liquidity, OrderIntent, OrderStatus, RiskDecision, RiskVerdict, Side
from topics.schema import event_id_for

__all__ = ["PaperConfig", "PaperExecutionAdapter", "PaperExecutionEngine"]

_QTY_EPS = 1e-12


@dataclass(frozen=True, slots=True, kw_only=True)
class PaperConfig:
    version: str = "paper-v1"
    adapter: str = "paper"
    #: Taker fee (Binance / Bitget spot VIP0 is 10 bps).
    fee_bps: float = 10.0
    #: Fixed half-spread + latency slippage.
    slippage_bps: float = 2.0
    #: Impact in bps per unit of participation (100 bps at 100 % of bar volume).
    impact_coefficient_bps: float = 100.0
    #: Most of a bar's volume one bar's fills may take.
    max_participation: float = 0.10
    #: Further bars after the first an order may use before it expires.
    max_retries: int = 3
    #: Largest distance of the modelled price from the arrival price.
    max_slippage_bps: float = 100.0
    #: Per-symbol probability of a simulated venue timeout per eligible bar.
    timeout_probability: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    default_timeout_probability: float = 0.0
    seed: int = 7
    max_seen_orders: int = 100_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout_probability", MappingProxyType(dict(self.timeout_probability)))
        probs = [self.default_timeout_probability, *self.timeout_probability.values()]
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise ValueError("timeout probabilities must be in [0, 1]")
        if min(self.fee_bps, self.slippage_bps, self.impact_coefficient_bps) < 0:
            raise ValueError("fee, slippage and impact must be >= 0")
        if not 0 < self.max_participation <= 1 or self.max_retries < 0 or self.max_slippage_bps <= 0:
            raise ValueError("need 0 < max_participation <= 1, max_retries >= 0, max_slippage_bps > 0")

    def config_hash(self) -> str:
        return stable_config_hash(self)

    def timeout_for(self, symbol: str) -> float:
        return self.timeout_probability.get(symbol, self.default_timeout_probability)


@dataclass(slots=True)
class _Working:
    client_order_id: str
    intent: OrderIntent
    decision: RiskDecision
    quantity: float
    eligible_from: int
    arrival_price: float | None
    filled: float = 0.0
    notional: float = 0.0
    fills: int = 0
    bars_tried: int = 0

    @property
    def avg_price(self) -> float | None:
        return self.notional / self.filled if self.filled > 0 else None


def _quote_currency(symbol: str) -> str:
    return symbol.partition("/")[2].split(":", 1)[0]


class PaperExecutionEngine:
    """Simulated venue: submit approved intents, fill them on later bars."""

    def __init__(self, config: PaperConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._rng = random.Random(config.seed)
        self._seen: SeenIds[str] = SeenIds(config.max_seen_orders)
        self._working: OrderedDict[str, _Working] = OrderedDict()
        #: symbol -> its working orders' ids in ``_working``'s order: a bar visits its own symbol's orders,
        #: not every order of the account. Derived, never pickled (:meth:`__getstate__`), rebuilt when
        #: first needed; ids of orders gone since are dropped when their symbol's next bar comes.
        self._by_symbol: dict[str, dict[str, None]] | None = None

    def __getstate__(self) -> dict[str, object]:
        """The engine's state without the derived per-symbol index (checkpoints stay as they were)."""
        state = dict(self.__dict__)
        state.pop("_by_symbol", None)
        return state

    def _orders_of(self, symbol: str) -> dict[str, None]:
        index: dict[str, dict[str, None]] | None = getattr(self, "_by_symbol", None)
        if index is None:
            index = {}
            for coid, order in self._working.items():
                index.setdefault(order.intent.symbol, {})[coid] = None
            self._by_symbol = index
        return index.setdefault(symbol, {})

    # ------------------------------------------------------------------
    # Submission
    # ------------------------------------------------------------------

    def remember(self, client_order_id: str) -> None:
        """Mark a client order id as already handled (state recovery)."""
        self._seen.add(client_order_id)

    def seen(self, client_order_id: str) -> bool:
        return client_order_id in self._seen

    def open_orders(self) -> tuple[str, ...]:
        return tuple(self._working)

    def submit(
        self, intent: OrderIntent, decision: RiskDecision, market: MarketContext | None = None
    ) -> list[ExecutionRecord]:
        """Accept (buffer) or refuse one order; duplicates return nothing."""
        coid = client_order_id_for(intent.event_id)
        if not self._seen.add(coid):
            return []
        now = self.clock.now_ns()

        def refuse(reason: ExecReason, quantity: float) -> list[ExecutionRecord]:
            return [
                self._update(
                    coid,
                    intent,
                    OrderStatus.REJECTED,
                    quantity,
                    0.0,
                    None,
                    reason.value,
                    decision.ts_event,
                    now,
                    decision.event_id,
                )
            ]

        if decision.intent_event_id != intent.event_id:
            return refuse(ExecReason.DECISION_MISMATCH, _safe_qty(intent.quantity))
        if decision.verdict is RiskVerdict.REJECTED:
            return refuse(ExecReason.RISK_BLOCKED, _safe_qty(intent.quantity))
        qty = decision.approved_quantity
        if not (math.isfinite(qty) and qty > 0):
            return refuse(ExecReason.INVALID_QUANTITY, _safe_qty(qty))
        arrival = market.last_price if market is not None and market.symbol == intent.symbol else None
        index: dict[str, dict[str, None]] | None = getattr(self, "_by_symbol", None)
        if index is not None:
            index.setdefault(intent.symbol, {})[coid] = None
        self._working[coid] = _Working(
            client_order_id=coid,
            intent=intent,
            decision=decision,
            quantity=qty,
            eligible_from=decision.ts_event,
            arrival_price=arrival,
        )
        return [
            self._update(
                coid, intent, OrderStatus.NEW, qty, 0.0, None, None, decision.ts_event, now, decision.event_id
            ),
            self._update(
                coid, intent, OrderStatus.ACKNOWLEDGED, qty, 0.0, None, None, decision.ts_event, now, decision.event_id
            ),
        ]

    def cancel(self, client_order_id: str, reason: str = ExecReason.CANCEL_REQUESTED.value) -> list[ExecutionRecord]:
        """Cancel a working order (kill switch, operator); unknown ids return nothing."""
        order = self._working.pop(client_order_id, None)
        if order is None:
            return []
        now = self.clock.now_ns()
        return [self._terminal(order, OrderStatus.CANCELLED, reason, now, now)]

    # ------------------------------------------------------------------
    # Fills
    # ------------------------------------------------------------------

    def on_bar(self, bar: Bar) -> list[ExecutionRecord]:
        """Fill the eligible working orders of ``bar.symbol`` at this bar's open."""
        cfg = self.config
        now = self.clock.now_ns()
        out: list[ExecutionRecord] = []
        capacity = cfg.max_participation * bar.volume
        ids = self._orders_of(bar.symbol)
        for coid in [c for c in ids if c in self._working]:
            order = self._working[coid]
            if bar.open_time < order.eligible_from:
                continue
            p_timeout = cfg.timeout_for(bar.symbol)
            if p_timeout > 0 and self._rng.random() < p_timeout:
                del self._working[coid]
                out.append(self._refusal(order, ExecReason.VENUE_TIMEOUT, bar.open_time, now))
                continue
            order.bars_tried += 1
            remaining = order.quantity - order.filled
            fill_qty = min(remaining, capacity)
            if fill_qty > _QTY_EPS and bar.volume > 0:
                participation = fill_qty / bar.volume
                impact_bps = cfg.impact_coefficient_bps * participation
                cost_bps = cfg.slippage_bps + impact_bps
                buy = order.intent.side is Side.BUY
                price = bar.open * (1 + cost_bps / 10_000) if buy else bar.open * (1 - cost_bps / 10_000)
                reference = order.arrival_price if order.arrival_price is not None else bar.open
                if abs(price / reference - 1.0) * 10_000 > cfg.max_slippage_bps:
                    del self._working[coid]
                    out.append(self._refusal(order, ExecReason.SLIPPAGE_TOO_WIDE, bar.open_time, now))
                    continue
                limit = order.intent.limit_price
                if limit is None or (price <= limit if buy else price >= limit):
                    capacity -= fill_qty
                    out.extend(self._fill(order, fill_qty, price, impact_bps, bar, now))
            if order.quantity - order.filled <= _QTY_EPS:
                del self._working[coid]
            elif order.bars_tried > cfg.max_retries:
                del self._working[coid]
                out.append(
                    self._terminal(
                        order, OrderStatus.EXPIRED, ExecReason.NO_FILL_AFTER_RETRIES.value, bar.open_time, now
                    )
                )
        for coid in [c for c in ids if c not in self._working]:  # filled, refused, expired or cancelled
            del ids[coid]
        return out

    def _fill(
        self, order: _Working, qty: float, price: float, impact_bps: float, bar: Bar, now: int
    ) -> list[ExecutionRecord]:
        cfg = self.config
        order.fills += 1
        order.filled += qty
        order.notional += qty * price
        if order.quantity - order.filled <= _QTY_EPS:
            order.filled = order.quantity  # float residue: the order is done
        fill = Fill.new(
            ts_init=now,
            correlation_id=order.intent.correlation_id,
            causation_id=order.decision.event_id,
            ts_event=bar.open_time,
            client_order_id=order.client_order_id,
            fill_id=event_id_for("paper_fill", order.client_order_id, order.fills)[:24],
            adapter=cfg.adapter,
            symbol=order.intent.symbol,
            side=order.intent.side,
            price=price,
            quantity=qty,
            fee=qty * price * cfg.fee_bps / 10_000,
            fee_currency=_quote_currency(order.intent.symbol),
            liquidity=Liquidity.TAKER,
            slippage_bps=cfg.slippage_bps,
            impact_bps=impact_bps,
        )
        done = order.filled >= order.quantity
        status = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
        update = self._update(
            order.client_order_id,
            order.intent,
            status,
            order.quantity,
            order.filled,
            order.avg_price,
            None,
            bar.open_time,
            now,
            fill.event_id,
        )
        return [fill, update]

    # ------------------------------------------------------------------
    # Records
    # ------------------------------------------------------------------

    def _refusal(self, order: _Working, reason: ExecReason, ts_event: int, now: int) -> ExecutionRecord:
        status = OrderStatus.CANCELLED if order.filled > 0 else OrderStatus.REJECTED
        return self._terminal(order, status, reason.value, ts_event, now)

    def _terminal(self, order: _Working, status: OrderStatus, reason: str, ts_event: int, now: int) -> ExecutionRecord:
        return self._update(
            order.client_order_id,
            order.intent,
            status,
            order.quantity,
            order.filled,
            order.avg_price,
            reason,
            ts_event,
            now,
            order.decision.event_id,
        )

    def _update(
        self,
        coid: str,
        intent: OrderIntent,
        status: OrderStatus,
        quantity: float,
        filled: float,
        avg_price: float | None,
        reason: str | None,
        ts_event: int,
        now: int,
        causation_id: str,
    ) -> ExecutionRecord:
        return build_update(
            adapter=self.config.adapter,
            client_order_id=coid,
            intent=intent,
            status=status,
            quantity=quantity,
            filled_quantity=filled,
            avg_fill_price=avg_price,
            reason=reason,
            venue_order_id=None if status is OrderStatus.REJECTED and filled == 0 else f"paper-{coid}",
            ts_event=ts_event,
            ts_init=now,
            causation_id=causation_id,
        )


def _safe_qty(value: float) -> float:
    """A quantity fit for a record (non-negative, finite) for refusal updates."""
    return value if math.isfinite(value) and value >= 0 else 0.0


class PaperExecutionAdapter:
    """The paper engine behind the async adapter interface."""

    def __init__(self, engine: PaperExecutionEngine) -> None:
        self.engine = engine
        self.name = engine.config.adapter

    async def submit(
        self, intent: OrderIntent, decision: RiskDecision, market: MarketContext | None
    ) -> list[ExecutionRecord]:
        return self.engine.submit(intent, decision, market)

    async def on_bar(self, bar: Bar) -> list[ExecutionRecord]:
        return self.engine.on_bar(bar)
