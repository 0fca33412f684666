"""Walk-forward skill of every model family: out-of-sample metrics on the bundled candles.

``tradeflow bench walkforward [--bars N] [--folds K] [--families mlp,gru,...] [--out artifacts/bench_walkforward.json]``

Input: the bundled Binance BTC/USDT 1h candles (``ops/sample_data``; the last ``--bars``, all
by default) through the platform's feature pipeline, so the models see the default feature
set they are served with, and the candles' closes as labels. The rows are cut by
:func:`models.dataset.walk_forward_splits` into ``K + 1`` time blocks (purged by the label
horizon, no embargo); fold k trains with :func:`models.training.train` on everything before
block k (its newest 20 % held out, purged, for early stopping) and is scored on block k,
which neither its weights nor its epoch selection saw. Every family runs the same config but
for ``family`` (window, widths, epochs, seed, costs): one budget for all.

Reported per family: each fold's test metrics, and the *pooled* walk-forward figures: the K
blocks' predictions concatenated (one contiguous out-of-sample span, each row scored by the
model trained before its block) and scored once by :func:`models.metrics.evaluate_predictions`
(log loss, accuracy, balanced accuracy, IC; PnL after fees and slippage compounding across
block boundaries, as a deployment retrained every block would trade; the same trades before
costs next to it). Training time is the process's CPU time (wall time, which a shared machine
inflates, is in the JSON). The markdown table it prints is what docs/models.md quotes. torch
runs on CPU with ``--threads`` intra-op threads, so a rerun on the same machine gives the same
figures (each checkpoint's sha256 is in the JSON).

Method: docs/benchmarks.md#walk-forward-skill
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.features.spec import DEFAULT_SPEC
from agents.market.csv_import import import_csv_file
from backtest.walkforward import feature_vectors
from models.checkpoint import checkpoint_bytes, sha256_hex
from models.config import FAMILIES, ModelConfig
from models.dataset import Split, WindowDataset, build_dataset, closes_by_open_time, holdout_split, walk_forward_splits
from models.inference import predict_windows
from models.metrics import evaluate_predictions
from models.training import train
from runtime.exits import EXIT_OK
from topics.records import Timeframe

CSV = Path(__file__).resolve().parents[1] / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
SYMBOL = "BTC/USDT"
EARLY_STOPPING_FRACTION = 0.2

#: (metric key without prefix, column title, format) of the printed table
COLUMNS = (
    ("log_loss", "log loss", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("balanced_accuracy", "bal. accuracy", "{:.4f}"),
    ("ic", "IC", "{:+.4f}"),
    ("pnl_sharpe", "Sharpe after costs", "{:+.2f}"),
    ("pnl_total_return", "return after costs", "{:+.1%}"),
    ("pnl_trade_count", "trades", "{:,.0f}"),
    ("gross_pnl_sharpe", "Sharpe before costs", "{:+.2f}"),
)


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d")


def _dataset(n_bars: int, config: ModelConfig) -> WindowDataset:
    parsed = import_csv_file(
        CSV, venue="binance", symbol=SYMBOL, timeframe=Timeframe.H1, ts_init=1_700_000_000_000_000_000
    )
    bars = list(parsed.bars[-n_bars:]) if n_bars > 0 else list(parsed.bars)
    vectors = feature_vectors(bars, DEFAULT_SPEC)[SYMBOL]
    return build_dataset(
        vectors,
        closes_by_open_time(bars),
        window=config.window,
        horizon_bars=config.horizon_bars,
        flat_band=config.flat_band,
    )


def _fold_split(ds: WindowDataset, fold: Split) -> Split:
    """Early stopping on the newest training rows; the fold's block becomes the untouched test."""
    inner = holdout_split(ds.timestamps[fold.train], validation_fraction=EARLY_STOPPING_FRACTION, purge=ds.horizon_ns)
    return Split(fold.name, fold.train[inner.train], fold.train[inner.validation], fold.validation)


def run_family(config: ModelConfig, ds: WindowDataset, folds: list[Split]) -> dict[str, Any]:
    """Train and score every fold; pooled metrics over the concatenated test blocks."""
    fold_rows: list[dict[str, Any]] = []
    probs, expected, score = [], [], []
    started, started_cpu = time.perf_counter(), time.process_time()
    for k, fold in enumerate(folds):
        split = _fold_split(ds, fold)
        t0 = time.perf_counter()
        result = train(config, ds, split)
        seconds = time.perf_counter() - t0
        prediction = predict_windows(result.model, ds.windows(fold.validation))
        probs.append(prediction.probs)
        expected.append(prediction.expected_return)
        score.append(prediction.score)
        fold_rows.append(
            {
                "fold": k + 1,
                "train_rows": len(split.train),
                "early_stopping_rows": len(split.validation),
                "test_rows": len(fold.validation),
                "test_start": _day(int(ds.timestamps[fold.validation[0]])),
                "test_end": _day(int(ds.timestamps[fold.validation[-1]])),
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "train_seconds": round(seconds, 2),
                "checkpoint_sha256": sha256_hex(checkpoint_bytes(result.model, result.checkpoint_meta())),
                "metrics": {k: v for k, v in result.metrics.items() if k.startswith("test_")},
            }
        )
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    rows = np.concatenate([f.validation for f in folds])
    pooled: dict[str, float] = {}
    # The same trades without fees and slippage: what the signal earns before the costs take it.
    for prefix, cost_bps in (("wf", config.cost_bps), ("wf_gross", 0.0)):
        metrics = evaluate_predictions(
            probs=np.concatenate(probs),
            expected_return=np.concatenate(expected),
            score=np.concatenate(score),
            y_class=ds.y_class[rows],
            y_return=ds.y_return[rows],
            timestamps=ds.timestamps[rows],
            horizon_ns=ds.horizon_ns,
            periods_per_year=ds.periods_per_year,
            cost_bps=cost_bps,
            signal_threshold=config.signal_threshold,
            prefix=prefix,
        )
        pooled.update({k: v for k, v in metrics.items() if prefix == "wf" or "_pnl_" in k})
    return {
        "family": config.family,
        "config_hash": config.config_hash(),
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "pooled": pooled,
        "folds": fold_rows,
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """The markdown table of the pooled figures, one row per family."""
    head = ["family", *(title for _, title, _ in COLUMNS), "training CPU s (all folds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["family"]]
        for key, _, fmt in COLUMNS:
            value = r["pooled"].get(f"wf_{key}")
            cells.append("n/a" if value is None else fmt.format(value))
        cells.append(f"{r['train_cpu_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fold_table(results: list[dict[str, Any]]) -> list[str]:
    """Test log loss and IC of every fold, one row per family: how stable the pooled figures are."""
    folds = results[0]["folds"]
    head = ["family", *(f"fold {f['fold']} ({f['test_start'][:7]}..{f['test_end'][:7]}) log loss / IC" for f in folds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["family"]]
        for f in r["folds"]:
            ic = f["metrics"].get("test_ic")
            cells.append(f"{f['metrics']['test_log_loss']:.4f} / " + ("n/a" if ic is None else f"{ic:+.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tradeflow bench walkforward", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("artifacts/bench_walkforward.json"))
    p.add_argument("--bars", type=int, default=0, help="last N bars of the file (0: all)")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--hidden", default="64,32")
    p.add_argument("--epochs", type=int, default=10, help="max_epochs (early stopping may end sooner)")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: this machine is shared)")
    a = p.parse_args(argv)
    base = ModelConfig(
        window=a.window,
        hidden_sizes=tuple(int(x) for x in a.hidden.split(",")),
        max_epochs=a.epochs,
        patience=a.patience,
        seed=a.seed,
        device="cpu",
        num_threads=a.threads,
    )
    configs = [base.replace(family=f) for f in a.families.split(",")]  # validated: unknown family fails here
    t0 = time.perf_counter()
    ds = _dataset(a.bars, base)
    folds = walk_forward_splits(ds.timestamps, a.folds, purge=ds.horizon_ns, embargo=0)
    tested = np.concatenate([f.validation for f in folds])
    print(
        f"{ds.n_rows} rows ({_day(int(ds.timestamps[0]))} .. {_day(int(ds.timestamps[-1]))}), "
        f"{a.folds} folds, out of sample {_day(int(ds.timestamps[tested[0]]))} .. "
        f"{_day(int(ds.timestamps[tested[-1]]))} ({len(tested)} rows); features {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for config in configs:
        result = run_family(config, ds, folds)
        results.append(result)
        print(
            json.dumps(
                {
                    "family": config.family,
                    "train_seconds": result["train_seconds"],
                    "train_cpu_seconds": result["train_cpu_seconds"],
                    **result["pooled"],
                }
            )
        )
    first = results[0]["pooled"]
    context = (
        f"majority class rate {first['wf_majority_rate']:.4f}, buy and hold {first['wf_buy_hold_total_return']:+.1%} "
        f"over {first['wf_pnl_periods']:.0f} periods; chance log loss ln 3 = 1.0986"
    )
    out = {
        "benchmark": "walk_forward_skill",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torch_threads": a.threads,
        },
        "input": {
            "file": CSV.name,
            "symbol": SYMBOL,
            "feature_set_version": ds.feature_set_version,
            "rows": ds.n_rows,
            "folds": a.folds,
            "out_of_sample_rows": len(tested),
        },
        "config": {k: v for k, v in base.to_dict().items() if k != "family"},
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print("\n".join(table(results)))
    print(context)
    print("\n".join(fold_table(results)))
    print(f"wrote {a.out}")
    return EXIT_OK
