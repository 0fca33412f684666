"""Recorded-market feed runner (``tradeflow feed``): recorded candles played as a live market.

Parses the files once, resumes each stream after its position in PostgreSQL
(``storage/feed.py``), and publishes the :class:`~agents.market.recorded_feed.FeedSchedule`'s
ticks to ``market.bars.raw`` when the pace plan says they are due: due times are offsets from
one monotonic start, so slow publishes do not add up (ticks that fell due while one was in
flight go out together, in order). A batch's positions are written after the broker
acknowledged it (at-least-once; a republished bar keeps its event id). At the end of the data
it logs ``feed_exhausted`` and idles, a closed market, until ``stop`` is set. ``ts_init`` is
the wall time of publishing; event time is the recorded time.

Design: docs/market_data.md#recorded-market-feed
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from agents.market.csv_import import import_csv_file
from agents.market.recorded_feed import (
    FeedError,
    FeedSchedule,
    FeedStream,
    PacePlan,
    StreamKey,
    Tick,
    advance_positions,
)
from ops.jobs.ingest import SAMPLE_DIR, SAMPLE_FILES
from runtime.publish import RecordPublisher
from storage.feed import FeedPosition, load_feed_positions, save_feed_positions
from topics.records import Bar, Timeframe
from topics.units import NS_PER_SECOND

__all__ = [
    "FEED_BARS",
    "FEED_EVENT_TIME",
    "FEED_EXHAUSTED",
    "FEED_LAG",
    "FeedFile",
    "FeedOptions",
    "FeedReport",
    "bundled_files",
    "feed_file",
    "load_streams",
    "run_feed",
]

log = structlog.get_logger("ops.jobs.feed")

FEED_BARS = Counter(
    "tradeflow_feed_bars_published_total",
    "Recorded-market feed bars acknowledged by the broker",
    ["feed", "symbol", "timeframe"],
)
FEED_LAG = Gauge(
    "tradeflow_feed_lag_seconds", "Wall seconds the last acknowledged batch was behind the feed's pace plan", ["feed"]
)
FEED_EVENT_TIME = Gauge(
    "tradeflow_feed_event_time_seconds", "Event time (bar close, unix s) the feed has published up to", ["feed"]
)
FEED_EXHAUSTED = Gauge("tradeflow_feed_exhausted", "1 once every recorded bar has been published", ["feed"])

PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class FeedFile:
    """A recorded candle file and the market it records; its name is the stream's identity."""

    path: Path
    venue: str
    symbol: str
    timeframe: Timeframe

    @property
    def name(self) -> str:
        """The file name without a compression suffix: the same data, the same stream."""
        n = self.path.name
        return n[: -len(".gz")] if n.endswith(".gz") else n


def bundled_files(names: Sequence[str] = ()) -> tuple[FeedFile, ...]:
    """The bundled real files (``ops/sample_data``), all of them or those named."""
    by_name = {f.filename: FeedFile(SAMPLE_DIR / f.filename, f.venue, f.symbol, f.timeframe) for f in SAMPLE_FILES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise FeedError(f"no bundled file {unknown}; bundled: {sorted(by_name)}")
    return tuple(by_name[n] for n in names) if names else tuple(by_name.values())


def feed_file(spec: str) -> FeedFile:
    """``NAME`` (a bundled file) or ``PATH,VENUE,SYMBOL,TIMEFRAME`` (any candle CSV)."""
    if "," not in spec:
        return bundled_files([spec])[0]
    parts = spec.split(",")
    if len(parts) != 4 or not all(p.strip() for p in parts):
        raise FeedError(f"--file {spec!r}: want NAME or PATH,VENUE,SYMBOL,TIMEFRAME")
    path, venue, symbol, tf = (p.strip() for p in parts)
    try:
        timeframe = Timeframe(tf)
    except ValueError:
        raise FeedError(f"--file {spec!r}: timeframe {tf!r} is not one of {[t.value for t in Timeframe]}") from None
    return FeedFile(Path(path), venue, symbol, timeframe)


def load_streams(files: Sequence[FeedFile], ts_init: int) -> tuple[FeedStream, ...]:
    """Parse every file (rows that are no bar are logged and not played; ``ingest csv`` dead-letters them).

    Rows that disagree about an open time are not played either: each such bar is logged
    with its lines. A file that is not a candle CSV raises :class:`CsvFormatError`.
    """
    out = []
    for f in files:
        res = import_csv_file(f.path, venue=f.venue, symbol=f.symbol, timeframe=f.timeframe, ts_init=ts_init)
        if res.rejects or res.duplicates or res.conflicts:
            log.warning(
                "feed_rows_skipped",
                file=f.name,
                rejected=len(res.rejects),
                duplicates=len(res.duplicates),
                conflicting_open_times=len(res.conflicts),
            )
        for c in res.conflicts:
            log.error("feed_conflicting_rows", file=f.name, detail=c.detail)
        out.append(FeedStream(f.name, f.venue, f.symbol, f.timeframe, res.bars))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FeedOptions:
    files: tuple[FeedFile, ...]
    bootstrap: str
    dsn: str
    namespace: str = ""
    feed: str = "recorded"  #: positions are kept per (feed, venue, symbol, timeframe)
    pace: float = 1.0  #: bars per wall second of the longest timeframe fed
    start_open_time: int | None = None  #: skip bars opening earlier (a later stored position wins)
    max_bars: int | None = None  #: stop (return) after publishing this many bars in this run
    #: stop (return) once every bar closing at or before this event time (ns) is published: a one-shot
    #: import of a stretch of history that a rerun completes and never goes past
    until: int | None = None
    #: on a fresh feed (no stored position for any stream fed), this many bars of the longest
    #: timeframe go out at once before the pace applies (consumers' warm-up; the features need 73)
    warmup_bars: int = 0
    topic: str = "market.bars.raw"
    max_batch: int = 5_000  #: most bars in one publish when ticks fell due together

    def __post_init__(self) -> None:
        if not self.files:
            raise FeedError("no file to feed")
        if self.max_bars is not None and self.max_bars < 1:
            raise FeedError(f"max_bars must be >= 1, got {self.max_bars}")
        if not self.feed:
            raise FeedError("the feed needs a name")
        PacePlan.for_pace(self.pace, [f.timeframe for f in self.files], 0, self.warmup_bars)  # validates


@dataclass
class FeedReport:
    published: int = 0
    batches: int = 0
    first_ts_event: int | None = None
    last_ts_event: int | None = None
    max_lag_s: float = 0.0
    wall_s: float = 0.0
    exhausted: bool = False
    stopped_by: str = ""  #: ``stop`` (signal), ``max_bars`` or ``until``
    resumed_from: dict[StreamKey, int] = field(default_factory=dict)
    positions: dict[StreamKey, int] = field(default_factory=dict)


def _stored(rows: Sequence[FeedPosition], streams: Sequence[FeedStream]) -> dict[StreamKey, int]:
    """Stored positions of the streams fed now (others are left alone in the table)."""
    by_key = {(s.venue, s.symbol, s.timeframe.value): s for s in streams}
    out: dict[StreamKey, int] = {}
    for r in rows:
        s = by_key.get((r.venue, r.symbol, r.timeframe))
        if s is None:
            continue
        if r.source != s.source:
            log.warning("feed_source_changed", venue=r.venue, symbol=r.symbol, stored=r.source, now=s.source)
        out[s.key] = r.last_open_time_ns
    return out


async def run_feed(
    opts: FeedOptions,
    stop: asyncio.Event,
    *,
    wall_clock: Callable[[], int] = time.time_ns,
    monotonic: Callable[[], float] = time.monotonic,
) -> FeedReport:
    """Play the files until ``stop`` is set (or ``max_bars`` are out, or every bar up to ``until``);
    returns what this run did.

    Broker and database errors propagate (the caller exits 3; a restart resumes).
    """
    streams = await asyncio.to_thread(load_streams, opts.files, wall_clock())
    sources = {s.key: s.source for s in streams}
    conn = await asyncpg.connect(opts.dsn)
    try:
        positions = _stored(await load_feed_positions(conn, opts.feed), streams)
        schedule = FeedSchedule(streams, positions, opts.start_open_time)
        rep = FeedReport(resumed_from=dict(positions), positions=dict(positions))
        log.info(
            "feed_started",
            feed=opts.feed,
            topic=opts.topic,
            pace=opts.pace,
            streams=[f"{s.source} {s.venue} {s.symbol} {s.timeframe.value}" for s in streams],
            remaining=sum(schedule.remaining().values()),
            resumed=len(positions),
            warmup_bars=0 if positions else opts.warmup_bars,
        )
        async with RecordPublisher(opts.bootstrap, opts.namespace, name=f"feed:{opts.feed}") as pub:
            await _play(opts, schedule, stop, pub, conn, sources, rep, wall_clock, monotonic)
        return rep
    finally:
        await conn.close()


async def _play(
    opts: FeedOptions,
    schedule: FeedSchedule,
    stop: asyncio.Event,
    pub: RecordPublisher,
    conn: asyncpg.Connection,
    sources: dict[StreamKey, str],
    rep: FeedReport,
    wall_clock: Callable[[], int],
    monotonic: Callable[[], float],
) -> None:
    ticks = schedule.ticks()
    head: Tick | None = next(ticks, None)
    t0 = monotonic()
    warmup = 0 if rep.resumed_from else opts.warmup_bars
    plan = None if head is None else PacePlan.for_pace(opts.pace, schedule.timeframes, head.ts_event, warmup)
    lag_gauge, event_gauge = FEED_LAG.labels(opts.feed), FEED_EVENT_TIME.labels(opts.feed)
    FEED_EXHAUSTED.labels(opts.feed).set(0)
    next_progress = t0 + PROGRESS_EVERY_S
    budget = opts.max_bars
    until = opts.until
    while not stop.is_set():
        if until is not None and (head is None or head.ts_event > until):
            rep.stopped_by = "until"
            break
        if head is None or plan is None:
            _exhausted(opts, rep, monotonic() - t0)
            await stop.wait()
            break
        delay = t0 + plan.due_s(head.ts_event) - monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            continue
        # Every tick due by now, in order, as one publish (bounded): the feed keeps the plan's pace
        # under load instead of adding each publish's latency to the next tick's due time.
        now_s = monotonic() - t0
        first_due = max(0.0, plan.due_s(head.ts_event))  # warm-up ticks are due at the start
        batch: list[Bar] = []
        while (
            head is not None
            and plan.due_s(head.ts_event) <= now_s
            and len(batch) < opts.max_batch
            and (until is None or head.ts_event <= until)
        ):
            room = None if budget is None else budget - len(batch)
            if room is not None and room < len(head.bars):
                batch.extend(head.bars[:room])  # the rest of this tick goes first in the next run
                head = Tick(head.ts_event, head.bars[room:])
                break
            batch.extend(head.bars)
            head = next(ticks, None)
            if budget is not None and len(batch) >= budget:
                break
        if not batch:
            continue
        ts_init = wall_clock()
        await pub.publish([dataclasses.replace(b, ts_init=ts_init) for b in batch], topic=opts.topic)
        new = advance_positions(rep.positions, batch)
        moved = [k for k in new if new[k] != rep.positions.get(k)]
        await save_feed_positions(
            conn,
            opts.feed,
            [FeedPosition(k.venue, k.symbol, k.timeframe.value, sources[k], new[k]) for k in moved],
        )
        rep.positions = new
        acked_s = monotonic() - t0
        lag = max(0.0, acked_s - first_due)
        rep.max_lag_s = max(rep.max_lag_s, lag)
        rep.published += len(batch)
        rep.batches += 1
        rep.first_ts_event = batch[0].ts_event if rep.first_ts_event is None else rep.first_ts_event
        rep.last_ts_event = batch[-1].ts_event
        for b in batch:
            FEED_BARS.labels(opts.feed, b.symbol, b.timeframe.value).inc()
        lag_gauge.set(lag)
        event_gauge.set(batch[-1].ts_event / NS_PER_SECOND)
        if budget is not None:
            budget -= len(batch)
            if budget <= 0:
                rep.stopped_by = "max_bars"
                break
        if monotonic() >= next_progress:
            next_progress = monotonic() + PROGRESS_EVERY_S
            log.info(
                "feed_progress",
                feed=opts.feed,
                published=rep.published,
                event_time=_iso(rep.last_ts_event),
                lag_s=round(lag, 3),
            )
    rep.wall_s = monotonic() - t0
    if not rep.stopped_by:
        rep.stopped_by = "stop"
    log.info(
        "feed_stopped",
        feed=opts.feed,
        reason=rep.stopped_by,
        published=rep.published,
        event_time=_iso(rep.last_ts_event),
        max_lag_s=round(rep.max_lag_s, 3),
    )


def _exhausted(opts: FeedOptions, rep: FeedReport, wall_s: float) -> None:
    rep.exhausted = True
    rep.wall_s = wall_s
    FEED_EXHAUSTED.labels(opts.feed).set(1)
    log.info(
        "feed_exhausted",
        feed=opts.feed,
        published=rep.published,
        event_time=_iso(rep.last_ts_event),
        positions={f"{k.venue} {k.symbol} {k.timeframe.value}": _iso(v) for k, v in rep.positions.items()},
    )


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS_PER_SECOND))
