"""CSV candle files -> :class:`~topics.records.Bar` records.

Two formats, recognised from the file's first lines: ``shared``
(``timestamp,open,high,low,close,volume``, ISO-8601 with an offset, ascending; the layout of
``ops/sample_data``) and ``cryptodatadownload`` (banner line, newest-first rows, unix seconds
or milliseconds decided per row, the ``Volume <BASE>`` column).

Every row becomes a bar, a :class:`RejectedRow` (line number, stable reason code, the
original text; an impossible candle or a timestamp without a UTC offset is one), an
identical :class:`DuplicateRow`, or part of a :class:`ConflictingRows` (rows that disagree
about one open time: none of them becomes a bar). Nothing is dropped silently and no row
wins by coming first. Bars are closed, revision 0, ``source="csv:<filename>"``,
``ts_event`` = open time + timeframe; ``ts_init`` is passed in (no clock). Entry points:
:func:`import_csv_file`, :func:`parse_csv_text` / :func:`parse_csv_lines`, and the
streaming :class:`CsvBarReader` / :func:`iter_csv_file`. Bad rows never raise; a file that
is not a readable candle CSV raises :class:`CsvFormatError` naming the file and line.

Design: docs/market_data.md#csv-import
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import gzip
import hashlib
import io
import math
import zlib
from collections.abc import Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import TextIO

from runtime.errors import BadInput
from topics.records import Bar, Timeframe
from topics.schema import TS_MAX_NS, TS_MIN_NS, codec_for, positional_constructor
from topics.units import NS_PER_MS, NS_PER_SECOND, NS_PER_US

__all__ = [
    "ConflictingRows",
    "CsvBarReader",
    "CsvFormat",
    "CsvFormatError",
    "DuplicateRow",
    "ParseResult",
    "RejectReason",
    "RejectedRow",
    "import_csv_file",
    "iter_csv_bars",
    "iter_csv_file",
    "open_csv_text",
    "parse_csv_lines",
    "parse_csv_text",
    "scan_repeats",
]

_INF = math.inf
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_CDD_BANNER = "cryptodatadownload"


# ---------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------


class CsvFormat(enum.StrEnum):
    SHARED = "shared"
    CRYPTODATADOWNLOAD = "cryptodatadownload"


class CsvFormatError(BadInput, ValueError):
    """The file as a whole is not a candle CSV this module reads.

    Not retriable and not per row: empty input, no header, unknown columns, an ambiguous
    volume column, a line the csv module cannot read (over 128 KiB), bytes that are not
    UTF-8, corrupt compression. The message names the file and the line. Row-level
    problems never raise; they become :class:`RejectedRow`.
    """


class RejectReason(enum.StrEnum):
    """Why a row could not become a bar. Stable: used as a dead-letter reason."""

    WRONG_FIELD_COUNT = "wrong_field_count"
    BAD_TIMESTAMP = "bad_timestamp"
    MISALIGNED_TIME = "misaligned_time"
    BAD_NUMBER = "bad_number"
    NOT_FINITE = "not_finite"
    NON_POSITIVE_PRICE = "non_positive_price"
    NEGATIVE_VOLUME = "negative_volume"
    BAD_TRADE_COUNT = "bad_trade_count"
    OHLC_INCONSISTENT = "ohlc_inconsistent"
    NAIVE_TIMESTAMP = "naive_timestamp"


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that cannot become a valid bar; ``raw`` is the original text."""

    line_no: int
    raw: str
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """An exact repeat (same prices, volume and trade count) of an earlier row: a no-op."""

    line_no: int
    raw: str
    open_time: int
    first_line_no: int


@dataclass(frozen=True, slots=True)
class ConflictingRows:
    """Valid rows that give one open time different values: none of them becomes a bar.

    A data-quality error: the bar is missing until the file is fixed. ``line_nos`` and
    ``raws`` are every row for that open time, in file order.
    """

    open_time: int
    line_nos: tuple[int, ...]
    raws: tuple[str, ...]

    @property
    def detail(self) -> str:
        lines = ", ".join(map(str, self.line_nos))
        return f"lines {lines} give {_iso(self.open_time)} different values; that bar is not imported"


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A whole file: ``bars`` ascending by open time, plus what was not a bar."""

    format: CsvFormat
    bars: tuple[Bar, ...]
    rejects: tuple[RejectedRow, ...]
    duplicates: tuple[DuplicateRow, ...]
    conflicts: tuple[ConflictingRows, ...] = ()

    @property
    def rows_read(self) -> int:
        conflicting = sum(len(c.line_nos) for c in self.conflicts)
        return len(self.bars) + len(self.rejects) + len(self.duplicates) + conflicting


CsvItem = Bar | RejectedRow | DuplicateRow | ConflictingRows


# ---------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    format: CsvFormat
    n_fields: int
    i_time: int
    unix_time: bool
    i_open: int
    i_high: int
    i_low: int
    i_close: int
    i_volume: int
    i_trades: int | None


def _layout_from_header(header: list[str], symbol: str, banner: bool) -> _Layout:
    names = [h.strip().lower() for h in header]
    index = {name: i for i, name in enumerate(names)}

    def col(*candidates: str) -> int:
        for c in candidates:
            if c in index:
                return index[c]
        raise CsvFormatError(f"header {header!r} has no column {candidates[0]!r}")

    if "unix" in index or "unix timestamp" in index:
        fmt, i_time, unix = CsvFormat.CRYPTODATADOWNLOAD, col("unix", "unix timestamp"), True
    elif "timestamp" in index and not banner:
        fmt, i_time, unix = CsvFormat.SHARED, index["timestamp"], False
    else:
        raise CsvFormatError(f"unrecognised candle CSV header {header!r}")

    base = symbol.split("/")[0].lower()
    volume_cols = [n for n in names if n == "volume" or n.startswith("volume ")]
    if f"volume {base}" in index:
        i_volume = index[f"volume {base}"]
    elif "volume" in index:
        i_volume = index["volume"]
    else:
        # Refuse to guess between base and quote volume: a wrong guess is silent.
        raise CsvFormatError(f"no base volume column for {symbol} among {volume_cols!r}")
    trades = index.get("tradecount", index.get("trade_count"))
    return _Layout(
        format=fmt,
        n_fields=len(names),
        i_time=i_time,
        unix_time=unix,
        i_open=col("open"),
        i_high=col("high"),
        i_low=col("low"),
        i_close=col("close"),
        i_volume=i_volume,
        i_trades=trades,
    )


# ---------------------------------------------------------------------------
# Field parsing (slow paths only run for rows that fail the fast checks)
# ---------------------------------------------------------------------------


def _iso_to_ns(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        # Local time or UTC? A guess would shift every bar by hours without a trace.
        raise ValueError(f"{text!r} has no UTC offset (write +00:00 or Z)")
    return ((dt - _EPOCH) // _ONE_US) * 1000


def _is_naive(text: str) -> bool:
    """An ISO-8601 time without an offset (the slow path of a rejected timestamp)."""
    try:
        return datetime.fromisoformat(text).tzinfo is None
    except ValueError:
        return False


def _unix_to_ns(text: str) -> int:
    """Unix time in s, ms, us or ns, told apart by magnitude (exports mix s and ms)."""
    try:
        value = int(text)
    except ValueError:
        f = float(text)
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"unix time {text!r} is not a whole number") from None
        value = int(f)
    magnitude = abs(value)
    if magnitude < 100_000_000_000:  # < 1e11: seconds (year 5138 in s, 1973 in ms)
        return value * NS_PER_SECOND
    if magnitude < 100_000_000_000_000:
        return value * NS_PER_MS
    if magnitude < 100_000_000_000_000_000:
        return value * NS_PER_US
    return value


def _diagnose(fields: list[str], layout: _Layout) -> RejectedRow | tuple[float, float, float, float, float, int | None]:
    """The exact reason a row's numbers are unusable (line 0, no raw), or the parsed numbers."""
    named = (
        ("open", layout.i_open),
        ("high", layout.i_high),
        ("low", layout.i_low),
        ("close", layout.i_close),
        ("volume", layout.i_volume),
    )
    values: list[float] = []
    for name, i in named:
        text = fields[i].strip()
        try:
            x = float(text)
        except ValueError:
            return _why(RejectReason.BAD_NUMBER, f"{name}={text!r} is not a number")
        if not math.isfinite(x):
            return _why(RejectReason.NOT_FINITE, f"{name}={text!r} is not finite")
        if name == "volume":
            if x < 0:
                return _why(RejectReason.NEGATIVE_VOLUME, f"volume={text!r} is negative")
        elif x <= 0:
            return _why(RejectReason.NON_POSITIVE_PRICE, f"{name}={text!r} is not > 0")
        values.append(x)
    trades: int | None = None
    if layout.i_trades is not None:
        text = fields[layout.i_trades].strip()
        try:
            t = float(text)
        except ValueError:
            return _why(RejectReason.BAD_TRADE_COUNT, f"tradecount={text!r} is not a number")
        if not math.isfinite(t) or t < 0 or t != int(t):
            return _why(RejectReason.BAD_TRADE_COUNT, f"tradecount={text!r} is not a non-negative integer")
        trades = int(t)
    o, h, lo, c, v = values
    if not (lo <= o <= h and lo <= c <= h):
        return _why(
            RejectReason.OHLC_INCONSISTENT,
            f"open {o:g} high {h:g} low {lo:g} close {c:g}: need low <= open, close <= high",
        )
    return o, h, lo, c, v, trades


def _why(reason: RejectReason, detail: str) -> RejectedRow:
    return RejectedRow(line_no=0, raw="", reason=reason, detail=detail)


# ---------------------------------------------------------------------------
# Fast record construction
# ---------------------------------------------------------------------------


_make_bar = positional_constructor(Bar)
# The row loop passes values positionally; fail at import, not with shifted fields, if Bar changes.
if tuple(f.name for f in dataclasses.fields(Bar)) != (
    "event_id",
    "schema_version",
    "ts_event",
    "ts_init",
    "correlation_id",
    "causation_id",
    "venue",
    "symbol",
    "timeframe",
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "is_closed",
    "revision",
    "source",
):
    raise TypeError("Bar's fields changed: update the positional call in CsvBarReader._rows")


# ---------------------------------------------------------------------------
# Streaming parser
# ---------------------------------------------------------------------------


_Values = tuple[float, float, float, float, float, int | None]


@dataclass(frozen=True, slots=True)
class _Held:
    """A valid row of an open time that is repeated: kept back until every row has been read."""

    line_no: int
    raw: str
    open_time: int
    values: _Values


@dataclass(frozen=True, slots=True)
class _Repeat:
    """A row whose open time an earlier row had (the first pass collects these)."""

    line_no: int
    open_time: int


@dataclass(frozen=True, slots=True)
class _Spec:
    venue: str
    symbol: str
    timeframe: Timeframe
    ts_init: int
    filename: str

    @property
    def source(self) -> str:
        return f"csv:{self.filename}"


class _RowParser:
    """One pass over the lines: the header, then one item per row (file order)."""

    def __init__(self, lines: Iterable[str], spec: _Spec) -> None:
        self.spec = spec
        self._pending: list[str] = []
        self._reader = csv.reader(self._remember(lines))
        self.layout = self._read_header()

    def _where(self, line_no: int) -> str:
        return f"{self.spec.filename} line {line_no}"

    def _remember(self, src: Iterable[str]) -> Iterator[str]:
        # Keep the physical lines of the current record so a reject carries its exact text;
        # check that each line is text (files are opened with surrogateescape: a bad byte
        # becomes a lone surrogate here, found by line instead of by 8 KiB decode chunk).
        pending = self._pending
        n = 0
        try:
            for line in src:
                n += 1
                if not line.isascii():
                    if n == 1 and line.startswith("\ufeff"):
                        line = line[1:]  # a byte-order mark, as spreadsheet exports write
                    _check_text(line, self._where(n))
                pending.append(line)
                yield line
        except (EOFError, zlib.error) as exc:
            raise CsvFormatError(f"{self._where(n + 1)}: compressed data is corrupt or truncated: {exc}") from None

    def _read_header(self) -> _Layout:
        banner = False
        reader = self._reader
        try:
            for header in reader:
                self._pending.clear()
                text = ",".join(header)
                if not text.strip():
                    continue
                if not banner and _CDD_BANNER in text.lower():
                    banner = True
                    continue
                try:
                    return _layout_from_header(header, self.spec.symbol, banner)
                except CsvFormatError as exc:
                    raise CsvFormatError(f"{self._where(reader.line_num)}: {exc}") from None
        except csv.Error as exc:
            raise CsvFormatError(f"{self._where(reader.line_num)}: unreadable CSV: {exc}") from None
        raise CsvFormatError(f"{self.spec.filename}: empty input, no header line")

    def rows(self, withhold: Collection[int], *, build: bool) -> Iterator[Bar | RejectedRow | _Held | _Repeat]:
        """Bars and rejects; valid rows of a ``withhold`` open time as :class:`_Held`; a repeat
        outside ``withhold`` as :class:`_Repeat`. ``build=False`` (the first pass) reads only the
        open times: it yields their repeats (and rejects of bad times) and builds no bar."""
        reader = self._reader
        try:
            yield from self._rows(withhold, build)
        except csv.Error as exc:
            raise CsvFormatError(f"{self._where(reader.line_num)}: unreadable CSV: {exc}") from None

    def _rows(self, withhold: Collection[int], build: bool) -> Iterator[Bar | RejectedRow | _Held | _Repeat]:
        spec = self.spec
        layout = self.layout
        reader = self._reader
        pending = self._pending
        timeframe = spec.timeframe
        tf_ns = timeframe.nanos
        venue, symbol, source, ts_init = spec.venue, spec.symbol, spec.source, spec.ts_init
        source_b = source.encode()
        schema_version = Bar.SCHEMA_VERSION
        # event_id_for(KIND, venue, symbol, timeframe, open_time, revision, source), constant prefix hashed once.
        prefix = hashlib.sha256(Bar.KIND.encode())
        for part in (venue, symbol, str(timeframe)):
            prefix.update(b"\x1f" + part.encode())
        seen: set[int] = set()
        n_fields = layout.n_fields
        i_time, i_o, i_h, i_l, i_c, i_v = (
            layout.i_time,
            layout.i_open,
            layout.i_high,
            layout.i_low,
            layout.i_close,
            layout.i_volume,
        )
        i_trades = layout.i_trades
        to_ns = _unix_to_ns if layout.unix_time else _iso_to_ns
        inf = _INF
        make_bar = _make_bar

        for fields in reader:
            line_no = reader.line_num
            if len(fields) != n_fields:
                if not "".join(fields).strip():
                    pending.clear()  # a blank line is not a row
                    continue
                yield _reject(
                    line_no, pending, RejectReason.WRONG_FIELD_COUNT, f"{len(fields)} fields, header has {n_fields}"
                )
                continue

            # -- time --------------------------------------------------------
            try:
                open_time = to_ns(fields[i_time].strip())
            except (ValueError, OverflowError) as exc:
                if not layout.unix_time and _is_naive(fields[i_time].strip()):
                    yield _reject(line_no, pending, RejectReason.NAIVE_TIMESTAMP, str(exc)[:200])
                else:
                    yield _reject(line_no, pending, RejectReason.BAD_TIMESTAMP, f"{fields[i_time]!r}: {exc}"[:200])
                continue
            if not (open_time >= TS_MIN_NS and open_time + tf_ns < TS_MAX_NS):
                yield _reject(
                    line_no, pending, RejectReason.BAD_TIMESTAMP, f"open time {open_time} ns outside [2009, 2100)"
                )
                continue
            if open_time % tf_ns:
                yield _reject(
                    line_no,
                    pending,
                    RejectReason.MISALIGNED_TIME,
                    f"open time {_iso(open_time)} is not on a {timeframe.value} boundary",
                )
                continue
            if not build:  # the first pass: open times only, numbers are parsed when it matters
                if open_time in seen:
                    yield _Repeat(line_no, open_time)
                else:
                    seen.add(open_time)
                pending.clear()
                continue

            # -- numbers: fast path; exact diagnosis only when it fails -------
            try:
                o = float(fields[i_o])
                h = float(fields[i_h])
                lo = float(fields[i_l])
                c = float(fields[i_c])
                v = float(fields[i_v])
                trades = None if i_trades is None else int(fields[i_trades])
                # Chained comparisons are False for NaN, so they also reject NaN.
                ok = 0.0 < lo <= o <= h < inf and lo <= c <= h
                ok = ok and 0.0 <= v < inf and (trades is None or trades >= 0)
            except ValueError:
                ok = False
            if not ok:
                diagnosis = _diagnose(fields, layout)
                if isinstance(diagnosis, RejectedRow):
                    yield _reject(line_no, pending, diagnosis.reason, diagnosis.detail)
                    continue
                o, h, lo, c, v, trades = diagnosis

            # -- repeated open times: decided once every row is read ----------
            if open_time in withhold:
                yield _Held(line_no, "".join(pending), open_time, (o, h, lo, c, v, trades))
                pending.clear()
                continue
            if open_time in seen:
                yield _Repeat(line_no, open_time)  # the first pass saw no repeat: the input changed
                pending.clear()
                continue
            seen.add(open_time)
            pending.clear()

            hasher = prefix.copy()
            hasher.update(b"\x1f%d\x1f0\x1f%b" % (open_time, source_b))
            event_id = hasher.hexdigest()[:32]
            # Positional, in Bar's field order (asserted at import time above).
            yield make_bar(
                event_id,  # event_id
                schema_version,  # schema_version
                open_time + tf_ns,  # ts_event: the bar's close time
                ts_init,  # ts_init
                event_id,  # correlation_id: a file row starts its own chain
                None,  # causation_id
                venue,
                symbol,
                timeframe,
                open_time,
                o,
                h,
                lo,
                c,
                v,
                trades,
                True,  # is_closed
                0,  # revision
                source,
            )

    def bar(self, open_time: int, values: _Values) -> Bar:
        """The bar of one row (the row loop builds the same record inline, for speed)."""
        spec = self.spec
        o, h, lo, c, v, trades = values
        return Bar.new(
            ts_init=spec.ts_init,
            ts_event=open_time + spec.timeframe.nanos,
            venue=spec.venue,
            symbol=spec.symbol,
            timeframe=spec.timeframe,
            open_time=open_time,
            open=o,
            high=h,
            low=lo,
            close=c,
            volume=v,
            trade_count=trades,
            is_closed=True,
            revision=0,
            source=spec.source,
        )


def _check_text(line: str, where: str) -> None:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = line[exc.start : exc.end].encode("utf-8", "surrogateescape")
        raise CsvFormatError(
            f"{where}: not UTF-8 text (byte 0x{bad[:1].hex()} at column {exc.start + 1}); save the file as UTF-8"
        ) from None


class CsvBarReader:
    """Streaming parser: iterate it for bars, rejects, duplicates and conflicts.

    The header is read when the reader is built, so :attr:`format` is known (and
    :class:`CsvFormatError` raised) before any row. No row wins by coming first, so the
    reader must know which open times repeat before the first row: a first pass reads
    only the open times (:func:`scan_repeats`). Pass its result as ``repeated`` (as
    :func:`iter_csv_file` does with a first read of the file) and memory stays constant
    except one entry per distinct open time; without it the reader keeps the input's
    lines and reads them twice. Bars and rejects come in file order; the rows of a
    repeated open time are held and decided after the last row (one bar and
    :class:`DuplicateRow` items when they agree, a :class:`ConflictingRows` when not).
    CryptoDataDownload files are newest first, so this yields them descending;
    :func:`parse_csv_lines` sorts. A reader is single-pass.
    """

    def __init__(
        self,
        lines: Iterable[str],
        *,
        venue: str,
        symbol: str,
        timeframe: Timeframe,
        ts_init: int,
        filename: str,
        repeated: Collection[int] | None = None,
    ) -> None:
        _check_spec(venue, symbol, timeframe, ts_init)
        spec = _Spec(venue, symbol, timeframe, ts_init, filename)
        self.venue = venue
        self.symbol = symbol
        self.timeframe = timeframe
        self.ts_init = ts_init
        self.filename = filename
        self.source = spec.source
        if repeated is None:
            lines = list(lines)
            repeated = _repeats_in(_RowParser(lines, spec))
        self._withhold = frozenset(repeated)
        self._parser = _RowParser(lines, spec)
        self.format: CsvFormat = self._parser.layout.format

    def __iter__(self) -> Iterator[CsvItem]:
        return self._items()

    def _items(self) -> Iterator[CsvItem]:
        held: dict[int, list[_Held]] = {}
        for item in self._parser.rows(self._withhold, build=True):
            if isinstance(item, _Held):
                held.setdefault(item.open_time, []).append(item)
            elif isinstance(item, _Repeat):
                raise CsvFormatError(
                    f"{self.filename} line {item.line_no}: {_iso(item.open_time)} repeats an earlier row, which it "
                    "did not when the input was first read: was the file changed while being read?"
                )
            else:
                yield item
        for rows in held.values():
            first = rows[0]
            if all(r.values == first.values for r in rows):
                yield self._parser.bar(first.open_time, first.values)
                for r in rows[1:]:
                    yield DuplicateRow(line_no=r.line_no, raw=r.raw, open_time=r.open_time, first_line_no=first.line_no)
            else:
                yield ConflictingRows(
                    open_time=first.open_time,
                    line_nos=tuple(r.line_no for r in rows),
                    raws=tuple(r.raw for r in rows),
                )


def _repeats_in(parser: _RowParser) -> frozenset[int]:
    return frozenset(item.open_time for item in parser.rows((), build=False) if isinstance(item, _Repeat))


def scan_repeats(
    lines: Iterable[str], *, venue: str, symbol: str, timeframe: Timeframe, filename: str
) -> frozenset[int]:
    """First pass: the open times that more than one row of ``lines`` has (numbers not parsed)."""
    return _repeats_in(_RowParser(lines, _Spec(venue, symbol, timeframe, TS_MIN_NS, filename)))


def _reject(line_no: int, pending: list[str], reason: RejectReason, detail: str) -> RejectedRow:
    raw = "".join(pending)
    pending.clear()
    return RejectedRow(line_no=line_no, raw=raw, reason=reason, detail=detail)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS_PER_SECOND, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_spec(venue: str, symbol: str, timeframe: Timeframe, ts_init: int) -> None:
    """Fail before reading when the caller's own arguments would make invalid bars."""
    probe = Bar.new(
        ts_init=ts_init,
        ts_event=TS_MIN_NS + timeframe.nanos,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        open_time=TS_MIN_NS,
        open=1.0,
        high=1.0,
        low=1.0,
        close=1.0,
        volume=0.0,
        trade_count=0,
        is_closed=True,
        revision=0,
        source="csv:probe",
    )
    codec = codec_for(Bar)
    codec.decode(codec.encode(probe))


# ---------------------------------------------------------------------------
# Whole inputs and files
# ---------------------------------------------------------------------------


def iter_csv_bars(
    lines: Iterable[str],
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
    filename: str,
) -> CsvBarReader:
    """Streaming form: a :class:`CsvBarReader` over ``lines`` (file order)."""
    return CsvBarReader(lines, venue=venue, symbol=symbol, timeframe=timeframe, ts_init=ts_init, filename=filename)


def parse_csv_lines(
    lines: Iterable[str],
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
    filename: str,
    repeated: Collection[int] | None = None,
) -> ParseResult:
    """Parse everything; bars sorted ascending by open time.

    Sorting a newest-first export is linear (timsort finds the descending run).
    """
    reader = CsvBarReader(
        lines,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        ts_init=ts_init,
        filename=filename,
        repeated=repeated,
    )
    bars: list[Bar] = []
    rejects: list[RejectedRow] = []
    duplicates: list[DuplicateRow] = []
    conflicting: list[ConflictingRows] = []
    append_bar = bars.append
    for item in reader:
        if type(item) is Bar:
            append_bar(item)
        elif isinstance(item, RejectedRow):
            rejects.append(item)
        elif isinstance(item, DuplicateRow):
            duplicates.append(item)
        elif isinstance(item, ConflictingRows):
            conflicting.append(item)
    bars.sort(key=attrgetter("open_time"))
    return ParseResult(
        format=reader.format,
        bars=tuple(bars),
        rejects=tuple(rejects),
        duplicates=tuple(duplicates),
        conflicts=tuple(conflicting),
    )


def parse_csv_text(
    text: str,
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
    filename: str,
) -> ParseResult:
    """:func:`parse_csv_lines` over an in-memory string."""
    return parse_csv_lines(
        io.StringIO(text, newline=""),
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        ts_init=ts_init,
        filename=filename,
    )


def open_csv_text(path: str | Path) -> TextIO:
    """Open a ``.csv`` or ``.csv.gz`` file as text the way :mod:`csv` wants it.

    Bytes that are not UTF-8 become lone surrogates, which the reader reports with
    their line (a decode error would name only an 8 KiB chunk).
    """
    p = Path(path)
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return p.open(encoding="utf-8", errors="surrogateescape", newline="")


def _display_name(path: Path) -> str:
    """The file's name without a compression suffix: the same data, the same source."""
    return path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name


def _file_repeats(p: Path, venue: str, symbol: str, timeframe: Timeframe) -> frozenset[int]:
    with open_csv_text(p) as fh:
        return scan_repeats(fh, venue=venue, symbol=symbol, timeframe=timeframe, filename=_display_name(p))


def iter_csv_file(
    path: str | Path,
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
) -> Generator[CsvItem, None, None]:
    """Stream a file (``.csv`` or ``.csv.gz``): a first read finds the repeated open times,
    the second yields items (:class:`CsvBarReader`); closes it when exhausted or closed."""
    p = Path(path)
    _check_spec(venue, symbol, timeframe, ts_init)
    repeated = _file_repeats(p, venue, symbol, timeframe)
    with open_csv_text(p) as fh:
        yield from CsvBarReader(
            fh,
            venue=venue,
            symbol=symbol,
            timeframe=timeframe,
            ts_init=ts_init,
            filename=_display_name(p),
            repeated=repeated,
        )


def import_csv_file(
    path: str | Path,
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
) -> ParseResult:
    """Read a whole candle file (``.csv`` or ``.csv.gz``); ``source="csv:<filename>"``."""
    p = Path(path)
    _check_spec(venue, symbol, timeframe, ts_init)
    repeated = _file_repeats(p, venue, symbol, timeframe)
    with open_csv_text(p) as fh:
        return parse_csv_lines(
            fh,
            venue=venue,
            symbol=symbol,
            timeframe=timeframe,
            ts_init=ts_init,
            filename=_display_name(p),
            repeated=repeated,
        )
