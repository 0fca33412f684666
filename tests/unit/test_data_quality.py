"""Data-quality engine: the real defects of the sample files, and each check on synthetic bars."""

from __future__ import annotations

import csv
import functools
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.clock import EventClock
from agents.market.csv_import import import_csv_file
from agents.market.quality import Check, DataQualityEngine, QualityConfig, QualityPolicy, audit_bars
from tests import builders
from topics.records import Bar, DataQualityEvent, Severity, Timeframe
from topics.schema import codec_for

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "ops" / "sample_data"
TS_INIT = 1_700_000_000_000_000_000
H = Timeframe.H1.nanos
BINANCE = "binance_btcusdt_1h_2017_2022.csv"
GYM_BTC = "gymcrypto_btcusd_30m_2017_2019.csv"
GYM_ETH = "gymcrypto_ethusd_30m_2017_2019.csv"


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def iso(t: int) -> str:
    return datetime.fromtimestamp(t // 1_000_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def of(events: list[DataQualityEvent], check: Check) -> list[DataQualityEvent]:
    return [e for e in events if e.check == check.value]


# ---------------------------------------------------------------------------
# Real files: defects found independently (plain csv loop) and by the engine
# ---------------------------------------------------------------------------

FILES = {
    BINANCE: ("BTC/USDT", Timeframe.H1),
    GYM_BTC: ("BTC/USD", Timeframe.M30),
    GYM_ETH: ("ETH/USD", Timeframe.M30),
}


@functools.cache
def real_run(name: str) -> tuple[tuple[Bar, ...], list[DataQualityEvent], tuple[bool, tuple[str, ...]]]:
    """Import a sample file and run the engine over it once per session."""
    symbol, timeframe = FILES[name]
    result = import_csv_file(SAMPLE_DIR / name, venue="binance", symbol=symbol, timeframe=timeframe, ts_init=TS_INIT)
    engine = DataQualityEngine(EventClock(TS_INIT))
    events = engine.on_bars(result.bars) + engine.finish()
    return result.bars, events, engine.is_blocked(symbol, timeframe)


@functools.cache
def raw_rows(name: str) -> list[tuple[int, float, float, float, float, float]]:
    """(open time ns, open, high, low, close, volume) straight from the file."""
    out = []
    with (SAMPLE_DIR / name).open(newline="") as fh:
        for ts, o, h, lo, c, v in itertools.islice(csv.reader(fh), 1, None):
            t = int(datetime.fromisoformat(ts).timestamp()) * 10**9
            out.append((t, float(o), float(h), float(lo), float(c), float(v)))
    return out


def independent_gaps(name: str) -> list[tuple[str, int]]:
    """(first missing open time, number missing), by a plain loop over the raw file."""
    tf_ns = FILES[name][1].nanos
    times = [r[0] for r in raw_rows(name)]
    return [(iso(a + tf_ns), (b - a) // tf_ns - 1) for a, b in itertools.pairwise(times) if b - a != tf_ns]


BINANCE_GAPS = [
    ("2017-09-22 20:00", 4),
    ("2020-11-30 06:00", 1),
    ("2020-12-21 15:00", 3),
    ("2020-12-25 02:00", 1),
    ("2021-02-11 04:00", 1),
    ("2021-03-06 02:00", 1),
    ("2021-04-20 02:00", 2),
    ("2021-04-25 05:00", 3),
    ("2021-08-13 02:00", 4),
    ("2021-09-29 07:00", 2),
]
GYM_BTC_GAPS = [
    ("2018-03-21 11:00", 1),
    ("2018-06-05 14:00", 1),
    ("2018-10-04 09:00", 1),
    ("2019-01-07 10:30", 5),
    ("2019-01-07 16:00", 2),
    ("2019-02-09 08:00", 4),
    ("2019-06-26 09:00", 5),
    ("2019-06-26 12:00", 1),
    ("2019-07-11 12:30", 2),
]
GYM_ETH_GAPS = [
    ("2017-10-31 14:00", 1),
    ("2018-03-21 10:00", 1),
    ("2018-03-21 11:00", 1),
    ("2018-04-11 09:30", 1),
    ("2018-06-05 11:00", 1),
    ("2018-10-04 09:00", 2),
    ("2019-01-07 10:30", 7),
    ("2019-01-07 16:00", 1),
    ("2019-02-09 08:00", 5),
    ("2019-06-26 09:00", 6),
    ("2019-06-26 14:30", 1),
    ("2019-07-11 12:30", 2),
    ("2019-07-11 14:00", 1),
]


@pytest.mark.parametrize(
    ("name", "expected"), [(BINANCE, BINANCE_GAPS), (GYM_BTC, GYM_BTC_GAPS), (GYM_ETH, GYM_ETH_GAPS)]
)
def test_real_file_then_every_gap_reported_with_its_first_missing_bar_and_size(
    name: str, expected: list[tuple[str, int]]
) -> None:
    assert independent_gaps(name) == expected  # the literal list is what the raw file contains

    _, events, _ = real_run(name)

    gaps = of(events, Check.GAP)
    assert [(iso(e.ref_time), int(e.value or 0)) for e in gaps] == expected
    for e in gaps:
        severe = (e.value or 0) >= QualityConfig().gap_error_bars
        assert e.severity is (Severity.ERROR if severe else Severity.WARNING)
        assert e.blocking is severe
        assert iso(e.ref_time).replace(" ", "T") in e.detail  # start of the hole is in the detail


def test_binance_file_then_first_candle_spike_reported_blocking_and_released_after_clean_bars() -> None:
    _, events, _ = real_run(BINANCE)

    spikes = of(events, Check.SPIKE_RANGE)
    assert [iso(e.ref_time) for e in spikes] == ["2017-08-17 04:00"]  # the only impossible bar
    spike = spikes[0]
    assert spike.severity is Severity.ERROR and spike.blocking
    assert spike.value == pytest.approx(16199.91 / 4261.32 - 1)
    release = of(events, Check.RELEASED)[0]
    assert iso(release.ref_time) == "2017-08-17 07:00"  # three clean bars later
    assert "spike_range" in release.detail and not release.blocking


def test_binance_file_then_zero_volume_candles_reported_and_long_runs_are_halts() -> None:
    rows = raw_rows(BINANCE)
    independent = [iso(r[0]) for r in rows if r[5] == 0]
    assert len(independent) == 117

    _, events, _ = real_run(BINANCE)

    zero = of(events, Check.ZERO_VOLUME)
    assert [iso(e.ref_time) for e in zero] == independent
    assert [iso(e.ref_time) for e in zero[:9]] == [
        "2017-09-06 16:00",
        "2017-09-06 17:00",
        "2017-09-06 18:00",
        "2017-09-06 19:00",
        "2017-09-06 20:00",
        "2017-09-06 21:00",
        "2017-09-06 22:00",
        "2018-01-04 04:00",
        "2018-02-08 01:00",
    ]
    # Seven silent hours on 2017-09-06: from the third on it is a halt (error, blocking).
    assert [e.severity for e in zero[:7]] == [Severity.WARNING] * 2 + [Severity.ERROR] * 5
    assert zero[7].severity is Severity.WARNING  # an isolated empty hour is only a warning
    longest = max(zero, key=lambda e: e.value or 0)
    assert (iso(longest.ref_time), longest.value) == ("2018-02-09 09:00", 33.0)  # the 33-hour maintenance


def test_binance_file_then_partial_last_candle_reported_and_nothing_else_partial() -> None:
    bars, events, _ = real_run(BINANCE)

    partial = of(events, Check.PARTIAL)
    assert [iso(e.ref_time) for e in partial] == ["2022-06-15 00:00"]
    assert bars[-1].volume == 1985.66423
    assert partial[0].value is not None and partial[0].value < QualityConfig().partial_volume_ratio
    assert partial[0].severity is Severity.WARNING


def test_binance_file_then_opens_that_do_not_continue_the_previous_close_reported() -> None:
    rows = raw_rows(BINANCE)
    independent = [iso(b[0]) for a, b in itertools.pairwise(rows) if b[0] - a[0] == H and abs(b[1] / a[4] - 1) > 0.05]
    assert independent == ["2018-01-05 10:00", "2018-01-15 12:00", "2019-06-26 20:00", "2019-10-26 01:00"]

    _, events, _ = real_run(BINANCE)

    jumps = of(events, Check.SPIKE_OPEN_JUMP)
    assert [iso(e.ref_time) for e in jumps] == independent
    assert jumps[0].value == pytest.approx(14400.0 / 15880.39 - 1)


def test_binance_file_then_return_outliers_are_the_few_most_extreme_hours() -> None:
    _, events, _ = real_run(BINANCE)

    outliers = of(events, Check.SPIKE_RETURN)
    assert 1 <= len(outliers) <= 10  # a handful in five years, not every volatile day
    assert "2020-03-12 10:00" in [iso(e.ref_time) for e in outliers]  # Covid crash, -20% in an hour
    assert all(not e.blocking for e in outliers)


@pytest.mark.parametrize("name", [GYM_BTC, GYM_ETH])
def test_gymcrypto_files_then_no_zero_volume_no_partial_no_impossible_bars(name: str) -> None:
    rows = raw_rows(name)
    assert [r for r in rows if r[5] == 0] == []  # independently: no empty candles

    bars, events, blocked = real_run(name)

    assert len(bars) == len(rows)
    for check in (Check.ZERO_VOLUME, Check.PARTIAL, Check.SPIKE_RANGE, Check.OHLC_INCONSISTENT, Check.DUPLICATE):
        assert of(events, check) == []
    assert blocked == (False, ())  # every block was released before the end


def test_real_file_events_then_valid_records_and_deterministic_ids() -> None:
    _, events, _ = real_run(GYM_ETH)
    codec = codec_for(DataQualityEvent)
    assert all(codec.decode(codec.encode(e)) == e for e in events)

    again = DataQualityEngine(EventClock(TS_INIT))
    bars = real_run(GYM_ETH)[0]
    assert again.on_bars(bars) + again.finish() == events


# ---------------------------------------------------------------------------
# Synthetic streams, one check at a time
# ---------------------------------------------------------------------------

T0 = ns("2024-01-01 00:00")


def bar(
    i: int,
    o: float = 100.0,
    h: float | None = None,
    lo: float | None = None,
    c: float | None = None,
    v: float = 10.0,
    *,
    revision: int = 0,
    closed: bool = True,
    symbol: str = "BTC/USDT",
    venue: str = "binance",
) -> Bar:
    c = o if c is None else c
    return builders.bar(
        symbol=symbol,
        venue=venue,
        open_time=T0 + i * H,
        open=o,
        close=c,
        high=max(o, c) * 1.001 if h is None else h,
        low=min(o, c) * 0.999 if lo is None else lo,
        volume=v,
        trade_count=0,
        is_closed=closed,
        revision=revision,
        ts_init=TS_INIT,
    )


def walk(n: int, start: int = 0, price: float = 100.0) -> list[Bar]:
    """Clean bars with small alternating moves (robust scale ~0.2%)."""
    out = []
    for i in range(start, start + n):
        nxt = price * (1.002 if i % 2 else 0.998)
        out.append(bar(i, price, c=nxt))
        price = nxt
    return out


def engine(**config: object) -> DataQualityEngine:
    return DataQualityEngine(EventClock(TS_INIT), QualityConfig(**config))  # type: ignore[arg-type]


def test_clean_stream_then_no_findings_and_not_blocked() -> None:
    eng = engine()
    assert eng.on_bars(walk(300)) == []
    assert eng.finish() == []
    assert eng.is_blocked("BTC/USDT", Timeframe.H1) == (False, ())


def test_missing_bars_then_gap_with_count_start_and_end() -> None:
    eng = engine(gap_error_bars=3)
    eng.on_bars([bar(0), bar(1)])

    small = eng.on_bar(bar(3))
    big = eng.on_bar(bar(7))

    assert [(e.check, e.value, e.ref_time, e.severity) for e in small] == [("gap", 1.0, T0 + 2 * H, Severity.WARNING)]
    assert [(e.check, e.value, e.ref_time, e.severity, e.blocking) for e in big] == [
        ("gap", 3.0, T0 + 4 * H, Severity.ERROR, True)
    ]
    assert "2024-01-01T04:00:00Z .. 2024-01-01T06:00:00Z" in big[0].detail


def test_same_bar_twice_then_duplicate_info_not_blocking() -> None:
    eng = engine()
    eng.on_bars([bar(0), bar(1)])

    events = eng.on_bar(bar(1))

    assert [(e.check, e.severity, e.blocking) for e in events] == [("duplicate", Severity.INFO, False)]


def test_same_time_same_revision_different_values_then_conflicting_revision_blocks() -> None:
    eng = engine()
    eng.on_bars([bar(0), bar(1)])

    events = eng.on_bar(bar(1, v=99.0))

    assert [(e.check, e.severity, e.blocking) for e in events] == [("conflicting_revision", Severity.ERROR, True)]
    assert eng.is_blocked("BTC/USDT", Timeframe.H1)[0]


def test_higher_revision_then_revised_and_lower_revision_then_stale_revision() -> None:
    eng = engine()
    eng.on_bars([bar(0), bar(1)])

    revised = eng.on_bar(bar(1, v=12.0, revision=1))
    stale = eng.on_bar(bar(1, v=10.0, revision=0))

    assert [(e.check, e.value) for e in revised] == [("revised", 1.0)]
    assert [(e.check, e.blocking) for e in stale] == [("stale_revision", False)]
    assert eng.on_bar(bar(1, v=12.0, revision=1))[0].check == "duplicate"


def test_bar_older_than_newest_then_out_of_order_and_not_a_new_gap() -> None:
    eng = engine()
    eng.on_bars([bar(0), bar(2)])  # gap at 1

    late = eng.on_bar(bar(1))
    after = eng.on_bar(bar(3))

    assert [(e.check, e.severity) for e in late] == [("out_of_order", Severity.INFO)]
    assert after == []


def test_no_new_bar_for_too_long_then_stale_once_blocking_until_clean_bars() -> None:
    eng = engine(stale_after_bars=3.0)
    history = walk(5)
    eng.on_bars(history)
    last_close = T0 + 5 * H

    assert eng.check_staleness(last_close + 3 * H) == []  # exactly at the limit: not yet
    stale = eng.check_staleness(last_close + 3 * H + 1)
    assert eng.check_staleness(last_close + 10 * H) == []  # one report per silence

    assert [(e.check, e.severity, e.blocking, e.ref_time) for e in stale] == [
        ("stale_feed", Severity.ERROR, True, T0 + 5 * H)
    ]
    assert stale[0].ts_event == last_close + 3 * H + 1
    blocked, reasons = eng.is_blocked("BTC/USDT", Timeframe.H1)
    assert blocked and reasons[0].startswith("stale_feed@")

    events = eng.on_bars(walk(3, start=5, price=history[-1].close))
    assert [e.check for e in events] == ["released"]
    assert eng.is_blocked("BTC/USDT", Timeframe.H1) == (False, ())


@pytest.mark.parametrize(
    ("o", "h", "lo", "c"),
    [(100.0, 99.0, 98.0, 98.5), (100.0, 101.0, 100.5, 100.7), (100.0, 101.0, 99.0, 102.0), (100.0, 98.0, 99.0, 99.0)],
)
def test_impossible_ohlc_then_inconsistency_error(o: float, h: float, lo: float, c: float) -> None:
    eng = engine()
    events = eng.on_bar(bar(0, o, h, lo, c))
    assert [(e.check, e.severity, e.blocking) for e in events] == [("ohlc_inconsistent", Severity.ERROR, True)]


def test_first_bar_with_impossible_range_then_spike_even_during_warm_up() -> None:
    # The real Binance first candle, as the very first bar a stream sees.
    eng = engine()
    events = eng.on_bar(bar(0, 16199.91, 16199.91, 4261.32, 4308.83))
    assert [(e.check, e.severity, e.blocking) for e in events] == [("spike_range", Severity.ERROR, True)]


def test_open_far_from_previous_close_then_open_jump_warning_but_not_after_a_gap() -> None:
    eng = engine(max_open_jump=0.05)
    eng.on_bar(bar(0, 100.0))

    jump = eng.on_bar(bar(1, 108.0))
    after_gap = eng.on_bar(bar(5, 130.0))

    assert [(e.check, e.severity) for e in jump] == [("spike_open_jump", Severity.WARNING)]
    assert jump[0].value == pytest.approx(0.08, rel=1e-3)
    assert [e.check for e in after_gap] == ["gap"]


def test_extreme_return_after_warm_up_then_return_outlier_but_not_during_warm_up() -> None:
    cfg = {"spike_warmup": 48, "spike_window": 100, "spike_mad_z": 30.0}
    warm = engine(**cfg)
    history = walk(60)
    warm.on_bars(history)
    cold = engine(**cfg)
    cold.on_bars(history[:10])

    last = history[-1].close
    warm_events = warm.on_bar(bar(60, last, c=last * 1.15))  # +14% vs +-0.2% moves
    cold_events = cold.on_bar(bar(10, history[9].close, c=history[9].close * 1.15))

    assert [e.check for e in warm_events] == ["spike_return"]
    assert warm_events[0].value is not None and warm_events[0].value > 30
    assert cold_events == []  # not enough history yet; range checks cover the warm-up


def test_flat_history_then_ordinary_move_not_an_infinite_outlier() -> None:
    eng = engine(spike_warmup=48, spike_window=100)
    eng.on_bars([bar(i, 100.0, 100.0, 100.0, 100.0) for i in range(60)])  # an exchange halt: MAD = 0

    events = eng.on_bar(bar(60, 100.0, c=100.1))  # +0.1%: within the 1e-4 scale floor * 30

    assert [e.check for e in events if e.check.startswith("spike")] == []


def test_zero_volume_bars_then_warnings_and_a_run_becomes_a_blocking_halt() -> None:
    eng = engine(zero_volume_error_bars=3)
    eng.on_bar(bar(0))

    events = eng.on_bars([bar(i, v=0.0) for i in range(1, 5)])

    assert [(e.check, e.value, e.severity, e.blocking) for e in events] == [
        ("zero_volume", 1.0, Severity.WARNING, False),
        ("zero_volume", 2.0, Severity.WARNING, False),
        ("zero_volume", 3.0, Severity.ERROR, True),
        ("zero_volume", 4.0, Severity.ERROR, True),
    ]


def test_bar_not_closed_then_partial_and_finish_does_not_repeat_it() -> None:
    eng = engine()
    history = walk(30)
    eng.on_bars(history)

    events = eng.on_bar(bar(30, history[-1].close, closed=False))

    assert [(e.check, e.severity) for e in events] == [("partial", Severity.WARNING)]
    assert eng.finish() == []


def test_finish_with_last_bar_closing_after_last_known_time_then_partial() -> None:
    eng = engine()
    bars = walk(30)
    eng.on_bars(bars)

    events = eng.finish(last_known_ns=bars[-1].open_time + H // 4)

    assert [(e.check, e.ref_time) for e in events] == [("partial", bars[-1].open_time)]
    assert events[0].value == pytest.approx(0.25)


def test_finish_with_low_volume_last_bar_then_suspected_partial_and_normal_volume_not() -> None:
    low = engine()
    normal = engine()
    history = walk(30)
    low.on_bars([*history, bar(30, history[-1].close, v=2.0)])  # 20% of the usual 10
    normal.on_bars([*history, bar(30, history[-1].close, v=7.0)])

    flagged = low.finish()

    assert [e.check for e in flagged] == ["partial"]
    assert flagged[0].value == pytest.approx(0.2)
    assert normal.finish() == []


# ---------------------------------------------------------------------------
# Policy and block/release
# ---------------------------------------------------------------------------


def test_blocking_finding_then_blocked_until_n_clean_bars_then_released_event() -> None:
    policy = QualityPolicy(release_after_clean_bars=4)
    eng = DataQualityEngine(EventClock(TS_INIT), policy=policy)
    eng.on_bars(walk(5))
    eng.on_bar(bar(5, 100.0, 99.0, 98.0, 98.5))  # ohlc inconsistent: blocks

    steps = []
    for b in walk(4, start=6, price=98.5):
        events = eng.on_bar(b)
        steps.append((eng.is_blocked("BTC/USDT", Timeframe.H1)[0], [e.check for e in events]))

    assert steps == [(True, []), (True, []), (True, []), (False, ["released"])]


def test_warning_during_block_then_still_counts_as_clean() -> None:
    eng = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(release_after_clean_bars=2))
    eng.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5))

    first = eng.on_bar(bar(1, 98.5, v=0.0))  # zero volume: a warning
    second = eng.on_bar(bar(2, 98.5))

    assert [e.check for e in first] == ["zero_volume"]
    assert [e.check for e in second] == ["released"]


def test_blocking_finding_during_block_then_clean_streak_restarts() -> None:
    eng = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(release_after_clean_bars=2))
    eng.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5))
    eng.on_bar(bar(1, 98.5))
    eng.on_bar(bar(2, 98.5, 98.0, 97.0, 97.5))  # blocks again

    assert eng.on_bar(bar(3, 97.5)) == []
    blocked, reasons = eng.is_blocked("BTC/USDT", Timeframe.H1)
    assert blocked and len(reasons) == 2
    assert [e.check for e in eng.on_bar(bar(4, 97.5))] == ["released"]


def test_duplicate_during_block_then_not_progress_towards_release() -> None:
    eng = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(release_after_clean_bars=2))
    eng.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5))
    eng.on_bar(bar(1, 98.5))

    eng.on_bar(bar(1, 98.5))  # redelivery: not a new clean bar

    assert eng.is_blocked("BTC/USDT", Timeframe.H1)[0]


def test_policy_overrides_then_blocking_follows_the_policy_not_the_severity() -> None:
    lenient = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(never_block=frozenset({"ohlc_inconsistent"})))
    strict = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(always_block=frozenset({"zero_volume"})))
    none = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(block_at_severity=None))
    warnings = DataQualityEngine(EventClock(TS_INIT), policy=QualityPolicy(block_at_severity=Severity.WARNING))

    assert not lenient.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5))[0].blocking
    assert strict.on_bar(bar(0, v=0.0))[0].blocking
    assert not none.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5))[0].blocking
    assert warnings.on_bar(bar(0, v=0.0))[0].blocking
    assert not lenient.is_blocked("BTC/USDT", Timeframe.H1)[0]
    assert strict.is_blocked("BTC/USDT", Timeframe.H1)[0]


def test_block_state_then_kept_per_venue_symbol_and_timeframe() -> None:
    eng = engine()
    eng.on_bar(bar(0, 100.0, 99.0, 98.0, 98.5, venue="coinbase"))
    eng.on_bar(bar(0, symbol="ETH/USDT"))

    assert eng.is_blocked("BTC/USDT", Timeframe.H1)[0]
    assert eng.is_blocked("BTC/USDT", Timeframe.H1, venue="coinbase")[0]
    assert not eng.is_blocked("BTC/USDT", Timeframe.H1, venue="binance")[0]
    assert not eng.is_blocked("BTC/USDT", Timeframe.M30)[0]
    assert not eng.is_blocked("ETH/USDT", Timeframe.H1)[0]


def test_events_then_carry_bar_causation_and_injected_clock_time() -> None:
    clock = EventClock(TS_INIT + 123)
    eng = DataQualityEngine(clock)
    b = bar(0, v=0.0)

    event = eng.on_bar(b)[0]

    assert (event.causation_id, event.correlation_id) == (b.event_id, b.correlation_id)
    assert (event.ts_init, event.ts_event, event.ref_time) == (TS_INIT + 123, b.ts_event, b.open_time)
    assert (event.venue, event.symbol, event.timeframe) == ("binance", "BTC/USDT", Timeframe.H1)


@pytest.mark.parametrize(
    "bad",
    [{"spike_warmup": 1}, {"spike_warmup": 500}, {"max_bar_range": 0.0}, {"partial_volume_ratio": 1.5}],
)
def test_invalid_config_then_value_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QualityConfig(**bad)  # type: ignore[arg-type]


def test_policy_both_always_and_never_blocking_then_value_error() -> None:
    with pytest.raises(ValueError, match="both"):
        QualityPolicy(always_block=frozenset({"gap"}), never_block=frozenset({"gap"}))


# ---------------------------------------------------------------------------
# audit_bars: the pipeline's checks and policy over a finite input (research on a file)
# ---------------------------------------------------------------------------


def test_audit_of_a_real_file_then_the_same_findings_as_the_engine() -> None:
    bars, events, _ = real_run(BINANCE)
    audit = audit_bars(bars)
    counts: dict[str, int] = {}
    for e in events:
        counts[e.check] = counts.get(e.check, 0) + 1
    assert audit.findings == counts
    assert audit.bars == len(bars) and len(audit.blocking) == sum(e.blocking for e in events) > 0
    assert 0 < audit.withheld < len(bars)


def test_audit_of_a_gap_error_then_bars_withheld_until_the_policy_releases() -> None:
    h = Timeframe.H1.nanos
    times = [T0 + i * h for i in range(5)] + [T0 + i * h for i in range(9, 15)]  # 4 missing: a gap error
    audit = audit_bars([builders.bar(open_time=t, open=100.0, close=100.0, volume=5.0) for t in times])

    assert audit.findings.get("gap") == 1 and audit.findings.get("released") == 1
    assert [e.check for e in audit.blocking] == ["gap"]
    # blocked at the bar after the gap and the two clean bars after it; the third clean bar releases
    assert audit.withheld == QualityPolicy().release_after_clean_bars
    summary = audit.summary()
    assert summary["bars_withheld_by_policy"] == 3 and summary["blocking_findings"] == 1
    clean = audit_bars([builders.bar(open_time=T0 + i * h, open=100.0, close=100.0, volume=5.0) for i in range(6)])
    assert clean.withheld == 0 and clean.blocking == ()
