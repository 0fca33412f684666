"""Recorded-market feed schedule (pure): recorded candles -> one live market stream.

:class:`FeedSchedule` takes the parsed bars of one or more recorded files (one stream
each: venue, symbol, timeframe) and where each stream stopped, and yields
:class:`Tick`\\ s in event-time order: every bar that closes at the same instant, across
symbols and timeframes, together (``ts_event`` = close time, when a live venue would
publish the bar), each remaining bar exactly once. Every bar carries its stream's fixed
identity, ``source="recorded:<file name>"`` (:func:`recorded_source`), so its event id
is the same whichever run, chunk or restart publishes it: a republished bar is a
duplicate every consumer drops, and the features agent sees one stream, warmed up once.
:class:`PacePlan` maps event time to wall-clock offsets: ``pace`` bars per second of the
longest timeframe fed. No I/O, no clock: the runner (``ops/jobs/feed.py``) owns both.

Design: docs/market_data.md#recorded-market-feed
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from runtime.errors import BadInput
from topics.records import Bar, Timeframe
from topics.schema import event_id_for
from topics.units import NS_PER_SECOND

__all__ = [
    "FeedError",
    "FeedSchedule",
    "FeedStream",
    "PacePlan",
    "StreamKey",
    "Tick",
    "advance_positions",
    "recorded_source",
    "stamp",
]

SOURCE_PREFIX = "recorded:"


class FeedError(BadInput, ValueError):
    """Streams or a pace the feed cannot play: unsorted or mixed bars, two files for one stream, pace <= 0."""


class StreamKey(NamedTuple):
    """What a position is kept per (within one feed)."""

    venue: str
    symbol: str
    timeframe: Timeframe


def recorded_source(name: str) -> str:
    """The fixed ``Bar.source`` of a recorded file's stream: ``recorded:<file name>``."""
    if not name or "/" in name:
        raise FeedError(f"a recorded stream is named by its file name, got {name!r}")
    return SOURCE_PREFIX + name


def stamp(bar: Bar, source: str) -> Bar:
    """``bar`` as its recorded stream publishes it: ``source`` and the event id that follows from it.

    The id is the one :meth:`Bar.new` gives (``event_id_for`` over ``Bar.IDENTITY``), so the same
    recorded candle has the same id in every run. ``correlation_id`` = the id (a bar starts a chain).
    """
    if bar.source == source:
        return bar
    eid = event_id_for(
        Bar.KIND, bar.venue, bar.symbol, bar.timeframe, bar.open_time, bar.revision, source
    )  # order of Bar.IDENTITY
    return dataclasses.replace(bar, source=source, event_id=eid, correlation_id=eid)


@dataclass(frozen=True, slots=True)
class FeedStream:
    """One recorded file: its name (identity), market, and bars ascending by open time."""

    name: str
    venue: str
    symbol: str
    timeframe: Timeframe
    bars: tuple[Bar, ...]

    def __post_init__(self) -> None:
        recorded_source(self.name)  # validates the name
        prev: int | None = None
        for b in self.bars:
            if (b.venue, b.symbol, b.timeframe) != (self.venue, self.symbol, self.timeframe):
                raise FeedError(f"{self.name}: bar of {b.venue} {b.symbol} {b.timeframe} in the stream of {self.key}")
            if prev is not None and b.open_time <= prev:
                raise FeedError(f"{self.name}: open times not strictly ascending at {b.open_time}")
            if b.ts_event != b.open_time + self.timeframe.nanos:
                raise FeedError(f"{self.name}: bar at {b.open_time} does not close one timeframe later")
            prev = b.open_time

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.venue, self.symbol, self.timeframe)

    @property
    def source(self) -> str:
        return recorded_source(self.name)


@dataclass(frozen=True, slots=True)
class Tick:
    """All bars that close at ``ts_event``, ordered by (venue, symbol, timeframe)."""

    ts_event: int
    bars: tuple[Bar, ...]


def _order(bar: Bar) -> tuple[int, str, str, str]:
    return bar.ts_event, bar.venue, bar.symbol, bar.timeframe.value


class FeedSchedule:
    """The bars still to publish, as ticks in event-time order.

    ``positions``: per stream, the open time of the last bar already published (acknowledged);
    the stream continues with the bar after it. ``start_open_time``: skip bars opening before it
    (``--from``); with a position too, the later of the two wins (a feed never goes back: an
    earlier bar would be a duplicate, or out of order, to every consumer).
    """

    def __init__(
        self,
        streams: Sequence[FeedStream],
        positions: Mapping[StreamKey, int] | None = None,
        start_open_time: int | None = None,
    ) -> None:
        seen: dict[StreamKey, str] = {}
        for s in streams:
            if s.key in seen:
                raise FeedError(f"{s.name} and {seen[s.key]} are both {s.key.venue} {s.key.symbol} {s.key.timeframe}")
            seen[s.key] = s.name
        self.streams: tuple[FeedStream, ...] = tuple(streams)
        positions = positions or {}
        starts: list[int] = []
        for s in self.streams:
            i = 0
            if start_open_time is not None:
                i = bisect_left(s.bars, start_open_time, key=lambda b: b.open_time)
            pos = positions.get(s.key)
            if pos is not None:
                i = max(i, bisect_right(s.bars, pos, key=lambda b: b.open_time))
            starts.append(i)
        self._starts = tuple(starts)

    @property
    def timeframes(self) -> tuple[Timeframe, ...]:
        return tuple(s.timeframe for s in self.streams)

    def remaining(self) -> dict[StreamKey, int]:
        """Bars still to publish per stream."""
        return {s.key: len(s.bars) - i for s, i in zip(self.streams, self._starts, strict=True)}

    def first_ts_event(self) -> int | None:
        heads = [s.bars[i].ts_event for s, i in zip(self.streams, self._starts, strict=True) if i < len(s.bars)]
        return min(heads, default=None)

    def bars(self) -> Iterator[Bar]:
        """Every remaining bar, stamped with its stream's source, in event-time order."""
        per_stream = [_stamped(s, i) for s, i in zip(self.streams, self._starts, strict=True)]
        return heapq.merge(*per_stream, key=_order)

    def ticks(self) -> Iterator[Tick]:
        for ts_event, group in itertools.groupby(self.bars(), key=lambda b: b.ts_event):
            yield Tick(ts_event, tuple(group))


def _stamped(s: FeedStream, start: int) -> Iterator[Bar]:
    source = s.source
    for b in itertools.islice(s.bars, start, None):
        yield stamp(b, source)


def advance_positions(positions: Mapping[StreamKey, int], published: Iterable[Bar]) -> dict[StreamKey, int]:
    """``positions`` after ``published`` were acknowledged (never moves a stream back)."""
    out = dict(positions)
    for b in published:
        k = StreamKey(b.venue, b.symbol, b.timeframe)
        cur = out.get(k)
        if cur is None or b.open_time > cur:
            out[k] = b.open_time
    return out


@dataclass(frozen=True, slots=True)
class PacePlan:
    """When (wall seconds after the run's start) each event time is due.

    ``market_s_per_wall_s``: seconds of market time played per wall second. The tick at
    ``origin_ts_event`` is due at 0 (the run's first, unless there is a warm-up: earlier
    ticks have negative due times and go out at once, in order); a restart starts a new plan at the next
    bar (no burst to catch up the time the feed was down). Gaps in the data play as silence
    of proportional length, as a live market's would.
    """

    origin_ts_event: int
    market_s_per_wall_s: float

    @classmethod
    def for_pace(
        cls, pace: float, timeframes: Iterable[Timeframe], first_ts_event: int, warmup_bars: int = 0
    ) -> PacePlan:
        """``pace`` bars per wall second of the longest timeframe fed (shorter ones publish
        proportionally more): 1.0 over the bundled files = one 1h bar per second per symbol,
        two 30m bars per second per 30m symbol. ``warmup_bars`` (of the longest timeframe) after
        ``first_ts_event`` are due at once: history before the live market opens, so that the
        consumers' warm-up (the features' 73 bars) does not take minutes of wall time."""
        if not (math.isfinite(pace) and pace > 0):
            raise FeedError(f"pace must be a positive number of bars per second, got {pace}")
        if warmup_bars < 0:
            raise FeedError(f"warmup_bars must be >= 0, got {warmup_bars}")
        longest = max((tf.nanos for tf in timeframes), default=Timeframe.H1.nanos)
        return cls(first_ts_event + warmup_bars * longest, pace * longest / NS_PER_SECOND)

    def due_s(self, ts_event: int) -> float:
        """Wall seconds after the run's start at which the tick closing at ``ts_event`` is due."""
        return (ts_event - self.origin_ts_event) / NS_PER_SECOND / self.market_s_per_wall_s

    def planned_ts_event(self, elapsed_s: float) -> int:
        """The event time the plan has reached ``elapsed_s`` wall seconds after the start."""
        return self.origin_ts_event + int(elapsed_s * self.market_s_per_wall_s * NS_PER_SECOND)
