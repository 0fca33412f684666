"""Model benchmarks: inference rate and latency, training throughput.

``tradeflow bench models [--out artifacts/bench_models.json]``

Measured in one run, on this machine: inference through
:func:`models.inference.predict_windows` (what the streaming worker calls) for batch sizes
1 to 512, samples/s and p50/p99 batch latency, with the linear baseline as the comparison
and ``mlp_unpadded`` showing what the batch-invariance padding costs; and training
throughput of :func:`models.training.train` per epoch (``(t3 - t1) / 2`` from a 1-epoch and
a 3-epoch run, median of 3), on CPU and on CUDA when present. Inputs are seeded random
windows of the production shape (24 features, window 32); each device is named in the JSON.

Method: docs/benchmarks.md#model-benchmark
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import ModelConfig
from models.dataset import WindowDataset, holdout_split, label_classes
from models.inference import DEFAULT_CHUNK_ROWS, predict_windows
from models.nets import ForecastModel, build_model
from models.training import train
from ops.host import cpu_name
from runtime.exits import EXIT_OK
from topics.records import Timeframe

BATCH_SIZES = (1, 8, 32, 128, 512)


def _model(family: str, window: int, n_features: int, hidden: tuple[int, ...]) -> ForecastModel:
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, window=window, hidden_sizes=hidden), n_features)
    if family == "linear_baseline":  # non-zero coefficients, so the arithmetic is the real one
        with torch.no_grad():
            for buffer in model.core.buffers():
                buffer.copy_(torch.randn_like(buffer) * 0.01)
    return model.eval()


def bench_inference(
    model: ForecastModel, batch: int, repeats: int, chunk_rows: int, min_seconds: float
) -> dict[str, float]:
    rng = np.random.default_rng(batch)
    windows = rng.standard_normal((batch, model.window, model.n_features))
    for _ in range(3):
        predict_windows(model, windows, chunk_rows=chunk_rows)
    medians: list[float] = []
    every: list[float] = []
    for _ in range(repeats):
        laps: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < min_seconds or len(laps) < 5:
            t = time.perf_counter()
            predict_windows(model, windows, chunk_rows=chunk_rows)
            laps.append(time.perf_counter() - t)
        medians.append(statistics.median(laps))
        every.extend(laps)
    every.sort()
    median = statistics.median(medians)
    return {
        "batch": batch,
        "samples_per_s": batch / median,
        "p50_batch_latency_ms": every[len(every) // 2] * 1e3,
        "p99_batch_latency_ms": every[min(len(every) - 1, int(0.99 * len(every)))] * 1e3,
        "calls": len(every),
    }


def _synthetic_dataset(rows: int, window: int, n_features: int, flat_band: float) -> WindowDataset:
    rng = np.random.default_rng(7)
    total = rows + window - 1
    y_return = rng.standard_normal(rows) * 0.01
    return WindowDataset(
        features=rng.standard_normal((total, n_features)),
        open_times=1_600_000_000_000_000_000 + np.arange(total, dtype=np.int64) * Timeframe.H1.nanos,
        end_index=np.arange(window - 1, total, dtype=np.int64),
        y_class=label_classes(y_return, flat_band),
        y_return=y_return,
        feature_names=tuple(f"f{i}" for i in range(n_features)),
        feature_set_version="bench",
        symbol="BTC/USDT",
        timeframe=Timeframe.H1,
        window=window,
        horizon_bars=1,
        flat_band=flat_band,
    )


def bench_training(
    family: str,
    device: str,
    rows: int,
    window: int,
    n_features: int,
    hidden: tuple[int, ...],
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    base = ModelConfig(
        family=family,
        window=window,
        hidden_sizes=hidden,
        device=device,
        patience=100,
        num_threads=threads,
        batch_size=256,
    )
    ds = _synthetic_dataset(rows, window, n_features, base.flat_band)
    split = holdout_split(ds.timestamps, validation_fraction=0.2, purge=ds.horizon_ns)
    train(base.replace(max_epochs=1), ds, split)  # warm-up: allocator, kernel selection
    per_epoch: list[float] = []
    for _ in range(repeats):
        seconds = {}
        for epochs in (1, 3):
            t = time.perf_counter()
            result = train(base.replace(max_epochs=epochs), ds, split)
            seconds[epochs] = time.perf_counter() - t
            if len(result.history) != epochs:
                raise RuntimeError(f"expected {epochs} epochs, ran {len(result.history)}")
        per_epoch.append((seconds[3] - seconds[1]) / 2)
    epoch_s = statistics.median(per_epoch)
    return {
        "family": family,
        "device": device,
        "train_rows": len(split.train),
        "validation_rows": len(split.validation),
        "batch_size": base.batch_size,
        "epoch_seconds": epoch_s,
        "epoch_seconds_repeats": per_epoch,
        "train_samples_per_s": len(split.train) / epoch_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tradeflow bench models", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("artifacts/bench_models.json"))
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--features", type=int, default=24)
    p.add_argument("--hidden", default="64,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.2, help="timed seconds per repeat and batch size")
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: this machine is shared)")
    args = p.parse_args(argv)
    hidden = tuple(int(x) for x in args.hidden.split(","))
    torch.set_num_threads(args.threads)

    out: dict[str, Any] = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": args.threads,
        "window": args.window,
        "features": args.features,
        "hidden_sizes": list(hidden),
        "chunk_rows": DEFAULT_CHUNK_ROWS,
        "inference_cpu": {},
        "training": [],
    }
    models = {f: _model(f, args.window, args.features, hidden) for f in ("linear_baseline", "mlp", "gru", "tcn")}
    for family, model in models.items():
        out["inference_cpu"][family] = [
            bench_inference(model, b, args.repeats, DEFAULT_CHUNK_ROWS, args.min_seconds) for b in BATCH_SIZES
        ]
        print(family, json.dumps(out["inference_cpu"][family]))
    out["inference_cpu"]["mlp_unpadded"] = [
        bench_inference(models["mlp"], b, args.repeats, b, args.min_seconds) for b in BATCH_SIZES
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices:
        out["cuda"] = torch.cuda.get_device_name(0)
    for device in devices:
        for family in ("mlp", "gru", "tcn"):
            row = bench_training(family, device, args.train_rows, args.window, args.features, hidden, args.threads, 3)
            out["training"].append(row)
            print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return EXIT_OK
