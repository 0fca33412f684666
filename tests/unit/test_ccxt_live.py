"""Live collector, offline: real ccxt (and ccxt.pro) exchange instances whose
HTTP ``fetch`` replays recorded responses; the websocket boundary is the
pro exchange's ``watch_trades``, replaced on the instance by a stream that
feeds recorded Binance trade messages through ccxt's own ``parse_ws_trade``.
Start-up against an unreachable or silent host uses real ccxt networking
to 127.0.0.1, never the internet."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import ccxt
import pytest
from prometheus_client import CollectorRegistry

from agents.market.exchanges import (
    BackoffPolicy,
    ExchangeConfig,
    ExchangeUnreachable,
    FailureReason,
    FatalExchangeError,
    MarketType,
    make_exchange,
)
from agents.market.live import (
    CandleTracker,
    CollectorMetrics,
    LiveCollector,
    LiveSettings,
    StreamKind,
    StreamSpec,
    Transport,
)
from runtime.seen import SeenIds
from tests.fixtures.ccxt.replay import ReplayTransport, load_fixture
from topics.records import AggressorSide, Bar, Tick, Timeframe
from topics.schema import Record
from topics.units import NS_PER_HOUR
from topics.units import NS_PER_MS as MS

pytestmark = pytest.mark.timeout(15)

HOUR_MS = NS_PER_HOUR // MS
T0_MS = 1_609_459_200_000  # 2021-01-01 00:00 UTC
WALL_0930_NS = (T0_MS + 9 * HOUR_MS + 30 * 60_000) * MS
WALL_1000_30_NS = (T0_MS + 10 * HOUR_MS + 30_000) * MS
BTC = "BTC/USDT"


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def publish(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    @property
    def ticks(self) -> list[Tick]:
        return [r for r in self.records if isinstance(r, Tick)]

    @property
    def bars(self) -> list[Bar]:
        return [r for r in self.records if isinstance(r, Bar)]


class FakeWallClock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class RecordingSleep:
    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.delays: list[float] = []
        self.on_sleep = on_sleep

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        await asyncio.sleep(0.001)


class RecordedTradeStream:
    """The websocket boundary: replaces ``watch_trades`` on a ccxt.pro instance.

    Each call first raises the next scripted failure, if any, then returns the
    next recorded ``btcusdt@trade`` message parsed by the exchange's own
    ``parse_ws_trade``; when the recording is exhausted it waits like a quiet
    socket until cancelled.
    """

    def __init__(self, exchange: Any, failures: Sequence[BaseException] = (), fail_forever: bool = False) -> None:
        self.exchange = exchange
        self.messages: list[dict[str, Any]] = list(load_fixture("binance_ws_trades_btcusdt.json")["messages"])
        self.failures = list(failures)
        self.fail_forever = fail_forever
        self.calls = 0
        exchange.watch_trades = self.watch_trades

    async def watch_trades(
        self, symbol: str, since: int | None = None, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail_forever:
            raise ccxt.ExchangeNotAvailable("binance connection closed by remote server, closing code 1006")
        if self.failures:
            raise self.failures.pop(0)
        if not self.messages:
            await asyncio.Event().wait()
        message = self.messages.pop(0)
        return [self.exchange.parse_ws_trade(message, self.exchange.market(symbol))]


@pytest.fixture
async def binance() -> AsyncIterator[Callable[..., tuple[Any, ReplayTransport, ExchangeConfig]]]:
    made: list[Any] = []

    def build(*fixtures: str, pro: bool = False, symbol: str = BTC, timeframes: tuple[Timeframe, ...] = ()) -> Any:
        cfg = ExchangeConfig(
            exchange_id="binance", market_type=MarketType.SPOT, symbols=(symbol,), timeframes=timeframes
        )
        exchange = make_exchange(cfg, pro=pro)
        exchange.timeout_on_exit = 0  # the replay opens no sockets
        made.append(exchange)
        return exchange, ReplayTransport.install(exchange, "binance_spot_markets.json", *fixtures), cfg

    yield build
    for exchange in made:
        await exchange.close()


def collector_for(
    exchange: Any, cfg: ExchangeConfig, **kwargs: Any
) -> tuple[LiveCollector, ListPublisher, CollectorRegistry]:
    registry = CollectorRegistry()
    publisher = ListPublisher()
    kwargs.setdefault("wall_clock", FakeWallClock(WALL_0930_NS))
    kwargs.setdefault("sleep", RecordingSleep())
    kwargs.setdefault("settings", LiveSettings(poll_interval_s=0.0))
    collector = LiveCollector(exchange, cfg, publisher, metrics=CollectorMetrics(registry), **kwargs)
    return collector, publisher, registry


@contextlib.asynccontextmanager
async def running(collector: LiveCollector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(collector.run())
    try:
        yield task
    finally:
        collector.stop()
        await asyncio.wait_for(task, 5)


async def wait_until(predicate: Callable[[], bool], task: asyncio.Task[None] | None = None) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            if task is not None and task.done():
                task.result()  # surface the collector's error instead of timing out
            await asyncio.sleep(0.005)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------
# REST polling
# ---------------------------------------------------------------------------


async def test_no_websocket_support_then_rest_poll_ticks_from_recorded_trades(binance: Any) -> None:
    exchange, transport, cfg = binance("binance_aggtrades_btcusdt.json")
    collector, publisher, registry = collector_for(exchange, cfg)

    async with running(collector) as task:
        await wait_until(lambda: len(transport.requests_to("/api/v3/aggTrades")) >= 3, task)
        assert collector.transport_of(StreamSpec(StreamKind.TRADES, BTC)) is Transport.REST

    ticks = publisher.ticks
    assert [t.trade_id for t in ticks] == [str(i) for i in range(522106511, 522106517)]
    assert [t.price for t in ticks] == [29202.21, 29202.22, 29202.22, 29201.57, 29201.58, 29200.0]
    assert [t.quantity for t in ticks] == [0.00381, 0.042, 0.001712, 0.13527, 0.01, 0.31]
    # Binance "m": buyer is maker, so the taker (aggressor) sold.
    S, B = AggressorSide.SELL, AggressorSide.BUY
    assert [t.aggressor for t in ticks] == [S, B, B, S, B, S]
    assert ticks[0].ts_event == 1_609_493_396_101 * MS and ticks[0].ts_init == WALL_0930_NS
    assert all(t.venue == "binance" and t.symbol == BTC for t in ticks)
    labels = {"exchange": "binance", "stream": "trades"}
    assert sample(registry, "market_collector_duplicates_total", **labels) >= 2
    assert sample(registry, "market_collector_records_total", **labels, transport="rest") == 6
    ok = {**labels, "transport": "rest", "outcome": "success", "reason": "none"}
    assert sample(registry, "market_collector_calls_total", **ok) >= 3
    latency = {**labels, "transport": "rest"}
    assert sample(registry, "market_ingest_latency_seconds_count", **latency) == 6
    expected_sum = sum(WALL_0930_NS - t.ts_event for t in ticks) / 1e9
    assert sample(registry, "market_ingest_latency_seconds_sum", **latency) == pytest.approx(expected_sum)


async def test_full_rest_page_disjoint_from_last_then_gap_suspected(binance: Any) -> None:
    exchange, transport, cfg = binance("binance_aggtrades_btcusdt_gap.json")
    settings = LiveSettings(poll_interval_s=0.0, rest_trades_limit=4)
    collector, publisher, registry = collector_for(exchange, cfg, settings=settings)

    async with running(collector) as task:
        await wait_until(lambda: len(transport.requests_to("/api/v3/aggTrades")) >= 3, task)

    assert len(publisher.ticks) == 8
    assert sample(registry, "market_collector_trade_gaps_suspected_total", exchange="binance", stream="trades") == 1


async def test_rest_ohlcv_polls_then_closed_once_and_forming_until_newer_candle(binance: Any) -> None:
    exchange, transport, cfg = binance("binance_klines_btcusdt_1h_latest.json", timeframes=(Timeframe.H1,))
    clock = FakeWallClock(WALL_0930_NS)
    sleep = RecordingSleep(on_sleep=lambda _: setattr(clock, "now_ns", WALL_1000_30_NS))
    collector, publisher, _ = collector_for(exchange, cfg, wall_clock=clock, sleep=sleep, kinds=(StreamKind.OHLCV,))

    async with running(collector) as task:
        await wait_until(lambda: len(transport.requests_to("/api/v3/klines")) >= 4, task)

    opens_h = [(b.open_time // MS - T0_MS) // HOUR_MS for b in publisher.bars]
    assert list(zip(opens_h, [b.is_closed for b in publisher.bars], strict=True)) == [
        (7, True),
        (8, True),
        (9, False),
        (9, True),
        (10, False),
    ]
    forming_9, closed_9 = publisher.bars[2], publisher.bars[3]
    assert closed_9.revision == HOUR_MS > forming_9.revision == 30 * 60_000
    assert {b.source for b in publisher.bars} == {"ccxt_rest"}


async def test_rest_answer_invalid_symbol_then_collector_stops_with_fatal_error(binance: Any) -> None:
    exchange, transport, cfg = binance("binance_invalid_symbol.json", symbol="LUNA/USDT")
    collector, _, registry = collector_for(exchange, cfg)

    with pytest.raises(FatalExchangeError) as raised:
        await asyncio.wait_for(collector.run(), 5)

    assert raised.value.reason is FailureReason.BAD_SYMBOL
    assert len(transport.requests_to("/api/v3/aggTrades")) == 1
    failure = {"outcome": "failure", "reason": "bad_symbol", "transport": "rest"}
    assert sample(registry, "market_collector_calls_total", exchange="binance", stream="trades", **failure) == 1


# ---------------------------------------------------------------------------
# Websocket path
# ---------------------------------------------------------------------------


async def test_websocket_trades_then_ticks_and_replayed_message_dropped(binance: Any) -> None:
    exchange, _, cfg = binance(pro=True)
    stream = RecordedTradeStream(exchange)
    collector, publisher, registry = collector_for(exchange, cfg)

    async with running(collector) as task:
        await wait_until(lambda: not stream.messages and len(publisher.ticks) == 3, task)
        assert collector.transport_of(StreamSpec(StreamKind.TRADES, BTC)) is Transport.WS

    ticks = publisher.ticks
    assert [t.trade_id for t in ticks] == ["574823901", "574823902", "574823905"]
    assert [t.aggressor for t in ticks] == [AggressorSide.SELL, AggressorSide.BUY, AggressorSide.SELL]
    assert [t.quantity for t in ticks] == [0.00381, 0.04, 0.02]
    assert sample(registry, "market_collector_duplicates_total", exchange="binance", stream="trades") == 1
    latency = {"exchange": "binance", "stream": "trades", "transport": "ws"}
    assert sample(registry, "market_ingest_latency_seconds_count", **latency) == 3


async def test_websocket_network_error_then_reconnect_with_seeded_backoff(binance: Any) -> None:
    exchange, _, cfg = binance(pro=True)
    stream = RecordedTradeStream(
        exchange, failures=[ccxt.NetworkError("ping-pong keepalive missing"), ccxt.RequestTimeout("connect timeout")]
    )
    sleep = RecordingSleep()
    policy = BackoffPolicy(base_s=0.5, cap_s=30.0)
    settings = LiveSettings(poll_interval_s=0.0, reconnect=policy)
    collector, publisher, registry = collector_for(exchange, cfg, sleep=sleep, settings=settings)

    async with running(collector) as task:
        await wait_until(lambda: len(publisher.ticks) == 3, task)

    import random

    rng = random.Random("live:binance:spot")
    expected = [
        policy.delay_s(1, rng, FailureReason.NETWORK_ERROR),
        policy.delay_s(2, rng, FailureReason.NETWORK_ERROR),
    ]
    assert sleep.delays == pytest.approx(expected)
    assert 0.25 <= sleep.delays[0] <= 0.5 and 0.5 <= sleep.delays[1] <= 1.0
    failure = {"exchange": "binance", "stream": "trades", "transport": "ws", "outcome": "failure"}
    assert sample(registry, "market_collector_calls_total", **failure, reason="network_error") == 2
    assert collector.transport_of(StreamSpec(StreamKind.TRADES, BTC)) is Transport.WS
    assert stream.calls >= 5


async def test_websocket_keeps_failing_then_rest_fallback_and_later_reprobe(binance: Any) -> None:
    exchange, transport, cfg = binance("binance_aggtrades_btcusdt.json", pro=True)
    stream = RecordedTradeStream(exchange, fail_forever=True)
    clock = FakeWallClock(WALL_0930_NS)
    settings = LiveSettings(poll_interval_s=0.0, ws_failures_before_fallback=2, ws_reprobe_after_s=60.0)
    collector, publisher, registry = collector_for(exchange, cfg, wall_clock=clock, settings=settings)
    spec = StreamSpec(StreamKind.TRADES, BTC)

    async with running(collector) as task:
        await wait_until(lambda: len(publisher.ticks) == 6, task)
        assert collector.transport_of(spec) is Transport.REST
        assert stream.calls == 2
        clock.now_ns += 61 * 1_000_000_000
        await wait_until(lambda: stream.calls >= 3, task)

    labels = {"exchange": "binance", "stream": "trades"}
    assert sample(registry, "market_collector_ws_fallbacks_total", **labels) >= 1
    unavailable = {**labels, "transport": "ws", "outcome": "failure", "reason": "exchange_unavailable"}
    assert sample(registry, "market_collector_calls_total", **unavailable) >= 3
    assert sample(registry, "market_collector_records_total", **labels, transport="rest") == 6
    assert len(transport.requests_to("/api/v3/aggTrades")) >= 2


def test_candle_tracker_on_websocket_updates_then_last_values_close_the_bar() -> None:
    tracker = CandleTracker(Timeframe.H1, settle_ms=5_000)
    t9, t10 = T0_MS + 9 * HOUR_MS, T0_MS + 10 * HOUR_MS
    first = [t9, 29000.01, 29100.0, 28970.0, 29050.0, 800.0]
    later = [t9, 29000.01, 29307.73, 28970.0, 29202.21, 2022.056022]
    now = t9 + 30 * 60_000

    assert tracker.update([first], now) == [(first, False)]
    assert tracker.update([later], now + 1) == [(later, False)]
    assert tracker.update([later], now + 2) == []  # unchanged: nothing new to publish
    nxt = [t10, 29202.21, 29210.0, 29190.0, 29200.0, 3.5]
    assert tracker.update([nxt], t10 + 1_000) == [(later, True), (nxt, False)]
    assert tracker.update([later], t10 + 2_000) == []  # a late repeat of a closed candle


def test_trade_deduper_at_capacity_then_oldest_forgotten() -> None:
    dedupe: SeenIds[str] = SeenIds(capacity=2)  # what the collector dedupes trade ids with
    assert [not dedupe.add(i) for i in ("a", "b", "a", "c", "b")] == [False, False, True, False, True]
    assert dedupe.add("a") is True  # the oldest id, evicted when "c" arrived
    assert len(dedupe) == 2


# ---------------------------------------------------------------------------
# Start-up: fail fast
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _point_api_at(exchange: Any, base: str) -> None:
    """Send every REST API URL of the instance to ``base`` (scheme://host:port)."""

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"^https?://[^/]+", base, value)
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        return value

    exchange.urls["api"] = rewrite(exchange.urls["api"])


@pytest.fixture
async def unreachable_binance() -> AsyncIterator[tuple[Any, ExchangeConfig]]:
    cfg = ExchangeConfig(exchange_id="binance", market_type=MarketType.SPOT, symbols=(BTC,))
    exchange = make_exchange(cfg, pro=True)
    try:
        yield exchange, cfg
    finally:
        await exchange.close()


async def test_network_unreachable_then_exchange_unreachable_within_bound(
    unreachable_binance: tuple[Any, ExchangeConfig],
) -> None:
    exchange, cfg = unreachable_binance
    port = _free_port()  # nothing listens there: connection refused
    _point_api_at(exchange, f"http://127.0.0.1:{port}")
    collector, publisher, _ = collector_for(exchange, cfg, wall_clock=time.time_ns)

    started = time.monotonic()
    with pytest.raises(ExchangeUnreachable, match=rf"cannot reach 127\.0\.0\.1:{port} at start-up") as raised:
        await collector.run()

    assert time.monotonic() - started < LiveSettings().preflight_timeout_s
    assert "exchange_unavailable" in str(raised.value) and "live mode does not start" in str(raised.value)
    assert publisher.records == []


async def test_silent_host_then_preflight_gives_up_at_its_time_bound(
    unreachable_binance: tuple[Any, ExchangeConfig],
) -> None:
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exchange, cfg = unreachable_binance
    _point_api_at(exchange, f"http://127.0.0.1:{port}")
    settings = LiveSettings(preflight_timeout_s=0.5)
    collector, _, _ = collector_for(exchange, cfg, wall_clock=time.time_ns, settings=settings)

    started = time.monotonic()
    try:
        with pytest.raises(ExchangeUnreachable, match=rf"no answer from 127\.0\.0\.1:{port} within 0\.5 s"):
            await collector.run()
        assert 0.4 <= time.monotonic() - started < 2.0
        assert writers, "ccxt never connected: the bound was not what stopped it"
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_symbol_not_listed_then_preflight_fatal_bad_symbol(binance: Any) -> None:
    exchange, _, cfg = binance(symbol="DOGE/USDT")
    collector, _, _ = collector_for(exchange, cfg)

    with pytest.raises(FatalExchangeError, match=r"has no market \['DOGE/USDT'\]") as raised:
        await collector.run()
    assert raised.value.reason is FailureReason.BAD_SYMBOL


async def test_preflight_then_clock_skew_measured_from_server_time(binance: Any) -> None:
    exchange, _, cfg = binance()
    collector, _, _ = collector_for(exchange, cfg, wall_clock=FakeWallClock(WALL_0930_NS - 250 * MS))

    await collector.preflight()

    assert collector.clock_skew_ms == 250  # the recorded /api/v3/time says 09:30:00.000
