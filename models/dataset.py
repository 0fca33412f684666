"""Supervised samples from a feature stream, and time-ordered splits.

Rows: one decision time ``t`` (a bar's open time, decided at its close); input the window of
the ``W`` consecutive feature vectors ending at ``t`` (no row across a missing bar); label
from the closes only, never the features: ``y_return = ln(close[t + h bars] / close[t])``
and ``y_class`` down / flat / up by ``flat_band``. Nothing after bar t's close enters the
input; the last ``h`` bars give no row. The dataset keeps one ``[T, F]`` matrix, not a copy
per window.

Splits: walk-forward folds train on everything before their validation block minus a
*purge* zone (rows whose label interval reaches the block; use ``purge =
dataset.horizon_ns``) and *embargo* zones after every earlier validation block;
:func:`holdout_split` gives train / validation / untouched test, purged at both boundaries.
Standardisation is fitted on training rows only (:func:`fit_standardizer`).

Design: docs/model_internals.md#datasets-and-splits
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from runtime.errors import BadInput
from topics.records import Bar, FeatureVector, Timeframe
from topics.units import NS_PER_YEAR

__all__ = [
    "CLASS_DOWN",
    "CLASS_FLAT",
    "CLASS_UP",
    "DatasetError",
    "Split",
    "SplitError",
    "WindowDataset",
    "build_dataset",
    "closes_by_open_time",
    "fit_standardizer",
    "holdout_split",
    "label_classes",
    "return_scale",
    "walk_forward_splits",
]

CLASS_DOWN: Final = 0
CLASS_FLAT: Final = 1
CLASS_UP: Final = 2

#: A feature whose train-set std is below this is constant: it is centred but
#: not scaled (scaling by ~0 would turn rounding noise into huge inputs).
_MIN_STD: Final = 1e-12
_FORMAT: Final = "tradeflow-window-dataset/1"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class DatasetError(BadInput, ValueError):
    """Input data that cannot make a dataset (mixed streams, unordered
    vectors, non-finite values, no complete row). Not retriable."""


class SplitError(BadInput, ValueError):
    """A split request that leaves a training or validation set empty."""


def label_classes(log_returns: FloatArray, flat_band: float) -> IntArray:
    """down (< -band), flat (``|r| <= band``), up (> band)."""
    out = np.full(len(log_returns), CLASS_FLAT, dtype=np.int64)
    out[log_returns < -flat_band] = CLASS_DOWN
    out[log_returns > flat_band] = CLASS_UP
    return out


def closes_by_open_time(bars: Iterable[Bar]) -> dict[int, float]:
    """Close per bar open time from closed bars, the highest revision winning."""
    best: dict[int, tuple[int, float]] = {}
    for bar in bars:
        if not bar.is_closed:
            continue
        seen = best.get(bar.open_time)
        if seen is None or bar.revision > seen[0]:
            best[bar.open_time] = (bar.revision, bar.close)
    return {t: close for t, (_, close) in best.items()}


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class WindowDataset:
    """Rows of (window of feature vectors, label) for one symbol stream.

    ``features [T, F]`` and ``open_times [T]`` are the vectors in time order;
    row i's window is ``features[end_index[i] - W + 1 : end_index[i] + 1]``.
    """

    features: FloatArray
    open_times: IntArray
    end_index: IntArray
    y_class: IntArray
    y_return: FloatArray
    feature_names: tuple[str, ...]
    feature_set_version: str
    symbol: str
    timeframe: Timeframe
    window: int
    horizon_bars: int
    flat_band: float

    @property
    def n_rows(self) -> int:
        return len(self.end_index)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def timestamps(self) -> IntArray:
        """Decision time of each row: the open time of its newest bar."""
        return self.open_times[self.end_index]

    @property
    def horizon_ns(self) -> int:
        """Length of a label's horizon; the purge a split needs."""
        return self.horizon_bars * self.timeframe.nanos

    @property
    def periods_per_year(self) -> float:
        """Non-overlapping label periods per year (for annualising Sharpe)."""
        return NS_PER_YEAR / self.horizon_ns

    def windows(self, rows: IntArray) -> FloatArray:
        """Raw windows ``[len(rows), W, F]`` (float64) of the given rows."""
        offsets = np.arange(-self.window + 1, 1, dtype=np.int64)
        out: FloatArray = self.features[self.end_index[rows][:, None] + offsets[None, :]]
        return out

    def vector_rows(self, rows: IntArray) -> IntArray:
        """Indices of every feature vector that appears in the rows' windows."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.arange(-self.window + 1, 1, dtype=np.int64)
        return np.unique((self.end_index[rows][:, None] + offsets[None, :]).ravel())

    # -- persistence (npz, no pickle) ----------------------------------------
    def save(self, path: Path) -> None:
        meta = {
            "format": _FORMAT,
            "feature_names": list(self.feature_names),
            "feature_set_version": self.feature_set_version,
            "symbol": self.symbol,
            "timeframe": self.timeframe.value,
            "window": self.window,
            "horizon_bars": self.horizon_bars,
            "flat_band": self.flat_band,
        }
        with open(path, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(meta, sort_keys=True)),
                features=self.features,
                open_times=self.open_times,
                end_index=self.end_index,
                y_class=self.y_class,
                y_return=self.y_return,
            )

    @classmethod
    def load(cls, path: Path) -> WindowDataset:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise DatasetError(f"{path}: not a {_FORMAT} file (format={meta.get('format')!r})")
            return cls(
                features=data["features"].astype(np.float64),
                open_times=data["open_times"].astype(np.int64),
                end_index=data["end_index"].astype(np.int64),
                y_class=data["y_class"].astype(np.int64),
                y_return=data["y_return"].astype(np.float64),
                feature_names=tuple(meta["feature_names"]),
                feature_set_version=meta["feature_set_version"],
                symbol=meta["symbol"],
                timeframe=Timeframe(meta["timeframe"]),
                window=int(meta["window"]),
                horizon_bars=int(meta["horizon_bars"]),
                flat_band=float(meta["flat_band"]),
            )


def build_dataset(
    vectors: Sequence[FeatureVector],
    closes: Mapping[int, float],
    *,
    window: int,
    horizon_bars: int,
    flat_band: float,
) -> WindowDataset:
    """Rows from one stream's time-ordered vectors and its closes by open time.

    Raises :class:`DatasetError` on mixed streams (symbol, timeframe, feature
    set or names differ), vectors not strictly increasing in time, non-finite
    features, a non-positive or non-finite close, or when no row is complete.
    """
    if window < 1 or horizon_bars < 1:
        raise DatasetError("window and horizon_bars must be >= 1")
    if not vectors:
        raise DatasetError("no feature vectors")
    first = vectors[0]
    for v in vectors:
        if (v.symbol, v.timeframe, v.feature_set_version, v.names) != (
            first.symbol,
            first.timeframe,
            first.feature_set_version,
            first.names,
        ):
            raise DatasetError(
                f"mixed streams: vector at {v.bar_open_time} is {v.symbol} {v.timeframe.value} "
                f"{v.feature_set_version}, the first is {first.symbol} {first.timeframe.value} "
                f"{first.feature_set_version} (or the feature names differ)"
            )
    open_times = np.fromiter((v.bar_open_time for v in vectors), dtype=np.int64, count=len(vectors))
    if len(open_times) > 1 and not bool(np.all(np.diff(open_times) > 0)):
        bad = int(np.flatnonzero(np.diff(open_times) <= 0)[0]) + 1
        raise DatasetError(f"vectors not strictly increasing in time at index {bad} ({open_times[bad]})")
    features = np.array([v.values for v in vectors], dtype=np.float64).reshape(len(vectors), len(first.names))
    if not bool(np.all(np.isfinite(features))):
        bad = int(np.flatnonzero(~np.all(np.isfinite(features), axis=1))[0])
        raise DatasetError(f"non-finite feature value in the vector at {open_times[bad]}")

    step = first.timeframe.nanos
    n = len(vectors)
    # A window ending at i is complete when its W vectors are consecutive bars.
    complete = np.zeros(n, dtype=bool)
    if n >= window:
        complete[window - 1 :] = open_times[window - 1 :] - open_times[: n - window + 1] == (window - 1) * step

    ends: list[int] = []
    returns: list[float] = []
    for i in np.flatnonzero(complete).tolist():
        t = int(open_times[i])
        c0 = closes.get(t)
        c1 = closes.get(t + horizon_bars * step)
        if c0 is None or c1 is None:
            continue
        for when, c in ((t, c0), (t + horizon_bars * step, c1)):
            if not (math.isfinite(c) and c > 0):
                raise DatasetError(f"close at {when} is {c!r}: must be finite and > 0")
        ends.append(i)
        returns.append(math.log(c1 / c0))
    if not ends:
        raise DatasetError(
            f"no complete row: {n} vectors, window {window}, horizon {horizon_bars} bars "
            "(too few consecutive vectors, or no closes at t and t + horizon)"
        )
    y_return = np.asarray(returns, dtype=np.float64)
    return WindowDataset(
        features=features,
        open_times=open_times,
        end_index=np.asarray(ends, dtype=np.int64),
        y_class=label_classes(y_return, flat_band),
        y_return=y_return,
        feature_names=first.names,
        feature_set_version=first.feature_set_version,
        symbol=first.symbol,
        timeframe=first.timeframe,
        window=window,
        horizon_bars=horizon_bars,
        flat_band=flat_band,
    )


def fit_standardizer(dataset: WindowDataset, train_rows: IntArray) -> tuple[FloatArray, FloatArray]:
    """Per-feature (mean, std) over the vectors the training windows contain.

    Only training rows are used, so validation/test data never shapes the
    inputs. A constant feature gets std 1 (see ``_MIN_STD``).
    """
    if len(train_rows) == 0:
        raise SplitError("no training rows to fit the standardiser on")
    covered = dataset.features[dataset.vector_rows(train_rows)]
    mean = covered.mean(axis=0)
    std = covered.std(axis=0)
    return mean, np.where(std < _MIN_STD, 1.0, std)


def return_scale(dataset: WindowDataset, train_rows: IntArray) -> float:
    """Std of the training label returns (floored): the return head's unit."""
    if len(train_rows) == 0:
        raise SplitError("no training rows")
    return max(float(np.std(dataset.y_return[train_rows])), 1e-8)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Split:
    """Row indices (sorted) of one train / validation (/ test) layout.

    ``validation`` drives early stopping and is what walk-forward folds report;
    ``test`` (possibly empty) is never looked at during training.
    """

    name: str
    train: IntArray
    validation: IntArray
    test: IntArray


def _check_timestamps(timestamps: IntArray) -> IntArray:
    ts = np.asarray(timestamps, dtype=np.int64)
    if ts.ndim != 1:
        raise SplitError("timestamps must be one-dimensional")
    if len(ts) > 1 and not bool(np.all(np.diff(ts) >= 0)):
        raise SplitError("timestamps must be in time order")
    return ts


def _snap(ts: IntArray, cut: int) -> int:
    """Move a row boundary back to the first row of its timestamp, so rows of
    one instant never straddle a train/validation boundary."""
    if cut >= len(ts):
        return len(ts)
    return int(np.searchsorted(ts, ts[cut], side="left"))


def walk_forward_splits(timestamps: IntArray, n_folds: int, purge: int, embargo: int) -> list[Split]:
    """Expanding-window walk-forward folds with purge and embargo (module docstring).

    ``purge`` and ``embargo`` are in timestamp units (ns). Every fold's
    training rows are strictly before its validation block.
    """
    ts = _check_timestamps(timestamps)
    if n_folds < 1:
        raise SplitError(f"n_folds must be >= 1, got {n_folds}")
    if purge < 0 or embargo < 0:
        raise SplitError("purge and embargo must be >= 0")
    n = len(ts)
    raw = [round(i * n / (n_folds + 1)) for i in range(n_folds + 2)]
    bounds = [_snap(ts, b) for b in raw]
    splits: list[Split] = []
    rows = np.arange(n, dtype=np.int64)
    for k in range(1, n_folds + 1):
        start, stop = bounds[k], bounds[k + 1]
        if stop <= start:
            raise SplitError(f"fold {k}: empty validation block ({n} rows for {n_folds} folds)")
        validation = rows[start:stop]
        first_val = int(ts[start])
        keep = ts[:start] + purge <= first_val
        for j in range(1, k):
            last_val_j = int(ts[bounds[j + 1] - 1])
            keep &= ~((ts[:start] > last_val_j) & (ts[:start] <= last_val_j + embargo))
        train = rows[:start][keep]
        if len(train) == 0:
            raise SplitError(f"fold {k}: no training rows left after purge {purge} / embargo {embargo}")
        splits.append(Split(f"wf{k}/{n_folds}", train, validation, np.zeros(0, dtype=np.int64)))
    return splits


def holdout_split(timestamps: IntArray, *, validation_fraction: float, test_fraction: float = 0.0, purge: int) -> Split:
    """Train | purge | validation | purge | test, by time.

    The last ``test_fraction`` of rows is the untouched test (holdout) block,
    the ``validation_fraction`` before it the early-stopping block. Rows whose
    label reaches the next block are purged from the block before it.
    """
    ts = _check_timestamps(timestamps)
    if not 0.0 < validation_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise SplitError("fractions must be in (0, 1) for validation and [0, 1) for test")
    if validation_fraction + test_fraction >= 1.0:
        raise SplitError("validation_fraction + test_fraction must leave training rows")
    if purge < 0:
        raise SplitError("purge must be >= 0")
    n = len(ts)
    rows = np.arange(n, dtype=np.int64)
    test_start = _snap(ts, n - round(n * test_fraction))
    val_start = _snap(ts, test_start - round(n * validation_fraction))
    test = rows[test_start:]
    validation = rows[val_start:test_start]
    if len(test):
        validation = validation[ts[val_start:test_start] + purge <= ts[test_start]]
    if len(validation) == 0:
        raise SplitError(f"empty validation block ({n} rows)")
    train = rows[:val_start][ts[:val_start] + purge <= ts[val_start]]
    if len(train) == 0:
        raise SplitError(f"no training rows left after purge {purge}")
    return Split("holdout", train, validation, test)
