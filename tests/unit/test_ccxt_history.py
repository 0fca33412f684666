"""History download, converters, error classification and exchange config,
offline: real ccxt exchange instances whose HTTP ``fetch`` replays recorded
responses (tests/fixtures/ccxt), so ccxt's own URL building, parsing and
error mapping run as they would online."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import functools
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import ccxt
import pytest

from agents.market.ccxt_parse import (
    ExchangeDataError,
    bar_revision,
    candle_is_closed,
    ccxt_ohlcv_to_bar,
    ccxt_trade_to_tick,
)
from agents.market.exchanges import (
    SUPPORTED_EXCHANGES,
    BackoffPolicy,
    ExchangeConfig,
    FailureReason,
    FatalExchangeError,
    FileCheckpointStore,
    MarketType,
    MemoryCheckpointStore,
    RetriesExhausted,
    UnsupportedExchangeError,
    classify_error,
    make_exchange,
)
from agents.market.history import HistoryReport, download_history, history_checkpoint_key
from tests.fixtures.ccxt.replay import ReplayTransport, load_fixture
from topics.records import AggressorSide, Bar, Timeframe
from topics.schema import ErrorReason, Record, codec_for
from topics.units import NS_PER_HOUR
from topics.units import NS_PER_MS as MS

pytestmark = pytest.mark.timeout(10)

HOUR_MS = NS_PER_HOUR // MS
#: 2021-01-01 00:00 UTC .. 10:00, the open times of the recorded Binance 1h candles.
T0_MS = 1_609_459_200_000
OPENS_MS = [T0_MS + i * HOUR_MS for i in range(12)]
#: 09:30 UTC: the 09:00 candle is still forming.
WALL_0930_NS = (T0_MS + 9 * HOUR_MS + 30 * 60_000) * MS
WALL_1030_NS = WALL_0930_NS + HOUR_MS * MS

MARKETS = {
    "binance": "binance_spot_markets.json",
    "bitget": "bitget_swap_markets.json",
    "okx": "okx_spot_markets.json",
    "coinbase": "coinbase_spot_markets.json",
}


class ListPublisher:
    """Collects published batches; optionally fails on the n-th publish (a lost broker)."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.batches: list[list[Record]] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    async def publish(self, records: Sequence[Record]) -> None:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise ConnectionError("broker connection lost")
        self.batches.append(list(records))

    @property
    def bars(self) -> list[Bar]:
        return [r for batch in self.batches for r in batch if isinstance(r, Bar)]


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


ExchangeFactory = Callable[..., tuple[Any, ReplayTransport]]


@pytest.fixture
async def replayed() -> AsyncIterator[ExchangeFactory]:
    """Builds ccxt exchanges through make_exchange with a replay transport; closes them after the test."""
    made: list[Any] = []

    def build(exchange_id: str, market_type: str, symbol: str, *fixtures: str) -> tuple[Any, ReplayTransport]:
        cfg = ExchangeConfig(exchange_id=exchange_id, market_type=MarketType(market_type), symbols=(symbol,))
        exchange = make_exchange(cfg)
        exchange.timeout_on_exit = 0  # no sockets are ever opened: nothing to drain on close
        made.append(exchange)
        return exchange, ReplayTransport.install(exchange, MARKETS[exchange_id], *fixtures)

    yield build
    for exchange in made:
        await exchange.close()


@functools.cache
def csv_candles(path: str, first: str, n: int) -> tuple[tuple[int, float, float, float, float, float], ...]:
    """Rows ``(open_ms, o, h, l, c, v)`` of the shared real-data CSV the fixtures were recorded from."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["timestamp"] >= first:
                open_ms = int(dt.datetime.fromisoformat(row["timestamp"]).timestamp() * 1000)
                o, h, low, c, v = (float(row[k]) for k in ("open", "high", "low", "close", "volume"))
                out.append((open_ms, o, h, low, c, v))
                if len(out) == n:
                    break
    return tuple(out)


BINANCE_CSV = "/work/shared/data/binance_btcusdt_1h_2017_2022.csv"
COINBASE_CSV = "/work/shared/data/gymcrypto_btcusd_30m_2017_2019.csv"


async def download(exchange: Any, symbol: str, **kwargs: Any) -> tuple[HistoryReport, ListPublisher]:
    publisher = kwargs.pop("publisher", None) or ListPublisher()
    params: dict[str, Any] = {
        "timeframe": Timeframe.H1,
        "start_ns": T0_MS * MS,
        "end_ns": (T0_MS + 10 * HOUR_MS) * MS,
        "checkpoints": MemoryCheckpointStore(),
        "wall_clock": lambda: WALL_0930_NS,
        "page_limit": 4,
        "sleep": RecordingSleep(),
    }
    params.update(kwargs)
    report = await download_history(exchange, symbol, publisher=publisher, **params)
    return report, publisher


# ---------------------------------------------------------------------------
# Pagination, resume, closed/forming
# ---------------------------------------------------------------------------


async def test_paginated_klines_with_boundary_overlap_then_every_bar_once_in_order(replayed: ExchangeFactory) -> None:
    exchange, transport = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_pages.json")
    checkpoints = MemoryCheckpointStore()

    report, publisher = await download(exchange, "BTC/USDT", checkpoints=checkpoints)

    bars = publisher.bars
    assert [b.open_time // MS for b in bars] == OPENS_MS[:10]
    assert report.bars_published == 10 and report.pages_published == 3 and len(publisher.batches) == 3
    # since advances past the last candle of each page; the 4th page is empty.
    assert [int(q["startTime"]) for q in transport.requests_to("/api/v3/klines")] == [
        OPENS_MS[0],
        OPENS_MS[3] + 1,
        OPENS_MS[7] + 1,
        OPENS_MS[9] + 1,
    ]
    real = csv_candles(BINANCE_CSV, "2021-01-01 00:00", 10)
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in bars] == [c[1:] for c in real]
    assert all(b.venue == "binance" and b.symbol == "BTC/USDT" and b.timeframe is Timeframe.H1 for b in bars)
    # 09:00 is still forming at 09:30: published open, never checkpointed.
    assert [b.is_closed for b in bars] == [True] * 9 + [False]
    assert bars[0].revision == HOUR_MS and bars[0].ts_event == (OPENS_MS[0] + HOUR_MS) * MS
    assert bars[-1].revision == 30 * 60_000 and bars[-1].ts_event == WALL_0930_NS
    assert report.forming_bars == 1
    key = history_checkpoint_key("binance", "BTC/USDT", Timeframe.H1, T0_MS * MS)
    assert checkpoints.saves == [(key, OPENS_MS[3] * MS), (key, OPENS_MS[7] * MS), (key, OPENS_MS[8] * MS)]
    assert report.checkpoint_ns == OPENS_MS[8] * MS
    assert all(codec_for(Bar).decode(codec_for(Bar).encode(b)) == b for b in bars)
    assert transport.unserved() == []


async def test_crash_mid_download_then_restart_resumes_after_checkpoint(replayed: ExchangeFactory) -> None:
    checkpoints = MemoryCheckpointStore()
    exchange, _ = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_pages.json")
    crashed = ListPublisher(fail_on_call=2)
    with pytest.raises(ConnectionError, match="broker connection lost"):
        await download(exchange, "BTC/USDT", checkpoints=checkpoints, publisher=crashed)
    key = history_checkpoint_key("binance", "BTC/USDT", Timeframe.H1, T0_MS * MS)
    assert checkpoints.values == {key: OPENS_MS[3] * MS}

    restarted, transport = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_pages.json")
    report, publisher = await download(restarted, "BTC/USDT", checkpoints=checkpoints)

    assert report.resumed_after_ns == OPENS_MS[3] * MS
    assert int(transport.requests_to("/api/v3/klines")[0]["startTime"]) == OPENS_MS[3] + 1
    combined = crashed.bars + publisher.bars
    assert [b.open_time // MS for b in combined] == OPENS_MS[:10]
    assert len({b.event_id for b in combined}) == 10


async def test_forming_candle_then_next_run_publishes_it_closed(replayed: ExchangeFactory) -> None:
    checkpoints = MemoryCheckpointStore()
    first, _ = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_pages.json")
    _, early = await download(first, "BTC/USDT", checkpoints=checkpoints)
    forming = early.bars[-1]

    later, _ = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_next_run.json")
    report, publisher = await download(
        later,
        "BTC/USDT",
        checkpoints=checkpoints,
        end_ns=(T0_MS + 11 * HOUR_MS) * MS,
        wall_clock=lambda: WALL_1030_NS,
    )

    closed, new_forming = publisher.bars
    assert closed.open_time == forming.open_time and closed.is_closed and not forming.is_closed
    assert closed.revision == HOUR_MS > forming.revision
    assert closed.event_id != forming.event_id
    assert not new_forming.is_closed and new_forming.open_time == OPENS_MS[10] * MS
    assert report.checkpoint_ns == OPENS_MS[9] * MS


@pytest.mark.parametrize(
    ("exchange_id", "market_type", "symbol", "fixture", "timeframe", "csv_path", "first", "end_index"),
    [
        (
            "bitget",
            "swap",
            "BTC/USDT:USDT",
            "bitget_swap_candles_btcusdt_1h.json",
            Timeframe.H1,
            BINANCE_CSV,
            "2021-01-01 00:00",
            6,
        ),
        (
            "okx",
            "spot",
            "BTC/USDT",
            "okx_spot_candles_btcusdt_1h.json",
            Timeframe.H1,
            BINANCE_CSV,
            "2021-01-01 00:00",
            6,
        ),
        (
            "coinbase",
            "spot",
            "BTC/USD",
            "coinbase_spot_candles_btcusd_30m.json",
            Timeframe.M30,
            COINBASE_CSV,
            "2019-06-01 00:00",
            6,
        ),
    ],
)
async def test_recorded_candles_of_each_venue_then_bars_match_source_data(
    replayed: ExchangeFactory,
    exchange_id: str,
    market_type: str,
    symbol: str,
    fixture: str,
    timeframe: Timeframe,
    csv_path: str,
    first: str,
    end_index: int,
) -> None:
    exchange, transport = replayed(exchange_id, market_type, symbol, fixture)
    real = csv_candles(csv_path, first, end_index + 1)
    tf_ms = timeframe.nanos // MS

    report, publisher = await download(
        exchange,
        symbol,
        timeframe=timeframe,
        start_ns=real[0][0] * MS,
        end_ns=real[end_index][0] * MS,
        wall_clock=lambda: (real[-1][0] + 10 * tf_ms) * MS,
    )

    bars = publisher.bars
    assert [b.open_time // MS for b in bars] == [c[0] for c in real[:end_index]]
    for bar, candle in zip(bars, real, strict=False):
        assert bar.open == pytest.approx(candle[1], abs=0.05) and bar.close == pytest.approx(candle[4], abs=0.05)
        assert bar.high == pytest.approx(candle[2], abs=0.05) and bar.low == pytest.approx(candle[3], abs=0.05)
        assert bar.volume == pytest.approx(candle[5], rel=1e-6)
    assert all(b.is_closed and b.venue == exchange_id and b.symbol == symbol for b in bars)
    assert report.bars_published == end_index
    assert transport.unserved() == []


async def test_source_whose_pages_overlap_then_duplicates_dropped_and_order_kept() -> None:
    """A source that ignores ``since`` (no ccxt filter in between) re-sends earlier candles."""
    candles = [[OPENS_MS[i], 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1.0] for i in range(7)]
    pages = [candles[0:3], candles[1:5], candles[3:7], candles[5:7]]

    class OverlappingSource:
        id = "replayvenue"

        def __init__(self) -> None:
            self.since: list[int | None] = []

        async def fetch_ohlcv(
            self,
            symbol: str,
            timeframe: str = "1m",
            since: int | None = None,
            limit: int | None = None,
            params: dict[str, Any] | None = None,
        ) -> list[list[Any]]:
            self.since.append(since)
            return pages[len(self.since) - 1] if len(self.since) <= len(pages) else []

    source = OverlappingSource()
    report, publisher = await download(source, "BTC/USDT", end_ns=(T0_MS + 7 * HOUR_MS) * MS)

    assert [b.open_time // MS for b in publisher.bars] == OPENS_MS[:7]
    assert report.duplicates_dropped == 2 + 2 + 2
    assert source.since[:2] == [OPENS_MS[0], OPENS_MS[2] + 1]


# ---------------------------------------------------------------------------
# Errors: rate limit, network down, fatal
# ---------------------------------------------------------------------------


async def test_http_429_then_rate_limited_retry_with_seeded_backoff(replayed: ExchangeFactory) -> None:
    exchange, transport = replayed("binance", "spot", "BTC/USDT", "binance_klines_rate_limited.json")
    sleep = RecordingSleep()
    policy = BackoffPolicy(base_s=0.5, cap_s=8.0, max_attempts=3, rate_limited_min_s=1.0)

    report, publisher = await download(exchange, "BTC/USDT", retry=policy, sleep=sleep)

    key = history_checkpoint_key("binance", "BTC/USDT", Timeframe.H1, T0_MS * MS)
    expected = policy.delay_s(1, random.Random(key), FailureReason.RATE_LIMITED)
    assert sleep.delays == [pytest.approx(expected)] and expected >= 1.0
    assert report.retries == 1 and report.requests == 3
    assert [b.open_time // MS for b in publisher.bars] == OPENS_MS[:4]
    assert len(transport.requests_to("/api/v3/klines")) == 3


async def test_recorded_429_through_ccxt_then_rate_limited(replayed: ExchangeFactory) -> None:
    """ccxt's binance maps HTTP 418/429 to DDoSProtection (a NetworkError), not RateLimitExceeded."""
    exchange, _ = replayed("binance", "spot", "BTC/USDT", "binance_klines_rate_limited.json")
    with pytest.raises(ccxt.DDoSProtection) as raised:
        await exchange.fetch_ohlcv("BTC/USDT", "1h", since=T0_MS, limit=4)
    assert classify_error(raised.value).reason is FailureReason.RATE_LIMITED


async def test_network_down_then_retries_exhausted_with_clear_error(replayed: ExchangeFactory) -> None:
    exchange, transport = replayed("binance", "spot", "BTC/USDT", "binance_klines_network_down.json")
    sleep = RecordingSleep()
    checkpoints = MemoryCheckpointStore()
    policy = BackoffPolicy(base_s=0.5, cap_s=8.0, max_attempts=4)

    with pytest.raises(RetriesExhausted) as raised:
        await download(exchange, "BTC/USDT", retry=policy, sleep=sleep, checkpoints=checkpoints)

    error = raised.value
    assert error.attempts == 4 and error.reason is FailureReason.EXCHANGE_UNAVAILABLE
    assert "fetch_ohlcv(BTC/USDT, 1h, since=1609459200000)" in str(error)
    assert isinstance(error.__cause__, ccxt.ExchangeNotAvailable)
    assert len(transport.requests_to("/api/v3/klines")) == 4
    # Exponential steps 0.5, 1, 2 with equal jitter: each delay lies in [step/2, step].
    assert len(sleep.delays) == 3
    for delay, step in zip(sleep.delays, (0.5, 1.0, 2.0), strict=True):
        assert step / 2 <= delay <= step
    assert checkpoints.saves == []


async def test_invalid_symbol_answer_then_fatal_without_retry(replayed: ExchangeFactory) -> None:
    exchange, transport = replayed("binance", "spot", "LUNA/USDT", "binance_invalid_symbol.json")
    sleep = RecordingSleep()

    with pytest.raises(FatalExchangeError) as raised:
        await download(exchange, "LUNA/USDT", sleep=sleep)

    assert raised.value.reason is FailureReason.BAD_SYMBOL
    assert isinstance(raised.value.__cause__, ccxt.BadSymbol)
    assert len(transport.requests_to("/api/v3/klines")) == 1 and sleep.delays == []


async def test_symbol_not_listed_then_fatal_before_any_candle_request(replayed: ExchangeFactory) -> None:
    exchange, transport = replayed("binance", "spot", "BTC/USDT")

    with pytest.raises(FatalExchangeError, match="bad_symbol"):
        await download(exchange, "DOGE/USDT")

    assert transport.requests_to("/api/v3/klines") == []


# ---------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------

GOOD_ROW = [T0_MS, 28923.63, 29031.34, 28690.17, 28995.13, 2311.811445]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([T0_MS, 1.0, 2.0, 0.5, 1.5, None], ErrorReason.MISSING_FIELD),
        ([T0_MS, 1.0, 0.4, 0.5, 1.5, 3.0], ErrorReason.INVALID_VALUE),
        ([str(T0_MS), 1.0, 2.0, 0.5, 1.5, 3.0], ErrorReason.WRONG_TYPE),
        ([T0_MS, 1.0, 2.0, 0.5, float("nan"), 3.0], ErrorReason.NOT_FINITE),
        ([T0_MS, 1.0, 2.0, 0.5, 1.5, -3.0], ErrorReason.OUT_OF_RANGE),
        ([T0_MS, 0.0, 2.0, 0.0, 1.5, 3.0], ErrorReason.OUT_OF_RANGE),
        ([T0_MS // 1000, 1.0, 2.0, 0.5, 1.5, 3.0], ErrorReason.BAD_TIMESTAMP),
        ([T0_MS, 1.0, 2.0], ErrorReason.WRONG_TYPE),
    ],
)
def test_bad_ohlcv_row_then_exchange_data_error_with_reason(row: list[Any], reason: ErrorReason) -> None:
    with pytest.raises(ExchangeDataError) as raised:
        ccxt_ohlcv_to_bar(row, "binance", "BTC/USDT", Timeframe.H1, WALL_0930_NS, True, "ccxt_rest")
    assert raised.value.reason is reason and raised.value.raw is row


def test_good_ohlcv_row_then_bar_with_deterministic_id() -> None:
    a = ccxt_ohlcv_to_bar(GOOD_ROW, "binance", "BTC/USDT", Timeframe.H1, WALL_0930_NS, True, "ccxt_rest")
    b = ccxt_ohlcv_to_bar(GOOD_ROW, "binance", "BTC/USDT", Timeframe.H1, WALL_1030_NS, True, "ccxt_rest")
    assert a.event_id == b.event_id and a.trade_count is None and a.open_time == T0_MS * MS


@pytest.mark.parametrize(
    ("trade", "reason"),
    [
        (
            {"id": "1", "symbol": "BTC/USDT", "timestamp": T0_MS, "price": 0.0, "amount": 1.0, "side": "buy"},
            ErrorReason.OUT_OF_RANGE,
        ),
        ({"id": "1", "timestamp": T0_MS, "price": 1.0, "amount": 1.0, "side": "buy"}, ErrorReason.MISSING_FIELD),
        (
            {"id": "1", "symbol": "BTC/USDT", "timestamp": None, "price": 1.0, "amount": 1.0, "side": "buy"},
            ErrorReason.WRONG_TYPE,
        ),
        (
            {"id": "1", "symbol": "BTC/USDT", "timestamp": T0_MS, "price": 1.0, "amount": 1.0, "side": "long"},
            ErrorReason.UNKNOWN_ENUM,
        ),
        (
            {"id": "1", "symbol": "btc-usdt", "timestamp": T0_MS, "price": 1.0, "amount": 1.0, "side": "buy"},
            ErrorReason.BAD_SYMBOL,
        ),
    ],
)
def test_bad_trade_then_exchange_data_error_with_reason(trade: dict[str, Any], reason: ErrorReason) -> None:
    with pytest.raises(ExchangeDataError) as raised:
        ccxt_trade_to_tick(trade, "binance", WALL_0930_NS)
    assert raised.value.reason is reason


def test_trade_without_id_then_stable_synthetic_id() -> None:
    trade = {"id": None, "symbol": "BTC/USDT", "timestamp": T0_MS, "price": 1.0, "amount": 2.0, "side": None}
    a, b = ccxt_trade_to_tick(trade, "x", WALL_0930_NS), ccxt_trade_to_tick(dict(trade), "x", WALL_1030_NS)
    assert a.trade_id == b.trade_id and a.trade_id.startswith("syn:") and a.aggressor is AggressorSide.UNKNOWN


def test_contract_trade_then_quantity_in_base_currency() -> None:
    """OKX BTC-USDT-SWAP trades come in contracts of 0.01 BTC."""
    trade = {"id": "9", "symbol": "BTC/USDT:USDT", "timestamp": T0_MS, "price": 29000.0, "amount": 25.0, "side": "buy"}
    assert ccxt_trade_to_tick(trade, "okx", WALL_0930_NS, contract_size=0.01).quantity == pytest.approx(0.25)
    with pytest.raises(ValueError, match="contract_size"):
        ccxt_trade_to_tick(trade, "okx", WALL_0930_NS, contract_size=0.0)


def test_candle_close_rules_then_venue_evidence_or_settled_clock() -> None:
    tf = Timeframe.H1
    assert candle_is_closed(T0_MS, tf, newest_open_ms=T0_MS + HOUR_MS, now_ms=T0_MS, settle_ms=5_000)
    assert not candle_is_closed(T0_MS, tf, newest_open_ms=T0_MS, now_ms=T0_MS + HOUR_MS + 4_999, settle_ms=5_000)
    assert candle_is_closed(T0_MS, tf, newest_open_ms=T0_MS, now_ms=T0_MS + HOUR_MS + 5_000, settle_ms=5_000)
    assert bar_revision(T0_MS, tf, (T0_MS - 10) * MS, is_closed=False) == 0
    assert bar_revision(T0_MS, tf, (T0_MS + 2 * HOUR_MS) * MS, is_closed=False) == HOUR_MS - 1


async def test_bad_row_inside_page_then_rejected_and_rest_published() -> None:
    rows = [
        [OPENS_MS[0], 10.0, 11.0, 9.0, 10.5, 1.0],
        [OPENS_MS[1], 10.0, 9.0, 11.0, 10.5, 1.0],  # high < low
        "garbage",
        [OPENS_MS[2], 10.0, 11.0, 9.0, 10.5, 1.0],
    ]

    class Source:
        id = "replayvenue"
        calls = 0

        async def fetch_ohlcv(
            self,
            symbol: str,
            timeframe: str = "1m",
            since: int | None = None,
            limit: int | None = None,
            params: dict[str, Any] | None = None,
        ) -> list[Any]:
            self.calls += 1
            return rows if self.calls == 1 else []

    rejected: list[ExchangeDataError] = []

    async def on_reject(error: ExchangeDataError) -> None:
        rejected.append(error)

    report, publisher = await download(Source(), "BTC/USDT", on_reject=on_reject)

    assert [b.open_time // MS for b in publisher.bars] == [OPENS_MS[0], OPENS_MS[2]]
    assert [e.reason for e in rejected] == [ErrorReason.WRONG_TYPE, ErrorReason.INVALID_VALUE]
    assert report.rejected_rows == 2


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


async def test_file_checkpoints_then_survive_a_new_store_instance(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoints.json"
    store = FileCheckpointStore(path)
    assert await store.load("a") is None
    await store.save("a", 1)
    await store.save("b", 2)
    await store.save("a", 3)

    again = FileCheckpointStore(path)
    assert await again.load("a") == 3 and await again.load("b") == 2
    assert json.loads(path.read_text()) == {"a": 3, "b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoints.json"]  # no temp files left


async def test_file_checkpoint_resume_then_download_continues(tmp_path: Path, replayed: ExchangeFactory) -> None:
    store = FileCheckpointStore(tmp_path / "cp.json")
    key = history_checkpoint_key("binance", "BTC/USDT", Timeframe.H1, T0_MS * MS)
    await store.save(key, OPENS_MS[7] * MS)
    exchange, transport = replayed("binance", "spot", "BTC/USDT", "binance_klines_btcusdt_1h_pages.json")
    transport.interactions = [i for i in transport.interactions if i.query.get("startTime") != str(T0_MS)]

    report, publisher = await download(exchange, "BTC/USDT", checkpoints=store)

    assert [b.open_time // MS for b in publisher.bars] == OPENS_MS[8:10]
    assert await FileCheckpointStore(tmp_path / "cp.json").load(key) == OPENS_MS[8] * MS
    assert report.resumed_after_ns == OPENS_MS[7] * MS


async def test_corrupt_checkpoint_file_then_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text('{"a": "not a number"}')
    with pytest.raises(ValueError, match="not a checkpoint file"):
        await FileCheckpointStore(path).load("a")


# ---------------------------------------------------------------------------
# Error classification and exchange configuration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "retriable"),
    [
        (ccxt.RateLimitExceeded("x"), FailureReason.RATE_LIMITED, True),
        (ccxt.DDoSProtection("x"), FailureReason.RATE_LIMITED, True),
        (ccxt.OnMaintenance("x"), FailureReason.EXCHANGE_UNAVAILABLE, True),
        (ccxt.ExchangeNotAvailable("x"), FailureReason.EXCHANGE_UNAVAILABLE, True),
        (ccxt.RequestTimeout("x"), FailureReason.NETWORK_ERROR, True),
        (ccxt.NetworkError("x"), FailureReason.NETWORK_ERROR, True),
        (ccxt.NullResponse("x"), FailureReason.BAD_RESPONSE, True),
        (ccxt.AuthenticationError("x"), FailureReason.AUTH_FAILED, False),
        (ccxt.PermissionDenied("x"), FailureReason.AUTH_FAILED, False),
        (ccxt.BadSymbol("x"), FailureReason.BAD_SYMBOL, False),
        (ccxt.NotSupported("x"), FailureReason.NOT_SUPPORTED, False),
        (ccxt.BadRequest("x"), FailureReason.BAD_REQUEST, False),
        (ccxt.InsufficientFunds("x"), FailureReason.EXCHANGE_ERROR, False),
        (TimeoutError(), FailureReason.NETWORK_ERROR, True),
        (ConnectionResetError(), FailureReason.NETWORK_ERROR, True),
        (KeyError("x"), FailureReason.UNKNOWN, False),
    ],
)
def test_ccxt_exception_then_classified_by_what_to_do(
    error: BaseException, reason: FailureReason, retriable: bool
) -> None:
    classification = classify_error(error)
    assert (classification.reason, classification.retriable) == (reason, retriable)


def test_unknown_exchange_id_then_error_lists_supported() -> None:
    with pytest.raises(UnsupportedExchangeError, match=r"'kraken' is not supported; supported: \['binance'"):
        ExchangeConfig(exchange_id="kraken", market_type=MarketType.SPOT, symbols=("BTC/USDT",))
    with pytest.raises(UnsupportedExchangeError, match="coinbase supports market types"):
        ExchangeConfig(exchange_id="coinbase", market_type=MarketType.SWAP, symbols=("BTC/USD:USD",))
    with pytest.raises(ValueError, match="not a swap symbol"):
        ExchangeConfig(exchange_id="bitget", market_type=MarketType.SWAP, symbols=("BTC/USDT",))


async def test_config_per_supported_exchange_then_configured_ccxt_instances() -> None:
    symbols = {"spot": "BTC/USDT", "swap": "BTC/USDT:USDT"}
    built = []
    for exchange_id in sorted(SUPPORTED_EXCHANGES):
        for market_type in ("spot", "swap"):
            if exchange_id == "coinbase" and market_type == "swap":
                continue
            cfg = ExchangeConfig.from_mapping(
                {
                    "exchange_id": exchange_id,
                    "market_type": market_type,
                    "symbols": [symbols[market_type]],
                    "timeframes": ["1m", "1h"],
                }
            )
            for pro in (False, True):
                exchange = make_exchange(cfg, pro=pro, credentials={"apiKey": "k", "secret": "s"})
                built.append(exchange)
                assert exchange.id == exchange_id and exchange.enableRateLimit is True
                assert exchange.options["defaultType"] == market_type
                assert exchange.has["fetchCurrencies"] is False
                assert bool(exchange.has.get("watchTrades")) is pro
                assert exchange.apiKey == "k"
    try:
        assert {type(e).__module__.split(".")[1] for e in built} == {"async_support", "pro"}
        assert built[0].options["fetchMarkets"]["types"] == ["spot"]  # binance spot
        assert built[2].options["fetchMarkets"]["types"] == ["linear"]  # binance swap
    finally:
        for exchange in built:
            exchange.timeout_on_exit = 0
            await exchange.close()
    with pytest.raises(ValueError, match="unknown credential keys"):
        make_exchange(cfg, credentials={"api_key": "k"})


def test_fixture_files_then_each_names_its_provenance() -> None:
    fixtures = sorted(Path(__file__).parents[1].joinpath("fixtures", "ccxt").glob("*.json"))
    assert len(fixtures) >= 12
    for path in fixtures:
        data = load_fixture(path.name)
        assert data["exchange"] in SUPPORTED_EXCHANGES and data["provenance"]
