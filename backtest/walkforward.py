"""Walk-forward model windows trained in-process (CPU torch, seeded) for a replay.

Per symbol, on the replay's own feature vectors with the bars' closes as labels: the rows
are cut by :func:`models.dataset.walk_forward_splits` into ``n_windows + 1`` time blocks
(purged by the label horizon); window k trains on everything before block k (last 20 % for
early stopping) with :func:`models.training.train` on ``cpu``, so the replay is
bit-reproducible; its polarity (``normal``, ``auto_train_ic``, ``auto_train_pnl``) is chosen
on its training rows only; its model serves block k up to block k+1 (the last one to the end
of the data). Bars before the first test block are never traded. Every window's lineage
(spans, row counts, checkpoint sha256, polarity and its statistic) goes to the run record.

Design: docs/replay.md#walk-forward-windows
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.features.spec import FeatureSpec
from backtest.replay import ModelSegment, ReplayModel, order_bars
from models.checkpoint import LoadedCheckpoint, checkpoint_bytes, sha256_hex
from models.config import ModelConfig
from models.dataset import Split, WindowDataset, build_dataset, holdout_split, walk_forward_splits
from models.inference import Predictor, predict_windows
from models.metrics import non_overlapping_rows, positions_from_scores, spearman_ic, strategy_pnl
from models.training import train
from topics.records import Bar, FeatureVector

__all__ = [
    "PolarityMode",
    "WalkForwardSpec",
    "WindowLineage",
    "choose_polarity",
    "train_walk_forward",
    "window_splits",
]

_FOREVER = 2**63 - 1


class PolarityMode(enum.StrEnum):
    NORMAL = "normal"
    AUTO_TRAIN_IC = "auto_train_ic"
    AUTO_TRAIN_PNL = "auto_train_pnl"


@dataclass(frozen=True, slots=True, kw_only=True)
class WalkForwardSpec:
    n_windows: int
    model: ModelConfig
    polarity: PolarityMode = PolarityMode.NORMAL
    #: Share of each window's training rows used for early stopping (the newest ones).
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.n_windows < 1:
            raise ValueError(f"walk-forward needs at least 1 window, got {self.n_windows}")
        if self.model.device != "cpu":
            raise ValueError("walk-forward training in a replay runs on cpu (bit-reproducible weights)")


@dataclass(frozen=True, slots=True)
class WindowLineage:
    symbol: str
    label: str
    model_id: str
    model_version: str
    checkpoint_sha256: str
    train_rows: int
    validation_rows: int
    test_rows: int
    train_start_ns: int
    train_end_ns: int
    serve_start_ns: int
    serve_end_ns: int | None
    polarity: int
    polarity_mode: str
    polarity_statistic: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "label": self.label,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "test_rows": self.test_rows,
            "train_start_ns": self.train_start_ns,
            "train_end_ns": self.train_end_ns,
            "serve_start_ns": self.serve_start_ns,
            "serve_end_ns": self.serve_end_ns,
            "polarity": self.polarity,
            "polarity_mode": self.polarity_mode,
            "polarity_statistic": self.polarity_statistic,
        }


def feature_vectors(bars: Sequence[Bar], spec: FeatureSpec) -> dict[str, list[FeatureVector]]:
    """The replay's feature pass (same pipeline, same clock), vectors grouped by symbol."""
    clock = EventClock()
    pipeline = FeaturePipeline(clock, spec)
    out: dict[str, list[FeatureVector]] = {}
    for bar in order_bars(bars):
        clock.advance(bar.ts_event)
        fv = pipeline.on_bar(bar).features
        if fv is not None:
            out.setdefault(fv.symbol, []).append(fv)
    return out


def choose_polarity(
    mode: PolarityMode,
    score: np.ndarray[Any, np.dtype[np.float64]],
    ds: WindowDataset,
    rows: np.ndarray[Any, np.dtype[np.int64]],
    config: ModelConfig,
) -> tuple[int, float | None]:
    """(polarity, statistic) on training rows; see the module docstring."""
    if mode is PolarityMode.NORMAL:
        return 1, None
    if mode is PolarityMode.AUTO_TRAIN_IC:
        ic = spearman_ic(score, ds.y_return[rows])
        return (-1 if ic is not None and ic < 0 else 1), ic
    keep = non_overlapping_rows(ds.timestamps[rows], ds.horizon_ns)
    report = strategy_pnl(
        positions_from_scores(score[keep], config.signal_threshold),
        ds.y_return[rows][keep],
        cost_bps=config.cost_bps,
        periods_per_year=ds.periods_per_year,
    )
    return (-1 if report.total_return < 0 else 1), report.total_return


def _inner_split(ds: WindowDataset, fold: Split, fraction: float) -> Split:
    inner = holdout_split(ds.timestamps[fold.train], validation_fraction=fraction, purge=ds.horizon_ns)
    return Split(fold.name, fold.train[inner.train], fold.train[inner.validation], np.zeros(0, dtype=np.int64))


def window_splits(ds: WindowDataset, n_windows: int, validation_fraction: float = 0.2) -> list[Split]:
    """The training splits of the walk-forward windows, in time order: window k trains on
    everything before test block k, its newest ``validation_fraction`` for early stopping.
    What :func:`train_walk_forward` trains per symbol (and the GPU check times)."""
    folds = walk_forward_splits(ds.timestamps, n_windows, purge=ds.horizon_ns, embargo=0)
    return [_inner_split(ds, fold, validation_fraction) for fold in folds]


def train_walk_forward(
    bars: Sequence[Bar],
    closes: Mapping[str, Mapping[int, float]],
    spec: WalkForwardSpec,
    feature_spec: FeatureSpec,
    horizon: str,
) -> tuple[ReplayModel, tuple[WindowLineage, ...]]:
    """Train every symbol's windows; raises ``ValueError`` (clear message) when data is too short."""
    vectors = feature_vectors(bars, feature_spec)
    cfg = spec.model
    segments: list[ModelSegment] = []
    lineage: list[WindowLineage] = []
    for symbol in sorted(closes):
        vecs = vectors.get(symbol, [])
        if not vecs:
            raise ValueError(f"walk-forward: no feature vectors for {symbol} (fewer bars than the feature window)")
        ds = build_dataset(
            vecs, closes[symbol], window=cfg.window, horizon_bars=cfg.horizon_bars, flat_band=cfg.flat_band
        )
        folds = walk_forward_splits(ds.timestamps, spec.n_windows, purge=ds.horizon_ns, embargo=0)
        starts = [int(ds.timestamps[f.validation[0]]) for f in folds]
        splits = window_splits(ds, spec.n_windows, spec.validation_fraction)
        for k, (fold, split) in enumerate(zip(folds, splits, strict=True)):
            result = train(cfg, ds, split)
            meta = result.checkpoint_meta()
            sha = sha256_hex(checkpoint_bytes(result.model, meta))
            predictor = Predictor(LoadedCheckpoint(model=result.model, meta=meta, sha256=sha))
            score = predict_windows(result.model, ds.windows(fold.train)).score
            polarity, stat = choose_polarity(spec.polarity, score, ds, fold.train, cfg)
            end = starts[k + 1] if k + 1 < len(starts) else _FOREVER
            model_id = f"wf-{cfg.family}-{symbol.replace('/', '').replace(':', '-').lower()}"
            version = sha[:12]
            label = f"wf{k + 1}/{spec.n_windows}"
            segments.append(
                ModelSegment(
                    symbol=symbol,
                    start_ns=starts[k],
                    end_ns=end,
                    predictor=predictor,
                    model_id=model_id,
                    model_version=version,
                    horizon=horizon,
                    polarity=polarity,
                    label=label,
                )
            )
            train_ts = ds.timestamps[fold.train]
            lineage.append(
                WindowLineage(
                    symbol=symbol,
                    label=label,
                    model_id=model_id,
                    model_version=version,
                    checkpoint_sha256=sha,
                    train_rows=len(split.train),
                    validation_rows=len(split.validation),
                    test_rows=len(fold.validation),
                    train_start_ns=int(train_ts.min()),
                    train_end_ns=int(train_ts.max()),
                    serve_start_ns=starts[k],
                    serve_end_ns=None if end == _FOREVER else end,
                    polarity=polarity,
                    polarity_mode=spec.polarity.value,
                    polarity_statistic=stat,
                )
            )
    return ReplayModel(tuple(segments)), tuple(lineage)
