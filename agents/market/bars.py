"""Ticks -> time bars, by event time, correct under disorder and redelivery.

The :class:`BarAggregator` is a pure engine: ``on_tick(tick)`` returns the bars
(and the ticks it refused, with a reason) that this tick causes; it does no I/O
and reads no clock except the injected one for ``ts_init``.

Time model per ``(venue, symbol)``: a tick belongs to the bar containing its ``ts_event``;
a bar is emitted closed once the watermark (largest ``ts_event`` minus ``grace_ns``) passes
its close, so disorder within the grace gives exactly the sorted stream's bars; a later tick
re-emits the bar with ``revision + 1``; past ``max_lateness_ns`` a tick is ``too_late``; a
repeated ``trade_id`` is a ``duplicate``. Open and close are the first and last ticks by
``(ts_event, trade_id)`` and volume is ``math.fsum``, so any arrival order gives the same
bar. ``flush()`` emits what is left as partial bars (``is_closed=False``).

Design: docs/market_data.md#bar-aggregation
"""

from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agents.clock import Clock
from topics.records import Bar, Tick, Timeframe
from topics.units import NS_PER_MINUTE

__all__ = [
    "AggregationResult",
    "AggregatorConfig",
    "BarAggregator",
    "DropReason",
    "DroppedTick",
]


# ---------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """What to build and how long to wait.

    ``grace_ns`` (default 2 s): disorder absorbed without any revision; it is
    also how long a closed bar waits before it is emitted, i.e. latency.
    ``max_lateness_ns`` (default 15 min): how long after its close a bar still
    accepts late ticks (as revisions). ``source`` is written on every bar.
    """

    timeframes: tuple[Timeframe, ...]
    grace_ns: int = 2_000_000_000
    max_lateness_ns: int = 15 * NS_PER_MINUTE
    source: str = "ticks"

    def __post_init__(self) -> None:
        if not self.timeframes:
            raise ValueError("at least one timeframe is needed")
        if len(set(self.timeframes)) != len(self.timeframes):
            raise ValueError(f"duplicate timeframes in {self.timeframes}")
        if self.grace_ns < 0 or self.max_lateness_ns < 0:
            raise ValueError("grace_ns and max_lateness_ns must be >= 0")


class DropReason(enum.StrEnum):
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


@dataclass(frozen=True, slots=True)
class DroppedTick:
    """A tick (or its contribution to one timeframe) that was not counted, and why.

    ``timeframe`` is None for a duplicate (not counted anywhere).
    """

    tick: Tick
    reason: DropReason
    timeframe: Timeframe | None
    detail: str


@dataclass(frozen=True, slots=True)
class AggregationResult:
    bars: tuple[Bar, ...] = ()
    dropped: tuple[DroppedTick, ...] = ()


_EMPTY = AggregationResult()


# ---------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _BarState:
    open_time: int
    first_key: tuple[int, str]
    open: float
    last_key: tuple[int, str]
    close: float
    high: float
    low: float
    quantities: list[float]
    #: Last emitted revision; None until first emitted.
    revision: int | None = None
    #: A closed (not partial) version has been emitted.
    closed: bool = False
    #: Changed since the last emission.
    dirty: bool = True

    def add(self, key: tuple[int, str], price: float, quantity: float) -> None:
        if key < self.first_key:
            self.first_key, self.open = key, price
        if key > self.last_key:
            self.last_key, self.close = key, price
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.quantities.append(quantity)
        self.dirty = True


@dataclass(slots=True)
class _Series:
    """One timeframe of one stream: live bars plus heaps ordering their deadlines."""

    timeframe: Timeframe
    bars: dict[int, _BarState] = field(default_factory=dict)
    #: open times of bars not yet emitted closed, for emission in time order
    to_close: list[int] = field(default_factory=list)
    #: open times of bars emitted closed, for forgetting them after max lateness
    to_forget: list[int] = field(default_factory=list)
    #: open times of bars emitted closed that late ticks changed since
    revised: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Stream:
    venue: str
    symbol: str
    series: list[_Series]
    max_ts: int | None = None
    #: trade_id -> (ts_event, price, quantity) of counted ticks, kept while a revision could still use them
    seen: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    seen_order: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class BarAggregator:
    """Builds time bars for every configured timeframe from ticks, by event time."""

    def __init__(self, config: AggregatorConfig, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._max_tf_ns = max(tf.nanos for tf in config.timeframes)

    # -- public API -----------------------------------------------------------

    def on_tick(self, tick: Tick) -> AggregationResult:
        """Count one tick; return the bars it completes or revises, and any refusal."""
        stream = self._stream(tick.venue, tick.symbol)
        seen = stream.seen.get(tick.trade_id)
        if seen is not None:
            same = seen == (tick.ts_event, tick.price, tick.quantity)
            detail = f"trade_id {tick.trade_id!r} already counted" + (
                "" if same else f" with different values (ts, price, qty) = {seen}"
            )
            return AggregationResult(dropped=(DroppedTick(tick, DropReason.DUPLICATE, None, detail),))

        ts = tick.ts_event
        if stream.max_ts is None or ts > stream.max_ts:
            stream.max_ts = ts
        watermark = stream.max_ts - self.config.grace_ns

        dropped: list[DroppedTick] = []
        counted = False
        key = (ts, tick.trade_id)
        for series in stream.series:
            tf_ns = series.timeframe.nanos
            open_time = ts - ts % tf_ns
            state = series.bars.get(open_time)
            if state is None:
                if open_time + tf_ns + self.config.max_lateness_ns <= watermark:
                    dropped.append(
                        DroppedTick(
                            tick,
                            DropReason.TOO_LATE,
                            series.timeframe,
                            f"{series.timeframe.value} bar {_iso(open_time)} is final: the watermark "
                            f"{_iso(watermark)} is more than max_lateness {self.config.max_lateness_ns} ns "
                            "past its close",
                        )
                    )
                    continue
                series.bars[open_time] = _BarState(
                    open_time=open_time,
                    first_key=key,
                    open=tick.price,
                    last_key=key,
                    close=tick.price,
                    high=tick.price,
                    low=tick.price,
                    quantities=[tick.quantity],
                )
                heapq.heappush(series.to_close, open_time)
            else:
                state.add(key, tick.price, tick.quantity)
                if state.closed:
                    series.revised.add(open_time)
            counted = True

        if counted:
            stream.seen[tick.trade_id] = (ts, tick.price, tick.quantity)
            heapq.heappush(stream.seen_order, key)
        bars = self._advance(stream, watermark)
        if not bars and not dropped:
            return _EMPTY
        return AggregationResult(bars=tuple(bars), dropped=tuple(dropped))

    def on_watermark(self, venue: str, symbol: str, ts_event: int) -> AggregationResult:
        """Event time reached ``ts_event`` with no trade (a heartbeat): close what is due.

        Lets an idle market's last bar close without waiting for its next trade.
        """
        stream = self._stream(venue, symbol)
        if stream.max_ts is None or ts_event > stream.max_ts:
            stream.max_ts = ts_event
        return AggregationResult(bars=tuple(self._advance(stream, stream.max_ts - self.config.grace_ns)))

    def flush(self) -> AggregationResult:
        """End of stream: emit every bar not yet emitted as partial (``is_closed=False``).

        Bars already emitted closed are final as they are. A later tick for a
        flushed bar is still counted; the bar is re-emitted closed, next revision.
        """
        out: list[Bar] = []
        for stream in self._streams.values():
            for series in stream.series:
                for open_time in sorted(series.bars):
                    state = series.bars[open_time]
                    if not state.closed and state.dirty:
                        out.append(self._emit(stream, series, state, closed=False))
        return AggregationResult(bars=tuple(out))

    def open_bar_count(self) -> int:
        """Bars held in memory (not yet final), for metrics and tests."""
        return sum(len(s.bars) for st in self._streams.values() for s in st.series)

    # -- internals ------------------------------------------------------------

    def _stream(self, venue: str, symbol: str) -> _Stream:
        stream = self._streams.get((venue, symbol))
        if stream is None:
            stream = _Stream(venue=venue, symbol=symbol, series=[_Series(tf) for tf in self.config.timeframes])
            self._streams[(venue, symbol)] = stream
        return stream

    def _advance(self, stream: _Stream, watermark: int) -> list[Bar]:
        """Emit revisions and newly closed bars, then forget final bars and trade ids."""
        out: list[Bar] = []
        max_lateness = self.config.max_lateness_ns
        for series in stream.series:
            tf_ns = series.timeframe.nanos
            # ---- revisions of bars already emitted closed (late ticks) ----
            if series.revised:
                for open_time in sorted(series.revised):
                    out.append(self._emit(stream, series, series.bars[open_time], closed=True))
                series.revised.clear()
            # ---- bars whose close the watermark has passed ----------------
            to_close = series.to_close
            while to_close and to_close[0] + tf_ns <= watermark:
                open_time = heapq.heappop(to_close)
                state = series.bars[open_time]
                out.append(self._emit(stream, series, state, closed=True))
                heapq.heappush(series.to_forget, open_time)
            # ---- bars past max lateness are final --------------------------
            to_forget = series.to_forget
            while to_forget and to_forget[0] + tf_ns + max_lateness <= watermark:
                del series.bars[heapq.heappop(to_forget)]
        # A trade id can matter until the longest bar containing it is final.
        horizon = watermark - max_lateness - self._max_tf_ns
        seen_order = stream.seen_order
        while seen_order and seen_order[0][0] < horizon:
            _, trade_id = heapq.heappop(seen_order)
            del stream.seen[trade_id]
        return out

    def _emit(self, stream: _Stream, series: _Series, state: _BarState, *, closed: bool) -> Bar:
        revision = 0 if state.revision is None else state.revision + 1
        state.revision = revision
        state.closed = state.closed or closed
        state.dirty = False
        tf = series.timeframe
        return Bar.new(
            ts_init=self._clock.now_ns(),
            ts_event=state.open_time + tf.nanos,
            venue=stream.venue,
            symbol=stream.symbol,
            timeframe=tf,
            open_time=state.open_time,
            open=state.open,
            high=state.high,
            low=state.low,
            close=state.close,
            volume=math.fsum(state.quantities),
            trade_count=len(state.quantities),
            is_closed=closed,
            revision=revision,
            source=self.config.source,
        )


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
