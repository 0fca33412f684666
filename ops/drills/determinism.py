"""Determinism drill: the contract of docs/determinism.md, checked on this machine.

``tradeflow drill determinism [--configs avx2 sse ...] [--json PATH]`` computes a fingerprint of every
hash and bit-identity claim the platform makes (event ids, feature values, the audit's decision hash,
model predictions, batch-composition invariance, the checkpoint sha256) in this process, then again in a
child process per *numeric configuration*: the same machine told to pick other BLAS kernels, another
ATen CPU capability and other thread counts (:data:`CONFIGS`), which is how a machine difference shows
up on the developer's machine before it shows up in an auditor's verdict. Each claim is compared as the
contract (:data:`CONTRACT`) says: bit for bit, or within its stated tolerance. Exit 0 when every claim
holds, 1 when one does not (the table names it), 2 on a bad command line.

What each claim is computed from (bundled data, no broker, no database, ~10 s a configuration):

- the first :data:`N_BARS` closed 1h bars of ``ops/sample_data/binance_btcusdt_1h_2017_2022.csv`` through
  the incremental feature pipeline (event ids of bars and vectors; the vectors' float64 bytes);
- the trading core over those bars and a *recorded* signal stream: signals whose scores are exact
  dyadic fractions taken from each vector's event id, so the stream is the same bytes on every machine,
  as the journaled signals an audit replays are (the decision hash an audit compares);
- an MLP, a GRU and the linear baseline with seeded weights over the vectors' windows through
  :func:`models.inference.predict_windows` (the served path), one row at a time and in one batch;
- a small MLP trained twice with one seed (the checkpoint's sha256 and its validation loss).

Design: docs/determinism.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE

__all__ = ["CONFIGS", "CONTRACT", "Claim", "compare", "fingerprint", "main"]

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
START = "2021-01-01 00:00:00+00:00"
N_BARS = 600
WINDOW = 16
CHILD_TIMEOUT_S = 300

#: Numeric configurations of this machine a child process runs under (on top of the parent's
#: environment). ``native`` is what the machine picks by itself. ``no-fma`` is outside the contract on
#: purpose: glibc's FMA variants of ``pow``/``exp``/``tanh`` are what every x86-64 CPU since 2013 runs
#: (Intel Haswell, AMD Piledriver), and the drill shows what a CPU without FMA3 would change.
CONFIGS: Mapping[str, Mapping[str, str]] = {
    "native": {},
    "threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"},
    # the kernels a CPU without AVX-512 gets (AMD EPYC Zen 2/3, Intel before Skylake-SP)
    "avx2": {
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "OPENBLAS_CORETYPE": "Haswell",
        "OMP_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
    },
    # the oldest kernels the libraries ship: scalar ATen, SSE4.2 MKL, one thread
    "sse": {
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ATEN_CPU_CAPABILITY": "default",
        "OPENBLAS_CORETYPE": "Nehalem",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    },
    "no-fma": {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"},
}
#: what ``tradeflow drill determinism`` and the suite compare against this process by default
DEFAULT_CONFIGS = ("threads", "avx2", "sse")


@dataclass(frozen=True, slots=True)
class Claim:
    """One line of the contract: ``identical`` (bit for bit) or ``tolerance`` (max |difference|) across
    ``across``; ``within`` is where it is identical even when only a tolerance holds across configs."""

    kind: str
    across: str
    tolerance: float = 0.0
    within: str = ""
    #: configurations this claim is not made for (their differences are reported, not failures)
    outside: tuple[str, ...] = ()


_FMA = ("no-fma",)
#: The determinism contract (docs/determinism.md has the table and the reasons).
CONTRACT: Mapping[str, Claim] = {
    "event_ids": Claim("identical", "runs, batches, thread counts, CPUs, devices"),
    "features": Claim(
        "identical", "runs, batches, thread counts, BLAS/ATen kernels, x86-64 CPUs with FMA3", outside=_FMA
    ),
    "decisions": Claim(
        "identical", "runs, batches, thread counts, BLAS/ATen kernels, x86-64 CPUs with FMA3", outside=_FMA
    ),
    "predictions.linear_baseline": Claim("identical", "runs, batches, thread counts, BLAS/ATen kernels"),
    "predictions.mlp": Claim("identical", "runs, batches, thread counts, BLAS/ATen kernels"),
    "predictions.tcn": Claim(
        "tolerance", "BLAS/ATen kernels, CPUs, devices", 1e-4, within="runs, batches, thread counts"
    ),
    "predictions.gru": Claim(
        "tolerance", "BLAS/ATen kernels, CPUs, devices", 1e-4, within="runs, batches, thread counts"
    ),
    "batch_invariance": Claim("identical", "every configuration (each compared with itself)"),
    "checkpoint.sha256": Claim("within", "", within="runs with one seed in one numeric configuration"),
    "checkpoint.val_loss": Claim("tolerance", "BLAS/ATen kernels, thread counts, CPUs", 1e-3),
}


# ---------------------------------------------------------------------------
# the fingerprint
# ---------------------------------------------------------------------------


def _sha(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "big"))
        h.update(c)
    return h.hexdigest()


def load_bars(n: int = N_BARS) -> list[Any]:
    """The first ``n`` closed 1h bars from :data:`START` in the bundled CSV."""
    from ops.samples import load_bars as read_csv
    from topics.units import parse_when

    start = parse_when(START)
    return [b for b in read_csv(CSV) if b.open_time >= start][:n]


def recorded_signal(vector: Any) -> Any:
    """The signal an audit would read back from the journal for ``vector``: its score an exact dyadic
    fraction from the vector's event id (the same bytes on every machine; no model involved)."""
    from topics.records import Signal

    k = int(vector.event_id[:8], 16)
    score = ((k % 4096) - 2048) / 4096 * 1.5  # in [-0.75, 0.75), an exact dyadic fraction
    p_up, p_down = (0.75 + score) / 2, (0.75 - score) / 2  # exact too; p_flat 0.25
    return Signal.new(
        ts_init=vector.ts_event,
        ts_event=vector.ts_event,
        correlation_id=vector.correlation_id,
        causation_id=vector.event_id,
        symbol=vector.symbol,
        model_id="drill",
        model_version="recorded",
        horizon="1h",
        p_up=p_up,
        p_flat=0.25,
        p_down=p_down,
        expected_return=score / 64,
        score=score,
        shadow=False,
        feature_event_id=vector.event_id,
        lineage_id=vector.lineage_id,
    )


def _predictions(vectors: Sequence[Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from models.config import ModelConfig
    from models.inference import predict_windows
    from models.nets import build_model

    values = np.array([v.values for v in vectors], dtype=np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(values, WINDOW, axis=0).transpose(0, 2, 1).copy()
    out: dict[str, Any] = {}
    invariant = True
    for family in ("linear_baseline", "mlp", "gru", "tcn"):
        torch.manual_seed(7)
        model = build_model(ModelConfig(family=family, window=WINDOW, hidden_sizes=(32, 16)), values.shape[1])
        with torch.no_grad():
            gen = torch.Generator().manual_seed(11)
            for p in model.core.parameters():
                p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) - 0.5).to(p.dtype) * 0.2)
            model.set_normalization(
                torch.from_numpy(values.mean(axis=0)).to(model.input_mean.dtype),
                torch.from_numpy(values.std(axis=0) + 1e-9).to(model.input_mean.dtype),
                0.01,
            )
        batch = predict_windows(model, windows)
        one_by_one = [predict_windows(model, windows[i : i + 1]) for i in range(0, len(windows), 37)]
        invariant &= all(
            p.score.tobytes() == batch.score[i * 37 : i * 37 + 1].tobytes() for i, p in enumerate(one_by_one)
        )
        arr = np.concatenate([batch.p_up, batch.p_down, batch.score])
        out[f"predictions.{family}"] = {"sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "values": arr.tolist()}
    out["batch_invariance"] = invariant
    return out


def _checkpoint(vectors: Sequence[Any], bars: Sequence[Any]) -> dict[str, Any]:
    from models.config import ModelConfig
    from models.dataset import build_dataset, closes_by_open_time, holdout_split
    from models.training import train

    config = ModelConfig(family="mlp", window=WINDOW, hidden_sizes=(16,), max_epochs=2, batch_size=64, seed=3)
    dataset = build_dataset(
        vectors, closes_by_open_time(bars), window=WINDOW, horizon_bars=1, flat_band=config.flat_band
    )
    split = holdout_split(dataset.timestamps, validation_fraction=0.25, purge=1)
    shas = []
    loss = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(2):
            result = train(config, dataset, split)
            shas.append(result.save(Path(tmp) / f"m{attempt}.ckpt"))
            loss = float(result.metrics["best_val_loss"])
    return {"checkpoint.sha256": shas, "checkpoint.val_loss": loss}


def fingerprint() -> dict[str, Any]:
    """Every claim of :data:`CONTRACT` as computed in this process (module docstring)."""
    import torch

    from agents.clock import EventClock
    from agents.control.signing import Keyring
    from agents.features.pipeline import FeaturePipeline
    from agents.trading.core import TradingConfig, TradingCore
    from backtest.replay import decision_hash
    from ops.host import cpu_name
    from topics.schema import Record

    t0 = time.perf_counter()
    bars = load_bars()
    clock = EventClock()
    pipeline = FeaturePipeline(clock)
    vectors = []
    for bar in bars:
        clock.advance(bar.ts_event)
        out = pipeline.on_bar(bar)
        if out.features is not None:
            vectors.append(out.features)
    core = TradingCore(TradingConfig(), Keyring({}))
    records: list[Record] = []
    by_bar = {v.bar_open_time: v for v in vectors}
    for bar in bars:
        records.extend(core.on_bar(bar).records)
        vector = by_bar.get(bar.open_time)
        if vector is not None:
            signal = recorded_signal(vector)
            records.extend(core.on_signal(signal).records)
    claims: dict[str, Any] = {
        "event_ids": _sha(x.event_id.encode() for x in [*bars, *vectors]),
        "features": _sha(b"".join(float(v).hex().encode() for v in vec.values) for vec in vectors),
        "decisions": decision_hash(records),
    }
    claims.update(_predictions(vectors))
    claims.update(_checkpoint(vectors, bars))
    kinds = {type(r).__name__ for r in records}
    return {
        "config_env": {k: os.environ[k] for k in sorted(_CONFIG_KEYS) if k in os.environ},
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "n_bars": len(bars),
        "n_vectors": len(vectors),
        "decision_records": len(records),
        "decision_kinds": sorted(kinds),
        "seconds": round(time.perf_counter() - t0, 2),
        "claims": claims,
    }


_CONFIG_KEYS = frozenset(k for env in CONFIGS.values() for k in env)


# ---------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    claim: str
    config: str
    holds: bool
    detail: str
    in_contract: bool = True


def compare(base: Mapping[str, Any], other: Mapping[str, Any], config: str) -> list[Verdict]:
    """Each claim of :data:`CONTRACT` between ``base`` (this process) and ``other`` (one configuration)."""
    out: list[Verdict] = []
    a, b = base["claims"], other["claims"]
    for name, claim in CONTRACT.items():
        in_contract = config not in claim.outside
        if name == "batch_invariance":
            holds = bool(a[name]) and bool(b[name])
            out.append(Verdict(name, config, holds, f"base {a[name]}, {config} {b[name]}", in_contract))
        elif name == "checkpoint.sha256":
            holds = len(set(a[name])) == 1 and len(set(b[name])) == 1
            same = "the same" if a[name][0] == b[name][0] else "another"
            detail = f"one seed twice: one sha each ({same} sha256 as the base)"
            out.append(Verdict(name, config, holds, detail if holds else f"{a[name]} / {b[name]}", in_contract))
        elif claim.kind == "identical":
            va = a[name]["sha256"] if isinstance(a[name], dict) else a[name]
            vb = b[name]["sha256"] if isinstance(b[name], dict) else b[name]
            out.append(Verdict(name, config, va == vb, "identical" if va == vb else "differs", in_contract))
        else:
            xa = a[name]["values"] if isinstance(a[name], dict) else [a[name]]
            xb = b[name]["values"] if isinstance(b[name], dict) else [b[name]]
            diff = max((abs(p - q) for p, q in zip(xa, xb, strict=True)), default=0.0)
            scale = 1.0 if isinstance(a[name], dict) else max(abs(xa[0]), 1e-12)
            holds = len(xa) == len(xb) and diff / scale <= claim.tolerance
            rel = "" if isinstance(a[name], dict) else " relative"
            out.append(
                Verdict(name, config, holds, f"max{rel} |diff| {diff / scale:.3g} (tolerance {claim.tolerance:g})")
            )
    return out


def run_child(config: str, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """:func:`fingerprint` in a fresh interpreter under ``CONFIGS[config]``."""
    env = {
        **os.environ,
        **CONFIGS[config],
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "ops.drills.determinism", "--fingerprint"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{config}: the fingerprint child exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _table(verdicts: Sequence[Verdict]) -> str:
    lines = ["| claim | configuration | holds | detail |", "|---|---|---|---|"]
    for v in verdicts:
        mark = ("yes" if v.holds else "**NO**") if v.in_contract else ("yes" if v.holds else "differs (outside)")
        lines.append(f"| {v.claim} | {v.config} | {mark} | {v.detail} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tradeflow drill determinism", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--json", type=Path, default=None, help="write the fingerprints and verdicts here")
    p.add_argument("--fingerprint", action="store_true", help="print this process's fingerprint (JSON) and exit")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if a.fingerprint:
        print(json.dumps(fingerprint()))
        return EXIT_OK
    unknown = [c for c in a.configs if c not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return EXIT_USAGE
    base = fingerprint()
    others = {c: run_child(c) for c in a.configs}
    verdicts = [v for c, doc in others.items() for v in compare(base, doc, c)]
    print(f"base: {base['cpu']}, torch {base['torch']} ({base['aten_capability']}, {base['torch_threads']} threads)")
    print(_table(verdicts))
    broken = [v for v in verdicts if v.in_contract and not v.holds]
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {
                    "base": base,
                    "configs": others,
                    "verdicts": [_asdict(v) for v in verdicts],
                    "holds": not broken,
                },
                indent=1,
            )
        )
    print(
        "contract holds" if not broken else f"contract broken: {', '.join(f'{v.claim} ({v.config})' for v in broken)}"
    )
    return EXIT_OK if not broken else EXIT_FAIL


def _asdict(v: Verdict) -> dict[str, Any]:
    return {"claim": v.claim, "config": v.config, "holds": v.holds, "detail": v.detail, "in_contract": v.in_contract}


if __name__ == "__main__":
    raise SystemExit(main())
