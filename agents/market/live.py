"""Live market data from one exchange: trades as Ticks, candles as Bars.

:class:`LiveCollector` runs one task per stream (trades per symbol, OHLCV per
symbol and timeframe). Each stream prefers ccxt.pro websockets
(``watch_trades`` / ``watch_ohlcv``) and polls REST when the venue has no websocket for it or
the websocket keeps failing, re-probing the websocket after ``ws_reprobe_after_s``.

Failures by meaning (:func:`classify_error`): an unreachable venue at start-up raises
:class:`ExchangeUnreachable` within a hard time bound (:meth:`LiveCollector.preflight`);
later retriable errors reconnect with capped, jittered backoff indefinitely; fatal ones and
publisher errors stop the collector. Trades are deduplicated by trade id in bounded memory;
a full REST page sharing no id with what was seen is counted as a suspected gap.

Design: docs/market_data.md#live-collector
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from agents.market.ccxt_parse import (
    ExchangeDataError,
    candle_is_closed,
    ccxt_ohlcv_to_bar,
    ccxt_trade_to_tick,
)
from agents.market.exchanges import (
    BackoffPolicy,
    ExchangeConfig,
    ExchangeUnreachable,
    FailureReason,
    FatalExchangeError,
    Publisher,
    classify_error,
    make_exchange,
)
from runtime.seen import SeenIds
from topics.records import Bar, Tick, Timeframe
from topics.schema import Record
from topics.units import NS_PER_MS

__all__ = [
    "CandleTracker",
    "CollectorMetrics",
    "LiveCollector",
    "LiveSettings",
    "RejectHandler",
    "StreamKind",
    "StreamSpec",
    "Transport",
    "check_exchange",
    "default_collector_metrics",
    "probe_exchange",
]

log = structlog.get_logger(__name__)

#: Called with each exchange item that could not become a record (dead-letter it).
RejectHandler = Callable[[ExchangeDataError], Awaitable[None]]


class StreamKind(enum.StrEnum):
    TRADES = "trades"
    OHLCV = "ohlcv"


class Transport(enum.StrEnum):
    WS = "ws"
    REST = "rest"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    kind: StreamKind
    symbol: str
    timeframe: Timeframe | None = None

    @property
    def name(self) -> str:
        suffix = f":{self.timeframe.value}" if self.timeframe is not None else ""
        return f"{self.kind.value}:{self.symbol}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSettings:
    """Tuning of a :class:`LiveCollector`; the defaults suit 1m+ bars and liquid symbols."""

    poll_interval_s: float = 2.0
    rest_trades_limit: int = 500
    #: Two candles are enough to see the previous one close; three tolerates a missed poll.
    rest_ohlcv_limit: int = 3
    reconnect: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=0.5, cap_s=30.0))
    ws_failures_before_fallback: int = 5
    ws_reprobe_after_s: float = 300.0
    preflight_timeout_s: float = 10.0
    dedupe_capacity: int = 50_000
    #: See :func:`~agents.market.ccxt_parse.candle_is_closed`.
    settle_ms: int = 5_000
    max_clock_skew_ms: int = 1_000


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


class CollectorMetrics:
    """Prometheus metrics of the live collectors.

    One instance per registry (Prometheus refuses duplicate names): the
    process shares :func:`default_collector_metrics`; tests pass their own
    :class:`~prometheus_client.CollectorRegistry`.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.calls = Counter(
            "market_collector_calls",
            "Exchange calls by the live collector, by outcome and failure reason.",
            ["exchange", "stream", "transport", "outcome", "reason"],
            registry=registry,
        )
        self.records = Counter(
            "market_collector_records",
            "Records published by the live collector.",
            ["exchange", "stream", "transport"],
            registry=registry,
        )
        self.duplicates = Counter(
            "market_collector_duplicates",
            "Trades dropped because their id was already published.",
            ["exchange", "stream"],
            registry=registry,
        )
        self.rejected = Counter(
            "market_collector_rejected",
            "Exchange items that could not become records (dead-lettered).",
            ["exchange", "stream", "reason"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "market_collector_ws_fallbacks",
            "Switches from websocket to REST polling after repeated websocket failures.",
            ["exchange", "stream"],
            registry=registry,
        )
        self.trade_gaps = Counter(
            "market_collector_trade_gaps_suspected",
            "REST trade polls that were full and overlapped nothing already seen.",
            ["exchange", "stream"],
            registry=registry,
        )
        self.ingest_latency = Histogram(
            "market_ingest_latency_seconds",
            "Venue event time (trade time, candle close) to our ingest wall clock (includes clock skew).",
            ["exchange", "stream", "transport"],
            # Up to 30 min: the ingest-p95 alert's 120 s threshold must fall inside a finite bucket
            # (histogram_quantile reports the highest finite bound for anything beyond it).
            buckets=(
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                30.0,
                60.0,
                90.0,
                120.0,
                180.0,
                300.0,
                600.0,
                1800.0,
            ),
            registry=registry,
        )


@functools.cache
def default_collector_metrics() -> CollectorMetrics:
    """The process-wide metrics on the default registry (created once)."""
    return CollectorMetrics(REGISTRY)


# ---------------------------------------------------------------------------
# Pure stream state: candle tracking
# ---------------------------------------------------------------------------


class CandleTracker:
    """Turns successive OHLCV snapshots of one stream into bar observations.

    Returns ``(row, is_closed)`` pairs to publish: a forming candle each time
    its values change, and each candle once as closed. A websocket stream
    only repeats the candle that changed, so when a newer candle appears the
    last values seen of the previous one are published as its closed bar.
    Pure: the caller passes the wall clock in.
    """

    def __init__(self, timeframe: Timeframe, settle_ms: int) -> None:
        self.timeframe = timeframe
        self.settle_ms = settle_ms
        self._closed_through_ms = -1
        self._newest_open_ms = -1
        self._forming: tuple[int, list[Any]] | None = None

    def update(self, rows: Iterable[Sequence[Any]], now_ms: int) -> list[tuple[Sequence[Any], bool]]:
        out: list[tuple[Sequence[Any], bool]] = []
        dated: list[tuple[int, Sequence[Any]]] = []
        for row in rows:
            ts = row[0] if isinstance(row, Sequence) and row else None
            if isinstance(ts, int) and not isinstance(ts, bool):
                dated.append((ts, row))
            else:
                out.append((row, False))  # the converter rejects it with a reason
        dated.sort(key=lambda item: item[0])
        for open_ms, _ in dated:
            self._newest_open_ms = max(self._newest_open_ms, open_ms)

        batch_opens = {open_ms for open_ms, _ in dated}
        if (
            self._forming is not None
            and self._forming[0] not in batch_opens
            and self._is_closed(self._forming[0], now_ms)
        ):
            out.append((self._forming[1], True))
            self._closed_through_ms = self._forming[0]
            self._forming = None

        for open_ms, row in dated:
            if open_ms <= self._closed_through_ms:
                continue
            if self._is_closed(open_ms, now_ms):
                out.append((row, True))
                self._closed_through_ms = open_ms
                if self._forming is not None and self._forming[0] <= open_ms:
                    self._forming = None
            elif self._forming is None or self._forming != (open_ms, list(row)):
                out.append((row, False))
                self._forming = (open_ms, list(row))
        return out

    def _is_closed(self, open_ms: int, now_ms: int) -> bool:
        return candle_is_closed(open_ms, self.timeframe, self._newest_open_ms, now_ms, self.settle_ms)


# ---------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _StreamState:
    transport: Transport
    failures: int = 0
    rest_until_ns: int | None = None
    deduper: SeenIds[str] | None = None
    tracker: CandleTracker | None = None


async def probe_exchange(
    exchange: Any, config: ExchangeConfig, timeout_s: float
) -> tuple[Mapping[str, Any], int | None]:
    """The venue's markets and server time (ms; None when it does not tell), proving within
    ``timeout_s`` that it is reachable and lists every configured symbol.

    Raises :class:`ExchangeUnreachable` when the network or the venue does not
    answer within ``timeout_s`` (or answers with a transport error),
    :class:`FatalExchangeError` when it answers no (``bad_symbol`` for a symbol
    it does not list). Used by :meth:`LiveCollector.preflight` and by
    ``tradeflow up --live`` before it starts anything.
    """
    venue = exchange.id
    try:
        async with asyncio.timeout(timeout_s):
            markets: Mapping[str, Any] = await exchange.load_markets()
            server_ms: int | None = None
            if exchange.has.get("fetchTime"):
                server_ms = await exchange.fetch_time()
    except TimeoutError as exc:
        hosts = _describe_hosts(exchange)
        raise ExchangeUnreachable(
            f"{venue}: no answer from {hosts} within {timeout_s:g} s at start-up "
            "(load_markets/fetch_time). Check the network, DNS, proxy and firewall; "
            "live mode does not start without the exchange."
        ) from exc
    except Exception as exc:  # ccxt raises its own tree; classify_error sorts it
        classification = classify_error(exc)
        if classification.retriable:
            hosts = _describe_hosts(exchange)
            raise ExchangeUnreachable(
                f"{venue}: cannot reach {hosts} at start-up ({classification.reason.value}: {exc}). "
                "Check the network, DNS, proxy and firewall; live mode does not start without the exchange."
            ) from exc
        raise FatalExchangeError(classification.reason, f"{venue} start-up: {exc}") from exc
    missing = [s for s in config.symbols if s not in markets]
    if missing:
        raise FatalExchangeError(
            FailureReason.BAD_SYMBOL,
            f"{venue} ({config.market_type.value}) has no market {missing}; {len(markets)} markets loaded",
        )
    return markets, server_ms


async def check_exchange(config: ExchangeConfig, timeout_s: float = 10.0) -> int:
    """:func:`probe_exchange` on an exchange instance of its own (closed after): the number of markets
    the venue lists. Publishes nothing: ``tradeflow up --live`` calls it before it starts any process."""
    exchange = make_exchange(config, pro=False)  # the probe is REST (load_markets, fetch_time)
    try:
        markets, _ = await probe_exchange(exchange, config, timeout_s)
    finally:
        await exchange.close()
    log.info("live.exchange_reachable", venue=config.exchange_id, markets=len(markets), symbols=list(config.symbols))
    return len(markets)


class LiveCollector:
    """Live trades and candles of one exchange, published as records.

    ``exchange`` is a ccxt.pro instance (``make_exchange(cfg, pro=True)``) or
    a plain ccxt async one (REST polling only); the caller owns and closes
    it. Streams: trades for every configured symbol and OHLCV for every
    symbol and timeframe, limited to ``kinds``. ``wall_clock`` returns ns
    and stamps ``ts_init``; ``sleep`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        exchange: Any,
        config: ExchangeConfig,
        publisher: Publisher,
        *,
        wall_clock: Callable[[], int],
        settings: LiveSettings | None = None,
        metrics: CollectorMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_reject: RejectHandler | None = None,
        kinds: Collection[StreamKind] = (StreamKind.TRADES, StreamKind.OHLCV),
    ) -> None:
        self._exchange = exchange
        self._config = config
        self._publisher = publisher
        self._wall_clock = wall_clock
        self._settings = settings or LiveSettings()
        self._metrics = metrics or default_collector_metrics()
        self._sleep = sleep
        self._rng = rng or random.Random(f"live:{config.exchange_id}:{config.market_type.value}")
        self._on_reject = on_reject
        self._stop = asyncio.Event()
        self.venue: str = exchange.id
        trades = [StreamSpec(StreamKind.TRADES, s) for s in config.symbols] if StreamKind.TRADES in kinds else []
        candles = [StreamSpec(StreamKind.OHLCV, s, tf) for s in config.symbols for tf in config.timeframes]
        self.streams: tuple[StreamSpec, ...] = tuple(trades + (candles if StreamKind.OHLCV in kinds else []))
        if not self.streams:
            raise ValueError(
                f"{self.venue}: nothing to collect (kinds={sorted(kinds)}, timeframes={config.timeframes})"
            )
        self._states: dict[StreamSpec, _StreamState] = {}
        #: Exchange time minus our wall clock at preflight, when the venue tells its time.
        self.clock_skew_ms: int | None = None
        #: Base currency per contract, per symbol (1.0 for spot), read from the markets at preflight.
        self._contract_sizes: dict[str, float] = {}

    # -- public -------------------------------------------------------------

    def transport_of(self, spec: StreamSpec) -> Transport | None:
        """The transport a running stream uses now (None before it starts)."""
        state = self._states.get(spec)
        return state.transport if state is not None else None

    async def preflight(self) -> None:
        """Prove the venue is reachable and the symbols exist, within a bound
        (:func:`probe_exchange`); then read contract sizes and the clock skew."""
        markets, server_ms = await probe_exchange(self._exchange, self._config, self._settings.preflight_timeout_s)
        for symbol in self._config.symbols:
            market = markets[symbol]
            size = market.get("contractSize") if market.get("contract") else None
            self._contract_sizes[symbol] = float(size) if size else 1.0
        if server_ms is not None:
            self.clock_skew_ms = int(server_ms) - self._wall_clock() // NS_PER_MS
            if abs(self.clock_skew_ms) > self._settings.max_clock_skew_ms:
                log.warning("live.clock_skew", venue=self.venue, skew_ms=self.clock_skew_ms)
        log.info("live.preflight_ok", venue=self.venue, markets=len(markets), skew_ms=self.clock_skew_ms)

    async def run(self) -> None:
        """Preflight, then collect until :meth:`stop` or a fatal error (re-raised).

        Single use: after :meth:`stop`, build a new collector to start again.
        """
        await self.preflight()
        tasks = [asyncio.create_task(self._run_stream(spec), name=f"{self.venue}:{spec.name}") for spec in self.streams]
        stopper = asyncio.create_task(self._stop.wait(), name=f"{self.venue}:stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is stopper or task.cancelled() else task.exception()
                if error is not None:
                    raise error
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)

    def stop(self) -> None:
        """Ask :meth:`run` to cancel its streams and return."""
        self._stop.set()

    # -- per stream ---------------------------------------------------------

    def _ws_supported(self, spec: StreamSpec) -> bool:
        capability = "watchTrades" if spec.kind is StreamKind.TRADES else "watchOHLCV"
        return bool(self._exchange.has.get(capability))

    def _choose_transport(self, spec: StreamSpec, state: _StreamState) -> Transport:
        if not self._ws_supported(spec):
            return Transport.REST
        if state.rest_until_ns is not None:
            if self._wall_clock() < state.rest_until_ns:
                return Transport.REST
            state.rest_until_ns = None
            log.info("live.ws_reprobe", venue=self.venue, stream=spec.name)
        return Transport.WS

    async def _run_stream(self, spec: StreamSpec) -> None:
        state = _StreamState(transport=Transport.REST)
        if spec.kind is StreamKind.TRADES:
            state.deduper = SeenIds(self._settings.dedupe_capacity)
        else:
            assert spec.timeframe is not None  # OHLCV specs are built with one
            state.tracker = CandleTracker(spec.timeframe, self._settings.settle_ms)
        self._states[spec] = state
        policy = self._settings.reconnect
        while True:
            state.transport = self._choose_transport(spec, state)
            try:
                items = await self._receive(spec, state.transport)
            except Exception as exc:  # ccxt raises its own tree; classify_error sorts it
                classification = classify_error(exc)
                self._count_call(spec, state.transport, "failure", classification.reason.value)
                if not classification.retriable:
                    raise FatalExchangeError(
                        classification.reason, f"{self.venue} {spec.name} via {state.transport.value}: {exc}"
                    ) from exc
                state.failures += 1
                delay = policy.delay_s(state.failures, self._rng, classification.reason)
                log.warning(
                    "live.stream_error",
                    venue=self.venue,
                    stream=spec.name,
                    transport=state.transport.value,
                    reason=classification.reason.value,
                    failures=state.failures,
                    delay_s=round(delay, 3),
                    error=str(exc)[:300],
                )
                if state.transport is Transport.WS and state.failures >= self._settings.ws_failures_before_fallback:
                    state.rest_until_ns = self._wall_clock() + int(self._settings.ws_reprobe_after_s * 1e9)
                    state.failures = 0
                    self._metrics.fallbacks.labels(self.venue, spec.kind.value).inc()
                    log.warning("live.ws_fallback_to_rest", venue=self.venue, stream=spec.name)
                await self._sleep(delay)
                continue
            state.failures = 0
            self._count_call(spec, state.transport, "success", "none")
            if spec.kind is StreamKind.TRADES:
                await self._ingest_trades(spec, state, items)
            else:
                await self._ingest_candles(spec, state, items)
            if state.transport is Transport.REST:
                await self._sleep(self._settings.poll_interval_s)

    async def _receive(self, spec: StreamSpec, transport: Transport) -> list[Any]:
        ex = self._exchange
        if spec.kind is StreamKind.TRADES:
            if transport is Transport.WS:
                items = await ex.watch_trades(spec.symbol)
            else:
                items = await ex.fetch_trades(spec.symbol, limit=self._settings.rest_trades_limit)
        else:
            assert spec.timeframe is not None  # OHLCV specs are built with one
            if transport is Transport.WS:
                items = await ex.watch_ohlcv(spec.symbol, spec.timeframe.value)
            else:
                items = await ex.fetch_ohlcv(spec.symbol, spec.timeframe.value, limit=self._settings.rest_ohlcv_limit)
        return list(items or [])

    async def _ingest_trades(self, spec: StreamSpec, state: _StreamState, trades: list[Any]) -> None:
        assert state.deduper is not None  # trade streams are built with one
        had_history = len(state.deduper) > 0
        now_ns = self._wall_clock()
        ticks: list[Tick] = []
        already_seen = 0
        for trade in trades:
            try:
                tick = ccxt_trade_to_tick(trade, self.venue, now_ns, self._contract_sizes.get(spec.symbol, 1.0))
            except ExchangeDataError as exc:
                await self._reject(spec, exc)
                continue
            if not state.deduper.add(tick.trade_id):
                already_seen += 1
                continue
            ticks.append(tick)
            self._metrics.ingest_latency.labels(self.venue, spec.kind.value, state.transport.value).observe(
                max(now_ns - tick.ts_event, 0) / 1e9
            )
        if already_seen:
            self._metrics.duplicates.labels(self.venue, spec.kind.value).inc(already_seen)
        page_full = len(trades) >= self._settings.rest_trades_limit
        if state.transport is Transport.REST and had_history and page_full and already_seen == 0:
            self._metrics.trade_gaps.labels(self.venue, spec.kind.value).inc()
            log.warning("live.trade_gap_suspected", venue=self.venue, stream=spec.name, page=len(trades))
        await self._publish(spec, state.transport, ticks)

    async def _ingest_candles(self, spec: StreamSpec, state: _StreamState, rows: list[Any]) -> None:
        assert state.tracker is not None and spec.timeframe is not None  # OHLCV streams are built with both
        now_ns = self._wall_clock()
        source = f"ccxt_{state.transport.value}"
        bars: list[Bar] = []
        for row, is_closed in state.tracker.update(rows, now_ns // NS_PER_MS):
            try:
                bar = ccxt_ohlcv_to_bar(row, self.venue, spec.symbol, spec.timeframe, now_ns, is_closed, source)
            except ExchangeDataError as exc:
                await self._reject(spec, exc)
                continue
            bars.append(bar)
            if is_closed:  # a closed candle's event time is its close; forming ones have none yet
                self._metrics.ingest_latency.labels(self.venue, spec.kind.value, state.transport.value).observe(
                    max(now_ns - (bar.open_time + spec.timeframe.nanos), 0) / 1e9
                )
        await self._publish(spec, state.transport, bars)

    async def _publish(self, spec: StreamSpec, transport: Transport, records: Sequence[Record]) -> None:
        if not records:
            return
        await self._publisher.publish(records)
        self._metrics.records.labels(self.venue, spec.kind.value, transport.value).inc(len(records))

    async def _reject(self, spec: StreamSpec, error: ExchangeDataError) -> None:
        self._metrics.rejected.labels(self.venue, spec.kind.value, error.reason.value).inc()
        if self._on_reject is not None:
            await self._on_reject(error)
        else:
            log.warning(
                "live.item_rejected",
                venue=self.venue,
                stream=spec.name,
                reason=error.reason.value,
                detail=error.detail,
                raw=repr(error.raw)[:300],
            )

    def _count_call(self, spec: StreamSpec, transport: Transport, outcome: str, reason: str) -> None:
        self._metrics.calls.labels(self.venue, spec.kind.value, transport.value, outcome, reason).inc()


def _describe_hosts(exchange: Any) -> str:
    return ", ".join(_api_hosts(exchange)) or "its API"


def _api_hosts(exchange: Any) -> list[str]:
    """Hosts worth naming in an error: the one last requested, else the API's."""
    last_url = getattr(exchange, "last_request_url", None)
    if isinstance(last_url, str) and urlsplit(last_url).netloc:
        return [urlsplit(last_url).netloc]
    urls = getattr(exchange, "urls", None)
    api = urls.get("api") if isinstance(urls, Mapping) else None
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme in ("http", "https") and parts.netloc:
                found.add(parts.netloc)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)

    walk(api)
    return sorted(found)[:4]
