"""The execution boundary: one adapter interface, deterministic client order
ids, the shared reason codes, and the order-update builder.

Every adapter (paper, ccxt live, dry-run) turns an approved intent into
:class:`~topics.records.OrderUpdate` and :class:`~topics.records.Fill`
records. Order lifecycle, as statuses on ``OrderUpdate``::

    new -> acknowledged -> partially_filled* -> filled
                       \\-> cancelled | expired | rejected (terminal)
    new -> rejected (refused before reaching the venue)
    new -> unknown -> acknowledged ... | rejected (placement neither confirmed
                      nor denied; resolved by a query by client order id)

An order handed to a venue and not yet terminal is an :class:`OpenOrder`: the
core keeps them (checkpointed) so an adapter can follow them and a restarted
agent can fetch back what happened to them while it was down.

Idempotency rests on :func:`client_order_id_for`: the id is a pure function of
the intent's event id, so a redelivered or retried intent carries the same id
to the venue (which refuses a second order with it) and to the adapter's own
seen-set (which ignores it before any venue call).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Protocol

from topics.records import Fill, OrderIntent, OrderStatus, OrderType, OrderUpdate, RiskDecision, Side

__all__ = [
    "CLIENT_ORDER_ID_LENGTH",
    "CLIENT_ORDER_ID_PREFIX",
    "TERMINAL_STATUSES",
    "ExecReason",
    "ExecutionAdapter",
    "ExecutionRecord",
    "InFlightOrders",
    "MarketContext",
    "OpenOrder",
    "build_update",
    "client_order_id_for",
]

#: 32 characters of [a-z0-9]: within Binance's 36, Bitget's 40 and Coinbase's
#: free-form limit, and free of characters any of them reject.
CLIENT_ORDER_ID_LENGTH = 32
CLIENT_ORDER_ID_PREFIX = "tf"

ExecutionRecord = OrderUpdate | Fill


def client_order_id_for(intent_event_id: str) -> str:
    """Deterministic client order id of an intent: ``tf`` + 30 hex of sha256."""
    digest = hashlib.sha256(b"tradeflow.coid.v1|" + intent_event_id.encode()).hexdigest()
    return CLIENT_ORDER_ID_PREFIX + digest[: CLIENT_ORDER_ID_LENGTH - len(CLIENT_ORDER_ID_PREFIX)]


class ExecReason(enum.StrEnum):
    """Why an order was refused, cancelled or expired. Stable: metric label."""

    # -- both adapters ------------------------------------------------------
    INVALID_QUANTITY = "invalid_quantity"
    RISK_BLOCKED = "risk_blocked"
    DECISION_MISMATCH = "decision_mismatch"
    VENUE_ERROR = "venue_error"
    VENUE_TIMEOUT = "venue_timeout"
    CANCEL_REQUESTED = "cancel_requested"
    # -- paper fill model ---------------------------------------------------------
    SLIPPAGE_TOO_WIDE = "slippage_too_wide"
    NO_FILL_AFTER_RETRIES = "no_fill_after_retries"
    # -- live venues ----------------------------------------------------------------
    CREDENTIALS_MISSING = "credentials_missing"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"
    NETWORK_ERROR = "network_error"
    SYMBOL_NOT_SUPPORTED = "symbol_not_supported"
    PRECISION_INVALID = "precision_invalid"
    MIN_AMOUNT = "min_amount"
    MIN_NOTIONAL = "min_notional"
    POSITION_RULE = "position_rule"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    #: Informational: the venue already had this client order id (idempotent retry).
    ALREADY_PLACED = "already_placed"
    #: Informational: validated in dry-run mode, not sent.
    DRY_RUN = "dry_run"
    #: An order of unknown fate that a query by client order id did not find at the venue.
    NOT_FOUND_AFTER_UNKNOWN = "not_found_after_unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketContext:
    """What the caller knows of the market when submitting (the arrival price)."""

    symbol: str
    last_price: float
    ts_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrder:
    """An order handed to a venue and not terminal yet, as far as its applied answers tell.

    ``fill_ids`` and ``filled`` (base quantity, the sum of the applied fills)
    let a follow-up query report only what is new: a fill already applied is
    never applied again, and an aggregate fill (a venue that reports only the
    cumulative filled amount) covers only the part not yet covered.
    """

    intent: OrderIntent
    decision: RiskDecision
    market: MarketContext | None
    status: OrderStatus = OrderStatus.NEW
    venue_order_id: str | None = None
    #: the order's quantity in its last applied update (None: no update applied yet)
    quantity: float | None = None
    filled: float = 0.0
    #: sum of price x quantity of the applied fills
    notional: float = 0.0
    fill_ids: frozenset[str] = frozenset()
    #: event ids of the order updates applied (a repeated one changes nothing)
    update_ids: frozenset[str] = frozenset()

    @property
    def client_order_id(self) -> str:
        return client_order_id_for(self.intent.event_id)

    @property
    def market_price(self) -> float | None:
        """The reference price slippage is measured against: the limit price, else the arrival price."""
        if self.intent.limit_price is not None:
            return self.intent.limit_price
        market = self.market
        return market.last_price if market is not None and market.symbol == self.intent.symbol else None


class ExecutionAdapter(Protocol):
    """Submit one risk-checked intent; get the lifecycle records it caused."""

    name: str

    async def submit(
        self, intent: OrderIntent, decision: RiskDecision, market: MarketContext | None
    ) -> list[ExecutionRecord]: ...


def build_update(
    *,
    adapter: str,
    client_order_id: str,
    intent: OrderIntent,
    status: OrderStatus,
    quantity: float,
    filled_quantity: float,
    avg_fill_price: float | None,
    reason: str | None,
    venue_order_id: str | None,
    ts_event: int,
    ts_init: int,
    causation_id: str | None = None,
) -> OrderUpdate:
    """One ``OrderUpdate``; its id is deterministic in (coid, status, filled)."""
    return OrderUpdate.new(
        ts_init=ts_init,
        correlation_id=intent.correlation_id,
        causation_id=causation_id if causation_id is not None else intent.event_id,
        ts_event=ts_event,
        client_order_id=client_order_id,
        venue_order_id=venue_order_id,
        adapter=adapter,
        symbol=intent.symbol,
        side=Side(intent.side),
        order_type=OrderType(intent.order_type),
        quantity=quantity,
        filled_quantity=filled_quantity,
        avg_fill_price=avg_fill_price,
        status=status,
        reason=reason,
    )


TERMINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})
_TERMINAL = TERMINAL_STATUSES

#: Exact fixed-point scale for signed quantities: every finite double is an
#: integer multiple of 2**-1074, so ``value * 2**1074`` is an exact Python int.
_EXACT_SHIFT = 1074
_EXACT_ONE = 1 << _EXACT_SHIFT


def _exact(value: float) -> int:
    """``value`` as an exact integer multiple of 2**-1074 (no rounding at all)."""
    num, den = value.as_integer_ratio()  # den is a power of two
    return num << (_EXACT_SHIFT - (den.bit_length() - 1))


@dataclass(slots=True)
class _Pending:
    symbol: str
    sign: float
    quantity: float
    filled: float
    since_ns: int
    #: Insertion sequence: tells a live expiry-heap entry from a stale one.
    seq: int = 0

    def remaining(self) -> float:
        return self.sign * max(0.0, self.quantity - self.filled)


@dataclass(slots=True)
class InFlightOrders:
    """Orders sent but not yet ended, from the execution stream (pure state).

    Strategy and risk both measure the next order against ``portfolio
    position + net()``: without it two exits decided before the first one
    fills would both go out. An order is added when decided; each
    non-terminal ``OrderUpdate`` sets what is left (``quantity -
    filled_quantity``, so a reduced approval or a partial fill is exact, and
    a redelivered or out-of-order older update never grows it back); a
    terminal one removes it. ``Fill`` records are not needed: the update
    sent with each fill carries the cumulative filled quantity. An order no
    update ever ends stops counting after ``ttl_ns``.

    Cost: every operation is O(1) amortized (``net`` used to scan every
    order in flight, so risk decisions slowed down linearly with the book).
    Each symbol keeps a running sum of its orders' signed remaining
    quantities, held *exactly* as an integer multiple of 2**-1074 (every
    double is one), so adding and removing orders never leaves float residue:
    with nothing in flight the net is exactly ``0.0``, and a net is the
    correctly rounded sum of its orders whatever the order of events.
    Expiry uses a min-heap on the decision time with lazy deletion (an entry
    whose order has ended or been replaced is skipped when it surfaces; the
    heap is rebuilt when stale entries dominate).
    """

    ttl_ns: int
    _orders: dict[str, _Pending] = field(default_factory=dict)
    _net: dict[str, int] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)
    _expiry: list[tuple[int, int, str]] = field(default_factory=list)
    _seq: int = 0

    def add(self, client_order_id: str, symbol: str, side: Side, quantity: float, now_ns: int) -> None:
        if client_order_id in self._orders:
            self._remove(client_order_id)
        self._seq += 1
        pending = _Pending(symbol, 1.0 if side is Side.BUY else -1.0, quantity, 0.0, now_ns, self._seq)
        self._orders[client_order_id] = pending
        self._net[symbol] = self._net.get(symbol, 0) + _exact(pending.remaining())
        self._count[symbol] = self._count.get(symbol, 0) + 1
        heapq.heappush(self._expiry, (now_ns, pending.seq, client_order_id))
        if len(self._expiry) > 2 * len(self._orders) + 64:
            self._expiry = [(p.since_ns, p.seq, k) for k, p in self._orders.items()]
            heapq.heapify(self._expiry)

    def on_execution(self, record: OrderUpdate | Fill) -> None:
        pending = self._orders.get(record.client_order_id)
        if pending is None or not isinstance(record, OrderUpdate):
            return
        if record.status in _TERMINAL:
            self._remove(record.client_order_id)
        elif record.filled_quantity >= pending.filled:
            before = _exact(pending.remaining())
            pending.filled = record.filled_quantity
            pending.quantity = record.quantity
            self._net[pending.symbol] += _exact(pending.remaining()) - before

    def net(self, symbol: str, now_ns: int) -> float:
        """Signed quantity still to fill for ``symbol`` (+ buys, - sells)."""
        heap = self._expiry
        while heap and now_ns - heap[0][0] > self.ttl_ns:
            _, seq, coid = heapq.heappop(heap)
            pending = self._orders.get(coid)
            if pending is not None and pending.seq == seq:
                self._remove(coid)
        total = self._net.get(symbol, 0)
        return total / _EXACT_ONE if total else 0.0

    def _remove(self, client_order_id: str) -> None:
        pending = self._orders.pop(client_order_id)
        symbol = pending.symbol
        left = self._count[symbol] - 1
        if left:
            self._count[symbol] = left
            self._net[symbol] -= _exact(pending.remaining())
        else:  # last order of the symbol: drop the aggregate (exactly 0 by construction)
            del self._count[symbol]
            del self._net[symbol]

    def __len__(self) -> int:
        return len(self._orders)
