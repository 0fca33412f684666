"""Live execution through ccxt: Bitget spot and USDT perpetuals, Binance spot
and USDT-M perpetuals, Coinbase spot.

This module is an I/O edge (async), not a pure engine: it talks to a ccxt
``async_support`` exchange instance and turns the answers into order-update
and fill records. Everything that decides (the risk verdict, the sizing)
happened upstream; this layer only validates against the venue's rules,
sends, and classifies what came back.

Invariants: the client order id is derived from the intent and sent in the venue's own
parameter, so a retry or redelivery can never place a second order (a duplicate-id answer is
``acknowledged`` / ``already_placed``); errors are classified into reasons, retriable ones
retried with the same id. A timeout or network failure on the last try leaves the order
``unknown`` (still in flight) until :meth:`CcxtExecutionAdapter.follow` finds it by client
order id. A missing fee is estimated and flagged (``Fill.fee_estimated``), a trade without a
usable price or amount is counted, logged and raised as an alert: nothing is dropped silently.
``dry_run`` (the default) sends nothing: orders are validated against the loaded markets,
which a markets snapshot can pin for offline, reproducible runs.

Design: docs/trading_engines.md#ccxt-execution
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ccxt
import structlog
from prometheus_client import Counter

from agents.clock import Clock
from agents.execution.interface import (
    ExecReason,
    ExecutionRecord,
    MarketContext,
    OpenOrder,
    build_update,
    client_order_id_for,
)
from agents.venue.ccxt import MarketType, VenueHint, VenueReason, build_exchange, classify, market_types
from runtime.errors import Retriable
from runtime.seen import SeenIds
from topics.records import (
    Alert,
    Fill,
    Liquidity,
    OrderIntent,
    OrderStatus,
    OrderType,
    RiskDecision,
    RiskVerdict,
    Severity,
    Side,
)
from topics.units import NS_PER_MS

__all__ = [
    "SUPPORTED_VENUES",
    "CcxtExecutionAdapter",
    "ErrorVerdict",
    "ExecutionUnavailable",
    "LiveExecutionConfig",
    "MarginMode",
    "PositionMode",
    "TradeProblem",
    "Validation",
    "VenueMarket",
    "classify_execution_error",
    "dump_markets_snapshot",
    "load_markets_snapshot",
    "make_execution_exchange",
]


log = structlog.get_logger("agents.execution")

#: The execution side's name for the one market-type enum.
VenueMarket = MarketType

FEES_ESTIMATED = Counter(
    "tradeflow_execution_fee_estimated_total",
    "Fills whose venue fee was missing or unparseable: the fee is an estimate (Fill.fee_estimated)",
    ["adapter"],
)
TRADES_INVALID = Counter(
    "tradeflow_execution_trades_invalid_total",
    "Venue trades not turned into fills (no usable price or amount), by reason",
    ["adapter", "reason"],
)
ORDERS_UNKNOWN = Counter(
    "tradeflow_execution_orders_unknown_total",
    "Orders whose placement was neither confirmed nor denied after the last try (status unknown)",
    ["adapter"],
)
FOLLOW_FAILURES = Counter(
    "tradeflow_execution_follow_failures_total",
    "Queries of open orders that got no usable answer (the order stays open; asked again later)",
    ["adapter", "reason"],
)


class TradeProblem(enum.StrEnum):
    """Why a venue trade did not become a fill (metric label, alert label)."""

    BAD_PRICE = "bad_price"
    BAD_AMOUNT = "bad_amount"


class MarginMode(enum.StrEnum):
    CROSS = "cross"
    ISOLATED = "isolated"


class PositionMode(enum.StrEnum):
    ONE_WAY = "one_way"
    HEDGE = "hedge"


#: The venue's own client-order-id parameter (see the module docstring).
_CLIENT_ID_PARAM = {"bitget": "clientOid", "binance": "newClientOrderId", "coinbase": "client_order_id"}
#: exchange id -> market types this adapter trades there: the venues with a client-order-id parameter.
SUPPORTED_VENUES: Mapping[str, frozenset[VenueMarket]] = {v: frozenset(market_types(v)) for v in _CLIENT_ID_PARAM}
#: Spot venues whose market buys are sized in quote: ccxt converts amount x price.
_QUOTE_SIZED_BUYS = frozenset({"bitget", "coinbase"})


class ExecutionUnavailable(Retriable, RuntimeError):
    """The venue cannot be reached or used at start-up (needs a human or a network)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveExecutionConfig:
    exchange_id: str
    market_type: VenueMarket = VenueMarket.SPOT
    #: Validate only, never send. On by default: sending is an explicit choice.
    dry_run: bool = True
    #: Perpetuals only: leverage set once per symbol before its first order (None: leave as is).
    leverage: int | None = None
    margin_mode: MarginMode = MarginMode.CROSS
    position_mode: PositionMode = PositionMode.ONE_WAY
    #: Tries of one order (first included) on retriable failures; same client order id each time.
    max_attempts: int = 3
    retry_base_delay_s: float = 0.5
    max_remembered_orders: int = 100_000
    connect_timeout_s: float = 15.0
    #: Fee rate assumed for a fill without a usable fee when the market lists no maker/taker rate.
    fallback_fee_rate: float = 0.001
    #: Open orders (unknown fate, resting, partially filled) are queried at most this often.
    follow_interval_s: float = 5.0

    def __post_init__(self) -> None:
        market_type = VenueMarket(self.market_type)
        object.__setattr__(self, "market_type", market_type)
        object.__setattr__(self, "margin_mode", MarginMode(self.margin_mode))
        object.__setattr__(self, "position_mode", PositionMode(self.position_mode))
        venues = SUPPORTED_VENUES.get(self.exchange_id)
        if venues is None or market_type not in venues:
            supported = {k: sorted(v) for k, v in SUPPORTED_VENUES.items()}
            raise ValueError(f"{self.exchange_id} {market_type.value} is not supported; supported: {supported}")
        if self.leverage is not None and (market_type is VenueMarket.SPOT or not 1 <= self.leverage <= 125):
            raise ValueError("leverage applies to perpetuals only, within 1..125")
        if self.exchange_id == "binance" and self.position_mode is PositionMode.HEDGE:
            # Hedge mode needs a positionSide per order, which intents do not carry.
            raise ValueError("binance hedge position mode is not supported; use one_way")
        if self.max_attempts < 1 or self.retry_base_delay_s < 0:
            raise ValueError("max_attempts must be >= 1 and retry_base_delay_s >= 0")
        if not (math.isfinite(self.fallback_fee_rate) and 0 <= self.fallback_fee_rate < 0.1):
            raise ValueError("fallback_fee_rate must be within [0, 0.1)")
        if not (math.isfinite(self.follow_interval_s) and self.follow_interval_s >= 0):
            raise ValueError("follow_interval_s must be >= 0")

    @property
    def adapter(self) -> str:
        return f"ccxt:{self.exchange_id}:{self.market_type.value}"


def make_execution_exchange(
    config: LiveExecutionConfig, credentials: Mapping[str, str] | None = None, timeout_ms: int = 10_000
) -> Any:
    """A ccxt async exchange for trading (:func:`agents.venue.ccxt.build_exchange`): rate limiting on,
    only the traded market type loaded, no currencies."""
    # margin pairs are a signed extra call we never trade
    options = {"fetchMargins": False} if config.exchange_id == "binance" else None
    return build_exchange(
        config.exchange_id, config.market_type, credentials=credentials, options=options, timeout_ms=timeout_ms
    )


def dump_markets_snapshot(exchange: Any) -> str:
    """The exchange's loaded markets as a snapshot (JSON text, sorted keys)."""
    markets = exchange.markets
    if not markets:
        raise ValueError("no markets loaded: call load_markets() first")
    return json.dumps(markets, sort_keys=True)


def load_markets_snapshot(text: str) -> dict[str, Any]:
    """A snapshot's markets, checked for the fields validation reads; ``ValueError`` otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"markets snapshot is not JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("markets snapshot must be a non-empty JSON object: symbol -> ccxt market (exchange.markets)")
    for symbol, market in data.items():
        if not isinstance(market, dict) or market.get("symbol") != symbol:
            raise ValueError(f"markets snapshot: entry {symbol!r} is not a ccxt market of that symbol")
        missing = [k for k in ("id", "precision", "limits") if k not in market]
        if missing:
            raise ValueError(f"markets snapshot: {symbol} lacks {missing}")
    return data


# ---------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorVerdict:
    reason: ExecReason
    retriable: bool
    #: The venue already holds an order with this client order id.
    duplicate: bool = False


#: The venue's reason as an order-update reason (those not decided by the message).
_EXEC_REASON: dict[VenueReason, ExecReason] = {
    VenueReason.CREDENTIALS_MISSING: ExecReason.CREDENTIALS_MISSING,
    VenueReason.AUTH_FAILED: ExecReason.AUTH_FAILED,
    VenueReason.RATE_LIMITED: ExecReason.RATE_LIMITED,
    VenueReason.TIMEOUT: ExecReason.VENUE_TIMEOUT,
    VenueReason.EXCHANGE_UNAVAILABLE: ExecReason.NETWORK_ERROR,
    VenueReason.NETWORK_ERROR: ExecReason.NETWORK_ERROR,
    VenueReason.BAD_SYMBOL: ExecReason.SYMBOL_NOT_SUPPORTED,
    VenueReason.INSUFFICIENT_FUNDS: ExecReason.INSUFFICIENT_FUNDS,
}
#: What the venue's message names, where its class is too broad to tell.
_EXEC_REASON_BY_HINT: dict[VenueHint, ExecReason] = {
    VenueHint.POSITION_RULE: ExecReason.POSITION_RULE,
    VenueHint.PRECISION: ExecReason.PRECISION_INVALID,
    VenueHint.MIN_NOTIONAL: ExecReason.MIN_NOTIONAL,
    VenueHint.SYMBOL: ExecReason.SYMBOL_NOT_SUPPORTED,
    # the venue says it is transient (Binance -1001 DISCONNECTED); the retry reuses the client order id
    VenueHint.TRY_AGAIN: ExecReason.NETWORK_ERROR,
}


def classify_execution_error(exc: BaseException) -> ErrorVerdict:
    """What an exception from an order call means for the order (see module docstring).

    A garbled answer to an order call (``bad_response``) is not retried unless
    the venue says "try again": it is a ``venue_error`` like anything unnamed.
    """
    verdict = classify(exc)
    if verdict.duplicate:
        return ErrorVerdict(ExecReason.ALREADY_PLACED, retriable=False, duplicate=True)
    reason = _EXEC_REASON.get(verdict.reason)
    if reason is None and verdict.hint is not None:
        reason = _EXEC_REASON_BY_HINT[verdict.hint]
    if reason is None:
        return ErrorVerdict(ExecReason.VENUE_ERROR, retriable=False)
    return ErrorVerdict(reason, retriable=verdict.retriable)


# ---------------------------------------------------------------------------
# Validation against the venue's market rules
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    ok: bool
    reason: ExecReason | None
    detail: str
    #: Amount in the venue's unit after its precision (base units; contracts on perpetuals).
    amount: float
    #: ``amount`` in base units (x contract size): what the records report.
    base_quantity: float
    #: Reference price used for the notional check (limit price or arrival price).
    price: float | None
    cost: float | None


_CCXT_STATUS = {
    "open": OrderStatus.ACKNOWLEDGED,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
#: Failures after which a sent order may or may not be live: the request (or its answer) was lost.
_FATE_UNKNOWN = frozenset({ExecReason.VENUE_TIMEOUT, ExecReason.NETWORK_ERROR})


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class CcxtExecutionAdapter:
    """Sends risk-approved intents to one venue account through ccxt."""

    def __init__(
        self,
        exchange: Any,
        config: LiveExecutionConfig,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        exchange_id = getattr(exchange, "id", None)
        if exchange_id != config.exchange_id:
            raise ValueError(f"exchange instance is {exchange_id!r}, config says {config.exchange_id}")
        self.exchange = exchange
        self.config = config
        self.clock = clock
        self.name = config.adapter
        self._sleep = sleep
        self._submitted: SeenIds[str] = SeenIds(config.max_remembered_orders)
        self._configured: set[str] = set()
        #: Client order ids sent to the venue, in order (what a duplicate-safety check inspects).
        self.sent_client_order_ids: list[str] = []
        #: Operator alerts raised while parsing answers (bad trades, lost orders); see :meth:`drain_alerts`.
        self._alerts: list[Alert] = []
        #: acknowledged orders the venue no longer knows (alerted once)
        self._lost: set[str] = set()

    def drain_alerts(self) -> list[Alert]:
        """The alerts raised since the last call (the agent publishes them to ``ops.alerts``)."""
        out, self._alerts = self._alerts, []
        return out

    def _alert(self, code: str, message: str, dedupe_key: str, ts: int, **labels: str) -> None:
        self._alerts.append(
            Alert.new(
                ts_init=self.clock.now_ns(),
                ts_event=ts,
                severity=Severity.WARNING,
                source=self.name,
                code=code,
                message=message,
                dedupe_key=dedupe_key,
                labels={"adapter": self.name, **labels},
            )
        )

    # ------------------------------------------------------------------
    # Start-up
    # ------------------------------------------------------------------

    async def connect(self) -> None:
        """Load markets within ``connect_timeout_s`` or raise :class:`ExecutionUnavailable`."""
        try:
            await asyncio.wait_for(self.exchange.load_markets(), self.config.connect_timeout_s)
        except (TimeoutError, ccxt.BaseError, OSError) as exc:
            raise ExecutionUnavailable(
                f"{self.config.exchange_id}: cannot load markets ({type(exc).__name__}: {str(exc)[:200]}); "
                "live execution refuses to start offline"
            ) from exc

    # ------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------

    def validate(self, intent: OrderIntent, quantity: float, market: MarketContext | None) -> Validation:
        """Check an order against the loaded market's rules (no network)."""

        def bad(reason: ExecReason, detail: str) -> Validation:
            return Validation(
                ok=False, reason=reason, detail=detail, amount=0.0, base_quantity=quantity, price=None, cost=None
            )

        if not (math.isfinite(quantity) and quantity > 0):
            return bad(ExecReason.INVALID_QUANTITY, f"quantity {quantity!r}")
        markets = self.exchange.markets or {}
        info = markets.get(intent.symbol)
        if info is None:
            return bad(ExecReason.SYMBOL_NOT_SUPPORTED, f"{intent.symbol} not listed on {self.config.exchange_id}")
        is_swap = bool(info.get("swap"))
        if is_swap != (self.config.market_type is VenueMarket.SWAP) or info.get("active") is False:
            return bad(ExecReason.SYMBOL_NOT_SUPPORTED, f"{intent.symbol} is not an active {self.config.market_type}")
        contract_size = _num(info.get("contractSize")) or 1.0
        try:
            amount = float(self.exchange.amount_to_precision(intent.symbol, quantity / contract_size))
        except (ccxt.BaseError, ValueError, TypeError) as exc:
            return bad(ExecReason.PRECISION_INVALID, str(exc)[:200])
        if not amount > 0:
            return bad(ExecReason.PRECISION_INVALID, f"{quantity} rounds to 0 at the market's precision")
        limits = info.get("limits") or {}
        min_amount = _num((limits.get("amount") or {}).get("min"))
        if min_amount is not None and amount < min_amount:
            return bad(ExecReason.MIN_AMOUNT, f"amount {amount} < min {min_amount}")
        price = intent.limit_price
        if price is None and market is not None and market.symbol == intent.symbol:
            price = market.last_price
        if price is None or not price > 0:
            return bad(ExecReason.MIN_NOTIONAL, "no reference price to check the minimum notional")
        cost = amount * contract_size * price
        min_cost = _num((limits.get("cost") or {}).get("min"))
        if min_cost is not None and cost < min_cost:
            return bad(ExecReason.MIN_NOTIONAL, f"notional {cost:.8g} < min {min_cost}")
        if intent.order_type is OrderType.LIMIT:
            try:
                price = float(self.exchange.price_to_precision(intent.symbol, price))
            except (ccxt.BaseError, ValueError, TypeError) as exc:
                return bad(ExecReason.PRECISION_INVALID, str(exc)[:200])
        return Validation(
            ok=True, reason=None, detail="", amount=amount, base_quantity=amount * contract_size, price=price, cost=cost
        )

    # ------------------------------------------------------------------
    # Submission
    # ------------------------------------------------------------------

    async def submit(
        self, intent: OrderIntent, decision: RiskDecision, market: MarketContext | None
    ) -> list[ExecutionRecord]:
        coid = client_order_id_for(intent.event_id)
        if not self._submitted.add(coid):
            return []
        now = self.clock.now_ns()

        def update(status: OrderStatus, qty: float, reason: str | None, venue_id: str | None = None) -> ExecutionRecord:
            return build_update(
                adapter=self.name,
                client_order_id=coid,
                intent=intent,
                status=status,
                quantity=qty,
                filled_quantity=0.0,
                avg_fill_price=None,
                reason=reason,
                venue_order_id=venue_id,
                ts_event=decision.ts_event,
                ts_init=now,
                causation_id=decision.event_id,
            )

        requested = intent.quantity if math.isfinite(intent.quantity) and intent.quantity >= 0 else 0.0
        if decision.intent_event_id != intent.event_id:
            return [update(OrderStatus.REJECTED, requested, ExecReason.DECISION_MISMATCH.value)]
        if decision.verdict is RiskVerdict.REJECTED:
            return [update(OrderStatus.REJECTED, requested, ExecReason.RISK_BLOCKED.value)]
        check = self.validate(intent, decision.approved_quantity, market)
        if not check.ok:
            assert check.reason is not None
            qty = decision.approved_quantity if math.isfinite(decision.approved_quantity) else 0.0
            return [update(OrderStatus.REJECTED, max(qty, 0.0), check.reason.value)]
        if self.config.dry_run:
            return [
                update(OrderStatus.NEW, check.base_quantity, ExecReason.DRY_RUN.value),
                update(OrderStatus.CANCELLED, check.base_quantity, ExecReason.DRY_RUN.value),
            ]
        if not self.exchange.check_required_credentials(False):
            return [update(OrderStatus.REJECTED, check.base_quantity, ExecReason.CREDENTIALS_MISSING.value)]
        setup_error = await self._configure_symbol(intent.symbol)
        if setup_error is not None:
            return [update(OrderStatus.REJECTED, check.base_quantity, setup_error.value)]
        return await self._send(intent, decision, check, coid, update)

    async def _send(
        self,
        intent: OrderIntent,
        decision: RiskDecision,
        check: Validation,
        coid: str,
        update: Callable[..., ExecutionRecord],
    ) -> list[ExecutionRecord]:
        cfg = self.config
        params: dict[str, Any] = {_CLIENT_ID_PARAM[cfg.exchange_id]: coid}
        if cfg.market_type is VenueMarket.SWAP:
            if intent.reduce_only:
                params["reduceOnly"] = True
            if cfg.exchange_id == "bitget":
                params["marginMode"] = cfg.margin_mode.value
                params["hedged"] = cfg.position_mode is PositionMode.HEDGE
        order_type = intent.order_type.value
        price: float | None = check.price
        if intent.order_type is OrderType.MARKET and not (
            intent.side is Side.BUY and cfg.market_type is VenueMarket.SPOT and cfg.exchange_id in _QUOTE_SIZED_BUYS
        ):
            price = None  # a price on a market order would make Binance size it in quote (quoteOrderQty)
        last: ErrorVerdict | None = None
        for attempt in range(cfg.max_attempts):
            if attempt:
                await self._sleep(cfg.retry_base_delay_s * 2 ** (attempt - 1))
            self.sent_client_order_ids.append(coid)
            try:
                order = await self.exchange.create_order(
                    intent.symbol, order_type, intent.side.value, check.amount, price, dict(params)
                )
            except Exception as exc:  # classified below; anything unknown is a venue error
                last = classify_execution_error(exc)
                if last.duplicate:
                    return [
                        update(OrderStatus.NEW, check.base_quantity, None),
                        update(OrderStatus.ACKNOWLEDGED, check.base_quantity, ExecReason.ALREADY_PLACED.value),
                    ]
                if last.retriable and attempt + 1 < cfg.max_attempts:
                    continue
                if last.reason in _FATE_UNKNOWN:
                    # the venue may hold the order: it stays in flight until follow() finds out
                    ORDERS_UNKNOWN.labels(self.name).inc()
                    log.warning(
                        "execution_order_fate_unknown",
                        adapter=self.name,
                        client_order_id=coid,
                        symbol=intent.symbol,
                        attempts=attempt + 1,
                        reason=last.reason.value,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    )
                    return [
                        update(OrderStatus.NEW, check.base_quantity, None),
                        update(OrderStatus.UNKNOWN, check.base_quantity, last.reason.value),
                    ]
                return [update(OrderStatus.REJECTED, check.base_quantity, last.reason.value)]
            return [
                update(OrderStatus.NEW, check.base_quantity, None),
                *self.records_from_order(intent, decision, order, check.base_quantity, check.price),
            ]
        raise AssertionError("unreachable: the loop returns")  # pragma: no cover

    async def _configure_symbol(self, symbol: str) -> ExecReason | None:
        """Margin mode, position mode and leverage once per perpetual symbol."""
        cfg = self.config
        if cfg.market_type is not VenueMarket.SWAP or symbol in self._configured:
            return None
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: self.exchange.set_margin_mode(cfg.margin_mode.value, symbol),
            lambda: self.exchange.set_position_mode(cfg.position_mode is PositionMode.HEDGE, symbol),
        ]
        if cfg.leverage is not None:
            leverage = cfg.leverage
            calls.append(lambda: self.exchange.set_leverage(leverage, symbol))
        for call in calls:
            try:
                await call()
            except ccxt.NoChange:
                continue  # already in that mode (MarginModeAlreadySet and kin)
            except Exception as exc:  # classified: a setup failure rejects the order
                verdict = classify_execution_error(exc)
                return ExecReason.POSITION_RULE if verdict.reason is ExecReason.VENUE_ERROR else verdict.reason
        self._configured.add(symbol)
        return None

    # ------------------------------------------------------------------
    # Following open orders
    # ------------------------------------------------------------------

    async def follow(self, order: OpenOrder) -> list[ExecutionRecord]:
        """What the venue says now of an open order, found by its client order id: the updates and
        fills not yet applied (``order`` holds what was), or nothing when the query failed.

        An order of unknown fate (``unknown``, or ``new`` with no answer applied: sent before a
        crash) that the venue does not know is ``rejected`` (``not_found_after_unknown``); an
        acknowledged one it does not know raises an alert and stays open. Dry run: nothing.
        """
        if self.config.dry_run:
            return []
        intent, decision = order.intent, order.decision
        coid = order.client_order_id
        now = self.clock.now_ns()
        quantity = order.quantity if order.quantity is not None else decision.approved_quantity
        try:
            found = await self._fetch_order(order)
        except ccxt.OrderNotFound:
            if order.status in (OrderStatus.UNKNOWN, OrderStatus.NEW):
                log.warning("execution_order_not_found", adapter=self.name, client_order_id=coid, resolved="rejected")
                return [
                    build_update(
                        adapter=self.name,
                        client_order_id=coid,
                        intent=intent,
                        status=OrderStatus.REJECTED,
                        quantity=quantity,
                        filled_quantity=0.0,
                        avg_fill_price=None,
                        reason=ExecReason.NOT_FOUND_AFTER_UNKNOWN.value,
                        venue_order_id=order.venue_order_id,
                        ts_event=decision.ts_event,
                        ts_init=now,
                        causation_id=decision.event_id,
                    )
                ]
            FOLLOW_FAILURES.labels(self.name, "not_found").inc()
            if coid in self._lost:  # alerted once per process; the metric counts every query
                return []
            self._lost.add(coid)
            log.error("execution_open_order_lost", adapter=self.name, client_order_id=coid, status=order.status.value)
            self._alert(
                "execution_order_lost",
                f"{intent.symbol} order {coid} ({order.status.value}) is not found at the venue; "
                "its exposure is still counted: check the account by hand",
                coid,
                decision.ts_event,
                symbol=intent.symbol,
            )
            return []
        except Exception as exc:  # classified and retried at the next follow; the order stays open
            reason = classify_execution_error(exc).reason.value
            FOLLOW_FAILURES.labels(self.name, reason).inc()
            log.warning(
                "execution_follow_failed",
                adapter=self.name,
                client_order_id=coid,
                reason=reason,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
            return []
        records = self.records_from_order(intent, decision, found, quantity, order.market_price, prior=order)
        if order.status in (OrderStatus.UNKNOWN, OrderStatus.NEW):
            log.info("execution_order_found", adapter=self.name, client_order_id=coid, status=found.get("status"))
        return records

    async def _fetch_order(self, order: OpenOrder) -> Mapping[str, Any]:
        """The venue's order by client order id (ccxt ``fetch_order`` with ``clientOrderId`` on Binance
        and Bitget; Coinbase looks orders up by its own id only: by that id once known, else among the
        symbol's orders since the decision). ``ccxt.OrderNotFound`` when the venue has none."""
        symbol, coid = order.intent.symbol, order.client_order_id
        if self.config.exchange_id == "coinbase":
            if order.venue_order_id is not None:
                found: Mapping[str, Any] = await self.exchange.fetch_order(order.venue_order_id, symbol)
                return found
            since_ms = order.decision.ts_event // NS_PER_MS - 60_000
            for candidate in await self.exchange.fetch_orders(symbol, since_ms):
                if candidate.get("clientOrderId") == coid:
                    return dict(candidate)
            raise ccxt.OrderNotFound(f"coinbase: no order with client_order_id {coid}")
        found = await self.exchange.fetch_order(order.venue_order_id, symbol, {"clientOrderId": coid})
        return found

    # ------------------------------------------------------------------
    # Parsing venue answers
    # ------------------------------------------------------------------

    def _contract_size(self, symbol: str) -> float:
        info = (self.exchange.markets or {}).get(symbol) or {}
        return _num(info.get("contractSize")) or 1.0

    def records_from_order(
        self,
        intent: OrderIntent,
        decision: RiskDecision,
        order: Mapping[str, Any],
        quantity: float,
        arrival_price: float | None,
        *,
        prior: OpenOrder | None = None,
    ) -> list[ExecutionRecord]:
        """Lifecycle updates and fills from a ccxt order structure (create or fetch).

        Venue amounts (contracts on perpetuals) are converted to base units.
        ``prior``: what was applied of this order already (a follow-up query):
        its fills are not repeated, ``acknowledged`` only comes once.
        """
        coid = client_order_id_for(intent.event_id)
        size = self._contract_size(intent.symbol)
        now = self.clock.now_ns()
        venue_id = order.get("id")
        venue_id = str(venue_id) if venue_id is not None else None
        ts_ms = order.get("timestamp")
        ts = int(ts_ms) * NS_PER_MS if isinstance(ts_ms, (int, float)) and ts_ms > 0 else decision.ts_event
        filled = (_num(order.get("filled")) or 0.0) * size
        average = _num(order.get("average"))
        status = _CCXT_STATUS.get(str(order.get("status")), OrderStatus.ACKNOWLEDGED)

        def upd(st: OrderStatus, filled_qty: float, avg: float | None, reason: str | None = None) -> ExecutionRecord:
            return build_update(
                adapter=self.name,
                client_order_id=coid,
                intent=intent,
                status=st,
                quantity=quantity,
                filled_quantity=filled_qty,
                avg_fill_price=avg,
                reason=reason,
                venue_order_id=venue_id,
                ts_event=ts,
                ts_init=now,
                causation_id=decision.event_id,
            )

        out: list[ExecutionRecord] = []
        if prior is None or prior.status in (OrderStatus.NEW, OrderStatus.UNKNOWN):
            out.append(upd(OrderStatus.ACKNOWLEDGED, 0.0, None))
        fills = self._fills(intent, decision, order, coid, ts, now, arrival_price, size, prior)
        out.extend(fills)
        if filled > 0 and average is None:
            known = [] if prior is None else [(prior.filled, prior.notional)]
            total = sum(f.quantity for f in fills) + sum(q for q, _ in known)
            notional = sum(f.price * f.quantity for f in fills) + sum(n for _, n in known)
            average = notional / total if total > 0 else None
        if status is OrderStatus.FILLED or (filled > 0 and filled >= quantity):
            out.append(upd(OrderStatus.FILLED, filled, average))
        elif filled > 0:
            out.append(upd(OrderStatus.PARTIALLY_FILLED, filled, average))
            if status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED):
                out.append(upd(status, filled, average, "venue_" + status.value))
        elif status in (OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED):
            out.append(upd(status, 0.0, None, "venue_" + status.value))
        return out

    def _fills(
        self,
        intent: OrderIntent,
        decision: RiskDecision,
        order: Mapping[str, Any],
        coid: str,
        ts: int,
        now: int,
        arrival_price: float | None,
        size: float,
        prior: OpenOrder | None = None,
    ) -> list[Fill]:
        """Fills from the order's trades not applied yet; the rest of the order's ``filled`` (no trades
        listed, or trades without a usable price or amount) as one aggregate fill at the price that
        makes the order's ``average`` come out.

        ``slippage_bps`` is measured against the arrival price, positive when
        worse for us; ``impact_bps`` is 0: live fills do not separate impact.
        """
        quote = intent.symbol.partition("/")[2].split(":", 1)[0]
        known_ids = prior.fill_ids if prior is not None else frozenset()
        covered = prior.filled if prior is not None else 0.0
        covered_notional = prior.notional if prior is not None else 0.0
        rows: list[tuple[str, float, float, Any, int, Liquidity]] = []
        trades = order.get("trades") or []
        for i, trade in enumerate(trades):
            fill_id = str(trade.get("id") or f"{order.get('id')}-{i}")
            price, amount = _num(trade.get("price")), _num(trade.get("amount"))
            if price is None or amount is None or not (price > 0 and amount > 0):
                problem = TradeProblem.BAD_PRICE if price is None or not price > 0 else TradeProblem.BAD_AMOUNT
                self._bad_trade(intent, coid, fill_id, problem, trade, ts)
                continue
            if fill_id in known_ids:
                continue
            amount *= size
            trade_ts = trade.get("timestamp")
            rows.append(
                (
                    fill_id,
                    price,
                    amount,
                    trade.get("fee"),
                    int(trade_ts) * NS_PER_MS if isinstance(trade_ts, (int, float)) and trade_ts > 0 else ts,
                    Liquidity.MAKER if trade.get("takerOrMaker") == "maker" else Liquidity.TAKER,
                )
            )
            covered += amount
            covered_notional += price * amount
        filled, average = (_num(order.get("filled")) or 0.0) * size, _num(order.get("average"))
        rest = filled - covered
        if rest > filled * 1e-9 and average is not None and average > 0:
            price = (average * filled - covered_notional) / rest
            if not (math.isfinite(price) and price > 0):
                price = average
            # the order's own fee is for all of it: usable only when this fill is all of it
            fee = order.get("fee") if covered == 0.0 else None
            rows.append((f"{order.get('id')}-agg-{filled}", price, rest, fee, ts, Liquidity.TAKER))
        out: list[Fill] = []
        for fill_id, price, amount, fee, fill_ts, liquidity in rows:
            fee_cost, fee_ccy, estimated = self._fee(fee, price, amount, liquidity, intent.symbol, quote)
            if estimated:
                FEES_ESTIMATED.labels(self.name).inc()
                log.warning(
                    "execution_fee_missing",
                    adapter=self.name,
                    client_order_id=coid,
                    fill_id=fill_id,
                    venue_fee=repr(fee)[:200],
                    estimated_fee=fee_cost,
                    fee_currency=fee_ccy,
                )
            slip = 0.0
            if arrival_price is not None and arrival_price > 0:
                sign = 1.0 if intent.side is Side.BUY else -1.0
                slip = sign * (price / arrival_price - 1.0) * 10_000
            out.append(
                Fill.new(
                    ts_init=now,
                    correlation_id=intent.correlation_id,
                    causation_id=decision.event_id,
                    ts_event=fill_ts,
                    client_order_id=coid,
                    fill_id=fill_id,
                    adapter=self.name,
                    symbol=intent.symbol,
                    side=intent.side,
                    price=price,
                    quantity=amount,
                    fee=fee_cost,
                    fee_currency=fee_ccy,
                    liquidity=liquidity,
                    slippage_bps=slip,
                    impact_bps=0.0,
                    fee_estimated=estimated,
                )
            )
        return out

    def _fee(
        self, fee: Any, price: float, amount: float, liquidity: Liquidity, symbol: str, quote: str
    ) -> tuple[float, str, bool]:
        """(cost, currency, estimated): the venue's fee when it gives a finite cost, else the market's
        maker/taker rate (``fallback_fee_rate`` when it lists none) x notional, in quote."""
        if isinstance(fee, Mapping):
            cost = _num(fee.get("cost"))
            if cost is not None:
                return cost, str(fee.get("currency") or quote), False
        info = (self.exchange.markets or {}).get(symbol) or {}
        rate = _num(info.get("maker" if liquidity is Liquidity.MAKER else "taker"))
        if rate is None or rate < 0:
            rate = self.config.fallback_fee_rate
        return price * amount * rate, quote, True

    def _bad_trade(
        self, intent: OrderIntent, coid: str, fill_id: str, problem: TradeProblem, trade: Mapping[str, Any], ts: int
    ) -> None:
        """A venue trade that cannot be a fill: counted, logged and raised as an alert (its quantity is
        covered by the aggregate fill when the order reports its filled amount and average)."""
        TRADES_INVALID.labels(self.name, problem.value).inc()
        detail = f"price={trade.get('price')!r} amount={trade.get('amount')!r}"
        log.warning(
            "execution_trade_invalid",
            adapter=self.name,
            client_order_id=coid,
            fill_id=fill_id,
            reason=problem.value,
            detail=detail[:200],
        )
        self._alert(
            "execution_trade_invalid",
            f"{intent.symbol} order {coid}: venue trade {fill_id} has no usable {problem.value[4:]} ({detail[:120]})",
            f"{coid}|{fill_id}",
            ts,
            symbol=intent.symbol,
            reason=problem.value,
        )
