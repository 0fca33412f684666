"""Recorded-market feed schedule: event-time order, each bar once, exact resume, fixed identity, pace."""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.market.csv_import import parse_csv_lines
from agents.market.recorded_feed import (
    FeedError,
    FeedSchedule,
    FeedStream,
    PacePlan,
    StreamKey,
    advance_positions,
    recorded_source,
    stamp,
)
from ops.jobs.ingest import SAMPLE_DIR
from tests.builders import T0, bar
from topics.records import Bar, Timeframe
from topics.schema import event_id_for
from topics.units import NS_PER_HOUR, NS_PER_MINUTE

KEYS = (
    ("binance", "BTC/USDT", Timeframe.H1),
    ("gymcrypto", "BTC/USD", Timeframe.M30),
    ("gymcrypto", "ETH/USD", Timeframe.M30),
    ("binance", "ETH/USDT", Timeframe.M15),
)


def stream(name: str, venue: str, symbol: str, tf: Timeframe, slots: list[int], source: str = "csv:x") -> FeedStream:
    bars = tuple(
        bar(venue=venue, symbol=symbol, timeframe=tf, open_time=T0 + k * tf.nanos, source=source, ts_init=T0)
        for k in sorted(set(slots))
    )
    return FeedStream(name, venue, symbol, tf, bars)


@st.composite
def feeds(draw: st.DrawFn) -> list[FeedStream]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    return [
        stream(f"file{i}.csv", *k, draw(st.lists(st.integers(0, 60), max_size=40)))  # gaps, empty streams
        for i, k in enumerate(keys)
    ]


def key_of(b: Bar) -> StreamKey:
    return StreamKey(b.venue, b.symbol, b.timeframe)


@settings(max_examples=200, deadline=None)
@given(feeds())
def test_streams_when_scheduled_then_every_bar_once_in_event_time_order(streams: list[FeedStream]) -> None:
    ticks = list(FeedSchedule(streams).ticks())
    flat = [b for t in ticks for b in t.bars]
    assert len(flat) == sum(len(s.bars) for s in streams)
    assert len({b.event_id for b in flat}) == len(flat)  # no duplicates
    assert {(key_of(b), b.open_time) for b in flat} == {(s.key, b.open_time) for s in streams for b in s.bars}
    # ticks strictly ascending in event time; a tick is every bar closing at that instant
    assert [t.ts_event for t in ticks] == sorted({b.ts_event for b in flat})
    for t in ticks:
        assert {b.ts_event for b in t.bars} == {t.ts_event}
        assert len({key_of(b) for b in t.bars}) == len(t.bars)  # at most one bar per stream per tick
    for s in streams:
        mine = [b.open_time for b in flat if key_of(b) == s.key]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)


@settings(max_examples=200, deadline=None)
@given(feeds(), st.lists(st.integers(0, 300), max_size=4))
def test_schedule_when_cut_anywhere_and_resumed_from_positions_then_continues_exactly(
    streams: list[FeedStream], cuts: list[int]
) -> None:
    full = list(FeedSchedule(streams).bars())
    got: list[Bar] = []
    positions: dict[StreamKey, int] = {}
    for cut in sorted(c % (len(full) + 1) for c in cuts):  # chunks: each run stops after some bars
        chunk = list(itertools.islice(FeedSchedule(streams, positions).bars(), cut - len(got)))
        got += chunk
        positions = advance_positions(positions, chunk)
    got += list(FeedSchedule(streams, positions).bars())  # the last run plays to the end
    assert got == full  # same bars, same order, same ids: no gap, no duplicate


@settings(max_examples=100, deadline=None)
@given(feeds(), st.integers(0, 200))
def test_any_run_when_it_publishes_a_bar_then_its_identity_is_the_recorded_files(
    streams: list[FeedStream], cut: int
) -> None:
    full = list(FeedSchedule(streams).bars())
    positions = advance_positions({}, full[:cut])
    by_name = {s.key: s.name for s in streams}
    for b in [*full, *FeedSchedule(streams, positions).bars()]:
        source = recorded_source(by_name[key_of(b)])
        assert b.source == source
        assert b.event_id == b.correlation_id == event_id_for(Bar.KIND, *(getattr(b, f) for f in Bar.IDENTITY))
        rebuilt = Bar.new(
            ts_init=b.ts_init,
            ts_event=b.ts_event,
            **{f: getattr(b, f) for f in ("venue", "symbol", "timeframe", "open_time", "open", "high", "low")},
            close=b.close,
            volume=b.volume,
            trade_count=b.trade_count,
            is_closed=b.is_closed,
            revision=b.revision,
            source=source,
        )
        assert b == rebuilt


def test_mixed_timeframes_when_scheduled_then_bars_closing_together_share_a_tick() -> None:
    h1 = stream("btc.csv", "binance", "BTC/USDT", Timeframe.H1, [0])
    m30 = stream("eth.csv", "gymcrypto", "ETH/USD", Timeframe.M30, [0, 1])
    ticks = list(FeedSchedule([h1, m30]).ticks())
    assert [t.ts_event for t in ticks] == [T0 + 30 * NS_PER_MINUTE, T0 + NS_PER_HOUR]
    assert [(b.symbol, b.open_time) for b in ticks[0].bars] == [("ETH/USD", T0)]
    assert [(b.symbol, b.open_time) for b in ticks[1].bars] == [("BTC/USDT", T0), ("ETH/USD", T0 + 30 * NS_PER_MINUTE)]


def test_start_time_when_given_then_earlier_bars_skipped_and_a_later_position_wins() -> None:
    s = stream("btc.csv", "binance", "BTC/USDT", Timeframe.H1, list(range(10)))
    start = T0 + 3 * NS_PER_HOUR
    assert next(FeedSchedule([s], start_open_time=start).bars()).open_time == start
    assert next(FeedSchedule([s], start_open_time=start + 1).bars()).open_time == start + NS_PER_HOUR
    later = {s.key: T0 + 6 * NS_PER_HOUR}
    assert next(FeedSchedule([s], later, start_open_time=start).bars()).open_time == T0 + 7 * NS_PER_HOUR
    earlier = {s.key: T0 + NS_PER_HOUR}
    assert next(FeedSchedule([s], earlier, start_open_time=start).bars()).open_time == start
    done = {s.key: T0 + 9 * NS_PER_HOUR}
    assert list(FeedSchedule([s], done).ticks()) == [] and FeedSchedule([s], done).remaining() == {s.key: 0}
    assert FeedSchedule([s], done).first_ts_event() is None


def test_positions_when_advanced_then_never_move_back() -> None:
    k = StreamKey("binance", "BTC/USDT", Timeframe.H1)
    b1, b2 = bar(open_time=T0), bar(open_time=T0 + NS_PER_HOUR)
    assert advance_positions({}, [b2, b1]) == {k: T0 + NS_PER_HOUR}
    assert advance_positions({k: T0 + 5 * NS_PER_HOUR}, [b2]) == {k: T0 + 5 * NS_PER_HOUR}


def test_bad_streams_when_scheduled_then_refused() -> None:
    a = stream("a.csv", "binance", "BTC/USDT", Timeframe.H1, [0, 1])
    b = stream("b.csv", "binance", "BTC/USDT", Timeframe.H1, [2])
    with pytest.raises(FeedError, match="both"):
        FeedSchedule([a, b])
    with pytest.raises(FeedError, match="ascending"):
        FeedStream("a.csv", "binance", "BTC/USDT", Timeframe.H1, tuple(reversed(a.bars)))
    with pytest.raises(FeedError, match="stream of"):
        FeedStream("a.csv", "binance", "ETH/USDT", Timeframe.H1, a.bars)
    with pytest.raises(FeedError):
        recorded_source("dir/a.csv")


def test_stamp_when_already_stamped_then_same_object() -> None:
    b = stamp(bar(), "recorded:x.csv")
    assert stamp(b, "recorded:x.csv") is b and b.source == "recorded:x.csv" and b.event_id != bar().event_id


def test_pace_when_one_over_the_bundled_timeframes_then_one_1h_bar_per_second_two_30m() -> None:
    plan = PacePlan.for_pace(1.0, [Timeframe.H1, Timeframe.M30, Timeframe.M30], first_ts_event=T0)
    assert plan.due_s(T0) == 0.0
    assert plan.due_s(T0 + NS_PER_HOUR) == pytest.approx(1.0)
    assert plan.due_s(T0 + 30 * NS_PER_MINUTE) == pytest.approx(0.5)
    assert plan.planned_ts_event(2.5) == T0 + 150 * NS_PER_MINUTE
    only_30m = PacePlan.for_pace(4.0, [Timeframe.M30], first_ts_event=T0)
    assert only_30m.due_s(T0 + NS_PER_HOUR) == pytest.approx(0.5)  # 4 30m bars per second
    warm = PacePlan.for_pace(1.0, [Timeframe.H1, Timeframe.M30], T0, warmup_bars=80)
    assert warm.due_s(T0) == pytest.approx(-80.0) and warm.due_s(T0 + 80 * NS_PER_HOUR) == 0.0
    with pytest.raises(FeedError, match="warmup"):
        PacePlan.for_pace(1.0, [Timeframe.H1], T0, warmup_bars=-1)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(FeedError, match="pace"):
            PacePlan.for_pace(bad, [Timeframe.H1], first_ts_event=T0)


def _head(name: str, venue: str, symbol: str, tf: Timeframe, rows: int) -> FeedStream:
    with (SAMPLE_DIR / name).open() as fh:
        text = "".join(itertools.islice(fh, rows + 1))
    res = parse_csv_lines(io.StringIO(text), venue=venue, symbol=symbol, timeframe=tf, ts_init=T0, filename=name)
    return FeedStream(name, venue, symbol, tf, res.bars)


def test_bundled_files_when_scheduled_then_symbols_interleave_by_close_time() -> None:
    btc = _head("gymcrypto_btcusd_30m_2017_2019.csv", "gymcrypto", "BTC/USD", Timeframe.M30, 300)
    eth = _head("gymcrypto_ethusd_30m_2017_2019.csv", "gymcrypto", "ETH/USD", Timeframe.M30, 300)
    ticks = list(FeedSchedule([btc, eth]).ticks())
    sizes = Counter(len(t.bars) for t in ticks)
    assert sizes[2] > 250  # the two files share almost every half hour: one tick each
    assert {b.source for t in ticks for b in t.bars} == {
        "recorded:gymcrypto_btcusd_30m_2017_2019.csv",
        "recorded:gymcrypto_ethusd_30m_2017_2019.csv",
    }
