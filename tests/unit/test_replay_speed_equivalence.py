"""The replay's fast paths give what the plain forms give: record construction, event ids, the
stream hash framing, the data-quality MAD, inference windows and signal stamping."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.market.quality import _RollingRobust
from models.inference import FeatureMismatch, Prediction, Predictor, to_signals
from tests.factories import strategy_for
from topics.records import ALL_RECORDS, FeatureVector, OrderStatus, Side, Signal, Timeframe
from topics.schema import Record, event_id_for, keyword_constructor, positional_constructor
from topics.streamhash import stream_hash

# ---------------------------------------------------------------------------
# Records through the keyword constructor
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_RECORDS, ids=lambda c: c.__name__)
def test_any_record_when_built_by_keyword_constructor_then_equal_to_init_and_same_bytes(cls: type[Record]) -> None:
    make = keyword_constructor(cls)

    @settings(max_examples=25, deadline=None)
    @given(strategy_for(cls))
    def same(rec: Record) -> None:
        fields = {f.name: getattr(rec, f.name) for f in dataclasses.fields(cls)}
        built = make(**fields)
        assert type(built) is cls
        assert built == cls(**fields) == rec
        assert orjson.dumps(built) == orjson.dumps(rec)

    same()


@dataclass(frozen=True, slots=True, kw_only=True)
class _WithDefaults:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


def test_keyword_constructor_when_fields_defaulted_or_missing_then_behaves_like_init() -> None:
    make = keyword_constructor(_WithDefaults)
    assert make(a=1) == _WithDefaults(a=1)
    one, two = make(a=1), make(a=1)
    assert one.c == [] and one.c is not two.c  # a fresh default per object, like the dataclass
    assert make(a=1, b="x", c=[2]) == _WithDefaults(a=1, b="x", c=[2])
    with pytest.raises(TypeError):
        make(b="x")
    with pytest.raises(TypeError):
        make(a=1, d=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 2  # type: ignore[misc]  # still frozen


def test_keyword_constructor_when_class_has_post_init_or_no_slots_then_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class Plain:
        a: int

    with pytest.raises(TypeError, match="__post_init__"):
        keyword_constructor(Checked)
    with pytest.raises(TypeError, match="slotted"):
        keyword_constructor(Plain)


# ---------------------------------------------------------------------------
# Event ids and the stream hash: the same bytes as one update per part
# ---------------------------------------------------------------------------


def _event_id_per_part(kind: str, *identity: object) -> str:
    h = hashlib.sha256(kind.encode())
    for part in identity:
        h.update(b"\x1f")
        h.update(str(part).encode())
    return h.hexdigest()[:32]


_PARTS = st.one_of(
    st.text(),
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
    st.sampled_from([Timeframe.H1, Timeframe.M1, Side.BUY, OrderStatus.FILLED]),
)


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1), st.lists(_PARTS, max_size=7))
def test_event_id_when_any_identity_then_sha256_of_the_parts_joined_by_0x1f(kind: str, parts: list[object]) -> None:
    assert event_id_for(kind, *parts) == _event_id_per_part(kind, *parts)


def test_event_id_when_pinned_identity_then_pinned_value() -> None:
    assert event_id_for("portfolio_snapshot", "paper", 1_700_000_000_000_000_000, "ab" * 16) == _event_id_per_part(
        "portfolio_snapshot", "paper", 1_700_000_000_000_000_000, "ab" * 16
    )
    assert (
        event_id_for("features", "BTC/USDT", Timeframe.H1, 1, "fs", "dv")
        == (hashlib.sha256(b"features\x1fBTC/USDT\x1f1h\x1f1\x1ffs\x1fdv").hexdigest()[:32])
    )


def _stream_hash_per_part(frames: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for kind, payload in frames:
        h.update(kind.encode())
        h.update(b"\x00")
        h.update(len(payload).to_bytes(8, "big"))
        h.update(payload)
    return h.hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["signal", "features", "fill", "é"]), st.binary(max_size=64)), max_size=20))
def test_stream_hash_when_any_frames_then_one_update_per_part_framing(frames: list[tuple[str, bytes]]) -> None:
    assert stream_hash(frames) == _stream_hash_per_part(frames)


# ---------------------------------------------------------------------------
# Data quality: median absolute deviation by order-statistic selection
# ---------------------------------------------------------------------------


def _mad_by_sorting(values: list[float], center: float) -> float:
    return statistics.median(sorted(abs(x - center) for x in values))


def test_rolling_mad_when_any_values_and_center_then_the_sorted_median_bit_for_bit() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randint(1, 40)
        pick = rng.random()
        if pick < 0.3:  # many ties, both signs of zero
            values = [rng.choice([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-300]) for _ in range(n)]
        elif pick < 0.6:
            values = [rng.gauss(0.0, 0.01) for _ in range(n)]
        else:
            values = [rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-20, 5) for _ in range(n)]
        window = _RollingRobust(n)
        for v in values:
            window.push(v)
        for center in (window.median(), rng.choice(values), 0.0, max(values) + 1.0, min(values) - 1.0):
            got = window.mad(center)
            assert got == _mad_by_sorting(values, center) and repr(got) == repr(_mad_by_sorting(values, center))


def test_rolling_mad_when_empty_then_value_error() -> None:
    with pytest.raises(ValueError):
        _RollingRobust(3).mad(0.0)


# ---------------------------------------------------------------------------
# Inference windows and signals
# ---------------------------------------------------------------------------


class _Model(Predictor):
    """A predictor with no checkpoint: what ``windows_from_vectors`` reads (window, feature set, names)."""

    def __init__(self, window: int, names: tuple[str, ...]) -> None:
        self._window = window
        self._names = names

    @property
    def window(self) -> int:
        return self._window

    @property
    def feature_set_version(self) -> str:
        return "fs-test"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._names


def _vectors(n: int, names: tuple[str, ...], *, symbol: str = "BTC/USDT", start: int = 0) -> list[FeatureVector]:
    step = Timeframe.H1.nanos
    t0 = 1_700_000_000_000_000_000 // step * step
    out = []
    for i in range(start, start + n):
        out.append(
            FeatureVector.new(
                ts_init=t0 + (i + 1) * step,
                ts_event=t0 + (i + 1) * step,
                venue="binance",
                symbol=symbol,
                timeframe=Timeframe.H1,
                bar_open_time=t0 + i * step,
                feature_set_version="fs-test",
                data_version="dv",
                lineage_id=f"l{i}",
                names=names,
                values=tuple(float(i * 10 + k) / 7.0 for k in range(len(names))),
            )
        )
    return out


def _windows(model: _Model, sequences: list[list[FeatureVector]]) -> np.ndarray:
    return model.windows_from_vectors(sequences)


def _walked(model: _Model, sequences: list[list[FeatureVector]]) -> np.ndarray:
    return model._windows_walked(sequences)


def test_windows_when_overlapping_sequences_then_same_array_as_the_per_vector_walk() -> None:
    names = ("a", "b", "c")
    model = _Model(4, names)
    vs = _vectors(12, names) + _vectors(6, names, symbol="ETH/USDT")
    seqs = [vs[i : i + 4] for i in range(9)] + [vs[12:16], vs[14:18], vs[3:7]]
    got = _windows(model, seqs)
    assert got.shape == (12, 4, 3)
    assert np.array_equal(got, _walked(model, seqs))
    assert np.array_equal(got[0], np.asarray([v.values for v in vs[0:4]]))
    assert _windows(model, []).shape == (0, 4, 3)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("gap", "sequence 1: vectors are not consecutive"),
        ("two symbols", "sequence 1: vectors are not consecutive"),
        ("short", "sequence 1: 3 vectors, the model needs 4"),
        ("feature set", "sequence 1: feature set 'other'"),
        ("names", "sequence 1: feature names differ"),
    ],
)
def test_windows_when_a_sequence_is_bad_then_the_walk_names_it(case: str, message: str) -> None:
    names = ("a", "b", "c")
    model = _Model(4, names)
    vs = _vectors(10, names)
    bad = {
        "gap": [vs[0], vs[1], vs[3], vs[4]],
        "two symbols": [*vs[5:8], _vectors(1, names, symbol="ETH/USDT", start=8)[0]],
        "short": vs[5:8],
        "feature set": [*vs[5:8], dataclasses.replace(vs[8], feature_set_version="other")],
        "names": [*vs[5:8], dataclasses.replace(vs[8], names=("a", "b", "x"))],
    }[case]
    with pytest.raises(FeatureMismatch, match=message):
        _windows(model, [vs[0:4], bad, vs[6:10]])


def test_signals_when_stamped_per_row_then_equal_to_signal_new_with_that_stamp() -> None:
    names = ("a",)
    vs = _vectors(3, names)
    probs = np.asarray([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    prediction = Prediction(
        p_down=probs[:, 0].copy(),
        p_flat=probs[:, 1].copy(),
        p_up=probs[:, 2].copy(),
        expected_return=np.asarray([0.01, -0.02, 0.0]),
        score=probs[:, 2] - probs[:, 0],
    )
    stamps = [v.ts_event + 5 for v in vs]
    got = to_signals(prediction, vs, model_id="m", model_version="v", horizon="1x1h", shadow=False, ts_init=stamps)
    for i, (sig, v) in enumerate(zip(got, vs, strict=True)):
        expected = Signal.new(
            ts_init=stamps[i],
            ts_event=v.ts_event,
            correlation_id=v.correlation_id,
            causation_id=v.event_id,
            symbol=v.symbol,
            model_id="m",
            model_version="v",
            horizon="1x1h",
            p_up=float(prediction.p_up[i]),
            p_flat=float(prediction.p_flat[i]),
            p_down=float(prediction.p_down[i]),
            expected_return=float(prediction.expected_return[i]),
            score=float(prediction.score[i]),
            shadow=False,
            feature_event_id=v.event_id,
            lineage_id=v.lineage_id,
        )
        assert sig == expected and orjson.dumps(sig) == orjson.dumps(expected)
    one = to_signals(prediction, vs, model_id="m", model_version="v", horizon="1x1h", shadow=True, ts_init=7)
    assert [s.ts_init for s in one] == [7, 7, 7] and all(s.shadow for s in one)
    with pytest.raises(ValueError, match="ts_init values"):
        to_signals(prediction, vs, model_id="m", model_version="v", horizon="1x1h", shadow=False, ts_init=[1])


@dataclass(frozen=True, kw_only=True)
class _UnslottedRecord(Record):
    KIND = "unslotted_test"
    IDENTITY = ("name",)

    name: str


def test_record_new_when_class_not_slotted_then_built_by_its_init() -> None:
    rec = _UnslottedRecord.new(ts_init=1, ts_event=1, name="x")
    assert type(rec) is _UnslottedRecord
    assert rec.event_id == event_id_for("unslotted_test", "x") and rec.correlation_id == rec.event_id


def test_positional_constructor_when_order_is_not_the_class_fields_then_refused() -> None:
    names = tuple(f.name for f in dataclasses.fields(Signal))
    make = positional_constructor(Signal, names)
    sig = Signal.new(
        ts_init=1,
        ts_event=1,
        symbol="BTC/USDT",
        model_id="m",
        model_version="v",
        horizon="1x1h",
        p_up=0.5,
        p_flat=0.25,
        p_down=0.25,
        expected_return=0.0,
        score=0.25,
        shadow=False,
        feature_event_id="f",
        lineage_id="l",
    )
    assert make(*(getattr(sig, n) for n in names)) == sig
    with pytest.raises(TypeError, match="fields are"):
        positional_constructor(Signal, (names[1], names[0], *names[2:]))
