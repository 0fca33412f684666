"""Live ccxt execution, offline: real ccxt async exchange instances (request
signing, URL building, response parsing and error mapping are ccxt's own)
whose HTTP ``fetch`` serves recorded venue responses. Markets come from the
recorded market fixtures (Binance, Bitget swap, Coinbase) or, for Bitget
spot, ``set_markets`` with a realistic market structure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import ccxt
import pytest
from prometheus_client import REGISTRY

from agents.clock import EventClock
from agents.execution.ccxt_live import (
    CcxtExecutionAdapter,
    ExecutionUnavailable,
    LiveExecutionConfig,
    VenueMarket,
    classify_execution_error,
    make_execution_exchange,
)
from agents.execution.interface import ExecReason, MarketContext, OpenOrder, client_order_id_for
from tests import builders
from tests.fixtures.ccxt.replay import Interaction, ReplayTransport
from topics.records import (
    Fill,
    Liquidity,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Side,
)

pytestmark = pytest.mark.timeout(20)

NOW = 1_609_495_200_000_000_000  # 2021-01-01 10:00 UTC
KEYS = {"apiKey": "test-key", "secret": "test-secret-0123456789abcdef0123456789"}


# ---------------------------------------------------------------------------
# Recorded venue traffic
# ---------------------------------------------------------------------------


def reply(
    method: str, path: str, body: Any = None, *, status: int = 200, raise_: str | None = None, repeat: bool = False
) -> Interaction:
    return Interaction(
        method=method,
        path=path,
        query={},
        response=None if raise_ else {"status": status, "body": body},
        raise_=raise_,
        repeat=repeat,
        source="inline",
    )


class Venue:
    """A ccxt exchange whose HTTP layer replays; records every request body."""

    def __init__(self, exchange: Any, fixture: str | None, *interactions: Interaction) -> None:
        self.exchange = exchange
        exchange.enableRateLimit = False  # replayed responses: ccxt's throttle would only add sleeps
        exchange.timeout_on_exit = 0  # no sockets were opened: nothing to drain on close
        self.transport = ReplayTransport.install(exchange, *([fixture] if fixture else []))
        self.transport.interactions.extend(interactions)
        self.calls: list[tuple[str, str, str]] = []
        inner = self.transport.fetch

        async def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
            self.calls.append((method, urlsplit(url).path, body or urlsplit(url).query))
            return await inner(url, method, headers, body)

        exchange.fetch = fetch

    def posts(self, path: str) -> list[str]:
        return [body for method, p, body in self.calls if method == "POST" and p == path]


def binance_coid(body: str) -> str:
    return dict(parse_qsl(body))["newClientOrderId"]


async def venue(
    exchange_id: str,
    market_type: str,
    fixture: str | None,
    *interactions: Interaction,
    credentials: dict[str, str] | None = None,
    dry_run: bool = False,
    **cfg: Any,
) -> tuple[CcxtExecutionAdapter, Venue, list[float]]:
    config = LiveExecutionConfig(exchange_id=exchange_id, market_type=VenueMarket(market_type), dry_run=dry_run, **cfg)
    exchange = make_execution_exchange(config, credentials if credentials is not None else KEYS)
    v = Venue(exchange, fixture, *interactions)
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    adapter = CcxtExecutionAdapter(exchange, config, EventClock(NOW), sleep=sleep)
    if fixture is not None:
        await adapter.connect()
    _open.append(exchange)
    return adapter, v, delays


_open: list[Any] = []


@pytest.fixture(autouse=True)
async def _close_exchanges() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


_signal_ids = builders.Numbered("sig-")


def order(
    symbol: str = "BTC/USDT",
    side: Side = Side.BUY,
    qty: float = 0.01,
    *,
    reduce_only: bool = False,
    limit: float | None = None,
    verdict: RiskVerdict = RiskVerdict.APPROVED,
) -> tuple[OrderIntent, RiskDecision]:
    it = builders.intent(
        side=side,
        quantity=qty,
        symbol=symbol,
        track="live",
        limit_price=limit,
        reduce_only=reduce_only,
        signal_event_id=_signal_ids(),
        ts=NOW,
    )
    return it, builders.decision(it, verdict=verdict)


def mkt(symbol: str = "BTC/USDT", price: float = 29_000.0) -> MarketContext:
    return MarketContext(symbol=symbol, last_price=price, ts_ns=NOW)


def statuses(records: list[OrderUpdate | Fill]) -> list[str]:
    return [r.status.value if isinstance(r, OrderUpdate) else "fill" for r in records]


BINANCE_ORDER = "/api/v3/order"


def binance_filled(coid: str) -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "orderId": 28,
        "orderListId": -1,
        "clientOrderId": coid,
        "transactTime": 1609495200123,
        "price": "0.00000000",
        "origQty": "0.01000000",
        "executedQty": "0.01000000",
        "cummulativeQuoteQty": "290.12000000",
        "status": "FILLED",
        "timeInForce": "GTC",
        "type": "MARKET",
        "side": "BUY",
        "workingTime": 1609495200123,
        "fills": [
            {
                "price": "29010.00000000",
                "qty": "0.00600000",
                "commission": "0.00000600",
                "commissionAsset": "BTC",
                "tradeId": 12,
            },
            {
                "price": "29015.00000000",
                "qty": "0.00400000",
                "commission": "0.00000400",
                "commissionAsset": "BTC",
                "tradeId": 13,
            },
        ],
        "selfTradePreventionMode": "NONE",
    }


def binance_error(code: int, msg: str, status: int = 400) -> Interaction:
    return reply("POST", BINANCE_ORDER, {"code": code, "msg": msg}, status=status)


# ---------------------------------------------------------------------------
# Dry run: venue rules, nothing sent
# ---------------------------------------------------------------------------


async def test_dry_run_valid_order_then_validated_and_nothing_sent() -> None:
    adapter, v, _ = await venue("binance", "spot", "binance_spot_markets.json", dry_run=True)
    it, dec = order(qty=0.0123456)
    out = await adapter.submit(it, dec, mkt())
    assert statuses(out) == ["new", "cancelled"]
    assert all(isinstance(u, OrderUpdate) and u.reason == ExecReason.DRY_RUN for u in out)
    assert isinstance(out[0], OrderUpdate) and out[0].quantity == 0.01234  # amount precision 1e-5, truncated
    assert v.posts(BINANCE_ORDER) == [] and adapter.sent_client_order_ids == []


@pytest.mark.parametrize(
    ("symbol", "qty", "price", "reason"),
    [
        ("BTC/USDT", 0.0001, 29_000.0, ExecReason.MIN_NOTIONAL),  # 2.90 USDT < 5
        ("BTC/USDT", 0.000001, 29_000.0, ExecReason.PRECISION_INVALID),  # below the 1e-5 step
        ("XRP/USDT", 10.0, 0.5, ExecReason.SYMBOL_NOT_SUPPORTED),
        ("LUNA/USDT", 10.0, 0.5, ExecReason.SYMBOL_NOT_SUPPORTED),  # listed, but status BREAK
    ],
)
async def test_dry_run_breaking_a_market_rule_then_rejected_with_that_rule(
    symbol: str, qty: float, price: float, reason: ExecReason
) -> None:
    adapter, v, _ = await venue("binance", "spot", "binance_spot_markets.json", dry_run=True)
    (rej,) = await adapter.submit(*order(symbol, qty=qty), mkt(symbol, price))
    assert isinstance(rej, OrderUpdate) and rej.status is OrderStatus.REJECTED and rej.reason == reason
    assert v.posts(BINANCE_ORDER) == []


BITGET_SPOT_BTC = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "settle": None,
    "baseId": "BTC",
    "quoteId": "USDT",
    "settleId": None,
    "type": "spot",
    "spot": True,
    "margin": False,
    "swap": False,
    "future": False,
    "option": False,
    "active": True,
    "contract": False,
    "linear": None,
    "inverse": None,
    "contractSize": None,
    "taker": 0.001,
    "maker": 0.001,
    "expiry": None,
    "expiryDatetime": None,
    "strike": None,
    "optionType": None,
    "precision": {"amount": 0.000001, "price": 0.01},
    "limits": {
        "amount": {"min": 0.0001, "max": None},
        "price": {"min": None, "max": None},
        "cost": {"min": 1.0, "max": None},
        "leverage": {"min": None, "max": None},
    },
    "info": {
        "symbol": "BTCUSDT",
        "baseCoin": "BTC",
        "quoteCoin": "USDT",
        "minTradeAmount": "0",
        "pricePrecision": "2",
        "quantityPrecision": "6",
        "quotePrecision": "8",
        "status": "online",
        "minTradeUSDT": "1",
    },
    "created": None,
}


async def test_bitget_spot_below_min_amount_then_min_amount() -> None:
    adapter, _, _ = await venue("bitget", "spot", None, dry_run=True)
    adapter.exchange.set_markets([BITGET_SPOT_BTC])
    (rej,) = await adapter.submit(*order(qty=0.00005), mkt(price=60_000.0))
    assert isinstance(rej, OrderUpdate) and rej.reason == ExecReason.MIN_AMOUNT


async def test_bitget_spot_market_buy_then_sized_in_quote_with_our_client_oid() -> None:
    path = "/api/v2/spot/trade/place-order"
    ack = {
        "code": "00000",
        "msg": "success",
        "requestTime": 1609495200000,
        "data": {"orderId": "1001", "clientOid": "x"},
    }
    adapter, v, _ = await venue(
        "bitget", "spot", None, reply("POST", path, ack), credentials={**KEYS, "password": "pass"}
    )
    adapter.exchange.set_markets([BITGET_SPOT_BTC])
    it, dec = order(qty=0.002)
    out = await adapter.submit(it, dec, mkt(price=29_000.0))
    assert statuses(out) == ["new", "acknowledged"]
    assert isinstance(out[1], OrderUpdate) and out[1].venue_order_id == "1001"
    body = json.loads(v.posts(path)[0])
    assert body["clientOid"] == client_order_id_for(it.event_id)
    assert body["side"] == "buy" and float(body["size"]) == pytest.approx(58.0)  # 0.002 x 29,000 USDT


# ---------------------------------------------------------------------------
# Live placement, fills and idempotency
# ---------------------------------------------------------------------------


async def test_binance_market_buy_filled_then_fills_from_the_venue_trades() -> None:
    it, dec = order(qty=0.01)
    coid = client_order_id_for(it.event_id)
    adapter, v, _ = await venue(
        "binance", "spot", "binance_spot_markets.json", reply("POST", BINANCE_ORDER, binance_filled(coid))
    )
    out = await adapter.submit(it, dec, mkt(price=29_000.0))
    assert statuses(out) == ["new", "acknowledged", "fill", "fill", "filled"]
    (body,) = v.posts(BINANCE_ORDER)
    sent = dict(parse_qsl(body))
    assert sent["newClientOrderId"] == coid and sent["quantity"] == "0.01" and "quoteOrderQty" not in sent
    fills = [r for r in out if isinstance(r, Fill)]
    assert [(f.price, f.quantity, f.fee, f.fee_currency) for f in fills] == [
        (29_010.0, 0.006, 0.000006, "BTC"),
        (29_015.0, 0.004, 0.000004, "BTC"),
    ]
    assert fills[0].slippage_bps == pytest.approx((29_010 / 29_000 - 1) * 10_000)
    assert fills[0].ts_event == 1_609_495_200_123_000_000 and fills[0].client_order_id == coid
    done = out[-1]
    assert isinstance(done, OrderUpdate) and done.filled_quantity == 0.01 and done.venue_order_id == "28"
    assert done.avg_fill_price == pytest.approx(29_012.0)


async def test_binance_limit_order_partially_filled_then_partial_update_and_one_fill() -> None:
    it, dec = order(qty=0.01, limit=29_000.0)
    coid = client_order_id_for(it.event_id)
    partial = {
        **binance_filled(coid),
        "type": "LIMIT",
        "price": "29000.00",
        "status": "PARTIALLY_FILLED",
        "executedQty": "0.00400000",
        "cummulativeQuoteQty": "116.00000000",
        "fills": [
            {
                "price": "29000.00",
                "qty": "0.00400000",
                "commission": "0.11600000",
                "commissionAsset": "USDT",
                "tradeId": 21,
            }
        ],
    }
    adapter, v, _ = await venue("binance", "spot", "binance_spot_markets.json", reply("POST", BINANCE_ORDER, partial))
    out = await adapter.submit(it, dec, mkt())
    assert statuses(out) == ["new", "acknowledged", "fill", "partially_filled"]
    assert dict(parse_qsl(v.posts(BINANCE_ORDER)[0]))["price"] == "29000"
    upd = out[-1]
    assert isinstance(upd, OrderUpdate) and upd.filled_quantity == 0.004 and upd.quantity == 0.01


async def test_timeout_then_retry_with_same_client_order_id_and_duplicate_means_already_placed() -> None:
    adapter, v, delays = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        reply("POST", BINANCE_ORDER, raise_="RequestTimeout"),
        binance_error(-2010, "Duplicate order sent."),
    )
    it, dec = order()
    out = await adapter.submit(it, dec, mkt())
    first, second = v.posts(BINANCE_ORDER)
    assert binance_coid(first) == binance_coid(second) == client_order_id_for(it.event_id)
    assert statuses(out) == ["new", "acknowledged"]
    assert isinstance(out[1], OrderUpdate) and out[1].reason == ExecReason.ALREADY_PLACED
    assert delays == [0.5]


async def test_rate_limited_then_retried_with_same_id_and_filled_once() -> None:
    it, dec = order()
    coid = client_order_id_for(it.event_id)
    adapter, v, delays = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        binance_error(
            -1003, "Too much request weight used; current limit is 6000 request weight per 1 MINUTE.", status=429
        ),
        reply("POST", BINANCE_ORDER, binance_filled(coid)),
    )
    out = await adapter.submit(it, dec, mkt())
    assert [binance_coid(b) for b in v.posts(BINANCE_ORDER)] == [coid, coid]
    assert statuses(out)[-1] == "filled" and delays == [0.5]


async def test_rate_limited_on_every_attempt_then_rejected_rate_limited_after_backoff() -> None:
    limited = binance_error(-1003, "Too much request weight used.", status=429)
    limited.repeat = True
    adapter, v, delays = await venue("binance", "spot", "binance_spot_markets.json", limited)
    (rej,) = await adapter.submit(*order(), mkt())
    assert isinstance(rej, OrderUpdate) and rej.reason == ExecReason.RATE_LIMITED
    assert len({binance_coid(b) for b in v.posts(BINANCE_ORDER)}) == 1 and len(v.posts(BINANCE_ORDER)) == 3
    assert delays == [0.5, 1.0]


async def test_redelivered_intent_then_no_second_request() -> None:
    it, dec = order()
    adapter, v, _ = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        reply("POST", BINANCE_ORDER, binance_filled(client_order_id_for(it.event_id))),
    )
    assert await adapter.submit(it, dec, mkt())
    assert await adapter.submit(it, dec, mkt()) == []
    assert len(v.posts(BINANCE_ORDER)) == 1 and len(adapter.sent_client_order_ids) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (binance_error(-1022, "Signature for this request is not valid."), ExecReason.AUTH_FAILED),
        (binance_error(-2015, "Invalid API-key, IP, or permissions for action.", status=401), ExecReason.AUTH_FAILED),
        (binance_error(-1121, "Invalid symbol."), ExecReason.SYMBOL_NOT_SUPPORTED),
        (binance_error(-1013, "Filter failure: NOTIONAL"), ExecReason.MIN_NOTIONAL),
        (binance_error(-1111, "Precision is over the maximum defined for this asset."), ExecReason.PRECISION_INVALID),
        (binance_error(-2010, "Account has insufficient balance for requested action."), ExecReason.INSUFFICIENT_FUNDS),
        (binance_error(-1000, "An unknown error occurred while processing the request."), ExecReason.VENUE_ERROR),
    ],
)
async def test_binance_reject_then_classified_and_not_retried(error: Interaction, reason: ExecReason) -> None:
    adapter, v, delays = await venue("binance", "spot", "binance_spot_markets.json", error)
    (rej,) = await adapter.submit(*order(), mkt())
    assert isinstance(rej, OrderUpdate) and rej.status is OrderStatus.REJECTED and rej.reason == reason
    assert len(v.posts(BINANCE_ORDER)) == 1 and delays == []


async def test_live_without_credentials_then_credentials_missing_and_nothing_sent() -> None:
    adapter, v, _ = await venue("binance", "spot", "binance_spot_markets.json", credentials={})
    (rej,) = await adapter.submit(*order(), mkt())
    assert isinstance(rej, OrderUpdate) and rej.reason == ExecReason.CREDENTIALS_MISSING
    assert v.posts(BINANCE_ORDER) == []


async def test_risk_rejected_decision_then_recorded_and_never_sent() -> None:
    adapter, v, _ = await venue("binance", "spot", "binance_spot_markets.json")
    (rej,) = await adapter.submit(*order(verdict=RiskVerdict.REJECTED), mkt())
    assert isinstance(rej, OrderUpdate) and rej.reason == ExecReason.RISK_BLOCKED
    assert v.posts(BINANCE_ORDER) == []


# ---------------------------------------------------------------------------
# Money paths: unknown fate, follow-up queries, missing fees, bad trades
# ---------------------------------------------------------------------------


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def binance_queried(coid: str, **changes: Any) -> dict[str, Any]:
    """``GET /api/v3/order``: Binance's order query answer (no ``fills``, so no fees)."""
    body = {k: v for k, v in binance_filled(coid).items() if k != "fills"}
    body.update(time=1609495200123, updateTime=1609495200123, isWorking=True, **changes)
    return body


def opened(it: OrderIntent, dec: RiskDecision, records: list[Any] | None = None) -> OpenOrder:
    """What the core holds of an order after ``records`` were applied (as :class:`TradingCore` does)."""
    order = OpenOrder(intent=it, decision=dec, market=mkt())
    for r in records or []:
        if isinstance(r, Fill):
            order = dataclasses.replace(
                order,
                filled=order.filled + r.quantity,
                notional=order.notional + r.price * r.quantity,
                fill_ids=order.fill_ids | {r.fill_id},
            )
        else:
            order = dataclasses.replace(order, status=r.status, quantity=r.quantity, venue_order_id=r.venue_order_id)
    return order


async def test_timeout_on_every_attempt_then_unknown_not_rejected_and_counted() -> None:
    timeout = reply("POST", BINANCE_ORDER, raise_="RequestTimeout", repeat=True)
    adapter, v, delays = await venue("binance", "spot", "binance_spot_markets.json", timeout)
    before = metric("tradeflow_execution_orders_unknown_total", adapter=adapter.name)
    out = await adapter.submit(*order(), mkt())
    assert statuses(out) == ["new", "unknown"]  # may be live at the venue: never "rejected"
    assert isinstance(out[-1], OrderUpdate) and out[-1].reason == ExecReason.VENUE_TIMEOUT
    assert out[-1].quantity == 0.01 and len(v.posts(BINANCE_ORDER)) == 3 and delays == [0.5, 1.0]
    assert metric("tradeflow_execution_orders_unknown_total", adapter=adapter.name) == before + 1


async def test_unknown_order_followed_and_found_filled_then_fill_with_estimated_fee_and_filled() -> None:
    it, dec = order(qty=0.01)
    coid = client_order_id_for(it.event_id)
    adapter, v, _ = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        reply("POST", BINANCE_ORDER, raise_="NetworkError", repeat=True),
        reply("GET", BINANCE_ORDER, binance_queried(coid)),
    )
    submitted = await adapter.submit(it, dec, mkt())
    assert statuses(submitted) == ["new", "unknown"] and submitted[-1].reason == ExecReason.NETWORK_ERROR  # type: ignore[union-attr]
    before = metric("tradeflow_execution_fee_estimated_total", adapter=adapter.name)
    out = await adapter.follow(opened(it, dec, submitted))
    (query,) = [
        dict(parse_qsl(urlsplit(u).query))
        for m, u in v.transport.requests
        if m == "GET" and urlsplit(u).path == BINANCE_ORDER
    ]
    assert query["origClientOrderId"] == coid and "orderId" not in query  # found by our id, not the venue's
    assert statuses(out) == ["acknowledged", "fill", "filled"]
    fill = out[1]
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(0.01) and fill.price == pytest.approx(29_012.0)
    rate = adapter.exchange.markets["BTC/USDT"]["taker"]
    assert rate > 0 and fill.fee_estimated and fill.fee_currency == "USDT"
    assert fill.fee == pytest.approx(0.01 * 29_012.0 * rate)
    assert metric("tradeflow_execution_fee_estimated_total", adapter=adapter.name) == before + 1


async def test_unknown_order_the_venue_does_not_know_then_rejected_not_found() -> None:
    it, dec = order()
    adapter, _, _ = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        reply("GET", BINANCE_ORDER, {"code": -2013, "msg": "Order does not exist."}, status=400),
    )
    unknown = dataclasses.replace(opened(it, dec), status=OrderStatus.UNKNOWN, quantity=0.01)
    (rej,) = await adapter.follow(unknown)
    assert isinstance(rej, OrderUpdate) and rej.status is OrderStatus.REJECTED
    assert rej.reason == ExecReason.NOT_FOUND_AFTER_UNKNOWN and rej.client_order_id == client_order_id_for(it.event_id)


async def test_acknowledged_order_the_venue_no_longer_knows_then_alerted_once_and_kept_open() -> None:
    it, dec = order()
    gone = reply("GET", BINANCE_ORDER, {"code": -2013, "msg": "Order does not exist."}, status=400, repeat=True)
    adapter, _, _ = await venue("binance", "spot", "binance_spot_markets.json", gone)
    acked = dataclasses.replace(opened(it, dec), status=OrderStatus.ACKNOWLEDGED, quantity=0.01)
    assert await adapter.follow(acked) == [] and await adapter.follow(acked) == []  # never "rejected": it was live
    (alert,) = adapter.drain_alerts()
    assert alert.code == "execution_order_lost" and client_order_id_for(it.event_id) in alert.message


async def test_bitget_spot_order_followed_by_client_oid_then_filled_with_estimated_fee() -> None:
    it, dec = order(qty=0.002)
    coid = client_order_id_for(it.event_id)
    info = {
        "code": "00000",
        "msg": "success",
        "requestTime": 1609495201000,
        "data": [
            {
                "userId": "7264631750",
                "symbol": "BTCUSDT",
                "orderId": "1001",
                "clientOid": coid,
                "price": "0",
                "size": "58.0000000000000000",
                "orderType": "market",
                "side": "buy",
                "status": "filled",
                "priceAvg": "29005.0000000000000000",
                "baseVolume": "0.0020000000000000",
                "quoteVolume": "58.0100000000000000",
                "enterPointSource": "API",
                "feeDetail": "",
                "orderSource": "market",
                "cTime": "1609495200100",
                "uTime": "1609495200200",
            }
        ],
    }
    path = "/api/v2/spot/trade/orderInfo"
    adapter, v, _ = await venue("bitget", "spot", None, reply("GET", path, info), credentials={**KEYS, "password": "p"})
    adapter.exchange.set_markets([BITGET_SPOT_BTC])
    acked = dataclasses.replace(opened(it, dec), status=OrderStatus.ACKNOWLEDGED, quantity=0.002, venue_order_id="1001")
    out = await adapter.follow(acked)
    (query,) = v.transport.requests_to(path)
    assert query["clientOid"] == coid and "orderId" not in query
    assert statuses(out) == ["fill", "filled"]
    fill = out[0]
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(0.002) and fill.price == pytest.approx(29_005.0)
    assert fill.fee_estimated and fill.fee > 0 and fill.fee_currency == "USDT"


async def test_follow_query_failing_then_nothing_and_counted_order_stays_open() -> None:
    it, dec = order()
    adapter, _, _ = await venue(
        "binance", "spot", "binance_spot_markets.json", reply("GET", BINANCE_ORDER, raise_="RequestTimeout")
    )
    labels = {"adapter": adapter.name, "reason": "venue_timeout"}
    before = metric("tradeflow_execution_follow_failures_total", **labels)
    assert await adapter.follow(dataclasses.replace(opened(it, dec), status=OrderStatus.UNKNOWN)) == []
    assert metric("tradeflow_execution_follow_failures_total", **labels) == before + 1


async def test_partially_filled_order_followed_then_only_the_new_part_as_one_fill() -> None:
    it, dec = order(qty=0.01, limit=29_000.0)
    coid = client_order_id_for(it.event_id)
    partial = {
        **binance_filled(coid),
        "type": "LIMIT",
        "price": "29000.00",
        "status": "PARTIALLY_FILLED",
        "executedQty": "0.00400000",
        "cummulativeQuoteQty": "116.00000000",
        "fills": [
            {"price": "29000.00", "qty": "0.00400000", "commission": "0.116", "commissionAsset": "USDT", "tradeId": 21}
        ],
    }
    later = binance_queried(coid, type="LIMIT", price="29000.00", cummulativeQuoteQty="289.94000000")
    adapter, _, _ = await venue(
        "binance",
        "spot",
        "binance_spot_markets.json",
        reply("POST", BINANCE_ORDER, partial),
        reply("GET", BINANCE_ORDER, later, repeat=True),
    )
    first = await adapter.submit(it, dec, mkt())
    assert statuses(first) == ["new", "acknowledged", "fill", "partially_filled"]
    state = opened(it, dec, first)
    out = await adapter.follow(state)
    assert statuses(out) == ["fill", "filled"]  # acknowledged once, the first fill not repeated
    fill = out[0]
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(0.006)
    assert fill.price == pytest.approx((289.94 - 116.0) / 0.006)  # the rest of the notional, not the average
    assert out[-1].filled_quantity == pytest.approx(0.01)  # type: ignore[union-attr]
    # asked again after both were applied: the same aggregate fill id, nothing new for the core
    again = await adapter.follow(opened(it, dec, [*first, *out]))
    assert [r for r in again if isinstance(r, Fill)] == []


async def test_trade_without_a_fee_then_estimated_and_flagged_never_zero() -> None:
    it, dec = order(qty=0.01)
    coid = client_order_id_for(it.event_id)
    body = binance_filled(coid)
    for trade in body["fills"]:
        del trade["commission"], trade["commissionAsset"]
    adapter, _, _ = await venue("binance", "spot", "binance_spot_markets.json", reply("POST", BINANCE_ORDER, body))
    out = await adapter.submit(it, dec, mkt())
    fills = [r for r in out if isinstance(r, Fill)]
    rate = adapter.exchange.markets["BTC/USDT"]["taker"]
    assert [(f.fee_estimated, f.fee_currency) for f in fills] == [(True, "USDT")] * 2
    assert [f.fee for f in fills] == pytest.approx([0.006 * 29_010 * rate, 0.004 * 29_015 * rate])
    assert all(f.fee > 0 for f in fills)
    # a venue fee, even 0, is the venue's: not estimated
    assert adapter._fee({"cost": 0.0, "currency": "BNB"}, 1.0, 1.0, Liquidity.TAKER, "BTC/USDT", "USDT") == (
        0.0,
        "BNB",
        False,
    )


@pytest.mark.parametrize(
    ("trade", "reason"),
    [
        ({"price": "0"}, "bad_price"),
        ({"price": None}, "bad_price"),
        ({"price": "-5"}, "bad_price"),
        ({"qty": "0"}, "bad_amount"),
        ({"qty": None}, "bad_amount"),
    ],
)
async def test_trade_with_bad_price_or_amount_then_counted_alerted_and_covered_by_the_order_total(
    trade: dict[str, str | None], reason: str
) -> None:
    it, dec = order(qty=0.01)
    coid = client_order_id_for(it.event_id)
    body = binance_filled(coid)
    body["fills"][1].update(trade)
    adapter, _, _ = await venue("binance", "spot", "binance_spot_markets.json", reply("POST", BINANCE_ORDER, body))
    before = metric("tradeflow_execution_trades_invalid_total", adapter=adapter.name, reason=reason)
    out = await adapter.submit(it, dec, mkt())
    assert metric("tradeflow_execution_trades_invalid_total", adapter=adapter.name, reason=reason) == before + 1
    (alert,) = adapter.drain_alerts()
    assert alert.code == "execution_trade_invalid" and alert.labels["reason"] == reason and "13" in alert.message
    assert adapter.drain_alerts() == []
    fills = [r for r in out if isinstance(r, Fill)]
    # the order's own total still holds: the bad trade's part comes as the aggregate rest
    assert sum(f.quantity for f in fills) == pytest.approx(0.01)
    assert sum(f.price * f.quantity for f in fills) == pytest.approx(290.12)
    assert fills[0].fill_id == "12" and fills[1].fill_id.endswith("-agg-0.01")


# ---------------------------------------------------------------------------
# Bitget USDT perpetual: account set-up, reduce-only, position rules
# ---------------------------------------------------------------------------

BITGET_OK = {"code": "00000", "msg": "success", "requestTime": 1609495200000}
BITGET_PLACE = "/api/v2/mix/order/place-order"


def bitget_setup() -> list[Interaction]:
    return [
        reply(
            "POST",
            "/api/v2/mix/account/set-margin-mode",
            {**BITGET_OK, "data": {"symbol": "BTCUSDT", "marginCoin": "USDT", "marginMode": "crossed"}},
        ),
        reply("POST", "/api/v2/mix/account/set-position-mode", {**BITGET_OK, "data": {"posMode": "one_way_mode"}}),
        reply(
            "POST",
            "/api/v2/mix/account/set-leverage",
            {
                **BITGET_OK,
                "data": {
                    "symbol": "BTCUSDT",
                    "marginCoin": "USDT",
                    "longLeverage": "3",
                    "shortLeverage": "3",
                    "crossMarginLeverage": "3",
                    "marginMode": "crossed",
                },
            },
        ),
    ]


async def test_bitget_swap_reduce_only_exit_then_account_configured_once_and_params_sent() -> None:
    placed = {**BITGET_OK, "data": {"orderId": "2001", "clientOid": "x"}}
    adapter, v, _ = await venue(
        "bitget",
        "swap",
        "bitget_swap_markets.json",
        *bitget_setup(),
        reply("POST", BITGET_PLACE, placed),
        reply("POST", BITGET_PLACE, placed),
        credentials={**KEYS, "password": "pass"},
        leverage=3,
    )
    it, dec = order("BTC/USDT:USDT", Side.SELL, 0.05, reduce_only=True)
    out = await adapter.submit(it, dec, mkt("BTC/USDT:USDT", 29_000.0))
    assert statuses(out) == ["new", "acknowledged"]
    body = json.loads(v.posts(BITGET_PLACE)[0])
    assert body["clientOid"] == client_order_id_for(it.event_id)
    assert body["reduceOnly"] == "YES" and body["marginMode"] == "crossed" and body["size"] == "0.05"
    assert body["productType"] == "USDT-FUTURES" and body["side"] == "sell"
    assert json.loads(v.posts("/api/v2/mix/account/set-leverage")[0])["leverage"] == "3"
    await adapter.submit(*order("BTC/USDT:USDT", Side.BUY, 0.01), mkt("BTC/USDT:USDT", 29_000.0))
    assert len(v.posts("/api/v2/mix/account/set-leverage")) == 1  # configured once per symbol
    assert len(v.posts(BITGET_PLACE)) == 2


@pytest.mark.parametrize(
    ("code", "msg", "reason"),
    [
        (
            "40774",
            "The order type for unilateral position must also be the unilateral position type.",
            ExecReason.POSITION_RULE,
        ),
        ("45110", "less than the minimum amount 5 USDT", ExecReason.MIN_NOTIONAL),
        ("40009", "sign signature error", ExecReason.AUTH_FAILED),
        ("43012", "Insufficient balance", ExecReason.INSUFFICIENT_FUNDS),
    ],
)
async def test_bitget_swap_reject_then_classified(code: str, msg: str, reason: ExecReason) -> None:
    error = reply(
        "POST", BITGET_PLACE, {"code": code, "msg": msg, "requestTime": 1609495200000, "data": None}, status=400
    )
    adapter, _, _ = await venue(
        "bitget", "swap", "bitget_swap_markets.json", *bitget_setup(), error, credentials={**KEYS, "password": "pass"}
    )
    (rej,) = await adapter.submit(*order("BTC/USDT:USDT", qty=0.01), mkt("BTC/USDT:USDT", 29_000.0))
    assert isinstance(rej, OrderUpdate) and rej.status is OrderStatus.REJECTED and rej.reason == reason


async def test_spot_symbol_on_swap_adapter_then_symbol_not_supported() -> None:
    adapter, _, _ = await venue("bitget", "swap", "bitget_swap_markets.json", dry_run=True)
    (rej,) = await adapter.submit(*order("BTC/USDT"), mkt())
    assert isinstance(rej, OrderUpdate) and rej.reason == ExecReason.SYMBOL_NOT_SUPPORTED


# ---------------------------------------------------------------------------
# Coinbase, start-up, classification table
# ---------------------------------------------------------------------------


COINBASE_FEES = {
    "total_volume": 0,
    "total_fees": 0,
    "fee_tier": {
        "pricing_tier": "Advanced 1",
        "usd_from": "0",
        "usd_to": "1000",
        "taker_fee_rate": "0.008",
        "maker_fee_rate": "0.006",
    },
}


async def test_coinbase_order_then_our_client_order_id_not_a_random_uuid() -> None:
    summary = COINBASE_FEES
    created = {
        "success": True,
        "failure_reason": "UNKNOWN_FAILURE_REASON",
        "order_id": "cb-1",
        "success_response": {"order_id": "cb-1", "product_id": "BTC-USD", "side": "SELL", "client_order_id": "x"},
        "order_configuration": {"market_market_ioc": {"base_size": "0.01"}},
    }
    adapter, v, _ = await venue(
        "coinbase",
        "spot",
        "coinbase_spot_markets.json",
        reply("GET", "/api/v3/brokerage/transaction_summary", summary, repeat=True),
        reply("POST", "/api/v3/brokerage/orders", created),
    )
    it, dec = order("BTC/USD", Side.SELL, 0.01)
    out = await adapter.submit(it, dec, mkt("BTC/USD", 29_000.0))
    assert statuses(out) == ["new", "acknowledged"]
    body = json.loads(v.posts("/api/v3/brokerage/orders")[0])
    assert body["client_order_id"] == client_order_id_for(it.event_id)


async def test_coinbase_unknown_order_then_found_among_the_symbols_orders_by_client_order_id() -> None:
    it, dec = order("BTC/USD", Side.SELL, 0.01)
    coid = client_order_id_for(it.event_id)

    def cb_order(order_id: str, client_id: str) -> dict[str, Any]:
        return {
            "order_id": order_id,
            "product_id": "BTC-USD",
            "user_id": "1111111-1111-1111-1111-111111111111",
            "order_configuration": {"market_market_ioc": {"base_size": "0.01"}},
            "side": "SELL",
            "client_order_id": client_id,
            "status": "FILLED",
            "time_in_force": "IMMEDIATE_OR_CANCEL",
            "created_time": "2021-01-01T10:00:00.100000Z",
            "completion_percentage": "100",
            "filled_size": "0.01",
            "average_filled_price": "28990",
            "fee": "",
            "number_of_fills": "1",
            "filled_value": "289.9",
            "pending_cancel": False,
            "size_in_quote": False,
            "total_fees": "1.7394",
            "size_inclusive_of_fees": False,
            "total_value_after_fees": "288.1606",
            "trigger_status": "INVALID_ORDER_TYPE",
            "order_type": "MARKET",
            "reject_reason": "REJECT_REASON_UNSPECIFIED",
            "settled": True,
            "product_type": "SPOT",
        }

    batch = {"orders": [cb_order("cb-0", "someone-else"), cb_order("cb-7", coid)], "has_next": False, "cursor": ""}
    path = "/api/v3/brokerage/orders/historical/batch"
    adapter, v, _ = await venue(
        "coinbase",
        "spot",
        "coinbase_spot_markets.json",
        reply("GET", "/api/v3/brokerage/transaction_summary", COINBASE_FEES, repeat=True),
        reply("GET", path, batch),
    )
    unknown = OpenOrder(intent=it, decision=dec, market=mkt("BTC/USD", 29_000.0), status=OrderStatus.UNKNOWN)
    out = await adapter.follow(unknown)
    (query,) = v.transport.requests_to(path)
    assert query["product_id"] == "BTC-USD" and "start_date" in query
    assert statuses(out) == ["acknowledged", "fill", "filled"]
    assert all(r.venue_order_id == "cb-7" for r in out if isinstance(r, OrderUpdate))
    fill = out[1]
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(0.01) and fill.price == pytest.approx(28_990.0)


async def test_unreachable_venue_at_start_then_execution_unavailable() -> None:
    config = LiveExecutionConfig(exchange_id="binance", dry_run=False)
    exchange = make_execution_exchange(config, KEYS)
    _open.append(exchange)
    Venue(exchange, None, reply("GET", "/api/v3/exchangeInfo", raise_="ExchangeNotAvailable", repeat=True))
    adapter = CcxtExecutionAdapter(exchange, config, EventClock(NOW))
    with pytest.raises(ExecutionUnavailable, match="refuses to start offline"):
        await adapter.connect()


def test_unsupported_venue_or_leverage_on_spot_then_config_refused() -> None:
    with pytest.raises(ValueError, match="not supported"):
        LiveExecutionConfig(exchange_id="coinbase", market_type=VenueMarket.SWAP)
    with pytest.raises(ValueError, match="leverage"):
        LiveExecutionConfig(exchange_id="bitget", leverage=3)


@pytest.mark.parametrize(
    ("exc", "reason", "retriable"),
    [
        (ccxt.DuplicateOrderId("dup"), ExecReason.ALREADY_PLACED, False),
        (ccxt.AuthenticationError('binance requires "apiKey" credential'), ExecReason.CREDENTIALS_MISSING, False),
        (ccxt.PermissionDenied("forbidden"), ExecReason.AUTH_FAILED, False),
        (ccxt.DDoSProtection("slow down"), ExecReason.RATE_LIMITED, True),
        (ccxt.RequestTimeout("timeout"), ExecReason.VENUE_TIMEOUT, True),
        (ccxt.ExchangeNotAvailable("down"), ExecReason.NETWORK_ERROR, True),
        (ccxt.InvalidOrder("ReduceOnly Order is rejected."), ExecReason.POSITION_RULE, False),
        (ValueError("boom"), ExecReason.VENUE_ERROR, False),
    ],
)
def test_exception_then_classified_by_what_to_do(exc: BaseException, reason: ExecReason, retriable: bool) -> None:
    verdict = classify_execution_error(exc)
    assert verdict.reason is reason and verdict.retriable is retriable


async def test_perpetual_with_contract_size_then_amount_in_contracts_records_in_base() -> None:
    adapter, _, _ = await venue("bitget", "swap", "bitget_swap_markets.json", dry_run=True)
    adapter.exchange.markets["BTC/USDT:USDT"]["contractSize"] = 0.1
    it, dec = order("BTC/USDT:USDT", qty=0.05)
    check = adapter.validate(it, dec.approved_quantity, mkt("BTC/USDT:USDT", 29_000.0))
    assert check.ok and check.amount == pytest.approx(0.5) and check.base_quantity == pytest.approx(0.05)
    assert check.cost == pytest.approx(0.05 * 29_000.0)
    new, _ = await adapter.submit(it, dec, mkt("BTC/USDT:USDT", 29_000.0))
    assert isinstance(new, OrderUpdate) and new.quantity == pytest.approx(0.05)
