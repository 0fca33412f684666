"""Benchmarks, run as ``tradeflow bench NAME [ARGS]`` (``tradeflow bench all`` runs every one, as
``make bench`` does). Not imported by product code; each module's ``main(argv)`` parses its own
arguments and writes its JSON under ``artifacts/``. How each one measures: docs/benchmarks.md;
the figures: docs/performance.md."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

#: name -> what it measures, in the order ``all`` runs them
BENCHMARKS: dict[str, str] = {
    "foundation": "broker produce, sink throughput, one-hop latency (embedded tansu + PostgreSQL)",
    "features": "feature engine: incremental vs batch values per second",
    "market": "history import and the features agent on the broker vs in-process",
    "models": "training and inference rows per second (CPU)",
    "walkforward": "out-of-sample walk-forward metrics of every model family on the bundled BTC 1h candles",
    "trading": "trading core and agent: intents/s, signal -> fill latency, kill -> blocked",
    "replay": "full replay: features -> inference -> trading, bars per second",
    "backtest": "reference strategy vs backtesting.py and vectorbt",
    "dashboard": "dashboard update latency and fan-out to clients",
    "gpu": "GPU check: CUDA unit tests, torchrun on NCCL, inference and training on CUDA vs CPU (<= 5 min)",
    "platform": "tradeflow up as operated: ready time, bar -> signal / fill at 10 bars/s, kill drills, memory (30 min)",
}


def run(name: str, argv: Sequence[str] = ()) -> int:
    """Run one benchmark (or ``all``, each with its defaults); the first non-zero exit code stops ``all``."""
    names = list(BENCHMARKS) if name == "all" else [name]
    for bench in names:
        if bench not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {bench!r}: one of {', '.join(BENCHMARKS)}, all")
        print(f"== bench {bench}: {BENCHMARKS[bench]}", flush=True)
        rc = int(importlib.import_module(f"ops.bench.{bench}").main(list(argv) if name != "all" else []) or 0)
        if rc != 0:
            return rc
    return 0
