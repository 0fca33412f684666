"""Multi-process training entry point, compatible with ``torchrun``.

::

    python -m torch.distributed.run --standalone --nproc_per_node=N -m gpu_workers.ddp \\
        --config config.json --dataset rows.npz --out model.ckpt [--result result.json] \\
        [--validation-fraction 0.2 --test-fraction 0.1 | --n-folds 5 --fold 5] [--row-log DIR]

``--config`` is a :meth:`ModelConfig.to_dict` JSON object, ``--dataset`` a
:meth:`WindowDataset.save` file. Under torchrun (``MASTER_ADDR`` set) every
process joins a process group (NCCL on CUDA, gloo on CPU), the model is wrapped
in ``DistributedDataParallel`` and each rank trains on its
``DistributedSampler`` shard; ``batch_size`` is per rank. The training loop is
:func:`models.training.train`, the same one the in-process path runs, so a
world-size-1 torchrun on CPU produces the same checkpoint bytes (and sha256)
as ``train()`` in the caller's process, and N ranks with ``batch_size`` B train
like one process with ``N * B`` on the same rows per step (see
:mod:`models.training`; both tested, N = 2 on gloo). Run without torchrun, it
trains in-process without a process group.

``--row-log DIR``: every rank also writes ``DIR/rows.rank<R>.json``,
``{"rank", "world_size", "steps": [[epoch, step, [row, ...]], ...]}``, the
dataset rows that carried weight in each of its optimiser steps: an audit of
the sharding (every training row exactly once per epoch over all ranks).

Rank 0 writes the checkpoint (atomically) and a JSON result: ``sha256``,
``metrics``, ``best_epoch``, ``history``, ``device``, ``world_size``. Exit code
0 on success, 2 on a bad request (config, data, split). torchrun itself exits 1
when any rank fails, whatever the rank's code: ``tradeflow train ddp`` checks
the request first (:func:`check_request`) to keep exit 2 for a bad one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from models.config import InvalidConfig, ModelConfig
from models.dataset import (
    DatasetError,
    IntArray,
    Split,
    SplitError,
    WindowDataset,
    holdout_split,
    walk_forward_splits,
)
from models.training import DistContext, StepObserver, TrainResult, train
from runtime.exits import EXIT_OK, EXIT_USAGE

__all__ = ["check_request", "main", "run"]

_BAD_REQUEST = (InvalidConfig, DatasetError, SplitError, ValueError, OSError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_workers.ddp", description="(Distributed) training of one model")
    p.add_argument("--config", type=Path, required=True, help="ModelConfig JSON (flat dict)")
    p.add_argument("--dataset", type=Path, required=True, help="WindowDataset .npz")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (written by rank 0)")
    p.add_argument("--result", type=Path, default=None, help="result JSON path (default: <out>.json)")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--n-folds", type=int, default=0, help="walk-forward folds (0: holdout split)")
    p.add_argument("--fold", type=int, default=0, help="1-based fold to train when --n-folds > 0")
    p.add_argument("--embargo-bars", type=int, default=0, help="walk-forward embargo, in bars")
    p.add_argument("--row-log", type=Path, default=None, help="directory for each rank's rows-per-step record")
    return p


def _split(args: argparse.Namespace, dataset: WindowDataset) -> Split:
    if args.n_folds > 0:
        folds = walk_forward_splits(
            dataset.timestamps, args.n_folds, dataset.horizon_ns, args.embargo_bars * dataset.timeframe.nanos
        )
        fold: int = args.fold
        if not 1 <= fold <= len(folds):
            raise SplitError(f"--fold must be in 1..{len(folds)}, got {fold}")
        return folds[fold - 1]
    return holdout_split(
        dataset.timestamps,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        purge=dataset.horizon_ns,
    )


def _request(args: argparse.Namespace) -> tuple[ModelConfig, WindowDataset, Split]:
    config = ModelConfig.from_dict(json.loads(args.config.read_text()))
    dataset = WindowDataset.load(args.dataset)
    return config, dataset, _split(args, dataset)


def check_request(argv: Sequence[str]) -> str | None:
    """Why :func:`main` would refuse ``argv`` as a bad request (exit 2), or
    None. For launchers: torchrun reports a failed rank as exit 1 whatever its
    code, so a wrapper that wants exit 2 must check before it starts ranks.
    Unknown flags exit 2 here, as argparse does."""
    try:
        _request(_parser().parse_args(argv))
    except _BAD_REQUEST as exc:
        return str(exc)
    return None


def run(
    config: ModelConfig, dataset: WindowDataset, split: Split, on_step: StepObserver | None = None
) -> tuple[TrainResult, int, int]:
    """Train under the process group torchrun describes (or none); returns
    ``(result, rank, world_size)``. Tears the process group down."""
    launched = "MASTER_ADDR" in os.environ and "RANK" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = config.resolve_device()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not launched:
        return train(config, dataset, split, on_step=on_step), rank, world_size
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
        result = train(config, dataset, split, ctx=ctx, on_step=on_step)
        dist.barrier()
        return result, ctx.rank, ctx.world_size
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config, dataset, split = _request(args)
    except _BAD_REQUEST as exc:
        print(f"gpu_workers.ddp: bad request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    steps: list[tuple[int, int, list[int]]] = []
    on_step: StepObserver | None = None
    if args.row_log is not None:

        def on_step(epoch: int, step: int, rows: IntArray) -> None:
            steps.append((epoch, step, rows.tolist()))

    result, rank, world_size = run(config, dataset, split, on_step)
    if args.row_log is not None:
        args.row_log.mkdir(parents=True, exist_ok=True)
        record = {"rank": rank, "world_size": world_size, "steps": steps}
        (args.row_log / f"rows.rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        sha256 = result.save(args.out)
        doc = {
            "checkpoint": str(args.out),
            "sha256": sha256,
            "config_hash": config.config_hash(),
            "split": split.name,
            "device": result.device,
            "world_size": world_size,
            "best_epoch": result.best_epoch,
            "metrics": result.metrics,
            "history": [asdict(h) for h in result.history],
        }
        result_path = args.result or args.out.with_name(args.out.name + ".json")
        result_path.write_text(json.dumps(doc, indent=2, sort_keys=True))
        print(json.dumps({"sha256": sha256, "world_size": world_size, "device": result.device}))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
