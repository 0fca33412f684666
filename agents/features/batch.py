"""Batch reference: the feature set recomputed from scratch for every bar.

For each bar ``t`` this takes the window of the last ``spec.window`` bars and
evaluates the formulas of :mod:`agents.features.engine`'s docstring on that
window alone, with numpy, vectorised across bars (each row of a
``sliding_window_view`` is one bar's window). It shares no code with the
incremental engine, only the contract in :mod:`agents.features.spec`, so the
tests can hold the engine to it; researchers use it to build training sets in
one call. It is written to be obviously correct (textbook formulas, the RSI
from separate gain and loss averages); its speed, numpy over all bars at
once, is incidental.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from agents.features.spec import DEFAULT_SPEC, FeatureSpec, lineage_id_for
from topics.records import Bar, FeatureVector
from topics.units import NS_PER_DAY

__all__ = ["compute_batch", "feature_matrix"]

Array = npt.NDArray[np.float64]


def _check_stream(bars: Sequence[Bar]) -> None:
    """One stream, closed bars, strictly increasing open times: what the formulas assume."""
    if not bars:
        return
    first = bars[0]
    for prev, bar in itertools.pairwise(bars):
        if bar.open_time <= prev.open_time:
            raise ValueError(f"bars must have strictly increasing open_time (at {bar.open_time})")
    for bar in bars:
        if (bar.venue, bar.symbol, bar.timeframe) != (first.venue, first.symbol, first.timeframe):
            raise ValueError("bars must belong to one (venue, symbol, timeframe) stream")
        if not bar.is_closed:
            raise ValueError(f"bar at {bar.open_time} is not closed")


def _seeded_average(x: Array, period: int, alpha: float) -> Array:
    """Textbook seeded exponential average of each row: SMA of the first ``period``, then recurse."""
    avg: Array = x[:, :period].mean(axis=1)
    for k in range(period, x.shape[1]):
        avg = (1.0 - alpha) * avg + alpha * x[:, k]
    return avg


def _zscore_of_last(w: Array) -> Array:
    """(last - mean) / std of each row; 0 where the row is flat.

    Taken on deviations from the last value (a z-score does not move with a
    shift): subtracting nearby prices is exact, so a quiet window of a
    high-priced market is not swamped by rounding at the price level.
    """
    dev = w - w[:, -1:]
    std = dev.std(axis=1)
    flat = w.max(axis=1) == w.min(axis=1)
    out: Array = np.zeros(w.shape[0])
    np.divide(-dev.mean(axis=1), std, out=out, where=~flat)
    return out


def feature_matrix(bars: Sequence[Bar], spec: FeatureSpec = DEFAULT_SPEC) -> Array:
    """Feature values, one row per bar from ``bars[spec.window - 1]`` on, columns as ``spec.names``."""
    _check_stream(bars)
    w = spec.window
    if len(bars) < w:
        return np.zeros((0, len(spec.names)))
    # Row i of each window view holds bars i .. i + w - 1; its last column is the bar itself.
    close = sliding_window_view(np.array([b.close for b in bars]), w)
    high = sliding_window_view(np.array([b.high for b in bars]), w)
    low = sliding_window_view(np.array([b.low for b in bars]), w)
    volume = sliding_window_view(np.array([b.volume for b in bars]), w)
    open_time = np.array([b.open_time for b in bars], dtype=np.int64)[w - 1 :]
    c, h, lo, v = close[:, -1], high[:, -1], low[:, -1], volume[:, -1]
    log_close = np.log(close)
    returns = np.diff(log_close, axis=1)
    changes = np.diff(close, axis=1)
    prev_close = close[:, :-1]
    true_range = np.maximum(high[:, 1:], prev_close) - np.minimum(low[:, 1:], prev_close)

    cols: list[Array] = []
    rets = {h: log_close[:, -1] - log_close[:, -1 - h] for h in spec.return_horizons}
    vols = {n: returns[:, -n:].std(axis=1) for n in spec.vol_windows}
    cols += rets.values()
    cols += vols.values()
    cols += [_zscore_of_last(close[:, -n:]) for n in spec.zscore_windows]

    gain = _seeded_average(np.maximum(changes, 0.0), spec.rsi_period, 1.0 / spec.rsi_period)
    loss = _seeded_average(np.maximum(-changes, 0.0), spec.rsi_period, 1.0 / spec.rsi_period)
    rsi = np.full(len(c), 50.0)
    np.divide(100.0 * gain, gain + loss, out=rsi, where=gain + loss > 0.0)
    cols.append(rsi)
    cols.append(_seeded_average(true_range, spec.atr_period, 1.0 / spec.atr_period) / c)

    vol_window = volume[:, -spec.volume_window :]
    eps = spec.volume_epsilon
    cols.append(_zscore_of_last(vol_window))
    cols.append(np.log((v + eps) / (vol_window.mean(axis=1) + eps)))

    cols.append((h - lo) / c)
    clv = np.full(len(c), 0.5)
    np.divide(c - lo, h - lo, out=clv, where=h > lo)
    cols.append(clv)
    cols.append(rets[spec.momentum_window] / np.maximum(vols[spec.momentum_window], spec.vol_floor))

    day_angle = 2.0 * np.pi * (open_time % NS_PER_DAY) / NS_PER_DAY
    week_angle = 2.0 * np.pi * ((open_time // NS_PER_DAY + 3) % 7) / 7.0
    cols += [np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle)]

    cols.append(c / close[:, -spec.drawdown_window :].max(axis=1) - 1.0)
    fast = _seeded_average(close, spec.macd_fast, 2.0 / (spec.macd_fast + 1))
    slow = _seeded_average(close, spec.macd_slow, 2.0 / (spec.macd_slow + 1))
    cols.append((fast - slow) / c)
    return np.column_stack(cols)


def compute_batch(
    bars: Sequence[Bar], *, data_version: str, ts_init: int, spec: FeatureSpec = DEFAULT_SPEC
) -> list[FeatureVector]:
    """The feature vectors of one stream's bars (ascending), as the engine would publish them."""
    matrix = feature_matrix(bars, spec)
    w = spec.window
    names = spec.names
    version = spec.version
    out: list[FeatureVector] = []
    for i, row in enumerate(matrix):
        bar = bars[i + w - 1]
        out.append(
            FeatureVector.new(
                ts_init=ts_init,
                correlation_id=bar.correlation_id,
                causation_id=bar.event_id,
                ts_event=bar.ts_event,
                venue=bar.venue,
                symbol=bar.symbol,
                timeframe=bar.timeframe,
                bar_open_time=bar.open_time,
                feature_set_version=version,
                data_version=data_version,
                lineage_id=lineage_id_for(bars[i : i + w]),
                names=names,
                values=tuple(float(x) for x in row),
            )
        )
    return out
