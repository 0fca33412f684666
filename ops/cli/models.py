"""``tradeflow train`` / ``tradeflow models``: submit training jobs, read the registry."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg

from agents.features.spec import FEATURE_SET_VERSION
from runtime.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from runtime.publish import RecordPublisher
from storage import registry
from topics.records import Timeframe, TrainJob
from topics.units import parse_when


def _hyperparams(pairs: list[str]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--hp expects name=value, got {p!r}")
        k, v = p.split("=", 1)
        parsed: str | int | float | bool
        try:
            parsed = json.loads(v)
            if not isinstance(parsed, (str, int, float, bool)):
                parsed = v
        except json.JSONDecodeError:
            parsed = v
        out[k] = parsed
    return out


def cmd_train_submit(a: argparse.Namespace) -> int:
    now = time.time_ns()
    job = TrainJob.new(
        ts_event=now,
        ts_init=now,
        job_id=a.job_id or f"train-{uuid.uuid4().hex[:12]}",
        model_family=a.family,
        symbols=tuple(a.symbols),
        timeframe=Timeframe(a.timeframe),
        data_start=parse_when(a.start),
        data_end=parse_when(a.end),
        feature_set_version=a.feature_set_version,
        seed=a.seed,
        hyperparams=_hyperparams(a.hp or []),
    )

    async def main() -> None:
        async with RecordPublisher(a.bootstrap, a.namespace, name="cli") as pub:
            await pub.publish([job])

    asyncio.run(main())
    print(json.dumps({"job_id": job.job_id, "event_id": job.event_id, "topic": "jobs.train"}))
    return EXIT_OK


def cmd_models_list(a: argparse.Namespace) -> int:
    async def main() -> list[registry.VersionRow]:
        conn = await asyncpg.connect(a.dsn)
        try:
            return await registry.latest_versions(conn)
        finally:
            await conn.close()

    rows = asyncio.run(main())
    if not rows:
        print("no model versions registered")
        return EXIT_OK
    print(f"{'model_id':<28} {'version':<14} {'stage':<12} {'val_log_loss':>12} {'val_ic':>8} {'val_pnl_sharpe':>14}")
    for r in rows:
        m = json.loads(r["metrics"])

        def f(k: str, m: dict[str, float] = m) -> str:
            return f"{m[k]:.4f}" if k in m else "n/a"

        print(
            f"{r['model_id']:<28} {r['version']:<14} {r['stage']:<12} {f('val_log_loss'):>12} {f('val_ic'):>8} "
            f"{f('val_pnl_sharpe'):>10}"
        )
    return EXIT_OK


def cmd_models_show(a: argparse.Namespace) -> int:
    async def main() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(a.dsn)
        try:
            return await registry.events(conn, a.model_id, a.version)
        finally:
            await conn.close()

    rows = asyncio.run(main())
    if not rows:
        print(f"{a.model_id} {a.version or ''}: not in the registry", file=sys.stderr)
        return EXIT_FAIL
    for r in rows:
        d = dict(r)
        d["config"] = json.loads(d["config"])
        d["metrics"] = json.loads(d["metrics"])
        print(json.dumps(d, indent=2, default=str))
    return EXIT_OK


def cmd_train_ddp(a: argparse.Namespace) -> int:
    """torchrun over gpu_workers.ddp: one process per GPU (or CPU processes with gloo).

    A bad request (config, dataset, split) is refused here with exit 2 before
    any process starts (torchrun would report it as exit 1); otherwise the exit
    code is torchrun's: 0, or 1 when a rank failed.
    """
    from gpu_workers.ddp import check_request

    ddp_args = a.ddp_args[1:] if a.ddp_args[:1] == ["--"] else a.ddp_args
    reason = check_request(ddp_args)
    if reason is not None:
        print(f"tradeflow train ddp: bad request: {reason}", file=sys.stderr)
        return EXIT_USAGE
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={a.nproc}",
        "-m",
        "gpu_workers.ddp",
        *ddp_args,
    ]
    return subprocess.call(argv, env=os.environ.copy())  # noqa: S603 - our own module


def cmd_train_tune(a: argparse.Namespace) -> int:
    from gpu_workers.agents import artifacts_dir
    from gpu_workers.tuning import DEFAULT_PARALLEL, TuneSpec, tune

    parallel = DEFAULT_PARALLEL if a.parallel is None else a.parallel
    if parallel < 1:
        print(f"tradeflow train tune: --parallel must be >= 1, got {parallel}", file=sys.stderr)
        return EXIT_USAGE
    spec = TuneSpec(
        study=a.study,
        family=a.family,
        symbol=a.symbol,
        timeframe=Timeframe(a.timeframe),
        data_start=parse_when(a.start),
        data_end=parse_when(a.end),
        feature_set_version=a.feature_set_version,
        trials=a.trials,
        seed=a.seed,
        fixed=tuple(_hyperparams(a.hp or []).items()),
    )
    study = asyncio.run(
        tune(
            spec,
            dsn=a.dsn,
            bootstrap=a.bootstrap,
            namespace=a.namespace,
            artifacts=artifacts_dir(),
            parallel=parallel,
        )
    )
    done = [t for t in study.trials if t.value is not None]
    print(
        json.dumps(
            {
                "study": study.study_name,
                "trials": len(study.trials),
                "completed": len(done),
                "best": None
                if not done
                else {"value": study.best_value, "params": study.best_params, **study.best_trial.user_attrs},
            },
            indent=2,
            default=str,
        )
    )
    return EXIT_OK if done else EXIT_FAIL


def add_parsers(sub: Any, infra: Any) -> None:
    sp = sub.add_parser("train", help="training jobs")
    tsub = sp.add_subparsers(dest="train_cmd", required=True)
    tp = tsub.add_parser("submit", help="publish a jobs.train record (a trainer worker picks it up)")
    infra(tp)
    tp.add_argument("--family", default="mlp", help="mlp | gru | tcn | linear_baseline")
    tp.add_argument("--symbols", nargs="+", required=True)
    tp.add_argument("--timeframe", default="1h")
    tp.add_argument("--start", required=True)
    tp.add_argument("--end", required=True)
    tp.add_argument("--seed", type=int, default=7)
    tp.add_argument("--feature-set-version", default=FEATURE_SET_VERSION)
    tp.add_argument("--hp", action="append", help="hyperparameter name=value (repeatable), e.g. --hp lr=0.001")
    tp.add_argument("--job-id", default="")
    tp.set_defaults(fn=cmd_train_submit)
    tp = tsub.add_parser("tune", help="optuna search; each trial is a training job; the study lives in Postgres")
    infra(tp, dsn=True)
    tp.add_argument("--study", required=True)
    tp.add_argument("--family", default="mlp")
    tp.add_argument("--symbol", required=True)
    tp.add_argument("--timeframe", default="1h")
    tp.add_argument("--start", required=True)
    tp.add_argument("--end", required=True)
    tp.add_argument("--trials", type=int, default=10)
    tp.add_argument("--seed", type=int, default=7)
    tp.add_argument("--feature-set-version", default=FEATURE_SET_VERSION)
    tp.add_argument("--hp", action="append", help="fixed hyperparameter name=value (not searched)")
    tp.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="trials asked and trained at once (default gpu_workers.tuning.DEFAULT_PARALLEL, 8; 1: one at a time)",
    )
    tp.set_defaults(fn=cmd_train_tune)
    tp = tsub.add_parser("ddp", help="multi-GPU training via torchrun (args after -- go to gpu_workers.ddp)")
    tp.add_argument("--nproc", type=int, default=1)
    tp.add_argument("ddp_args", nargs=argparse.REMAINDER)
    tp.set_defaults(fn=cmd_train_ddp)

    sp = sub.add_parser("models", help="the model registry")
    msub = sp.add_subparsers(dest="models_cmd", required=True)
    mp = msub.add_parser("list", help="every version with its current stage and validation metrics")
    infra(mp, dsn=True)
    mp.set_defaults(fn=cmd_models_list)
    mp = msub.add_parser("show", help="all registry events of a model (or one version): config, metrics, hashes")
    infra(mp, dsn=True)
    mp.add_argument("model_id")
    mp.add_argument("version", nargs="?")
    mp.set_defaults(fn=cmd_models_show)
