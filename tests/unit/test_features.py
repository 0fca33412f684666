"""Feature engine: incremental == batch, no look-ahead, warm-up, state round
trip, versioning, lineage, and what happens to bars that cannot be applied."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.features.batch import compute_batch, feature_matrix
from agents.features.engine import BarRejected, FeatureEngine, RejectReason, SymbolState
from agents.features.spec import (
    DEFAULT_SPEC,
    FEATURE_SET_VERSION,
    FeatureSpec,
    lineage_id_for,
    lineage_matches,
    parse_lineage_id,
)
from tests import builders
from topics.records import Bar, FeatureVector, Timeframe
from topics.schema import codec_for
from topics.units import NS_PER_HOUR as HOUR
from topics.units import NS_PER_YEAR

T0 = 1_600_000_000_000_000_000 // HOUR * HOUR  # 2020-09-13 12:00 UTC
W = DEFAULT_SPEC.window
TS_INIT = T0 + 5 * NS_PER_YEAR

# Running sums (engine) and fresh numpy sums (batch) round differently, so the
# two agree to rounding, not bit for bit: ~1e-13 relative on real data. The
# absolute part covers features that are differences near zero.
RTOL = 1e-9
ATOL = 1e-9

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# Bars and random series
# ---------------------------------------------------------------------------


def make_bar(i: int, close: float, volume: float, *, spread: float = 0.0, revision: int = 0) -> Bar:
    """Bar number ``i`` of a BTC/USDT 1h stream; high/low ``spread`` around the close."""
    return builders.bar(
        open_time=T0 + i * HOUR,
        open=close,
        high=round(close * (1.0 + spread), 2),
        low=round(close * (1.0 - spread), 2),
        close=close,
        volume=volume,
        trade_count=0,
        revision=revision,
    )


@st.composite
def series(draw: st.DrawFn, min_bars: int = W, max_bars: int = W + 120) -> list[Bar]:
    """A random walk in regimes: flat stretches, tick moves, jumps; volumes from
    zero to huge, switching between regimes (a quiet window right after large
    values is where running add/subtract sums go wrong).

    Prices sit on a 0.01 tick grid as on an exchange: without one, features
    of sub-tick noise are ill-conditioned for any algorithm, batch included.
    """
    n = draw(st.integers(min_bars, max_bars))
    price = draw(st.sampled_from([1.0, 37.5, 1_500.0, 42_000.0]))
    start = draw(st.integers(0, 24 * 7))
    moves = {
        "flat": st.just(0),
        "ticks": st.integers(-3, 3),  # basis points
        "ordinary": st.integers(-100, 100),
        "jump": st.integers(-3_000, 3_000),
    }
    volumes = {
        "zero": st.just(0.0),
        "constant": st.just(1.0),
        "tiny": st.floats(1e-6, 1e-3),
        "normal": st.floats(0.1, 10.0),
        "huge": st.floats(1e4, 1e6),
    }
    bars: list[Bar] = []
    while len(bars) < n:
        move = moves[draw(st.sampled_from(sorted(moves)))]
        volume = volumes[draw(st.sampled_from(sorted(volumes)))]
        spread = draw(st.sampled_from([0.0, 0.001, 0.02]))
        for _ in range(min(draw(st.integers(1, 40)), n - len(bars))):
            price = max(0.01, round(price * math.exp(draw(move) / 10_000), 2))
            bars.append(make_bar(start + len(bars), price, draw(volume), spread=spread))
    return bars


def run_values(engine: FeatureEngine, bars: list[Bar]) -> list[tuple[float, ...] | None]:
    return [engine.advance(b) for b in bars]


def assert_close(actual: np.ndarray, expected: np.ndarray, names: tuple[str, ...]) -> None:
    err = np.abs(actual - expected) - (ATOL + RTOL * np.abs(expected))
    if (err > 0).any():
        row, col = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(f"{names[col]} at row {row}: engine {actual[row, col]!r} != batch {expected[row, col]!r}")


# ---------------------------------------------------------------------------
# Incremental == batch
# ---------------------------------------------------------------------------


@PROPERTY
@given(series())
def test_random_series_then_incremental_equals_batch(bars: list[Bar]) -> None:
    engine = FeatureEngine(data_version="test")
    emitted = [v for v in run_values(engine, bars) if v is not None]
    expected = feature_matrix(bars)
    assert len(emitted) == len(expected) == len(bars) - W + 1
    actual = np.array(emitted)
    assert np.isfinite(actual).all()
    assert_close(actual, expected, engine.names)


@st.composite
def specs(draw: st.DrawFn) -> FeatureSpec:
    """Small random feature specs, to hold the engine to the batch beyond the defaults."""
    small = st.integers(2, 9)
    momentum = draw(small)
    horizons = tuple(sorted({momentum, *draw(st.sets(st.integers(1, 9), max_size=3))}))
    vols = tuple(sorted({momentum, *draw(st.sets(small, max_size=2))}))
    fast = draw(st.integers(1, 6))
    base = FeatureSpec(
        return_horizons=horizons,
        vol_windows=vols,
        zscore_windows=tuple(sorted(draw(st.sets(small, max_size=2)))),
        rsi_period=draw(small),
        atr_period=draw(small),
        volume_window=draw(small),
        momentum_window=momentum,
        drawdown_window=draw(small),
        macd_fast=fast,
        macd_slow=fast + draw(st.integers(1, 6)),
    )
    return dataclasses.replace(base, lookback=base.required_lookback + draw(st.integers(0, 5)))


@PROPERTY
@given(specs(), st.data())
def test_random_spec_then_incremental_equals_batch(spec: FeatureSpec, data: st.DataObject) -> None:
    bars = data.draw(series(min_bars=spec.window, max_bars=spec.window + 60))
    engine = FeatureEngine(data_version="test", spec=spec)
    emitted = [v for v in run_values(engine, bars) if v is not None]
    assert_close(np.array(emitted), feature_matrix(bars, spec), spec.names)


@settings(max_examples=20, deadline=None)
@given(series(min_bars=W, max_bars=W + 30))
def test_random_series_then_records_match_batch_records(bars: list[Bar]) -> None:
    engine = FeatureEngine(data_version="test-data")
    vectors = [fv for b in bars if (fv := engine.update(b, TS_INIT)) is not None]
    reference = compute_batch(bars, data_version="test-data", ts_init=TS_INIT)
    codec = codec_for(FeatureVector)
    assert len(vectors) == len(reference)
    for fv, ref in zip(vectors, reference, strict=True):
        assert dataclasses.replace(fv, values=ref.values) == ref  # every field but the values
        np.testing.assert_allclose(fv.values, ref.values, rtol=RTOL, atol=ATOL)
        assert codec.decode(codec.encode(fv)) == fv  # strict decode: finite values, valid envelope


def test_quiet_window_after_large_values_then_incremental_equals_batch() -> None:
    """The case two-stack sums exist for: add/subtract running sums keep the
    rounding residue of the large values that left the window, which swamps
    the quiet window (a running-sum volume z-score here reads 0.14, not 4.8)."""
    big = [make_bar(i, round(40_000.0 + 997.0 * (i % 5), 2), 1e5 + 7_919.0 * i) for i in range(W)]
    crash = [make_bar(W + i, 20_000.0, 0.0) for i in range(W - 1)]
    quiet = [*big, *crash, make_bar(2 * W - 1, 20_000.01, 1e-3)]
    engine = FeatureEngine(data_version="test")
    emitted = [v for v in run_values(engine, quiet) if v is not None]
    expected = feature_matrix(quiet)
    assert_close(np.array(emitted), expected, engine.names)
    last = dict(zip(engine.names, emitted[-1], strict=True))
    assert last["volz_24"] == pytest.approx(math.sqrt(23))  # one non-zero volume in 24
    assert last["zclose_72"] == pytest.approx(math.sqrt(71))


def test_real_btc_prices_then_incremental_equals_batch() -> None:
    """A slice of the real BTC/USDT file, including its bogus opening spike."""
    rows = _real_rows()
    bars = [make_bar(i, close, volume) for i, (close, volume) in enumerate(rows)]
    engine = FeatureEngine(data_version="test")
    emitted = [v for v in run_values(engine, bars) if v is not None]
    assert_close(np.array(emitted), feature_matrix(bars), engine.names)


def _real_rows(limit: int = 600) -> list[tuple[float, float]]:
    path = "/work/shared/data/binance_btcusdt_1h_2017_2022.csv"
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1 : limit + 1]
    except FileNotFoundError:
        pytest.skip(f"{path} not present")
    return [(float(p[4]), float(p[5])) for p in (line.split(",") for line in lines)]


# ---------------------------------------------------------------------------
# No look-ahead, warm-up, finiteness
# ---------------------------------------------------------------------------

_MUTABLE_FIELDS = ("open", "high", "low", "close", "volume", "trade_count", "revision", "source", "open_time")


@PROPERTY
@given(series(min_bars=W + 2), st.data())
def test_bar_after_t_changed_then_no_feature_up_to_t_changes(bars: list[Bar], data: st.DataObject) -> None:
    t = data.draw(st.integers(0, len(bars) - 2), label="t")
    k = data.draw(st.integers(t + 1, len(bars) - 1), label="changed bar")
    field = data.draw(st.sampled_from(_MUTABLE_FIELDS), label="field")
    old = bars[k]
    new_value: object
    if field in ("trade_count", "revision"):
        new_value = getattr(old, field) + data.draw(st.integers(1, 1_000))
    elif field == "source":
        new_value = "changed"
    elif field == "open_time":  # later, still before the next bar
        new_value = old.open_time + data.draw(st.integers(1, HOUR - 1))
    else:
        new_value = data.draw(st.floats(0.01, 1e6))
    changed = Bar.new(
        ts_init=old.ts_init,
        **{f: getattr(old, f) for f in ("ts_event", *_MUTABLE_FIELDS, "venue", "symbol", "timeframe", "is_closed")}
        | {field: new_value},
    )
    other = [*bars[:k], changed, *bars[k + 1 :]]
    a = FeatureEngine(data_version="test")
    b = FeatureEngine(data_version="test")
    vectors_a = [a.update(bar, TS_INIT) for bar in bars[: t + 1]]
    vectors_b = [b.update(bar, TS_INIT) for bar in other[: t + 1]]
    for bar in other[t + 1 :]:  # the changed future is applied, and must not leak back
        b.update(bar, TS_INIT)
    assert vectors_a == vectors_b
    # The batch reference holds to the same rule.
    before = feature_matrix(bars)[: max(0, t - W + 2)]
    assert (feature_matrix(other)[: len(before)] == before).all()


@PROPERTY
@given(series(min_bars=W, max_bars=W + 5))
def test_warm_up_then_no_vector_until_window_bars_and_all_finite(bars: list[Bar]) -> None:
    engine = FeatureEngine(data_version="test")
    out = [engine.update(b, TS_INIT) for b in bars]
    assert out[: W - 1] == [None] * (W - 1)
    for fv in out[W - 1 :]:
        assert fv is not None
        assert all(math.isfinite(x) for x in fv.values)


def test_flat_series_with_zero_volume_then_flat_defaults() -> None:
    engine = FeatureEngine(data_version="test")
    out = [engine.advance(make_bar(i, 100.0, 0.0)) for i in range(W)]
    values = out[-1]
    assert values is not None
    got = dict(zip(engine.names, values, strict=True))
    # Two EMAs of a constant differ by rounding (their weights sum to 1 only
    # to rounding); every other flat-window rule is exact by construction.
    assert abs(got.pop("macd_12_26")) < 1e-12
    flat = {name: v for name, v in got.items() if not name.startswith(("hour_", "dow_"))}
    assert flat == {**dict.fromkeys(flat, 0.0), "rsi_14": 50.0, "clv": 0.5}


# ---------------------------------------------------------------------------
# State round trip
# ---------------------------------------------------------------------------


@pytest.mark.determinism
@PROPERTY
@given(series(min_bars=W + 1), st.data())
def test_state_round_trip_mid_stream_then_identical_output(bars: list[Bar], data: st.DataObject) -> None:
    cut = data.draw(st.integers(1, len(bars) - 1), label="cut")
    straight = FeatureEngine(data_version="test")
    expected = [straight.update(b, TS_INIT) for b in bars]

    first = FeatureEngine(data_version="test")
    before = [first.update(b, TS_INIT) for b in bars[:cut]]
    state = first.state("binance", "BTC/USDT", Timeframe.H1)
    assert state is not None
    wire = orjson.dumps(state.to_state())  # as a faust table would store it
    second = FeatureEngine(data_version="test")
    second.restore(SymbolState.from_state(orjson.loads(wire)))
    after = [second.update(b, TS_INIT) for b in bars[cut:]]
    assert before + after == expected  # bit for bit, not within a tolerance


def test_state_of_another_feature_set_then_value_error() -> None:
    engine = FeatureEngine(data_version="test")
    for i in range(5):
        engine.advance(make_bar(i, 100.0 + i, 1.0))
    state = engine.state("binance", "BTC/USDT", Timeframe.H1)
    assert state is not None
    with pytest.raises(ValueError, match="engine runs"):
        SymbolState.from_state(state.to_state(), dataclasses.replace(DEFAULT_SPEC, rsi_period=10))
    with pytest.raises(ValueError, match="malformed"):
        SymbolState.from_state({k: v for k, v in state.to_state().items() if k != "rings"})


# ---------------------------------------------------------------------------
# Versioning and lineage
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"return_horizons": (1, 3, 6, 12, 24, 48)},
        {"vol_windows": (12, 24, 48)},
        {"zscore_windows": (24, 48)},
        {"rsi_period": 10},
        {"atr_period": 10},
        {"volume_window": 48},
        {"drawdown_window": 48},
        {"macd_fast": 8},
        {"macd_slow": 21},
        {"lookback": 100},
        {"volume_epsilon": 1e-6},
        {"vol_floor": 1e-3},
    ],
)
def test_param_changed_then_feature_set_version_changes(change: dict[str, Any]) -> None:
    assert DEFAULT_SPEC.version == FEATURE_SET_VERSION == FeatureSpec().version
    assert FEATURE_SET_VERSION.startswith("fs1.")
    assert dataclasses.replace(DEFAULT_SPEC, **change).version != FEATURE_SET_VERSION


def test_inconsistent_spec_then_value_error() -> None:
    with pytest.raises(ValueError, match="momentum_window"):
        FeatureSpec(momentum_window=48)
    with pytest.raises(ValueError, match="lookback"):
        FeatureSpec(lookback=50)
    with pytest.raises(ValueError, match="macd_fast"):
        FeatureSpec(macd_fast=26, macd_slow=12)


@settings(max_examples=30, deadline=None)
@given(series(min_bars=W, max_bars=W + 20))
def test_vectors_then_lineage_deterministic_and_resolves_to_window(bars: list[Bar]) -> None:
    one = FeatureEngine(data_version="test")
    two = FeatureEngine(data_version="test")
    for i, bar in enumerate(bars):
        fv = one.update(bar, TS_INIT)
        assert fv == two.update(bar, TS_INIT)
        if fv is None:
            continue
        window = bars[i - W + 1 : i + 1]
        ref = parse_lineage_id(fv.lineage_id)
        assert (ref.first_open_time, ref.last_open_time, ref.n_bars) == (window[0].open_time, bar.open_time, W)
        assert fv.lineage_id == lineage_id_for(window)
        assert lineage_matches(fv.lineage_id, window)
        assert fv.causation_id == bar.event_id and fv.correlation_id == bar.correlation_id
        revised = make_bar((window[0].open_time - T0) // HOUR, window[0].close, window[0].volume, revision=1)
        assert not lineage_matches(fv.lineage_id, [revised, *window[1:]])
        assert not lineage_matches(fv.lineage_id, window[1:])


# ---------------------------------------------------------------------------
# Bars that cannot be applied
# ---------------------------------------------------------------------------


def _warm_engine(n: int = W + 5) -> tuple[FeatureEngine, list[Bar]]:
    engine = FeatureEngine(data_version="test")
    bars = [make_bar(i, 100.0 + (i % 7), float(i % 3)) for i in range(n)]
    for b in bars:
        engine.update(b, TS_INIT)
    return engine, bars


def _state_bytes(engine: FeatureEngine) -> bytes:
    state = engine.state("binance", "BTC/USDT", Timeframe.H1)
    assert state is not None
    return orjson.dumps(state.to_state())


def test_latest_bar_redelivered_then_same_vector_again() -> None:
    engine, bars = _warm_engine()
    again = FeatureEngine(data_version="test")
    expected = [again.update(b, TS_INIT) for b in bars][-1]
    before = _state_bytes(engine)
    assert engine.update(bars[-1], TS_INIT) == expected
    assert _state_bytes(engine) == before


@pytest.mark.parametrize(
    ("make", "reason", "needs_recompute"),
    [
        (lambda bars: bars[-3], RejectReason.DUPLICATE, False),
        (lambda bars: make_bar(len(bars) - 1, 99.0, 1.0, revision=1), RejectReason.REVISED, True),
        (lambda bars: make_bar(len(bars) - 3, 99.0, 1.0, revision=1), RejectReason.REVISED, True),
        (lambda bars: make_bar(-500, 99.0, 1.0), RejectReason.OUT_OF_ORDER, True),
        (
            lambda bars: dataclasses.replace(make_bar(len(bars), 99.0, 1.0), is_closed=False),
            RejectReason.NOT_CLOSED,
            False,
        ),
        (lambda bars: make_bar(len(bars), 1e16, 1.0), RejectReason.OUT_OF_RANGE, False),
        (lambda bars: make_bar(len(bars), 99.0, math.nan), RejectReason.OUT_OF_RANGE, False),
    ],
)
def test_bar_not_applicable_then_rejected_with_reason_and_state_unchanged(
    make: Callable[[list[Bar]], Bar], reason: RejectReason, needs_recompute: bool
) -> None:
    engine, bars = _warm_engine()
    bar = make(bars)
    before = _state_bytes(engine)
    with pytest.raises(BarRejected) as info:
        engine.update(bar, TS_INIT)
    assert info.value.reason is reason
    assert info.value.needs_recompute is needs_recompute
    assert _state_bytes(engine) == before


def test_revised_bar_then_reset_and_replay_from_window_before_gives_corrected_vectors() -> None:
    engine, bars = _warm_engine(W + 40)
    k = W + 10
    revised = make_bar(k, 123.45, 7.0, revision=1)
    with pytest.raises(BarRejected) as info:
        engine.update(revised, TS_INIT)
    assert info.value.needs_recompute
    corrected = [*bars[:k], revised, *bars[k + 1 :]]
    engine.reset("binance", "BTC/USDT", Timeframe.H1)
    replayed = [engine.update(b, TS_INIT) for b in corrected[k - W + 1 :]]
    fresh = FeatureEngine(data_version="test")
    expected = [fresh.update(b, TS_INIT) for b in corrected][k:]
    assert [fv.event_id for fv in replayed if fv] == [fv.event_id for fv in expected if fv]
    assert [fv.lineage_id for fv in replayed if fv] == [fv.lineage_id for fv in expected if fv]
    np.testing.assert_allclose(
        [fv.values for fv in replayed if fv], [fv.values for fv in expected if fv], rtol=RTOL, atol=ATOL
    )
