"""``ops.bench.stats.percentile``: nearest rank over raw samples, as every benchmark reports it."""

from __future__ import annotations

from ops.bench.stats import percentile


def test_percentile_nearest_rank_then_an_observed_value_and_none_without_samples() -> None:
    xs = [float(x) for x in range(100, 0, -1)]  # unsorted input
    assert [percentile(xs, q) for q in (0.0, 0.5, 0.95, 0.99, 1.0)] == [1.0, 51.0, 96.0, 100.0, 100.0]
    assert percentile([0.3, 0.1], 0.5) == 0.3  # no interpolation between the two
    assert percentile([], 0.5) is None
