"""The one daily Sharpe formula of the project (backtest metrics, gates, tuning).

``e_d`` = the last equity of each UTC day that has equity points (a point
stamped exactly 00:00, the close of the 23:00 bar, belongs to the day it
closes); ``e_0`` = the initial equity; ``r_d = e_d / e_{d-1} - 1``;
``sharpe = mean(r_d) / stdev(r_d, ddof=1) x sqrt(365)``; ``None`` (missing,
never 0.0) with fewer than 2 returns or a zero stdev. Kept free of heavy
imports: tuning worker processes use it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from topics.units import NS_PER_DAY

__all__ = ["daily_sharpe"]


def daily_sharpe(curve: Sequence[tuple[int, float]], initial: float) -> float | None:
    """Sharpe of daily returns of a ``(ts_ns, equity)`` curve (module docstring)."""
    day_end: dict[int, float] = {}
    for ts, eq in curve:
        day_end[(ts - 1) // NS_PER_DAY] = eq
    prev = initial
    returns: list[float] = []
    for day in sorted(day_end):
        returns.append(day_end[day] / prev - 1.0)
        prev = day_end[day]
    if len(returns) < 2:
        return None
    sd = statistics.stdev(returns)
    if sd == 0.0 or not math.isfinite(sd):
        return None
    return statistics.fmean(returns) / sd * math.sqrt(365.0)
