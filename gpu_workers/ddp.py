"""Multi-process training entry point, compatible with ``torchrun``.

::

    python -m torch.distributed.run --standalone --nproc_per_node=N -m gpu_workers.ddp \\
        --config config.json --dataset rows.npz --out model.ckpt [--result result.json] \\
        [--validation-fraction 0.2 --test-fraction 0.1 | --n-folds 5 --fold 5]

``--config`` is a :meth:`ModelConfig.to_dict` JSON object, ``--dataset`` a
:meth:`WindowDataset.save` file. Under torchrun (``MASTER_ADDR`` set) every
process joins a process group (NCCL on CUDA, gloo on CPU), the model is wrapped
in ``DistributedDataParallel`` and each rank trains on its
``DistributedSampler`` shard; ``batch_size`` is per rank. The training loop is
:func:`models.training.train`, the same one the in-process path runs, so a
world-size-1 torchrun on CPU produces the same checkpoint bytes (and sha256)
as ``train()`` in the caller's process: that is the smoke test here. Run
without torchrun, it trains in-process without a process group.

Rank 0 writes the checkpoint (atomically) and a JSON result: ``sha256``,
``metrics``, ``best_epoch``, ``history``, ``device``, ``world_size``. Exit code
0 on success, 2 on a bad request (config, data, split).
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
from models.dataset import DatasetError, Split, SplitError, WindowDataset, holdout_split, walk_forward_splits
from models.training import DistContext, TrainResult, train
from runtime.exits import EXIT_OK, EXIT_USAGE

__all__ = ["main", "run"]


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


def run(config: ModelConfig, dataset: WindowDataset, split: Split) -> tuple[TrainResult, int, int]:
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
        return train(config, dataset, split), rank, world_size
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
        result = train(config, dataset, split, ctx=ctx)
        dist.barrier()
        return result, ctx.rank, ctx.world_size
    finally:
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = ModelConfig.from_dict(json.loads(args.config.read_text()))
        dataset = WindowDataset.load(args.dataset)
        split = _split(args, dataset)
    except (InvalidConfig, DatasetError, SplitError, ValueError, OSError) as exc:
        print(f"gpu_workers.ddp: bad request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result, rank, world_size = run(config, dataset, split)
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
