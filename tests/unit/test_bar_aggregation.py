"""Tick -> bar aggregation: event time, grace, revisions, lateness, duplicates."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.clock import EventClock
from agents.market.bars import AggregationResult, AggregatorConfig, BarAggregator, DroppedTick, DropReason
from tests import builders
from topics.records import Bar, Tick, Timeframe
from topics.schema import codec_for
from topics.units import NS_PER_SECOND as S

T0 = 1_699_999_800_000_000_000  # 2023-11-14 22:10:00 UTC, a 5-minute boundary
assert T0 % Timeframe.M5.nanos == 0
M = 60 * S
TS_INIT = 1_800_000_000_000_000_000


def tick(trade_id: str, ts: int, price: float, qty: float = 1.0, symbol: str = "BTC/USDT") -> Tick:
    return builders.tick(trade_id=trade_id, ts=ts, price=price, quantity=qty, symbol=symbol, ts_init=TS_INIT)


def aggregator(*timeframes: Timeframe, grace_ns: int = 2 * S, max_lateness_ns: int = 15 * M) -> BarAggregator:
    config = AggregatorConfig(
        timeframes=timeframes or (Timeframe.M1,), grace_ns=grace_ns, max_lateness_ns=max_lateness_ns
    )
    return BarAggregator(config, EventClock(TS_INIT))


def feed(agg: BarAggregator, ticks: list[Tick]) -> AggregationResult:
    bars: list[Bar] = []
    dropped: list[DroppedTick] = []
    for t in ticks:
        out = agg.on_tick(t)
        bars.extend(out.bars)
        dropped.extend(out.dropped)
    return AggregationResult(bars=tuple(bars), dropped=tuple(dropped))


def final_bars(bars: list[Bar] | tuple[Bar, ...]) -> dict[tuple[str, Timeframe, int], Bar]:
    """What a reader keeps: the highest revision per (symbol, timeframe, open_time)."""
    out: dict[tuple[str, Timeframe, int], Bar] = {}
    for b in bars:
        key = (b.symbol, b.timeframe, b.open_time)
        if key not in out or b.revision > out[key].revision:
            out[key] = b
    return out


def values(bar: Bar) -> tuple[float, float, float, float, float, int]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count)


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------


def test_ticks_in_one_minute_then_bar_emitted_only_once_watermark_passes_close() -> None:
    agg = aggregator(grace_ns=2 * S)
    out = feed(
        agg,
        [
            tick("1", T0 + 1 * S, 100.0, 0.5),
            tick("2", T0 + 20 * S, 103.0, 0.25),
            tick("3", T0 + 40 * S, 99.0, 1.0),
            tick("4", T0 + 59 * S, 101.0, 2.0),
            tick("5", T0 + 61 * S, 102.0, 1.0),  # watermark 59 s: not yet
        ],
    )
    assert out.bars == ()

    out = agg.on_tick(tick("6", T0 + 62 * S, 102.5, 1.0))  # watermark 60 s = the close

    assert len(out.bars) == 1
    bar = out.bars[0]
    assert (bar.open_time, bar.ts_event) == (T0, T0 + M)
    assert values(bar) == (100.0, 103.0, 99.0, 101.0, 3.75, 4)
    assert (bar.is_closed, bar.revision, bar.venue, bar.symbol, bar.timeframe) == (
        True,
        0,
        "binance",
        "BTC/USDT",
        Timeframe.M1,
    )
    assert bar.ts_init == TS_INIT
    codec = codec_for(Bar)
    assert codec.decode(codec.encode(bar)) == bar


def test_several_timeframes_then_each_closes_at_its_own_boundary() -> None:
    agg = aggregator(Timeframe.M1, Timeframe.M5, grace_ns=0)
    ticks = [tick(str(i), T0 + i * 30 * S, 100.0 + i, 1.0) for i in range(11)]  # 0 .. 5 min

    out = feed(agg, ticks)

    m1 = [b for b in out.bars if b.timeframe is Timeframe.M1]
    m5 = [b for b in out.bars if b.timeframe is Timeframe.M5]
    assert [b.open_time for b in m1] == [T0 + i * M for i in range(5)]
    assert all(b.trade_count == 2 for b in m1)
    assert len(m5) == 1
    assert values(m5[0]) == (100.0, 109.0, 100.0, 109.0, 10.0, 10)


def test_out_of_order_within_grace_then_same_bar_as_sorted() -> None:
    ticks = [
        tick("a", T0 + 10 * S, 100.0),
        tick("b", T0 + 30 * S, 105.0),
        tick("c", T0 + 59 * S, 95.0),
        tick("d", T0 + 70 * S, 101.0),
        tick("e", T0 + 90 * S, 101.0),
    ]
    shuffled = [ticks[1], ticks[0], ticks[3], ticks[2], ticks[4]]  # c arrives 11 s after d

    in_order = feed(aggregator(grace_ns=15 * S), ticks).bars
    disordered = feed(aggregator(grace_ns=15 * S), shuffled).bars

    assert in_order == disordered
    assert values(in_order[0]) == (100.0, 105.0, 95.0, 95.0, 3.0, 3)


def test_late_tick_after_emission_then_revised_bar_with_next_revision() -> None:
    agg = aggregator(grace_ns=1 * S)
    first = feed(agg, [tick("1", T0 + 5 * S, 100.0), tick("2", T0 + 65 * S, 101.0)]).bars
    assert [(b.open_time, b.revision, b.close) for b in first] == [(T0, 0, 100.0)]

    out = agg.on_tick(tick("late", T0 + 50 * S, 90.0, 2.0))

    assert out.dropped == ()
    assert len(out.bars) == 1
    revised = out.bars[0]
    assert (revised.open_time, revised.revision, revised.is_closed) == (T0, 1, True)
    assert values(revised) == (100.0, 100.0, 90.0, 90.0, 3.0, 2)
    assert revised.event_id != first[0].event_id  # revision is part of the identity


def test_late_tick_for_a_bar_that_never_had_ticks_then_emitted_at_once_as_revision_zero() -> None:
    agg = aggregator(grace_ns=0)
    feed(agg, [tick("1", T0 + 5 * S, 100.0), tick("2", T0 + 185 * S, 101.0)])

    out = agg.on_tick(tick("3", T0 + 70 * S, 99.0))

    assert [(b.open_time, b.revision, b.is_closed) for b in out.bars] == [(T0 + M, 0, True)]


def test_tick_beyond_max_lateness_then_dropped_with_reason_and_not_counted() -> None:
    agg = aggregator(Timeframe.M1, Timeframe.M5, grace_ns=0, max_lateness_ns=2 * M)
    feed(agg, [tick("1", T0 + 5 * S, 100.0), tick("2", T0 + 4 * M, 101.0)])

    out = agg.on_tick(tick("late", T0 + 30 * S, 50.0, 7.0))  # 1m bar closed 3 min ago

    assert [(d.reason, d.timeframe) for d in out.dropped] == [(DropReason.TOO_LATE, Timeframe.M1)]
    assert "max_lateness" in out.dropped[0].detail
    assert out.bars == ()  # still counted in the open 5m bar, not in any 1m bar
    flushed = agg.flush().bars
    m5 = [b for b in flushed if b.timeframe is Timeframe.M5]
    assert values(m5[0]) == (100.0, 101.0, 50.0, 101.0, 9.0, 3)


def test_duplicate_trade_id_then_reported_and_not_double_counted() -> None:
    agg = aggregator(grace_ns=0)
    t1 = tick("1", T0 + 5 * S, 100.0, 1.5)
    feed(agg, [t1])

    again = agg.on_tick(t1)
    conflicting = agg.on_tick(tick("1", T0 + 6 * S, 120.0, 9.0))

    assert [(d.reason, d.timeframe) for d in again.dropped] == [(DropReason.DUPLICATE, None)]
    assert "different values" in conflicting.dropped[0].detail
    bar = agg.on_tick(tick("2", T0 + 61 * S, 100.0)).bars[0]
    assert (bar.volume, bar.trade_count, bar.high) == (1.5, 1, 100.0)


def test_flush_then_open_bars_emitted_partial_and_closed_later_as_next_revision() -> None:
    agg = aggregator(grace_ns=0)
    feed(agg, [tick("1", T0 + 5 * S, 100.0), tick("2", T0 + 30 * S, 102.0)])

    partial = agg.flush().bars
    assert [(b.open_time, b.is_closed, b.revision) for b in partial] == [(T0, False, 0)]
    assert agg.flush().bars == ()  # nothing new: no second partial

    out = agg.on_tick(tick("3", T0 + 60 * S, 103.0))  # the stream went on after all

    assert [(b.open_time, b.is_closed, b.revision) for b in out.bars] == [(T0, True, 1)]
    assert values(out.bars[0]) == values(partial[0])


def test_heartbeat_without_trades_then_idle_bar_closes() -> None:
    agg = aggregator(grace_ns=2 * S)
    feed(agg, [tick("1", T0 + 5 * S, 100.0)])

    assert agg.on_watermark("binance", "BTC/USDT", T0 + 61 * S).bars == ()
    out = agg.on_watermark("binance", "BTC/USDT", T0 + 62 * S)

    assert [(b.open_time, b.is_closed) for b in out.bars] == [(T0, True)]


def test_two_symbols_then_each_has_its_own_watermark() -> None:
    agg = aggregator(grace_ns=0)
    feed(agg, [tick("e1", T0 + 5 * S, 2000.0, symbol="ETH/USDT"), tick("b1", T0 + 10 * S, 100.0)])

    out = agg.on_tick(tick("b2", T0 + 5 * M, 101.0))  # BTC moves on; ETH has no new trade

    assert {b.symbol for b in out.bars} == {"BTC/USDT"}
    assert agg.on_tick(tick("e2", T0 + 50 * S, 2001.0, symbol="ETH/USDT")).dropped == ()


def test_final_bars_then_forgotten_after_max_lateness() -> None:
    agg = aggregator(grace_ns=0, max_lateness_ns=2 * M)
    feed(agg, [tick(str(i), T0 + i * M + S, 100.0) for i in range(30)])
    assert agg.open_bar_count() <= 4  # bounded memory: only bars that can still be revised


@pytest.mark.parametrize("bad", [{"timeframes": ()}, {"grace_ns": -1}, {"timeframes": (Timeframe.M1, Timeframe.M1)}])
def test_invalid_config_then_value_error(bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"timeframes": (Timeframe.M1,)} | bad
    with pytest.raises(ValueError):
        AggregatorConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

TIMEFRAMES = (Timeframe.M1, Timeframe.M5)


@st.composite
def tick_lists(draw: st.DrawFn, max_size: int = 60) -> list[Tick]:
    """Ticks over ~12 minutes with unique trade ids; prices in cents, quantities varied."""
    n = draw(st.integers(min_value=1, max_value=max_size))
    offsets = draw(st.lists(st.integers(0, 12 * 60 * 1000), min_size=n, max_size=n))  # ms, with ties
    prices = draw(st.lists(st.integers(1, 10_000_000), min_size=n, max_size=n))
    qtys = draw(st.lists(st.floats(0.0, 50.0, allow_nan=False, allow_infinity=False), min_size=n, max_size=n))
    return [
        tick(f"t{i:04d}", T0 + off * 1_000_000, p / 100, q)
        for i, (off, p, q) in enumerate(zip(offsets, prices, qtys, strict=True))
    ]


def run_to_end(ticks: list[Tick], grace_ns: int, max_lateness_ns: int = 10**15) -> tuple[list[Bar], list[DroppedTick]]:
    agg = aggregator(*TIMEFRAMES, grace_ns=grace_ns, max_lateness_ns=max_lateness_ns)
    out = feed(agg, ticks)
    return [*out.bars, *agg.flush().bars], list(out.dropped)


@settings(max_examples=150, deadline=None)
@given(ticks=tick_lists(), seed=st.integers(0, 2**32 - 1), grace_s=st.integers(0, 90))
def test_any_arrival_order_then_volume_conserved_and_ohlc_consistent(
    ticks: list[Tick], seed: int, grace_s: int
) -> None:
    arrival = ticks[:]
    random.Random(seed).shuffle(arrival)

    bars, dropped = run_to_end(arrival, grace_s * S)

    assert dropped == []  # max lateness is effectively infinite here
    final = final_bars(bars)
    for tf in TIMEFRAMES:
        tf_bars = [b for k, b in final.items() if k[1] is tf]
        assert math.isclose(
            math.fsum(b.volume for b in tf_bars), math.fsum(t.quantity for t in ticks), rel_tol=1e-12, abs_tol=1e-12
        )
        assert sum(b.trade_count for b in tf_bars) == len(ticks)
        for b in tf_bars:
            members = sorted(
                (t for t in ticks if b.open_time <= t.ts_event < b.open_time + tf.nanos),
                key=lambda t: (t.ts_event, t.trade_id),
            )
            assert b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high
            assert b.open == members[0].price, "open = first tick by event time"
            assert b.close == members[-1].price, "close = last tick by event time"
            assert (b.high, b.low) == (max(t.price for t in members), min(t.price for t in members))
    # every emission of a key has a strictly higher revision than the one before
    last_rev: dict[tuple[str, Timeframe, int], int] = {}
    for b in bars:
        key = (b.symbol, b.timeframe, b.open_time)
        assert b.revision == last_rev.get(key, -1) + 1
        last_rev[key] = b.revision


@settings(max_examples=150, deadline=None)
@given(ticks=tick_lists(), seed=st.integers(0, 2**32 - 1), grace_s=st.integers(0, 90))
def test_disorder_within_grace_then_identical_bars_and_no_revisions(ticks: list[Tick], seed: int, grace_s: int) -> None:
    rng = random.Random(seed)
    grace = grace_s * S
    # Each tick arrives up to `grace` after its event time: no tick is ever more than
    # `grace` older than the newest one seen before it.
    delays = [rng.randint(0, grace) for _ in ticks]
    arrival = [
        t
        for _, _, t in sorted(
            zip((t.ts_event + d for t, d in zip(ticks, delays, strict=True)), range(len(ticks)), ticks, strict=True)
        )
    ]
    in_order = sorted(ticks, key=lambda t: t.ts_event)

    expected, _ = run_to_end(in_order, grace)
    got, dropped = run_to_end(arrival, grace)

    assert dropped == []
    assert all(b.revision == 0 for b in got)
    key = lambda b: (b.timeframe.nanos, b.open_time)  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)  # same values, ids, everything


@settings(max_examples=100, deadline=None)
@given(ticks=tick_lists(max_size=40), data=st.data(), grace_s=st.integers(0, 30))
def test_redelivered_ticks_then_same_final_bars_as_without_duplicates(
    ticks: list[Tick], data: st.DataObject, grace_s: int
) -> None:
    dupes = data.draw(st.lists(st.sampled_from(ticks), max_size=20))
    stream = ticks + dupes
    order = data.draw(st.permutations(range(len(stream))))
    redelivered = [stream[i] for i in order]

    clean, _ = run_to_end(sorted(ticks, key=lambda t: t.ts_event), grace_s * S)
    got, dropped = run_to_end(redelivered, grace_s * S)

    assert [d.reason for d in dropped] == [DropReason.DUPLICATE] * len(dupes)
    want = {k: values(b) for k, b in final_bars(clean).items()}
    assert {k: values(b) for k, b in final_bars(got).items()} == want


@settings(max_examples=100, deadline=None)
@given(ticks=tick_lists(max_size=30), late_offset_s=st.integers(0, 59))
def test_tick_later_than_grace_then_bar_revised_not_lost(ticks: list[Tick], late_offset_s: int) -> None:
    agg = aggregator(Timeframe.M1, grace_ns=0)
    in_order = sorted(ticks, key=lambda t: t.ts_event)
    emitted = list(feed(agg, in_order).bars)
    newest = in_order[-1].ts_event
    target_open = (newest - newest % M) - M  # the minute before the newest tick's: closed already
    late = tick("late", target_open + late_offset_s * S, 1234.5, 3.0)
    was_emitted = {b.open_time: b.revision for b in emitted}

    out = agg.on_tick(late)

    assert out.dropped == ()
    assert len(out.bars) == 1
    bar = out.bars[0]
    assert bar.open_time == target_open and bar.is_closed
    assert bar.revision == was_emitted.get(target_open, -1) + 1
    assert bar.high >= 1234.5 >= bar.low
