"""Exchange access for the market-data collectors: configuration as data, the
ccxt factory and error classification (both from :mod:`agents.venue.ccxt`),
backoff, and the two outbound interfaces (:class:`Publisher`,
:class:`CheckpointStore`) with their simple implementations.

Errors say what the caller should do: :func:`classify_error` maps a ccxt exception to a
:class:`FailureReason` and a ``retriable`` flag (rate limits, network, exchange down or
garbage are retriable; anything else is fatal). :class:`CollectorError` is the base of what
the collectors raise: :class:`UnsupportedExchangeError`, :class:`ExchangeUnreachable`,
:class:`FatalExchangeError` (needs a human), :class:`RetriesExhausted`. One bad row is a
:class:`~agents.market.ccxt_parse.ExchangeDataError`: dead-letter it and carry on.

Design: docs/market_data.md#exchange-errors
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agents.market.ccxt_parse import ExchangeDataError, ccxt_ohlcv_to_bar, ccxt_trade_to_tick
from agents.venue.ccxt import VENUES, MarketType, VenueReason, build_exchange, check_api_url, classify, market_types
from runtime.errors import BadInput, NeedsOperator, Retriable, TradeflowError
from topics.records import Timeframe
from topics.schema import Record

__all__ = [
    "SUPPORTED_EXCHANGES",
    "BackoffPolicy",
    "CheckpointStore",
    "CollectorError",
    "ErrorClassification",
    "ExchangeConfig",
    "ExchangeDataError",
    "ExchangeUnreachable",
    "FailureReason",
    "FatalExchangeError",
    "FileCheckpointStore",
    "MarketType",
    "MemoryCheckpointStore",
    "OhlcvSource",
    "Publisher",
    "RetriesExhausted",
    "UnsupportedExchangeError",
    "ccxt_ohlcv_to_bar",
    "ccxt_trade_to_tick",
    "classify_error",
    "make_exchange",
]


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


SUPPORTED_EXCHANGES: frozenset[str] = VENUES


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeConfig:
    """One exchange connection as data: which venue, which market type, which
    symbols and timeframes to collect. Validated on construction so a typo
    fails at start-up with the list of what is supported.

    ``options`` are extra ccxt options merged over ours (escape hatch for
    venue quirks); ``load_currencies`` is off because market data needs none
    and some venues serve currencies only to signed requests. ``api_url``
    sends every REST request to another base URL (a proxy or mirror of the
    venue's API; websockets are off then: see
    :func:`~agents.venue.ccxt.build_exchange`).
    """

    exchange_id: str
    market_type: MarketType
    symbols: tuple[str, ...]
    timeframes: tuple[Timeframe, ...] = ()
    request_timeout_ms: int = 10_000
    load_currencies: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    api_url: str | None = None

    def __post_init__(self) -> None:
        if self.exchange_id not in SUPPORTED_EXCHANGES:
            raise UnsupportedExchangeError(
                f"exchange {self.exchange_id!r} is not supported; supported: {sorted(SUPPORTED_EXCHANGES)}"
            )
        market_type = MarketType(self.market_type)
        object.__setattr__(self, "market_type", market_type)
        if market_type not in market_types(self.exchange_id):
            supported = [m.value for m in market_types(self.exchange_id)]
            raise UnsupportedExchangeError(
                f"{self.exchange_id} supports market types {supported}, not {market_type.value!r}"
            )
        if not self.symbols:
            raise ValueError(f"{self.exchange_id}: at least one symbol is required")
        for symbol in self.symbols:
            is_swap_symbol = ":" in symbol
            if is_swap_symbol != (market_type is MarketType.SWAP):
                example = "BTC/USDT:USDT" if market_type is MarketType.SWAP else "BTC/USDT"
                raise ValueError(
                    f"{self.exchange_id} {market_type.value}: symbol {symbol!r} is not a "
                    f"{market_type.value} symbol (ccxt unified, like {example})"
                )
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "timeframes", tuple(Timeframe(tf) for tf in self.timeframes))
        if self.request_timeout_ms <= 0:
            raise ValueError("request_timeout_ms must be > 0")
        if self.api_url is not None:
            object.__setattr__(self, "api_url", check_api_url(self.api_url))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ExchangeConfig:
        """Build from plain data (a YAML/JSON/CLI config section)."""
        if isinstance(data.get("symbols"), str) or isinstance(data.get("timeframes"), str):
            raise ValueError("symbols and timeframes must be lists, not a single string")
        return cls(
            exchange_id=str(data["exchange_id"]),
            market_type=MarketType(data.get("market_type", MarketType.SPOT)),
            symbols=tuple(data["symbols"]),
            timeframes=tuple(Timeframe(tf) for tf in data.get("timeframes", ())),
            request_timeout_ms=int(data.get("request_timeout_ms", 10_000)),
            load_currencies=bool(data.get("load_currencies", False)),
            options=dict(data.get("options", {})),
            api_url=data.get("api_url") or None,
        )


def make_exchange(cfg: ExchangeConfig, pro: bool = False, credentials: Mapping[str, str] | None = None) -> Any:
    """The ccxt async exchange (``ccxt.pro`` when ``pro``) for a config
    (:func:`agents.venue.ccxt.build_exchange`). The caller owns the instance
    and must ``await exchange.close()``."""
    return build_exchange(
        cfg.exchange_id,
        cfg.market_type,
        credentials=credentials,
        options=cfg.options,
        pro=pro,
        timeout_ms=cfg.request_timeout_ms,
        load_currencies=cfg.load_currencies,
        api_url=cfg.api_url,
    )


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class FailureReason(enum.StrEnum):
    """Why an exchange call failed. Stable: used as a metric label."""

    RATE_LIMITED = "rate_limited"
    NETWORK_ERROR = "network_error"
    EXCHANGE_UNAVAILABLE = "exchange_unavailable"
    BAD_RESPONSE = "bad_response"
    AUTH_FAILED = "auth_failed"
    BAD_SYMBOL = "bad_symbol"
    BAD_REQUEST = "bad_request"
    NOT_SUPPORTED = "not_supported"
    EXCHANGE_ERROR = "exchange_error"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ErrorClassification:
    reason: FailureReason
    retriable: bool


#: The venue's reason as the collectors' metric label.
_FAILURE_REASON: dict[VenueReason, FailureReason] = {
    VenueReason.RATE_LIMITED: FailureReason.RATE_LIMITED,
    VenueReason.EXCHANGE_UNAVAILABLE: FailureReason.EXCHANGE_UNAVAILABLE,
    VenueReason.TIMEOUT: FailureReason.NETWORK_ERROR,
    VenueReason.NETWORK_ERROR: FailureReason.NETWORK_ERROR,
    VenueReason.BAD_RESPONSE: FailureReason.BAD_RESPONSE,
    VenueReason.CREDENTIALS_MISSING: FailureReason.AUTH_FAILED,
    VenueReason.AUTH_FAILED: FailureReason.AUTH_FAILED,
    VenueReason.BAD_SYMBOL: FailureReason.BAD_SYMBOL,
    VenueReason.INSUFFICIENT_FUNDS: FailureReason.EXCHANGE_ERROR,
    VenueReason.NOT_SUPPORTED: FailureReason.NOT_SUPPORTED,
    VenueReason.BAD_REQUEST: FailureReason.BAD_REQUEST,
    VenueReason.EXCHANGE_ERROR: FailureReason.EXCHANGE_ERROR,
    VenueReason.OPERATION_FAILED: FailureReason.UNKNOWN,
    VenueReason.UNKNOWN: FailureReason.UNKNOWN,
}


def classify_error(exc: BaseException) -> ErrorClassification:
    """What the caller should do about an exception from an exchange call.

    Anything unrecognised is fatal, whatever its message says: retrying a
    failure we cannot name hides bugs, and a stopped collector is loud where
    a spinning one is not.
    """
    verdict = classify(exc)
    reason = _FAILURE_REASON[verdict.reason]
    return ErrorClassification(reason, verdict.retriable and reason is not FailureReason.UNKNOWN)


class CollectorError(TradeflowError):
    """Base of the errors the market-data collectors raise."""


class UnsupportedExchangeError(CollectorError, BadInput, ValueError):
    """The configuration names an exchange or market type not built here."""


class ExchangeUnreachable(CollectorError, Retriable):
    """Start-up could not reach the exchange within a bounded time."""


class FatalExchangeError(CollectorError, NeedsOperator):
    """The exchange refused in a way that retrying cannot fix."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class RetriesExhausted(CollectorError, Retriable):
    """A retriable failure persisted through every allowed attempt."""

    def __init__(self, reason: FailureReason, attempts: int, message: str) -> None:
        super().__init__(f"{reason.value} after {attempts} attempts: {message}")
        self.reason = reason
        self.attempts = attempts


# ---------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    """Capped exponential backoff with "equal jitter" from a seeded RNG.

    The n-th consecutive failure waits ``d/2 + U(0, d/2)`` with
    ``d = min(cap_s, base_s * 2**(n-1))``: never less than half the
    exponential step (so a rate limit really backs off), jittered so many
    collectors restarting together do not stampede the venue. A rate limit
    waits at least ``rate_limited_min_s``. ``max_attempts`` counts every try,
    the first included; live streams ignore it and retry indefinitely.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 6
    rate_limited_min_s: float = 1.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.max_attempts < 1:
            raise ValueError(f"invalid backoff policy {self!r}")

    def delay_s(self, failures: int, rng: random.Random, reason: FailureReason | None = None) -> float:
        step = min(self.cap_s, self.base_s * 2.0 ** max(failures - 1, 0))
        delay = step / 2 + rng.uniform(0.0, step / 2)
        if reason is FailureReason.RATE_LIMITED:
            delay = max(delay, self.rate_limited_min_s)
        return delay


# ---------------------------------------------------------------------------
# Outbound interfaces
# ---------------------------------------------------------------------------


class Publisher(Protocol):
    """Where collectors send records (the lead wires it to Kafka)."""

    async def publish(self, records: Sequence[Record]) -> None: ...


class CheckpointStore(Protocol):
    """Progress of resumable downloads: the last open time (ns) fully done."""

    async def load(self, key: str) -> int | None: ...

    async def save(self, key: str, last_open_time_ns: int) -> None: ...


class OhlcvSource(Protocol):
    """The part of a ccxt exchange the history download uses."""

    id: str

    async def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str = ...,
        since: int | None = ...,
        limit: int | None = ...,
        params: dict[str, Any] = ...,
    ) -> list[list[Any]]: ...


class MemoryCheckpointStore:
    """In-process checkpoints, for tests and one-shot runs."""

    def __init__(self, initial: Mapping[str, int] | None = None) -> None:
        self.values: dict[str, int] = dict(initial or {})
        self.saves: list[tuple[str, int]] = []

    async def load(self, key: str) -> int | None:
        return self.values.get(key)

    async def save(self, key: str, last_open_time_ns: int) -> None:
        self.values[key] = last_open_time_ns
        self.saves.append((key, last_open_time_ns))


class FileCheckpointStore:
    """Checkpoints in one JSON file ``{key: last_open_time_ns}``.

    Every save rewrites the file atomically (temp file in the same directory,
    fsync, rename), so a crash leaves either the old or the new content,
    never a torn file. Saves within one process are serialised by a lock;
    separate processes must use separate files.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def load(self, key: str) -> int | None:
        data = await asyncio.to_thread(self._read)
        return data.get(key)

    async def save(self, key: str, last_open_time_ns: int) -> None:
        async with self._lock:
            data = await asyncio.to_thread(self._read)
            data[key] = last_open_time_ns
            await asyncio.to_thread(self._write, data)

    def _read(self) -> dict[str, int]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict) or not all(isinstance(k, str) and type(v) is int for k, v in data.items()):
            raise ValueError(f"{self.path}: not a checkpoint file (expected {{key: int}})")
        return data

    def _write(self, data: Mapping[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
