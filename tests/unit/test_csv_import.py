"""CSV candle import: the real sample files, CryptoDataDownload exports, bad rows."""

from __future__ import annotations

import functools
import gzip
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.market.csv_import import (
    CsvBarReader,
    CsvFormat,
    CsvFormatError,
    DuplicateRow,
    ParseResult,
    RejectedRow,
    RejectReason,
    import_csv_file,
    iter_csv_file,
    parse_csv_text,
)
from topics.records import Bar, Timeframe
from topics.schema import RecordError, codec_for
from topics.units import NS_PER_HOUR as H

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "ops" / "sample_data"
TS_INIT = 1_700_000_000_000_000_000


def ns(text: str) -> int:
    """'2017-08-17 04:00' (UTC) -> epoch ns."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def parse(text: str, *, symbol: str = "BTC/USDT", timeframe: Timeframe = Timeframe.H1) -> ParseResult:
    return parse_csv_text(
        text, venue="binance", symbol=symbol, timeframe=timeframe, ts_init=TS_INIT, filename="test.csv"
    )


@functools.cache
def imported(name: str) -> ParseResult:
    """Each real file is parsed once per test session (parse speed is benchmarked, not tested)."""
    symbol, timeframe = {row[0]: (row[1], row[2]) for row in REAL_FILES}[name]
    return import_csv_file(SAMPLE_DIR / name, venue="binance", symbol=symbol, timeframe=timeframe, ts_init=TS_INIT)


REAL_FILES = [
    # file, symbol, timeframe, data rows (wc -l minus the header), first open, last open
    ("binance_btcusdt_1h_2017_2022.csv", "BTC/USDT", Timeframe.H1, 42_287, "2017-08-17 04:00", "2022-06-15 00:00"),
    ("gymcrypto_btcusd_30m_2017_2019.csv", "BTC/USD", Timeframe.M30, 35_019, "2017-10-01 00:00", "2019-10-01 00:00"),
    ("gymcrypto_ethusd_30m_2017_2019.csv", "ETH/USD", Timeframe.M30, 35_011, "2017-10-01 00:00", "2019-10-01 00:00"),
]


# ---------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "symbol", "timeframe", "rows", "first", "last"), REAL_FILES)
def test_real_sample_file_then_one_bar_per_data_row(
    name: str, symbol: str, timeframe: Timeframe, rows: int, first: str, last: str
) -> None:
    path = SAMPLE_DIR / name
    with path.open() as fh:
        data_rows = sum(1 for _ in fh) - 1  # wc -l minus the header
    assert data_rows == rows

    result = imported(name)

    assert result.format is CsvFormat.SHARED
    assert len(result.bars) == rows
    assert result.rejects == ()
    assert result.duplicates == ()
    opens = [b.open_time for b in result.bars]
    assert all(a < b for a, b in itertools.pairwise(opens)), "strictly ascending"
    assert opens[0] == ns(first)
    assert opens[-1] == ns(last)
    for bar in (result.bars[0], result.bars[-1]):
        assert bar.ts_event == bar.open_time + timeframe.nanos
        assert bar.source == f"csv:{name}"
        assert bar.is_closed is True
        assert bar.revision == 0
        assert bar.trade_count is None  # the shared format has no trade count: not reported, not 0
        assert bar.ts_init == TS_INIT


def test_real_binance_first_row_then_exact_values_and_same_record_as_bar_new() -> None:
    result = imported("binance_btcusdt_1h_2017_2022.csv")
    bar = result.bars[0]
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (16199.91, 16199.91, 4261.32, 4308.83, 44.51)

    # The fast path builds the very record Record.new would (same deterministic id) ...
    expected = Bar.new(
        ts_init=TS_INIT,
        ts_event=bar.open_time + H,
        venue="binance",
        symbol="BTC/USDT",
        timeframe=Timeframe.H1,
        open_time=ns("2017-08-17 04:00"),
        open=16199.91,
        high=16199.91,
        low=4261.32,
        close=4308.83,
        volume=44.51,
        trade_count=None,
        is_closed=True,
        revision=0,
        source="csv:binance_btcusdt_1h_2017_2022.csv",
    )
    assert bar == expected
    assert bar.event_id == expected.event_id
    # ... and it passes the strict codec that every consumer applies.
    codec = codec_for(Bar)
    assert codec.decode(codec.encode(bar)) == bar


def test_gzipped_copy_then_same_bars_as_plain_file(tmp_path: Path) -> None:
    head = "".join((SAMPLE_DIR / "gymcrypto_ethusd_30m_2017_2019.csv").read_text().splitlines(keepends=True)[:2001])
    plain = tmp_path / "eth.csv"
    plain.write_text(head)
    packed = tmp_path / "eth.csv.gz"
    packed.write_bytes(gzip.compress(head.encode(), compresslevel=1))

    a = import_csv_file(plain, venue="coinbase", symbol="ETH/USD", timeframe=Timeframe.M30, ts_init=TS_INIT)
    b = import_csv_file(packed, venue="coinbase", symbol="ETH/USD", timeframe=Timeframe.M30, ts_init=TS_INIT)

    assert len(b.bars) == 2000
    assert b.bars[0].source == "csv:eth.csv"  # compression is not a different file
    assert a.bars == b.bars


def test_streaming_a_real_file_then_items_in_file_order_without_building_a_list() -> None:
    items = iter_csv_file(
        SAMPLE_DIR / "gymcrypto_btcusd_30m_2017_2019.csv",
        venue="coinbase",
        symbol="BTC/USD",
        timeframe=Timeframe.M30,
        ts_init=TS_INIT,
    )
    first_three = [next(items) for _ in range(3)]
    items.close()  # closing the generator closes the file

    assert all(isinstance(b, Bar) for b in first_three)
    assert [b.open_time for b in first_three if isinstance(b, Bar)] == [
        ns("2017-10-01 00:00"),
        ns("2017-10-01 00:30"),
        ns("2017-10-01 01:00"),
    ]


# ---------------------------------------------------------------------------
# CryptoDataDownload exports
# ---------------------------------------------------------------------------

# Newest first, straddling 2020-08-02 when the unix column switched from seconds to
# milliseconds (the real export mixes both units in one file).
CDD_EXPORT = """https://www.CryptoDataDownload.com
unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount
1596340800000,2020-08-02 04:00:00,BTC/USDT,11210.0,11260.5,11190.0,11240.1,812.5,9120000.0,10511
1596337200000,2020-08-02 03:00:00,BTC/USDT,11195.2,11230.0,11150.0,11210.0,944.25,10590000.0,12002
1596333600,2020-08-02 02:00:00,BTC/USDT,11180.0,11200.0,11101.1,11195.2,1020.0,11400000.0,13000
1596330000,2020-08-02 01:00:00,BTC/USDT,11110.9,11190.0,11100.0,11180.0,990.75,11020000.0,12500
"""


def test_cryptodatadownload_export_newest_first_with_mixed_units_then_ascending_bars() -> None:
    result = parse(CDD_EXPORT)

    assert result.format is CsvFormat.CRYPTODATADOWNLOAD
    bars = result.bars
    assert [b.open_time for b in bars] == [
        ns("2020-08-02 01:00"),  # seconds
        ns("2020-08-02 02:00"),  # seconds
        ns("2020-08-02 03:00"),  # milliseconds
        ns("2020-08-02 04:00"),  # milliseconds
    ]
    assert [b.ts_event for b in bars] == [b.open_time + H for b in bars]
    first = bars[0]
    assert (first.open, first.high, first.low, first.close) == (11110.9, 11190.0, 11100.0, 11180.0)
    assert first.volume == 990.75, "base (BTC) volume, not the USDT column"
    assert [b.trade_count for b in bars] == [12500, 13000, 12002, 10511]
    assert result.rejects == () and result.duplicates == ()


def test_old_cryptodatadownload_header_without_tradecount_then_trade_count_not_reported() -> None:
    text = (
        "https://www.CryptoDataDownload.com\n"
        "Unix Timestamp,Date,Symbol,Open,High,Low,Close,Volume\n"
        "1502946000,2017-08-17 05:00:00,BTCUSDT,4308.83,4328.69,4291.37,4315.32,23.23\n"
        "1502942400,2017-08-17 04:00:00,BTCUSDT,4261.48,4313.62,4261.32,4308.83,47.18\n"
    )
    result = parse(text)

    assert result.format is CsvFormat.CRYPTODATADOWNLOAD
    assert [(b.open_time, b.volume, b.trade_count) for b in result.bars] == [
        (ns("2017-08-17 04:00"), 47.18, None),
        (ns("2017-08-17 05:00"), 23.23, None),
    ]


def test_streaming_reader_then_format_known_before_rows_and_rows_in_file_order() -> None:
    reader = CsvBarReader(
        iter(CDD_EXPORT.splitlines(keepends=True)),
        venue="binance",
        symbol="BTC/USDT",
        timeframe=Timeframe.H1,
        ts_init=TS_INIT,
        filename="export.csv",
    )
    assert reader.format is CsvFormat.CRYPTODATADOWNLOAD

    items = list(reader)

    assert [b.open_time for b in items if isinstance(b, Bar)] == [
        ns("2020-08-02 04:00"),
        ns("2020-08-02 03:00"),
        ns("2020-08-02 02:00"),
        ns("2020-08-02 01:00"),
    ]
    assert {b.source for b in items if isinstance(b, Bar)} == {"csv:export.csv"}


def test_export_with_only_quote_volume_for_the_symbol_then_format_error_not_a_guess() -> None:
    text = (
        "https://www.CryptoDataDownload.com\n"
        "unix,date,symbol,open,high,low,close,Volume ETH,Volume USDT\n"
        "1596330000,2020-08-02 01:00:00,ETH/USDT,390,391,389,390.5,10,3900\n"
    )
    with pytest.raises(CsvFormatError, match="base volume"):
        parse(text, symbol="BTC/USDT")


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "date,price\n2020-01-01,1\n", "https://www.CryptoDataDownload.com\ntimestamp,open,high,low,close\n"],
)
def test_unrecognised_header_then_format_error(text: str) -> None:
    with pytest.raises(CsvFormatError):
        parse(text)


def test_invalid_symbol_then_record_error_before_any_row() -> None:
    with pytest.raises(RecordError, match="bad_symbol"):
        parse_csv_text(
            "timestamp,open,high,low,close,volume\n",
            venue="binance",
            symbol="btcusdt",
            timeframe=Timeframe.H1,
            ts_init=TS_INIT,
            filename="x.csv",
        )


# ---------------------------------------------------------------------------
# Bad rows and duplicates
# ---------------------------------------------------------------------------

HEADER = "timestamp,open,high,low,close,volume\n"
GOOD = "2021-01-01 00:00:00+00:00,100,110,90,105,5\n"


@pytest.mark.parametrize(
    ("row", "reason", "detail_part"),
    [
        ("2021-01-01 01:00:00+00:00,abc,110,90,105,5", RejectReason.BAD_NUMBER, "open='abc'"),
        ("2021-01-01 01:00:00+00:00,100,110,90,105,", RejectReason.BAD_NUMBER, "volume=''"),
        ("2021-01-01 01:00:00+00:00,100,NaN,90,105,5", RejectReason.NOT_FINITE, "high='NaN'"),
        ("2021-01-01 01:00:00+00:00,100,inf,90,105,5", RejectReason.NOT_FINITE, "high='inf'"),
        ("2021-01-01 01:00:00+00:00,100,110,0,105,5", RejectReason.NON_POSITIVE_PRICE, "low='0'"),
        ("2021-01-01 01:00:00+00:00,100,110,90,-105,5", RejectReason.NON_POSITIVE_PRICE, "close='-105'"),
        ("2021-01-01 01:00:00+00:00,100,110,90,105,-0.5", RejectReason.NEGATIVE_VOLUME, "volume='-0.5'"),
        ("2021-01-01 01:00:00+00:00,100,110,90,105", RejectReason.WRONG_FIELD_COUNT, "5 fields"),
        ("2021-01-01 01:00:00+00:00,100,110,90,105,5,7", RejectReason.WRONG_FIELD_COUNT, "7 fields"),
        ("yesterday,100,110,90,105,5", RejectReason.BAD_TIMESTAMP, "yesterday"),
        ("1999-01-01 01:00:00+00:00,100,110,90,105,5", RejectReason.BAD_TIMESTAMP, "outside"),
        ("2021-01-01 01:30:00+00:00,100,110,90,105,5", RejectReason.MISALIGNED_TIME, "1h boundary"),
    ],
)
def test_bad_row_then_rejected_with_line_number_reason_and_original_text(
    row: str, reason: RejectReason, detail_part: str
) -> None:
    text = HEADER + GOOD + row + "\n" + "2021-01-01 02:00:00+00:00,105,106,104,105.5,3\n"

    result = parse(text)

    assert [b.open_time for b in result.bars] == [ns("2021-01-01 00:00"), ns("2021-01-01 02:00")]
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert isinstance(reject, RejectedRow)
    assert reject.line_no == 3
    assert reject.reason is reason
    assert detail_part in reject.detail
    assert reject.raw == row + "\n", "the exact original text, for the dead-letter record"


def test_high_below_low_then_imported_for_the_quality_layer_not_rejected() -> None:
    # A valid record but an impossible candle: the data-quality engine must see it to report it.
    result = parse(HEADER + "2021-01-01 00:00:00+00:00,100,90,110,105,5\n")
    assert len(result.bars) == 1 and result.rejects == ()


def test_duplicate_rows_then_first_kept_and_the_others_reported() -> None:
    text = (
        HEADER
        + GOOD  # line 2: kept
        + "2021-01-01 01:00:00+00:00,105,107,104,106,4\n"  # line 3
        + GOOD  # line 4: exact duplicate of line 2
        + "2021-01-01 00:00:00+00:00,100,111,90,105,5\n"  # line 5: same time, different high
    )

    result = parse(text)

    assert [b.open_time for b in result.bars] == [ns("2021-01-01 00:00"), ns("2021-01-01 01:00")]
    assert result.bars[0].high == 110
    assert result.duplicates == (
        DuplicateRow(line_no=4, raw=GOOD, open_time=ns("2021-01-01 00:00"), first_line_no=2, identical=True),
        DuplicateRow(
            line_no=5,
            raw="2021-01-01 00:00:00+00:00,100,111,90,105,5\n",
            open_time=ns("2021-01-01 00:00"),
            first_line_no=2,
            identical=False,
        ),
    )
    assert result.rows_read == 4


def test_offsets_and_naive_timestamps_then_converted_to_utc() -> None:
    text = (
        HEADER
        + "2021-01-01T03:00:00+02:00,100,110,90,105,5\n"  # = 01:00 UTC
        + "2021-01-01 02:00:00,100,110,90,105,5\n"  # naive: the format's zone, UTC
        + "\n"  # blank line: skipped, not a reject
    )
    result = parse(text)
    assert [b.open_time for b in result.bars] == [ns("2021-01-01 01:00"), ns("2021-01-01 02:00")]
    assert result.rejects == ()
