"""Percentiles of raw latency samples, the one definition every benchmark reports."""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["percentile"]


def percentile(samples: Collection[float], q: float) -> float | None:
    """Nearest rank: the sorted samples' value at index ``int(q * n)`` (the largest for ``q`` >= 1).

    No interpolation, so a reported p99 is a latency that was observed. None without samples.
    """
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]
