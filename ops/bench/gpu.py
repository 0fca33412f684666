"""GPU check: the CUDA paths in one run of at most ~5 minutes, JSON out.

``tradeflow bench gpu [--out artifacts/gpu_check.json] [--quick]`` (``make gpu-check``)

On a machine with CUDA, in one run: the model and training unit tests with the device present;
``tradeflow train ddp`` through torchrun on NCCL (world size = the GPUs, at most 2; the world-size-1
checkpoint's sha256 against in-process training on the same device); inference through
:func:`models.inference.predict_windows` on CUDA vs one CPU core (rows/s at batch 512 and 4,096,
latency p50/p99 at batch 1, the largest |difference| of the outputs against the contract's tolerance);
training rows/s on CUDA vs this machine's CPU (all cores); a walk-forward training run of the
production sizes (BTC/ETH/SOL-shaped 1h data, several windows, MLP and GRU) fp32 vs bf16 vs K trials
vmapped at once, CUDA vs CPU fp32 side by side, bf16 metrics against their tolerance. Every figure
is compared with its target from issue #13 and the summary says met / not met. Without CUDA it runs
the CPU half (so it is checked on any machine first) and every GPU target reads "not met: no CUDA
device"; exit 0 either way unless a section itself failed (exit 1).

Method: docs/benchmarks.md#gpu-check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.exits import EXIT_FAIL, EXIT_OK

ROOT = Path(__file__).resolve().parents[2]
WINDOW, FEATURES, HIDDEN = 32, 24, (64, 32)
#: issue #13's targets
INFERENCE_SPEEDUP = 20.0  # CUDA rows/s at batch >= 512 vs one CPU core
BATCH1_P99_MS = 2.0
TRAINING_SPEEDUP = 10.0
UNIT_TESTS = ["tests/unit/test_models.py", "tests/unit/test_training.py", "tests/unit/test_checkpoint.py"]


def _environment() -> dict[str, Any]:
    from ops.host import cpu_name

    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": cuda,
        "cuda_version": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,  # type: ignore[no-untyped-call]
    }


def _section(name: str, fn: Callable[[], dict[str, Any]], report: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # a section that breaks is reported, and the run goes on
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{name}: {json.dumps(report[name])[:400]}", flush=True)


def _unit_tests(timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run(  # noqa: S603 - this interpreter, our tests
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNIT_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"exit": proc.returncode, "summary": last, "cuda_present": torch.cuda.is_available()}


def _tiny_dataset(path: Path, rows: int) -> None:
    from ops.bench.models import _synthetic_dataset

    _synthetic_dataset(rows, 16, 8, 0.002).save(path)


def _torchrun(timeout_s: float) -> dict[str, Any]:
    from models.config import ModelConfig
    from models.dataset import WindowDataset, holdout_split
    from models.training import train

    cuda = torch.cuda.is_available()
    world = min(2, torch.cuda.device_count()) if cuda else 2
    device = "cuda" if cuda else "cpu"
    out: dict[str, Any] = {"backend": "nccl" if cuda else "gloo", "world_size": world}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.npz"
        _tiny_dataset(data, 2_000)
        cfg = ModelConfig(window=16, hidden_sizes=(32,), max_epochs=2, device=device, dropout=0.0, seed=5)
        (Path(tmp) / "config.json").write_text(json.dumps(cfg.to_dict()))
        for n in sorted({1, world}):
            ckpt = Path(tmp) / f"ddp{n}.ckpt"
            t0 = time.perf_counter()
            proc = subprocess.run(  # noqa: S603 - this interpreter, our CLI
                [
                    sys.executable,
                    "-m",
                    "ops.cli",
                    "train",
                    "ddp",
                    "--nproc",
                    str(n),
                    "--",
                    "--config",
                    str(Path(tmp) / "config.json"),
                    "--dataset",
                    str(data),
                    "--out",
                    str(ckpt),
                ],
                cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            result = json.loads(ckpt.with_suffix(".ckpt.json").read_text()) if ckpt.exists() else {}
            out[f"world_{n}"] = {
                "exit": proc.returncode,
                "seconds": round(time.perf_counter() - t0, 1),
                "sha256": result.get("sha256"),
                "device": result.get("device"),
                "stderr_tail": proc.stderr[-500:] if proc.returncode else "",
            }
        # world size 1 under torchrun vs in-process on the same device: the same bytes
        ds = WindowDataset.load(data)
        split = holdout_split(ds.timestamps, validation_fraction=0.2, purge=ds.horizon_ns)
        local = Path(tmp) / "local.ckpt"
        sha = train(cfg, ds, split).save(local)
        out["in_process_sha256"] = sha
        out["world_1_same_as_in_process"] = out["world_1"]["sha256"] == sha
    return out


def _latencies(fn: Callable[[], object], seconds: float) -> list[float]:
    fn()
    laps: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(laps) < 20:
        t = time.perf_counter()
        fn()
        laps.append(time.perf_counter() - t)
    return sorted(laps)


def _p(laps: list[float], q: float) -> float:
    return laps[int(q * (len(laps) - 1))] * 1e3


def _inference_family(family: str, seconds: float) -> dict[str, Any]:
    from models.inference import predict_windows
    from ops.bench.models import _model

    model = _model(family, WINDOW, FEATURES, HIDDEN)
    rng = np.random.default_rng(3)
    x512 = rng.standard_normal((512, WINDOW, FEATURES))
    x1 = x512[:1]
    cpu512 = _latencies(partial(predict_windows, model, x512), seconds)
    cpu1 = _latencies(partial(predict_windows, model, x1), seconds)
    row: dict[str, Any] = {
        "cpu_rows_per_s_batch_512": 512 / statistics.median(cpu512),
        "cpu_batch_1_p50_ms": _p(cpu1, 0.5),
        "cpu_batch_1_p99_ms": _p(cpu1, 0.99),
    }
    if not torch.cuda.is_available():
        return row
    dev = torch.device("cuda")
    gpu = _model(family, WINDOW, FEATURES, HIDDEN).to(dev)
    for batch in (512, 4_096, 65_536):
        xb = rng.standard_normal((batch, WINDOW, FEATURES))
        laps = _latencies(partial(predict_windows, gpu, xb, device=dev), seconds)
        row[f"cuda_rows_per_s_batch_{batch}"] = batch / statistics.median(laps)
    laps1 = _latencies(partial(predict_windows, gpu, x1, device=dev), seconds)
    row["cuda_batch_1_p50_ms"] = _p(laps1, 0.5)
    row["cuda_batch_1_p99_ms"] = _p(laps1, 0.99)
    a, b = predict_windows(model, x512), predict_windows(gpu, x512, device=dev)
    diffs = (np.abs(a.p_up - b.p_up).max(), np.abs(a.p_down - b.p_down).max(), np.abs(a.score - b.score).max())
    row["max_abs_diff_cpu_vs_cuda"] = float(max(diffs))
    best = max(row[f"cuda_rows_per_s_batch_{b}"] for b in (512, 4_096, 65_536))
    row["speedup_vs_one_cpu_core"] = best / row["cpu_rows_per_s_batch_512"]
    return row


def _inference(seconds: float) -> dict[str, Any]:
    """CPU: one thread, the served (row-invariant) path; CUDA: the plain forward."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"cpu_threads": 1, "window": WINDOW, "features": FEATURES, "hidden": list(HIDDEN)}
    try:
        for family in ("mlp", "gru"):
            out[family] = _inference_family(family, seconds)
    finally:
        torch.set_num_threads(threads)
    return out


def _training(rows: int) -> dict[str, Any]:
    from ops.bench.models import bench_training

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"rows": rows, "cpu_threads": cores}
    for family in ("mlp", "gru"):
        cpu = bench_training(family, "cpu", rows, WINDOW, FEATURES, HIDDEN, cores, 1)
        row: dict[str, Any] = {"cpu_rows_per_s": cpu["train_samples_per_s"]}
        if torch.cuda.is_available():
            gpu = bench_training(family, "cuda", rows, WINDOW, FEATURES, HIDDEN, cores, 1)
            row["cuda_rows_per_s"] = gpu["train_samples_per_s"]
            row["speedup"] = gpu["train_samples_per_s"] / cpu["train_samples_per_s"]
        out[family] = row
    return out


def _symbol_dataset(symbol: str, rows: int, seed: int) -> Any:
    """A synthetic hourly dataset of the production shape (``WINDOW`` x ``FEATURES``) for one symbol:
    timing needs the shape, not the signal (nothing leaves the machine for data)."""
    from models.dataset import WindowDataset, label_classes
    from topics.records import Timeframe

    rng = np.random.default_rng(seed)
    total = rows + WINDOW - 1
    y_return = rng.standard_normal(rows) * 0.01
    features = rng.standard_normal((total, FEATURES))
    features[WINDOW - 1 :, 0] += 30 * y_return  # a little signal, so early stopping and metrics mean something
    return WindowDataset(
        features=features,
        open_times=1_600_000_000_000_000_000 + np.arange(total, dtype=np.int64) * Timeframe.H1.nanos,
        end_index=np.arange(WINDOW - 1, total, dtype=np.int64),
        y_class=label_classes(y_return, 0.002),
        y_return=y_return,
        feature_names=tuple(f"f{i}" for i in range(FEATURES)),
        feature_set_version="gpu-check",
        symbol=symbol,
        timeframe=Timeframe.H1,
        window=WINDOW,
        horizon_bars=1,
        flat_band=0.002,
    )


def _walk_forward_run(
    configs: list[Any], data: list[Any], n_windows: int, ensemble: bool
) -> tuple[float, float, list[dict[str, float]]]:
    """(seconds, trained row-epochs, metrics of the first config per window) of every symbol's windows."""
    from backtest.walkforward import window_splits
    from models.training import train, train_ensemble

    row_epochs = 0.0
    metrics: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for ds in data:
        for split in window_splits(ds, n_windows):
            results = train_ensemble(configs, ds, split) if ensemble else [train(configs[0], ds, split)]
            row_epochs += sum(len(split.train) * len(r.history) for r in results)
            metrics.append(results[0].metrics)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, row_epochs, metrics


def _walk_forward_training(quick: bool) -> dict[str, Any]:
    """Walk-forward training of the production model sizes, fp32 vs bf16 vs K trials at once,
    CPU (all cores) and CUDA side by side."""
    from models.config import ModelConfig
    from models.training import precision_gaps

    rows, n_windows, epochs, trials = (1_200, 2, 2, 3) if quick else (26_280, 4, 3, 8)
    symbols = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    data = [_symbol_dataset(sym, rows, seed) for seed, sym in enumerate(symbols)]
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "symbols": list(symbols),
        "rows_per_symbol": rows,
        "windows": n_windows,
        "epochs": epochs,
        "ensemble_trials": trials,
        "note": "rows/s = trained rows x epochs (x trials) / wall seconds of every symbol's windows, "
        "validation and scoring included",
    }
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    for family in ("mlp", "gru"):
        fam: dict[str, Any] = {}
        for device in devices:
            base = ModelConfig(
                family=family,
                window=WINDOW,
                hidden_sizes=HIDDEN,
                dropout=0.0,
                batch_size=256 if device == "cpu" else 4_096,
                max_epochs=epochs,
                patience=epochs + 1,
                device=device,
                num_threads=cores,
            )
            tuning = [base.replace(lr=base.lr * (1.0 + 0.25 * k), seed=k) for k in range(trials)]
            # CPU: the fp32 baseline of the comparison; the other modes only in --quick (the code paths)
            modes = ("fp32", "bf16", "ensemble") if device == "cuda" or quick else ("fp32",)
            _walk_forward_run([base], data[:1], 1, ensemble=False)  # warm-up: allocator, kernels, CUDA context
            per: dict[str, Any] = {"batch_size": base.batch_size}
            metrics: dict[str, list[dict[str, float]]] = {}
            for mode in modes:
                cfgs = [base.replace(precision="bf16")] if mode == "bf16" else tuning if mode == "ensemble" else [base]
                seconds, row_epochs, metrics[mode] = _walk_forward_run(cfgs, data, n_windows, mode == "ensemble")
                per[mode] = {"seconds": round(seconds, 2), "rows_per_s": row_epochs / seconds}
            if "bf16" in metrics:
                gaps = [precision_gaps(a, b) for a, b in zip(metrics["fp32"], metrics["bf16"], strict=True)]
                per["bf16_within_tolerance"] = all(g["within"] for w in gaps for g in w.values())
                per["bf16_worst_gap"] = {
                    name: max(float(w[name]["gap"]) for w in gaps if name in w) for name in gaps[0]
                }
            fam[device] = per
        if "cuda" in fam:
            cpu_rate = fam["cpu"]["fp32"]["rows_per_s"]
            single = max(fam["cuda"][m]["rows_per_s"] for m in ("fp32", "bf16"))
            fam["speedup_single_trial_cuda_vs_cpu_fp32"] = single / cpu_rate
            fam["speedup_tuning_cuda_ensemble_vs_cpu_fp32"] = fam["cuda"]["ensemble"]["rows_per_s"] / cpu_rate
        else:
            fam["cuda"] = "not measured: no CUDA device"
        out[family] = fam
    return out


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    cuda = bool(report["environment"]["cuda"])
    rows: list[dict[str, Any]] = []

    def target(name: str, value: float | None, goal: str, ok: Callable[[float], bool]) -> None:
        if not cuda or value is None:
            rows.append({"target": name, "goal": goal, "value": None, "met": False, "why": "not met: no CUDA device"})
        else:
            rows.append({"target": name, "goal": goal, "value": value, "met": ok(value)})

    inf, tr = report.get("inference", {}), report.get("training", {})
    for fam in ("mlp", "gru"):
        target(
            f"inference {fam}: CUDA rows/s vs one CPU core",
            inf.get(fam, {}).get("speedup_vs_one_cpu_core"),
            f">= {INFERENCE_SPEEDUP:g}x",
            lambda v: v >= INFERENCE_SPEEDUP,
        )
        target(
            f"inference {fam}: CUDA batch-1 p99",
            inf.get(fam, {}).get("cuda_batch_1_p99_ms"),
            f"<= {BATCH1_P99_MS:g} ms",
            lambda v: v <= BATCH1_P99_MS,
        )
        target(
            f"inference {fam}: CPU vs CUDA outputs",
            inf.get(fam, {}).get("max_abs_diff_cpu_vs_cuda"),
            "<= 1e-4 (docs/determinism.md)",
            lambda v: v <= 1e-4,
        )
        target(
            f"training {fam}: CUDA vs this machine's CPU",
            tr.get(fam, {}).get("speedup"),
            f">= {TRAINING_SPEEDUP:g}x",
            lambda v: v >= TRAINING_SPEEDUP,
        )
        wf = report.get("walk_forward_training", {}).get(fam, {})
        target(
            f"walk-forward training {fam}: one trial, CUDA fp32/bf16 vs CPU fp32 (all cores)",
            wf.get("speedup_single_trial_cuda_vs_cpu_fp32"),
            f">= {TRAINING_SPEEDUP:g}x",
            lambda v: v >= TRAINING_SPEEDUP,
        )
        target(
            f"walk-forward training {fam}: tuning, CUDA K-trial ensemble vs CPU fp32 trial by trial",
            wf.get("speedup_tuning_cuda_ensemble_vs_cpu_fp32"),
            f">= {TRAINING_SPEEDUP:g}x",
            lambda v: v >= TRAINING_SPEEDUP,
        )
        cuda_wf = wf.get("cuda")
        within = cuda_wf.get("bf16_within_tolerance") if isinstance(cuda_wf, dict) else None
        target(
            f"walk-forward training {fam}: CUDA bf16 metrics vs fp32",
            None if within is None else float(within),
            "within models.training.BF16_TOLERANCE (1 = yes)",
            lambda v: v == 1.0,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tradeflow bench gpu", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("artifacts/gpu_check.json"))
    p.add_argument("--quick", action="store_true", help="shorter timings (a smoke run of the check itself)")
    p.add_argument("--skip-tests", action="store_true", help="leave out the unit-test section")
    a = p.parse_args(argv)
    seconds = 0.3 if a.quick else 1.5
    report: dict[str, Any] = {"environment": _environment()}
    print(f"environment: {json.dumps(report['environment'])}", flush=True)
    if not a.skip_tests:
        _section("unit_tests", lambda: _unit_tests(150.0), report)
    _section("torchrun", lambda: _torchrun(120.0), report)
    _section("inference", lambda: _inference(seconds), report)
    _section("training", lambda: _training(4_000 if a.quick else 20_000), report)
    _section("walk_forward_training", lambda: _walk_forward_training(a.quick), report)
    report["targets"] = _targets(report)
    for t in report["targets"]:
        shown = "-" if t["value"] is None else f"{t['value']:.4g}"
        print(f"  {t['target']}: {shown} (goal {t['goal']}): {'met' if t['met'] else t.get('why', 'NOT met')}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out} ({hashlib.sha256(a.out.read_bytes()).hexdigest()[:12]})")
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    unit = report.get("unit_tests", {})
    if unit.get("exit") not in (None, 0):
        failed.append("unit_tests")
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK
