"""Feature engine benchmark on the real BTC/USDT 1h file (one core).

Run: ``tradeflow bench features [--csv PATH] [--repeats 5]``.

Measured in one process, each repeated and reported as the median:
- ``engine_values``: bar-updates/s of ``FeatureEngine.advance`` (the engine
  alone: state update and the feature tuple, no record), the figure the
  target is about;
- ``engine_records``: the same through ``FeatureEngine.update``, which also
  builds the :class:`~topics.records.FeatureVector` (event id, lineage id);
- ``batch_values``: the numpy batch reference (``feature_matrix``) over the
  same bars, the baseline; ``ratio`` is engine_values / batch_values.
The CSV is parsed into Bar records before any timing. Wall timings on a
shared machine are noisy; the 1-minute load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from agents.features.batch import feature_matrix
from agents.features.engine import FeatureEngine
from agents.features.spec import FEATURE_SET_VERSION
from ops.samples import load_bars
from topics.records import Bar

DEFAULT_CSV = Path("/work/shared/data/binance_btcusdt_1h_2017_2022.csv")
TARGET_PER_SECOND = 200_000


# ---------------------------------------------------------------------------
# Timed runs
# ---------------------------------------------------------------------------


def _median_rate(run: Callable[[], object], n_bars: int, repeats: int) -> float:
    """Median bars/s over ``repeats`` runs of ``run`` (each over all bars)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(n_bars / (time.perf_counter() - start))
    return statistics.median(rates)


def engine_values(bars: list[Bar]) -> None:
    advance = FeatureEngine(data_version="bench").advance
    for bar in bars:
        advance(bar)


def engine_records(bars: list[Bar]) -> None:
    update = FeatureEngine(data_version="bench").update
    ts_init = bars[-1].ts_event
    for bar in bars:
        update(bar, ts_init)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tradeflow bench features", description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    bars = load_bars(args.csv)
    n = len(bars)
    values = _median_rate(lambda: engine_values(bars), n, args.repeats)
    records = _median_rate(lambda: engine_records(bars), n, args.repeats)
    batch = _median_rate(lambda: feature_matrix(bars), n, args.repeats)
    print(
        json.dumps(
            {
                "bars": n,
                "repeats": args.repeats,
                "feature_set_version": FEATURE_SET_VERSION,
                "python": platform.python_version(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "engine_values_per_s": round(values),
                "engine_records_per_s": round(records),
                "batch_values_per_s": round(batch),
                "ratio_engine_to_batch": round(values / batch, 2),
                "target_per_s": TARGET_PER_SECOND,
                "target_met": values >= TARGET_PER_SECOND,
            },
            indent=2,
        )
    )
    return 0
