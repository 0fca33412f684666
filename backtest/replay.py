"""Replay driver: recorded bars -> the live engines, in-process, on event time.

``replay(bars, config, model) -> ReplayResult`` is a pure function of (input bars,
:class:`ReplayConfig`, :class:`ReplayModel`): no I/O, no wall clock, no unseeded randomness,
so the same inputs give a byte-identical record stream, summarised by :func:`decision_hash`
(sha256 over ``KIND || 0x00 || 8-byte length || codec bytes`` per record).
:func:`backtest.runs.run_backtest` wraps it with Postgres input and output.

Order, per bar close time: every bar through the feature pipeline and
:meth:`TradingCore.on_bar <agents.trading.core.TradingCore.on_bar>`, then each feature vector
of that time through model inference (exactly :class:`models.serving.InferenceStep`) and
:meth:`TradingCore.on_signal`: a bar reaches the trading agent before the signal derived from
it. The trading composition is the live agent's class, never re-implemented; bars before
``config.trade_from_ns`` are warm-up, never traded. Inference runs in large batches up front,
bit-identical to the streaming worker. A segment with ``polarity = -1`` swaps up and down and
marks its ``model_version`` ``+inv``.

Design: docs/replay.md#replay-driver
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.clock import EventClock
from agents.control.signing import Keyring
from agents.features.pipeline import FeaturePipeline
from agents.features.spec import DEFAULT_SPEC, FeatureSpec
from agents.trading.core import TradingConfig, TradingCore
from models.inference import Prediction, Predictor, to_signals
from models.serving import InferenceStep
from topics.records import Bar, FeatureVector, Fill, PortfolioSnapshot, Signal, Timeframe
from topics.schema import Record, codec_for, keyword_constructor
from topics.streamhash import stream_hash
from topics.units import NS_PER_DAY

__all__ = [
    "INVERTED_SUFFIX",
    "EquityPoint",
    "ModelSegment",
    "ReplayConfig",
    "ReplayModel",
    "ReplayResult",
    "decision_hash",
    "order_bars",
    "replay",
]

#: Suffix of ``model_version`` on signals of an inverted (polarity -1) segment.
INVERTED_SUFFIX = "+inv"
#: Rows per ``predict_batch`` call: bounds the window tensor ([rows, W, F] float64).
_INFERENCE_BLOCK = 4096
_FOREVER = 2**63 - 1


# ---------------------------------------------------------------------------
# Configuration and model
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    """Everything besides bars and model that decides a replay's output."""

    trading: TradingConfig = field(default_factory=TradingConfig)
    spec: FeatureSpec = DEFAULT_SPEC
    #: Bars with ``open_time`` before this are warm-up only (features, windows); None = trade every bar.
    trade_from_ns: int | None = None

    @property
    def timeframe(self) -> Timeframe:
        return self.trading.timeframes[0]


@dataclass(frozen=True, slots=True, eq=False)
class ModelSegment:
    """One model serving one symbol for decision times (bar open times) in ``[start_ns, end_ns)``."""

    symbol: str
    start_ns: int
    end_ns: int
    predictor: Predictor
    model_id: str
    model_version: str
    horizon: str
    polarity: int = 1
    #: Free-form name for lineage (``checkpoint``, ``wf2/4`` ...).
    label: str = ""

    def __post_init__(self) -> None:
        if self.polarity not in (1, -1):
            raise ValueError(f"polarity must be +1 or -1, got {self.polarity!r}")
        if not self.start_ns < self.end_ns:
            raise ValueError(f"segment {self.label or self.model_id}: start {self.start_ns} >= end {self.end_ns}")

    @property
    def signal_version(self) -> str:
        return self.model_version if self.polarity == 1 else self.model_version + INVERTED_SUFFIX


@dataclass(frozen=True, slots=True, eq=False)
class ReplayModel:
    """Which model scores which symbol when; segments of a symbol must not overlap.

    A fixed checkpoint is one segment per symbol covering all time; walk-forward
    training gives one segment per test window.
    """

    segments: tuple[ModelSegment, ...]
    _by_symbol: dict[str, tuple[list[int], list[ModelSegment]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by: dict[str, list[ModelSegment]] = {}
        for seg in self.segments:
            by.setdefault(seg.symbol, []).append(seg)
        index: dict[str, tuple[list[int], list[ModelSegment]]] = {}
        for sym, segs in by.items():
            segs.sort(key=lambda s: s.start_ns)
            for a, b in itertools.pairwise(segs):
                if b.start_ns < a.end_ns:
                    raise ValueError(f"{sym}: model segments {a.label!r} and {b.label!r} overlap")
            index[sym] = ([s.start_ns for s in segs], segs)
        object.__setattr__(self, "_by_symbol", index)

    @classmethod
    def fixed(cls, predictors: dict[str, tuple[Predictor, str, str, str]]) -> ReplayModel:
        """One checkpoint per symbol for all time: ``{symbol: (predictor, model_id, version, horizon)}``."""
        return cls(
            tuple(
                ModelSegment(
                    symbol=s,
                    start_ns=0,
                    end_ns=_FOREVER,
                    predictor=p,
                    model_id=m,
                    model_version=v,
                    horizon=h,
                    label="checkpoint",
                )
                for s, (p, m, v, h) in sorted(predictors.items())
            )
        )

    def segment_for(self, symbol: str, open_time: int) -> ModelSegment | None:
        entry = self._by_symbol.get(symbol)
        if entry is None:
            return None
        starts, segs = entry
        i = bisect.bisect_right(starts, open_time) - 1
        if i < 0 or open_time >= segs[i].end_ns:
            return None
        return segs[i]


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """Account equity and peak drawdown after every bar of one close time."""

    ts_ns: int
    equity: float
    drawdown: float


_make_point = keyword_constructor(EquityPoint)


@dataclass(frozen=True, slots=True, eq=False)
class ReplayResult:
    records: tuple[Record, ...]
    hash: str
    fills: tuple[Fill, ...]
    equity: tuple[EquityPoint, ...]
    n_bars: int
    n_traded_bars: int
    signals: tuple[Signal, ...]
    #: Every input bar's event id (lineage of protective exits, which a bar causes).
    bar_event_ids: frozenset[str]
    #: UTC day numbers (close time // 1 day) with a traded bar, per symbol.
    traded_days: Mapping[str, frozenset[int]]


# ---------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------


def order_bars(bars: Iterable[Bar]) -> list[Bar]:
    """Closed bars in replay order: (open_time, symbol, venue); per key the highest revision.

    The same rule as the ``bars`` projection (highest revision wins), so a
    replay from Postgres and one from raw topic records see the same bars.
    """
    best: dict[tuple[str, str, str, int], Bar] = {}
    for bar in bars:
        if not bar.is_closed:
            continue
        key = (bar.venue, bar.symbol, bar.timeframe.value, bar.open_time)
        seen = best.get(key)
        if seen is None or bar.revision > seen.revision:
            best[key] = bar
    return sorted(best.values(), key=lambda b: (b.open_time, b.symbol, b.venue, b.timeframe.value))


def decision_hash(records: Iterable[Record]) -> str:
    """sha256 over the framed, codec-encoded records (module docstring)."""
    encoders: dict[type[Record], Callable[[Record], bytes]] = {}

    def frames() -> Iterator[tuple[str, bytes]]:
        for rec in records:
            encode = encoders.get(type(rec))
            if encode is None:
                encode = encoders[type(rec)] = codec_for(type(rec)).encode
            yield rec.KIND, encode(rec)

    return stream_hash(frames())


def _flip(p: Prediction) -> Prediction:
    return Prediction(p_down=p.p_up, p_flat=p.p_flat, p_up=p.p_down, expected_return=-p.expected_return, score=-p.score)


def _infer(vectors: Sequence[FeatureVector | None], model: ReplayModel, trade_from: int) -> list[list[Signal]]:
    """Signals per position of ``vectors`` (None = no vector for that bar), batched per segment."""
    out: list[list[Signal]] = [[] for _ in vectors]
    # the worker's window buffer, sized to the longest model window (the default 512 only costs copies here)
    step = InferenceStep(max_window=max((s.predictor.window for s in model.segments), default=1))
    work: dict[int, tuple[ModelSegment, list[int], list[list[FeatureVector]]]] = {}
    # per segment: its predictor's feature set and window (properties read once), and its work slot
    served: dict[int, tuple[str, int, list[int], list[list[FeatureVector]]]] = {}
    push, window_of, segment_for = step.push, step.window_of, model.segment_for
    for i, fv in enumerate(vectors):
        if fv is None:
            continue
        buf = push(fv)
        if fv.bar_open_time < trade_from:
            continue
        seg = segment_for(fv.symbol, fv.bar_open_time)
        if seg is None:
            continue
        entry = served.get(id(seg))
        if entry is None:
            slot = work[id(seg)] = (seg, [], [])
            entry = served[id(seg)] = (seg.predictor.feature_set_version, seg.predictor.window, slot[1], slot[2])
        fsv, width, positions, windows = entry
        if fsv != fv.feature_set_version:
            continue
        window = window_of(buf, fv, width)
        if window is None:
            continue
        positions.append(i)
        windows.append(window)
    for seg, positions, windows in work.values():
        for start in range(0, len(positions), _INFERENCE_BLOCK):
            rows = positions[start : start + _INFERENCE_BLOCK]
            arr = seg.predictor.windows_from_vectors(windows[start : start + _INFERENCE_BLOCK])
            prediction = seg.predictor.predict_batch(np.ascontiguousarray(arr))
            if seg.polarity == -1:
                prediction = _flip(prediction)
            newest = [w[-1] for w in windows[start : start + _INFERENCE_BLOCK]]
            sigs = to_signals(
                prediction,
                newest,
                model_id=seg.model_id,
                model_version=seg.signal_version,
                horizon=seg.horizon,
                shadow=False,
                ts_init=[fv.ts_event for fv in newest],
            )
            for pos, sig in zip(rows, sigs, strict=True):
                out[pos].append(sig)
    return out


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic collector off for a replay, back on (if it was) after it.

    A replay allocates millions of acyclic objects (records, engine state) and keeps most of them: each
    generation-2 pass rescanned the growing heap, ~20 % of a replay's time (measured, 10,000 bars with
    the MLP). Reference counting still frees everything else; cycles made meanwhile wait for the next
    collection after the replay. Results do not depend on it.

    Everything the replay kept is then in the youngest generation, and the first collection after it
    would traverse it all (~2 % of a replay): it is moved to the oldest generation as it is (``freeze``
    then ``unfreeze``: two list splices), where full collections see it as they see any old object.
    Skipped when the process has frozen objects of its own (``unfreeze`` would release them too).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def replay(bars: Iterable[Bar], config: ReplayConfig, model: ReplayModel) -> ReplayResult:
    """Run ``bars`` through features -> inference -> TradingCore (module docstring)."""
    with _cyclic_gc_paused():
        return _replay(bars, config, model)


def _replay(bars: Iterable[Bar], config: ReplayConfig, model: ReplayModel) -> ReplayResult:
    ordered = order_bars(bars)
    clock = EventClock()
    pipeline = FeaturePipeline(clock, config.spec)
    feature_out = []
    advance, on_bar = clock.advance, pipeline.on_bar
    for bar in ordered:
        advance(bar.ts_event)
        feature_out.append(on_bar(bar))
    trade_from = -1 if config.trade_from_ns is None else config.trade_from_ns
    signals_at = _infer([o.features for o in feature_out], model, trade_from)

    core = TradingCore(config.trading, Keyring({}))
    records: list[Record] = []
    fills: list[Fill] = []
    equity: dict[int, PortfolioSnapshot] = {}
    all_signals: list[Signal] = []
    traded = 0
    days: dict[str, set[int]] = {}
    i = 0
    n = len(ordered)
    while i < n:
        j = i
        while j < n and ordered[j].open_time == ordered[i].open_time:
            j += 1
        for k in range(i, j):
            bar, fo = ordered[k], feature_out[k]
            records.extend(fo.quality)
            if fo.features is not None:
                records.append(fo.features)
            if bar.open_time < trade_from:
                continue
            step = core.on_bar(bar)
            if step.bar_skipped is None:
                traded += 1
                symbol_days = days.get(bar.symbol)
                if symbol_days is None:
                    symbol_days = days[bar.symbol] = set()
                symbol_days.add(bar.ts_event // NS_PER_DAY)
            _collect(step.records, records, fills, equity)
        for k in range(i, j):
            for sig in signals_at[k]:
                records.append(sig)
                all_signals.append(sig)
                out = core.on_signal(sig).records
                if out:
                    _collect(out, records, fills, equity)
        i = j
    return ReplayResult(
        records=tuple(records),
        hash=decision_hash(records),
        fills=tuple(fills),
        equity=tuple(
            _make_point(ts_ns=t, equity=equity[t].equity, drawdown=equity[t].drawdown) for t in sorted(equity)
        ),
        n_bars=n,
        n_traded_bars=traded,
        signals=tuple(all_signals),
        bar_event_ids=frozenset(b.event_id for b in ordered),
        traded_days={s: frozenset(d) for s, d in sorted(days.items())},
    )


def _collect(
    out: Sequence[Record], records: list[Record], fills: list[Fill], equity: dict[int, PortfolioSnapshot]
) -> None:
    records.extend(out)
    for rec in out:
        if isinstance(rec, Fill):
            fills.append(rec)
        elif isinstance(rec, PortfolioSnapshot):
            # the last snapshot of a close time is the account after all its bars
            equity[rec.as_of_ns] = rec
