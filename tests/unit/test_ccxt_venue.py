"""The one ccxt edge (agents.venue.ccxt): the exchange factory and the error
classifier both sides use. How each side reads a classification is tested in
test_ccxt_history.py (collectors) and test_ccxt_execution.py (orders)."""

from __future__ import annotations

import ccxt
import pytest

from agents.venue.ccxt import (
    VENUES,
    MarketType,
    VenueError,
    VenueHint,
    VenueReason,
    build_exchange,
    classify,
    market_types,
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ccxt.RateLimitExceeded("x"), VenueError(VenueReason.RATE_LIMITED, True)),
        (ccxt.DDoSProtection("x"), VenueError(VenueReason.RATE_LIMITED, True)),
        (ccxt.OnMaintenance("x"), VenueError(VenueReason.EXCHANGE_UNAVAILABLE, True)),
        (ccxt.RequestTimeout("x"), VenueError(VenueReason.TIMEOUT, True)),
        (TimeoutError(), VenueError(VenueReason.TIMEOUT, True)),
        (ccxt.InvalidNonce("x"), VenueError(VenueReason.NETWORK_ERROR, True)),
        (ConnectionResetError(), VenueError(VenueReason.NETWORK_ERROR, True)),
        (ccxt.NullResponse("x"), VenueError(VenueReason.BAD_RESPONSE, True)),
        (ccxt.BadResponse("please try again"), VenueError(VenueReason.BAD_RESPONSE, True, hint=VenueHint.TRY_AGAIN)),
        (
            ccxt.AuthenticationError('binance requires "apiKey" credential'),
            VenueError(VenueReason.CREDENTIALS_MISSING, False),
        ),
        (ccxt.PermissionDenied("x"), VenueError(VenueReason.AUTH_FAILED, False)),
        (ccxt.BadSymbol("x"), VenueError(VenueReason.BAD_SYMBOL, False)),
        (ccxt.InsufficientFunds("x"), VenueError(VenueReason.INSUFFICIENT_FUNDS, False)),
        (ccxt.NotSupported("x"), VenueError(VenueReason.NOT_SUPPORTED, False)),
        (ccxt.ArgumentsRequired("x"), VenueError(VenueReason.BAD_REQUEST, False)),
        (
            ccxt.InvalidOrder("ReduceOnly Order is rejected."),
            VenueError(VenueReason.EXCHANGE_ERROR, False, hint=VenueHint.POSITION_RULE),
        ),
        (
            ccxt.InvalidOrder("Filter failure: LOT_SIZE"),
            VenueError(VenueReason.EXCHANGE_ERROR, False, hint=VenueHint.PRECISION),
        ),
        (
            ccxt.BadRequest("order value below the minimum order value"),
            VenueError(VenueReason.BAD_REQUEST, False, hint=VenueHint.MIN_NOTIONAL),
        ),
        (ccxt.ExchangeError("Invalid symbol."), VenueError(VenueReason.EXCHANGE_ERROR, False, hint=VenueHint.SYMBOL)),
        (ccxt.DuplicateOrderId("x"), VenueError(VenueReason.EXCHANGE_ERROR, False, duplicate=True)),
        (ccxt.InvalidOrder("Duplicate clientOid"), VenueError(VenueReason.EXCHANGE_ERROR, False, duplicate=True)),
        (
            ccxt.OperationFailed("Internal error; unable to process your request. Please try again."),
            VenueError(VenueReason.OPERATION_FAILED, True, hint=VenueHint.TRY_AGAIN),
        ),
        (ccxt.CancelPending("x"), VenueError(VenueReason.OPERATION_FAILED, False)),
        (KeyError("x"), VenueError(VenueReason.UNKNOWN, False)),
    ],
)
def test_exception_then_classified_once_by_class_and_message(exc: BaseException, expected: VenueError) -> None:
    assert classify(exc) == expected


def test_message_hints_then_only_where_the_class_is_too_broad() -> None:
    """A precise class wins over its message: a rate limit that mentions leverage is still a rate limit."""
    assert classify(ccxt.RateLimitExceeded("leverage try again")) == VenueError(VenueReason.RATE_LIMITED, True)
    assert classify(ccxt.BadSymbol("precision")).hint is None


async def test_factory_per_venue_and_market_type_then_configured_instances() -> None:
    built = []
    try:
        for venue in sorted(VENUES):
            for market_type in market_types(venue):
                for pro in (False, True):
                    exchange = build_exchange(
                        venue,
                        market_type,
                        credentials={"apiKey": "k"},
                        pro=pro,
                        options={"fetchMargins": False},
                        timeout_ms=1234,
                    )
                    built.append(exchange)
                    assert exchange.id == venue and exchange.enableRateLimit is True and exchange.timeout == 1234
                    assert exchange.options["defaultType"] == market_type.value
                    assert exchange.options["fetchMargins"] is False
                    assert exchange.has["fetchCurrencies"] is False and exchange.apiKey == "k"
                    assert bool(exchange.has.get("watchTrades")) is pro
        assert market_types("coinbase") == (MarketType.SPOT,)
        binance_swap = build_exchange("binance", MarketType.SWAP, load_currencies=True)
        built.append(binance_swap)
        assert binance_swap.options["fetchMarkets"]["types"] == ["linear"]
        assert binance_swap.has["fetchCurrencies"] is not False
    finally:
        for exchange in built:
            exchange.timeout_on_exit = 0
            await exchange.close()


def test_factory_when_venue_or_credentials_unknown_then_refused() -> None:
    with pytest.raises(ValueError, match="kraken spot is not built here"):
        build_exchange("kraken", MarketType.SPOT)
    with pytest.raises(ValueError, match="coinbase swap is not built here"):
        build_exchange("coinbase", MarketType.SWAP)
    with pytest.raises(ValueError, match="unknown credential keys"):
        build_exchange("binance", MarketType.SPOT, credentials={"api_key": "k"})


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


async def test_factory_with_an_api_url_then_every_rest_url_goes_there_and_no_websocket() -> None:
    built = []
    try:
        for venue in sorted(VENUES):
            for market_type in market_types(venue):
                plain = build_exchange(venue, market_type, pro=True)
                moved = build_exchange(venue, market_type, pro=True, api_url="http://127.0.0.1:9/")
                built += [plain, moved]
                rest = [u for u in _strings(plain.urls["api"]) if u.startswith("http")]
                rebased = [u for u in _strings(moved.urls["api"]) if u.startswith("http")]
                assert rest and len(rebased) == len(rest)
                assert all(u.startswith("http://127.0.0.1:9/") or u == "http://127.0.0.1:9" for u in rebased)
                # the paths stay the venue's: only the scheme and host change
                assert sorted(u.split("/", 3)[3:] for u in rebased) == sorted(u.split("/", 3)[3:] for u in rest)
                assert not moved.has.get("watchTrades") and not moved.has.get("watchOHLCV")  # REST only
    finally:
        for exchange in built:
            exchange.timeout_on_exit = 0
            await exchange.close()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9", "http://127.0.0.1:9/api", "127.0.0.1:9", "http://"])
def test_factory_when_api_url_is_no_base_url_then_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must be http"):
        build_exchange("binance", MarketType.SPOT, api_url=url)
