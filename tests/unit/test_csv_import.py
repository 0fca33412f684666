"""CSV candle import: the real sample files, CryptoDataDownload exports, bad rows."""

from __future__ import annotations

import functools
import gzip
import itertools
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.market.csv_import import (
    ConflictingRows,
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
        ("2021-01-01 01:00:00+00:00,100,90,110,105,5", RejectReason.OHLC_INCONSISTENT, "high 90 low 110"),
        ("2021-01-01 01:00:00+00:00,120,110,90,105,5", RejectReason.OHLC_INCONSISTENT, "open 120"),
        ("2021-01-01 01:00:00+00:00,100,110,90,80,5", RejectReason.OHLC_INCONSISTENT, "close 80"),
        ("2021-01-01 01:00:00,100,110,90,105,5", RejectReason.NAIVE_TIMESTAMP, "no UTC offset"),
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


@pytest.mark.parametrize(
    "invalid",
    [
        "2021-01-01 00:00:00+00:00,100,90,110,105,5",  # high below low
        "2021-01-01 00:00:00+00:00,100,104,90,105,5",  # close above high
        "2021-01-01 00:00:00+00:00,100,110,90,105,-5",  # negative volume
        "2021-01-01 00:00:00+00:00,NaN,110,90,105,5",  # NaN
        "2021-01-01 00:00:00,100,110,90,106,5",  # naive timestamp, otherwise a valid row
    ],
)
def test_invalid_row_before_the_real_one_then_rejected_and_the_real_row_is_the_bar(invalid: str) -> None:
    result = parse(HEADER + invalid + "\n" + GOOD)

    assert [(b.open_time, b.high, b.low, b.close, b.volume) for b in result.bars] == [
        (ns("2021-01-01 00:00"), 110.0, 90.0, 105.0, 5.0)
    ]
    assert [r.line_no for r in result.rejects] == [2]
    assert result.conflicts == () and result.duplicates == ()


CONFLICT = "2021-01-01 00:00:00+00:00,100,111,90,105,5\n"  # same open time as GOOD, different high


def test_conflicting_rows_then_neither_is_a_bar_both_lines_reported_and_identical_ones_counted() -> None:
    text = (
        HEADER
        + GOOD  # line 2
        + "2021-01-01 01:00:00+00:00,105,107,104,106,4\n"  # line 3
        + "2021-01-01 01:00:00+00:00,105,107,104,106,4\n"  # line 4: exact duplicate of line 3: a no-op
        + CONFLICT  # line 5: disagrees with line 2
    )

    result = parse(text)

    assert [b.open_time for b in result.bars] == [ns("2021-01-01 01:00")]
    assert result.duplicates == (
        DuplicateRow(
            line_no=4,
            raw="2021-01-01 01:00:00+00:00,105,107,104,106,4\n",
            open_time=ns("2021-01-01 01:00"),
            first_line_no=3,
        ),
    )
    assert result.conflicts == (
        ConflictingRows(open_time=ns("2021-01-01 00:00"), line_nos=(2, 5), raws=(GOOD, CONFLICT)),
    )
    assert "lines 2, 5" in result.conflicts[0].detail and "2021-01-01T00:00:00Z" in result.conflicts[0].detail
    assert result.rows_read == 4
    held = parse(text.replace(CONFLICT, "")).bars  # 01:00 repeated identically: held, decided at the end
    assert held == parse(HEADER + GOOD + "2021-01-01 01:00:00+00:00,105,107,104,106,4\n").bars


def test_streaming_a_file_with_a_conflict_then_the_first_row_is_not_yielded_either(tmp_path: Path) -> None:
    path = tmp_path / "c.csv.gz"
    path.write_bytes(
        gzip.compress((HEADER + GOOD + "2021-01-01 01:00:00+00:00,105,107,104,106,4\n" + CONFLICT).encode())
    )

    items = list(iter_csv_file(path, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_INIT))

    assert [type(i).__name__ for i in items] == ["Bar", "ConflictingRows"]
    assert isinstance(items[1], ConflictingRows) and items[1].line_nos == (2, 4)


def test_streaming_reader_told_no_repeats_then_a_repeat_is_an_error_not_a_first_win() -> None:
    reader = CsvBarReader(
        iter((HEADER + GOOD + CONFLICT).splitlines(keepends=True)),
        venue="binance",
        symbol="BTC/USDT",
        timeframe=Timeframe.H1,
        ts_init=TS_INIT,
        filename="x.csv",
        repeated=frozenset(),
    )
    with pytest.raises(CsvFormatError, match=r"x\.csv line 3"):
        list(reader)


_ROWS = st.lists(
    st.tuples(
        st.integers(0, 5),  # hour
        st.sampled_from(["100,110,90,105,5", "100,111,90,105,5", "100,90,110,105,5", "100,110,90,105,-1"]),
        st.booleans(),  # naive timestamp
    ),
    max_size=12,
)


@given(rows=_ROWS, seed=st.randoms(use_true_random=False))
def test_row_order_never_decides_which_row_wins(rows: list[tuple[int, str, bool]], seed: random.Random) -> None:
    lines = [f"2021-01-01 {h:02d}:00:00{'' if naive else '+00:00'},{v}\n" for h, v, naive in rows]
    shuffled = list(lines)
    seed.shuffle(shuffled)

    a, b = parse(HEADER + "".join(lines)), parse(HEADER + "".join(shuffled))

    assert a.bars == b.bars
    assert sorted(c.open_time for c in a.conflicts) == sorted(c.open_time for c in b.conflicts)
    assert a.rows_read == b.rows_read == len(lines)
    valid = {(h, v) for h, v, naive in rows if not naive and v in ("100,110,90,105,5", "100,111,90,105,5")}
    by_hour = {h: {v for hh, v in valid if hh == h} for h, _ in valid}
    assert {b.open_time for b in a.bars} == {ns(f"2021-01-01 {h:02d}:00") for h, vs in by_hour.items() if len(vs) == 1}
    assert all(b.low <= min(b.open, b.close) and b.high >= max(b.open, b.close) for b in a.bars)


def test_offsets_then_converted_to_utc() -> None:
    text = (
        HEADER
        + "2021-01-01T03:00:00+02:00,100,110,90,105,5\n"  # = 01:00 UTC
        + "2021-01-01T02:00:00Z,100,110,90,105,5\n"
        + "\n"  # blank line: skipped, not a reject
    )
    result = parse(text)
    assert [b.open_time for b in result.bars] == [ns("2021-01-01 01:00"), ns("2021-01-01 02:00")]
    assert result.rejects == ()


# ---------------------------------------------------------------------------
# Files as spreadsheets and editors write them, and files that are not readable
# ---------------------------------------------------------------------------


def _import(path: Path) -> ParseResult:
    return import_csv_file(path, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_INIT)


def test_byte_order_mark_then_accepted_like_the_same_file_without_it(tmp_path: Path) -> None:
    with_bom, plain = tmp_path / "bom.csv", tmp_path / "plain.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + (HEADER + GOOD).encode())
    plain.write_text(HEADER + GOOD)

    assert [b.open_time for b in _import(with_bom).bars] == [ns("2021-01-01 00:00")]
    assert _import(with_bom).bars[0].high == _import(plain).bars[0].high
    assert parse("\ufeff" + HEADER + GOOD).bars[0].close == 105.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"bad\.csv: empty input"),
        (b"\n\n", r"bad\.csv: empty input"),
        (b"date,price\n2020-01-01,1\n", r"bad\.csv line 1: unrecognised candle CSV header"),
        ((HEADER + GOOD).encode() + b"2021-01-01 01:00:00+00:00,1\xff0,110,90,105,5\n", r"bad\.csv line 3: not UTF-8"),
        ((HEADER + GOOD).encode() + b'"' + b"x" * 140_000 + b'",1,1,1,1,1\n', r"bad\.csv line 3: .*field limit"),
        ((HEADER + GOOD).encode() + b"9" * 140_000 + b"\n", r"bad\.csv line 3: .*field limit"),
    ],
)
def test_unreadable_file_then_format_error_naming_the_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFormatError, match=message):
        _import(path)
    with pytest.raises(CsvFormatError, match=message):
        list(iter_csv_file(path, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_INIT))


def test_truncated_gzip_then_format_error_not_an_eof_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress((HEADER + GOOD * 50).encode())[:-12])
    with pytest.raises(CsvFormatError, match=r"cut\.csv line \d+: compressed data is corrupt or truncated"):
        _import(path)
