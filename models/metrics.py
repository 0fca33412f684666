"""Evaluation metrics, computed from a model's predictions on held-out time.

Nothing here knows about torch or training: every function takes arrays of
predictions and realised outcomes, so the same code scores a net, the linear
baseline or a replayed signal stream, and each is checked on hand-computed
examples in the tests.

Metrics: ``log_loss``, ``accuracy``, ``balanced_accuracy`` (the headline skill measure:
chance is 1 / classes present), ``majority_rate``, ``ic`` (Spearman of expected vs realised
return). ``strategy_pnl`` trades ``sign(score)`` beyond a threshold on non-overlapping
periods (a horizon-h label never counts twice), pays ``(fee_bps + slippage_bps) / 1e4`` per
unit of position change, and reports compounded return, Sharpe annualised by periods per
year, trades, turnover, drawdown, exposure and buy-and-hold. An undefined value (constant
inputs, fewer than 2 periods, zero std) is left out, never 0.0.

Design: docs/model_internals.md#validation-metrics (every formula)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "LOG_LOSS_EPS",
    "StrategyReport",
    "accuracy",
    "balanced_accuracy",
    "evaluate_predictions",
    "log_loss",
    "majority_rate",
    "non_overlapping_rows",
    "positions_from_scores",
    "spearman_ic",
    "strategy_pnl",
]

LOG_LOSS_EPS = 1e-15

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def log_loss(probs: FloatArray, y: IntArray) -> float:
    """Mean negative log-likelihood of the true class (see module docstring)."""
    _check_rows(probs, y)
    picked = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(picked, LOG_LOSS_EPS))))


def accuracy(probs: FloatArray, y: IntArray) -> float:
    _check_rows(probs, y)
    return float(np.mean(np.argmax(probs, axis=1) == y))


def balanced_accuracy(probs: FloatArray, y: IntArray) -> float:
    """Mean per-class recall over the classes that occur in ``y``."""
    _check_rows(probs, y)
    pred = np.argmax(probs, axis=1)
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls))


def majority_rate(y: IntArray) -> float:
    if len(y) == 0:
        raise ValueError("no rows")
    return float(np.bincount(y).max() / len(y))


def _check_rows(probs: FloatArray, y: IntArray) -> None:
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs {probs.shape} and labels {y.shape} do not align")
    if len(y) == 0:
        raise ValueError("no rows")


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def _average_ranks(x: FloatArray) -> FloatArray:
    """Ranks 1..N, tied values sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    change = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(x)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)  # mean of ranks s+1 .. e
    return ranks


def spearman_ic(predicted: FloatArray, realised: FloatArray) -> float | None:
    """Spearman rank correlation; ``None`` when undefined (constant side, N < 2)."""
    if len(predicted) != len(realised):
        raise ValueError("predicted and realised do not align")
    if len(predicted) < 2:
        return None
    rp = _average_ranks(predicted)
    rr = _average_ranks(realised)
    rp -= rp.mean()
    rr -= rr.mean()
    denom = math.sqrt(float(rp @ rp) * float(rr @ rr))
    if denom == 0.0:
        return None
    return float(rp @ rr) / denom


# ---------------------------------------------------------------------------
# Strategy PnL
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StrategyReport:
    """Trading the model's signals after costs; see the module docstring."""

    n_periods: int
    total_return: float
    mean_return: float
    sharpe: float | None
    trade_count: int
    turnover: float
    max_drawdown: float
    exposure: float
    buy_hold_total_return: float


def positions_from_scores(score: FloatArray, threshold: float) -> FloatArray:
    """``sign(score)`` where ``|score| > threshold``, else flat (0)."""
    return np.where(np.abs(score) > threshold, np.sign(score), 0.0)


def non_overlapping_rows(timestamps: IntArray, horizon_ns: int) -> IntArray:
    """Indices of a greedy chain of rows at least ``horizon_ns`` apart.

    With one row per bar and horizon h this keeps every h-th bar; across a gap
    in the data it restarts at the first row after the gap.
    """
    if horizon_ns <= 0:
        raise ValueError("horizon_ns must be > 0")
    keep: list[int] = []
    next_allowed: int | None = None
    for i, t in enumerate(timestamps.tolist()):
        if next_allowed is None or t >= next_allowed:
            keep.append(i)
            next_allowed = t + horizon_ns
    return np.asarray(keep, dtype=np.int64)


def strategy_pnl(
    positions: FloatArray, forward_log_returns: FloatArray, *, cost_bps: float, periods_per_year: float
) -> StrategyReport:
    """PnL of holding ``positions[i]`` over period i's realised log return."""
    if len(positions) != len(forward_log_returns):
        raise ValueError("positions and returns do not align")
    n = len(positions)
    if n == 0:
        raise ValueError("no periods")
    cost = cost_bps / 1e4
    previous = np.concatenate([[0.0], positions[:-1]])
    change = np.abs(positions - previous)
    simple = np.expm1(forward_log_returns)
    r = positions * simple - cost * change
    equity = np.cumprod(1.0 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    drawdown = float(np.max(1.0 - equity / peak))
    sharpe: float | None = None
    if n >= 2:
        std = float(np.std(r, ddof=1))
        if std > 0.0:
            sharpe = float(np.mean(r)) / std * math.sqrt(periods_per_year)
    return StrategyReport(
        n_periods=n,
        total_return=float(equity[-1] - 1.0),
        mean_return=float(np.mean(r)),
        sharpe=sharpe,
        trade_count=int(np.count_nonzero(change)),
        turnover=float(change.sum()),
        max_drawdown=max(drawdown, 0.0),
        exposure=float(np.count_nonzero(positions) / n),
        buy_hold_total_return=float(np.expm1(forward_log_returns.sum())),
    )


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------


def evaluate_predictions(
    *,
    probs: FloatArray,
    expected_return: FloatArray,
    score: FloatArray,
    y_class: IntArray,
    y_return: FloatArray,
    timestamps: IntArray,
    horizon_ns: int,
    periods_per_year: float,
    cost_bps: float,
    signal_threshold: float,
    prefix: str,
) -> dict[str, float]:
    """All metrics of one evaluation set as ``{prefix}_{name}: value``.

    Undefined values (IC of a constant forecast, Sharpe of a flat book) are
    left out rather than written as 0.0, so a reader can tell "not measured"
    from "measured zero".
    """
    out: dict[str, float] = {
        "rows": float(len(y_class)),
        "log_loss": log_loss(probs, y_class),
        "accuracy": accuracy(probs, y_class),
        "balanced_accuracy": balanced_accuracy(probs, y_class),
        "majority_rate": majority_rate(y_class),
    }
    ic = spearman_ic(expected_return, y_return)
    if ic is not None:
        out["ic"] = ic
    periods = non_overlapping_rows(timestamps, horizon_ns)
    report = strategy_pnl(
        positions_from_scores(score[periods], signal_threshold),
        y_return[periods],
        cost_bps=cost_bps,
        periods_per_year=periods_per_year,
    )
    out.update(
        {
            "pnl_periods": float(report.n_periods),
            "pnl_total_return": report.total_return,
            "pnl_mean_return": report.mean_return,
            "pnl_trade_count": float(report.trade_count),
            "pnl_turnover": report.turnover,
            "pnl_max_drawdown": report.max_drawdown,
            "pnl_exposure": report.exposure,
            "buy_hold_total_return": report.buy_hold_total_return,
        }
    )
    if report.sharpe is not None:
        out["pnl_sharpe"] = report.sharpe
    return {f"{prefix}_{k}": v for k, v in out.items()}
