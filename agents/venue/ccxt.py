"""The one ccxt edge: the exchange factory, the market-type enum and the
error classifier shared by the market-data collectors
(:mod:`agents.market.exchanges`) and live execution
(:mod:`agents.execution.ccxt_live`).

:func:`build_exchange` makes a ccxt async (or ``ccxt.pro``) instance for a
venue and market type: rate limiting on, ``defaultType`` set, only that market
type's markets loaded, currencies skipped unless asked for.

:func:`classify` reads any exception from a ccxt call once, into a
:class:`VenueError`: the ccxt class decides ``reason`` (most specific class
first) and ``retriable``; the message adds ``duplicate`` (the venue already
holds an order with this client id) and ``hint`` (the venue rule or the
"try again" its message names, which ccxt folds into broad classes). Each
side turns that into its own vocabulary: metric labels for the collectors,
order-update reasons for execution.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

__all__ = [
    "CREDENTIAL_KEYS",
    "VENUES",
    "MarketType",
    "VenueError",
    "VenueHint",
    "VenueReason",
    "build_exchange",
    "check_api_url",
    "classify",
    "market_types",
]


class MarketType(enum.StrEnum):
    SPOT = "spot"
    #: Perpetual swaps; for the venues here, USDT-margined (linear) ones.
    SWAP = "swap"


#: venue -> market type -> the ccxt ``fetchMarkets`` types to load. Loading
#: only the configured market type keeps start-up to one or two requests
#: (binance would otherwise also load coin-margined futures, okx options, ...).
#: ``None``: leave ccxt's default (coinbase has one product list).
_MARKET_LOADING: dict[str, dict[MarketType, list[str] | None]] = {
    "binance": {MarketType.SPOT: ["spot"], MarketType.SWAP: ["linear"]},
    "bitget": {MarketType.SPOT: ["spot"], MarketType.SWAP: ["swap"]},
    "okx": {MarketType.SPOT: ["spot"], MarketType.SWAP: ["swap"]},
    "coinbase": {MarketType.SPOT: None},
}

#: Venues :func:`build_exchange` builds.
VENUES: frozenset[str] = frozenset(_MARKET_LOADING)
CREDENTIAL_KEYS = frozenset({"apiKey", "secret", "password", "uid"})


def market_types(venue: str) -> tuple[MarketType, ...]:
    """The market types built for ``venue`` (empty for a venue not built here)."""
    return tuple(_MARKET_LOADING.get(venue, ()))


def build_exchange(
    venue: str,
    market_type: MarketType,
    *,
    credentials: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    pro: bool = False,
    timeout_ms: int = 10_000,
    load_currencies: bool = False,
    api_url: str | None = None,
) -> Any:
    """A ccxt async exchange (``ccxt.pro`` when ``pro``) for one venue and market type.

    Rate limiting is always on (ccxt's token-bucket throttler spaces requests
    by the venue's documented weight), ``defaultType`` selects spot or swap,
    and only that market type is loaded. ``options`` are ccxt options merged
    over ours (venue quirks). Currencies are skipped unless
    ``load_currencies``: neither market data nor trading needs them
    (precision and limits come with the markets) and some venues serve them
    only to signed requests. ``api_url`` (``scheme://host[:port]``) replaces
    the scheme and host of every REST URL of the venue (a proxy or mirror of
    its API; tests point it at a closed port); websockets would bypass it, so
    with it the instance is plain REST whatever ``pro`` says. The caller owns
    the instance and must ``await exchange.close()``.
    """
    if venue not in _MARKET_LOADING or market_type not in _MARKET_LOADING[venue]:
        raise ValueError(f"{venue} {MarketType(market_type).value} is not built here; venues: {sorted(VENUES)}")
    if credentials:
        unknown = set(credentials) - CREDENTIAL_KEYS
        if unknown:
            raise ValueError(f"unknown credential keys {sorted(unknown)}; expected some of {sorted(CREDENTIAL_KEYS)}")
    merged: dict[str, Any] = {"defaultType": MarketType(market_type).value}
    types = _MARKET_LOADING[venue][market_type]
    if types is not None:
        merged["fetchMarkets"] = {"types": types}
    merged.update(options or {})
    config: dict[str, Any] = {"enableRateLimit": True, "timeout": timeout_ms, "options": merged}
    if not load_currencies:
        config["has"] = {"fetchCurrencies": False}
    if credentials:
        config.update(credentials)
    if api_url is None:
        return getattr(ccxt_pro if pro else ccxt_async, venue)(config)
    base = check_api_url(api_url)
    exchange = getattr(ccxt_async, venue)(config)
    exchange.urls["api"] = _rebased(exchange.urls["api"], base)
    return exchange


_API_URL = re.compile(r"^https?://[^/?#\s]+$")


def check_api_url(url: str) -> str:
    """``url`` when it is a REST base for :func:`build_exchange` (``http(s)://host[:port]``, no path)."""
    base = url.rstrip("/")
    if not _API_URL.match(base):
        raise ValueError(f"exchange API URL {url!r} must be http(s)://host[:port] with no path")
    return base


def _rebased(urls: Any, base: str) -> Any:
    """ccxt's ``urls['api']`` (a string or nested dicts of them) with every http(s) scheme and host
    replaced by ``base``; websocket URLs are left as they are."""
    if isinstance(urls, str):
        return re.sub(r"^https?://[^/]+", base, urls)
    if isinstance(urls, dict):
        return {k: _rebased(v, base) for k, v in urls.items()}
    return urls


# ---------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------


class VenueReason(enum.StrEnum):
    """What the exception's class says went wrong (most specific class first)."""

    RATE_LIMITED = "rate_limited"  #: RateLimitExceeded, DDoSProtection
    EXCHANGE_UNAVAILABLE = "exchange_unavailable"  #: ExchangeNotAvailable, OnMaintenance
    TIMEOUT = "timeout"  #: RequestTimeout, TimeoutError
    NETWORK_ERROR = "network_error"  #: any other NetworkError, ConnectionError
    BAD_RESPONSE = "bad_response"  #: an HTML maintenance page, a truncated body: usually transient
    CREDENTIALS_MISSING = "credentials_missing"  #: ccxt refused to sign: no key configured
    AUTH_FAILED = "auth_failed"  #: AuthenticationError, PermissionDenied, ...
    BAD_SYMBOL = "bad_symbol"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    NOT_SUPPORTED = "not_supported"
    BAD_REQUEST = "bad_request"  #: BadRequest, ArgumentsRequired
    EXCHANGE_ERROR = "exchange_error"  #: any other ExchangeError (InvalidOrder, OperationRejected, ...)
    OPERATION_FAILED = "operation_failed"  #: any other OperationFailed (CancelPending, ...)
    UNKNOWN = "unknown"


class VenueHint(enum.StrEnum):
    """What the venue's message names where the class is too broad to tell."""

    POSITION_RULE = "position_rule"  #: reduce-only, position or margin mode, leverage
    PRECISION = "precision"
    MIN_NOTIONAL = "min_notional"
    SYMBOL = "symbol"  #: the symbol is unknown to the venue
    TRY_AGAIN = "try_again"  #: the venue says the failure is transient (Binance -1001 DISCONNECTED)


@dataclass(frozen=True, slots=True)
class VenueError:
    """One exception from a ccxt call, classified (see :func:`classify`)."""

    reason: VenueReason
    #: The same call may succeed later.
    retriable: bool
    #: The venue already holds an order with this client order id.
    duplicate: bool = False
    hint: VenueHint | None = None


# Order matters: ccxt's tree nests the specific classes under broader ones
# (RateLimitExceeded, DDoSProtection, ExchangeNotAvailable and RequestTimeout
# are NetworkErrors; BadSymbol is a BadRequest; PermissionDenied an
# AuthenticationError; InsufficientFunds and the rest are ExchangeErrors), so
# the most specific class is tested first.
_BY_CLASS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], VenueReason], ...] = (
    ((ccxt.RateLimitExceeded, ccxt.DDoSProtection), VenueReason.RATE_LIMITED),
    (ccxt.ExchangeNotAvailable, VenueReason.EXCHANGE_UNAVAILABLE),
    (ccxt.RequestTimeout, VenueReason.TIMEOUT),
    (ccxt.NetworkError, VenueReason.NETWORK_ERROR),
    (ccxt.BadResponse, VenueReason.BAD_RESPONSE),
    (ccxt.AuthenticationError, VenueReason.AUTH_FAILED),
    (ccxt.BadSymbol, VenueReason.BAD_SYMBOL),
    (ccxt.InsufficientFunds, VenueReason.INSUFFICIENT_FUNDS),
    (ccxt.NotSupported, VenueReason.NOT_SUPPORTED),
    ((ccxt.BadRequest, ccxt.ArgumentsRequired), VenueReason.BAD_REQUEST),
    (ccxt.ExchangeError, VenueReason.EXCHANGE_ERROR),
    (ccxt.OperationFailed, VenueReason.OPERATION_FAILED),
    # Raw transport errors that escape ccxt's wrapping (websocket layer).
    (TimeoutError, VenueReason.TIMEOUT),
    (ConnectionError, VenueReason.NETWORK_ERROR),
)
_RETRIABLE = frozenset(
    {
        VenueReason.RATE_LIMITED,
        VenueReason.EXCHANGE_UNAVAILABLE,
        VenueReason.TIMEOUT,
        VenueReason.NETWORK_ERROR,
        VenueReason.BAD_RESPONSE,
    }
)
#: Reasons whose ccxt class is a broad ExchangeError: the message names the rule.
_RULE_NAMED_BY_MESSAGE = frozenset({VenueReason.NOT_SUPPORTED, VenueReason.BAD_REQUEST, VenueReason.EXCHANGE_ERROR})
#: OperationFailed outside NetworkError: the message may say it is transient.
_MAY_SAY_TRY_AGAIN = frozenset({VenueReason.BAD_RESPONSE, VenueReason.OPERATION_FAILED})

_DUPLICATE_HINTS = (
    "duplicate order",
    "duplicate clientoid",
    "duplicate client",
    "duplicated_client_order_id",
    "clientoid is duplicate",
    "client order id already",
    "duplicated client",
)
# Venues map many order rules to the same ccxt class (InvalidOrder), so the
# message decides; checked in this order, the first match wins.
_RULE_HINTS: tuple[tuple[VenueHint, tuple[str, ...]], ...] = (
    (
        VenueHint.POSITION_RULE,
        (
            "reduceonly",
            "reduce only",
            "reduce-only",
            "position side",
            "unilateral",
            "hedge mode",
            "one-way",
            "one way",
            "position mode",
            "margin mode",
            "no position",
            "position is not enough",
            "leverage",
        ),
    ),
    (
        VenueHint.PRECISION,
        (
            "precision",
            "lot_size",
            "checkbdscale",
            "price_filter",
            "decimal",
            "scale error",
            "step size",
            "increment",
        ),
    ),
    (
        VenueHint.MIN_NOTIONAL,
        (
            "notional",
            "less than the minimum amount",
            "minimum order value",
            "min_notional",
            "minimum amount",
            "quote_min_size",
            "too small",
            "minimum size",
        ),
    ),
    (VenueHint.SYMBOL, ("invalid symbol", "symbol not")),
)


def _has(message: str, hints: tuple[str, ...]) -> bool:
    return any(h in message for h in hints)


def classify(exc: BaseException) -> VenueError:
    """What an exception from a ccxt call means. Anything unrecognised is
    ``unknown`` and not retriable: retrying a failure we cannot name hides bugs."""
    message = str(exc).lower()
    reason = next((r for cls, r in _BY_CLASS if isinstance(exc, cls)), VenueReason.UNKNOWN)
    if reason is VenueReason.AUTH_FAILED and "credential" in message and "requires" in message:
        reason = VenueReason.CREDENTIALS_MISSING
    hint: VenueHint | None = None
    if reason in _RULE_NAMED_BY_MESSAGE:
        hint = next((h for h, words in _RULE_HINTS if _has(message, words)), None)
    elif reason in _MAY_SAY_TRY_AGAIN and "try again" in message:
        hint = VenueHint.TRY_AGAIN
    return VenueError(
        reason=reason,
        retriable=reason in _RETRIABLE or hint is VenueHint.TRY_AGAIN,
        duplicate=isinstance(exc, ccxt.DuplicateOrderId) or _has(message, _DUPLICATE_HINTS),
        hint=hint,
    )
