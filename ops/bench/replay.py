"""Replay benchmark (b): the full pipeline with model inference on CPU, in bars/s.

``tradeflow bench replay [--quick] [--out artifacts/bench_replay.json]``

Input: the bundled real Binance BTC/USDT 1h candles (``ops/sample_data``),
the last ``--bars`` of them. Model: walk-forward MLP windows trained
in-process once before timing (training is reported separately, it is not
part of a replay). Timed: :func:`backtest.replay.replay` end to end:
bar ordering, data-quality + features for every bar, batched CPU inference
for every feature vector a window serves, and the trading core (strategy ->
risk -> paper -> portfolio) for every bar and signal, plus the decision
hash. Median of ``--repeat`` runs; every run must give the same hash (checked:
the benchmark fails otherwise). Baseline in the same run: the same replay
without a model (features + trading only), so the inference share is visible.
torch runs with 1 intra-op thread (the replay default: bit-reproducible).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from agents.market.csv_import import import_csv_file
from agents.risk.config import RiskConfig
from agents.trading.core import TradingConfig
from backtest.replay import ReplayConfig, ReplayModel, ReplayResult, replay
from backtest.walkforward import WalkForwardSpec, train_walk_forward
from models.config import ModelConfig
from models.dataset import closes_by_open_time
from runtime.exits import EXIT_OK
from topics.records import Bar, Timeframe

CSV = Path(__file__).resolve().parents[1] / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
SYMBOL = "BTC/USDT"


def _timed(bars: list[Bar], config: ReplayConfig, model: ReplayModel, repeat: int) -> tuple[list[float], ReplayResult]:
    times: list[float] = []
    hashes: set[str] = set()
    result: ReplayResult | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = replay(bars, config, model)
        times.append(time.perf_counter() - t0)
        hashes.add(result.hash)
    if len(hashes) != 1 or result is None:
        raise RuntimeError(f"replays of the same input gave {len(hashes)} different hashes")
    return times, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tradeflow bench replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("artifacts/bench_replay.json"))
    p.add_argument("--bars", type=int, default=20_000)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2,000 bars, 1 repeat (smoke)")
    a = p.parse_args(argv)
    n_bars, repeat = (2_000, 1) if a.quick else (a.bars, a.repeat)
    torch.set_num_threads(1)
    parsed = import_csv_file(
        CSV, venue="binance", symbol=SYMBOL, timeframe=Timeframe.H1, ts_init=1_700_000_000_000_000_000
    )
    bars = list(parsed.bars[-n_bars:])
    model_cfg = ModelConfig(family="mlp", window=16, hidden_sizes=(64, 32), max_epochs=5, device="cpu", seed=7)
    t0 = time.perf_counter()
    model, lineage = train_walk_forward(
        bars,
        {SYMBOL: closes_by_open_time(bars)},
        WalkForwardSpec(n_windows=a.windows, model=model_cfg),
        ReplayConfig().spec,
        "1x1h",
    )
    train_s = time.perf_counter() - t0
    config = ReplayConfig(trading=TradingConfig(risk=RiskConfig(allowed_symbols=(SYMBOL,))))
    times, result = _timed(bars, config, model, repeat)
    base_times, base = _timed(bars, config, ReplayModel(()), repeat)
    med, base_med = statistics.median(times), statistics.median(base_times)
    out = {
        "benchmark": "replay_full_pipeline_cpu_inference",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "input": {"file": CSV.name, "symbol": SYMBOL, "bars": len(bars)},
        "model": {
            "family": model_cfg.family,
            "window": model_cfg.window,
            "hidden_sizes": list(model_cfg.hidden_sizes),
            "walk_forward_windows": len(lineage),
            "train_seconds": round(train_s, 2),
        },
        "replay": {
            "median_seconds": round(med, 3),
            "runs_seconds": [round(t, 3) for t in times],
            "bars_per_second": round(len(bars) / med, 1),
            "signals": len(result.signals),
            "signals_per_second": round(len(result.signals) / med, 1),
            "records": len(result.records),
            "fills": len(result.fills),
            "decision_hash": result.hash,
            "identical_hash_runs": repeat,
        },
        "baseline_no_model": {
            "median_seconds": round(base_med, 3),
            "bars_per_second": round(len(bars) / base_med, 1),
            "records": len(base.records),
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["replay"]), json.dumps(out["baseline_no_model"]))
    return EXIT_OK
