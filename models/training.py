"""Training: one loop for every gradient-trained family, one closed-form fit
for the baseline, and metrics computed from predictions on held-out time.

Loss: ``cross_entropy(logits, y_class) + return_loss_weight *
mean(((expected_return - y_return) / return_scale)^2)``; ``return_scale`` is
the train-set std of the label return, so both terms are O(1).

Optimisation: AdamW; shuffled mini-batches (a ``DistributedSampler`` ordering,
seeded by ``config.seed`` and the epoch, also in a single process, so a
world-size-1 DDP run sees exactly the batches an in-process run sees); after
every epoch the validation loss is measured, the best state is kept, and
training stops after ``patience`` epochs without improvement; the best state is
restored at the end. Validation therefore selects the epoch: its metrics are
slightly optimistic, which is what ``Split.test`` is for.

Reproducibility: ``torch.manual_seed(seed)`` before the weights are built,
deterministic algorithms on, ``num_threads`` intra-op threads; the caller's
global settings and RNG state are restored afterwards. On CPU two runs with the same
config and data give bit-identical weights and metrics.

Device: ``config.resolve_device()`` (CUDA when ``auto`` and available), or the
device of the DDP process (:mod:`gpu_workers.ddp`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from models.baseline import LinearBaselineCore, fit_linear_baseline
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.config import ModelConfig
from models.dataset import IntArray, Split, SplitError, WindowDataset, fit_standardizer, return_scale
from models.inference import predict_windows
from models.metrics import evaluate_predictions
from models.nets import ForecastModel, build_model
from runtime.errors import BadInput

__all__ = [
    "DistContext",
    "EpochStats",
    "TrainResult",
    "TrainingDiverged",
    "evaluate_model",
    "train",
]


class TrainingDiverged(BadInput, RuntimeError):
    """The loss became NaN/inf. Not retriable as is: lower the learning rate."""


@dataclass(frozen=True, slots=True)
class DistContext:
    """This process's place in a torch.distributed job (set up by the caller).

    With ``world_size > 1`` or ``wrap`` the model is wrapped in
    ``DistributedDataParallel``; each rank trains on its ``DistributedSampler``
    shard of every epoch.
    """

    rank: int
    world_size: int
    device: torch.device
    wrap: bool = True


@dataclass(frozen=True, slots=True)
class EpochStats:
    """Mean training loss (this rank's shard) and validation loss of one epoch."""

    epoch: int
    train_loss: float
    val_loss: float


@dataclass(frozen=True, slots=True, eq=False)
class TrainResult:
    """A trained model (CPU, eval mode) and how it did.

    ``metrics``: ``val_*`` on the validation rows, ``test_*`` on the test rows
    when the split has some (see :mod:`models.metrics`), plus ``train_rows``,
    ``epochs_run``, ``best_epoch`` and ``best_val_loss``. ``data_start`` /
    ``data_end``: first decision time and last label time of the rows that
    shaped the model (train and validation).
    """

    model: ForecastModel
    config: ModelConfig
    feature_names: tuple[str, ...]
    feature_set_version: str
    metrics: dict[str, float]
    history: tuple[EpochStats, ...]
    best_epoch: int
    device: str
    data_start: int
    data_end: int

    def checkpoint_meta(self) -> CheckpointMeta:
        return CheckpointMeta(
            config=self.config,
            feature_names=self.feature_names,
            feature_set_version=self.feature_set_version,
            data_start=self.data_start,
            data_end=self.data_end,
            metrics=dict(self.metrics),
        )

    def save(self, path: Path) -> str:
        """Write the checkpoint; returns its sha256 for the registry event."""
        return save_checkpoint(path, self.model, self.checkpoint_meta())


class _RowCount(Dataset[int]):
    """Just a length, which is all a ``DistributedSampler`` needs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


@contextlib.contextmanager
def _determinism(num_threads: int, device: torch.device) -> Iterator[None]:
    """Deterministic kernels, a fixed thread count and a forked RNG for the
    run; restores the caller's global torch settings and RNG state afterwards
    (they are process-wide, and training should not reseed its caller)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
    )
    if device.type == "cuda":
        # cuBLAS is only deterministic with a fixed workspace; must be set before
        # its first handle is created, so it is a no-op if CUDA already ran.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # CUDA has ops without a deterministic kernel: warn there instead of failing the job.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(num_threads)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])
        torch.backends.cudnn.benchmark = previous[3]


def _loss(model: nn.Module, x: Tensor, y_class: Tensor, y_return: Tensor, scale: float, weight: float) -> Tensor:
    logits, expected = model(x)
    ce = nn.functional.cross_entropy(logits, y_class)
    mse = torch.mean(((expected - y_return) / scale) ** 2)
    return ce + weight * mse


def _validation_loss(
    model: ForecastModel, x: Tensor, y_class: Tensor, y_return: Tensor, scale: float, weight: float, batch: int
) -> float:
    """Row-weighted mean loss over the validation set (eval mode, no grad)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            sl = slice(start, start + batch)
            n = len(x[sl])
            total += float(_loss(model, x[sl], y_class[sl], y_return[sl], scale, weight)) * n
    return total / len(x)


def _tensors(
    dataset: WindowDataset, rows: IntArray, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.from_numpy(dataset.windows(rows)).to(dtype=dtype, device=device)
    y_class = torch.from_numpy(dataset.y_class[rows]).to(device)
    y_return = torch.from_numpy(dataset.y_return[rows]).to(dtype=dtype, device=device)
    return x, y_class, y_return


def _fit_gradient(
    config: ModelConfig,
    model: ForecastModel,
    dataset: WindowDataset,
    split: Split,
    device: torch.device,
    ctx: DistContext | None,
) -> tuple[tuple[EpochStats, ...], int]:
    scale = float(model.return_scale)
    weight = config.return_loss_weight
    x_tr, yc_tr, yr_tr = _tensors(dataset, split.train, torch.float32, device)
    x_va, yc_va, yr_va = _tensors(dataset, split.validation, torch.float32, device)
    distributed = ctx is not None and (ctx.world_size > 1 or ctx.wrap)
    net: nn.Module = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler: DistributedSampler[int] = DistributedSampler(
        _RowCount(len(split.train)),
        num_replicas=ctx.world_size if ctx else 1,
        rank=ctx.rank if ctx else 0,
        shuffle=True,
        seed=config.seed,
        drop_last=False,
    )
    history: list[EpochStats] = []
    best_loss = math.inf
    best_state: dict[str, Tensor] = {}
    best_epoch = 0
    stale = 0
    for epoch in range(config.max_epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64, device=device)
        net.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = _loss(net, x_tr[idx], yc_tr[idx], yr_tr[idx], scale, weight)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)  # typed twin of loss.backward()
            optimizer.step()
            total += loss.detach().to(torch.float64) * len(idx)  # no host sync per step
            count += len(idx)
        train_loss = float(total) / count
        val_loss = _validation_loss(model, x_va, yc_va, yr_va, scale, weight, max(config.batch_size, 1024))
        if distributed and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank must take the same early-stopping decision.
            shared = torch.tensor([val_loss], dtype=torch.float64, device=device)
            dist.all_reduce(shared)
            val_loss = float(shared) / dist.get_world_size()
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(f"epoch {epoch + 1}: train loss {train_loss}, validation loss {val_loss}")
        history.append(EpochStats(epoch=epoch + 1, train_loss=train_loss, val_loss=val_loss))
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    return tuple(history), best_epoch


def _fit_baseline(config: ModelConfig, model: ForecastModel, dataset: WindowDataset, split: Split) -> None:
    core = model.core
    if not isinstance(core, LinearBaselineCore):
        raise TypeError("linear_baseline family needs a LinearBaselineCore")
    with torch.no_grad():
        z = model.standardize(torch.from_numpy(dataset.windows(split.train))).numpy()
    y_unit = dataset.y_return[split.train] / float(model.return_scale)
    fit_linear_baseline(core, z, dataset.y_class[split.train], y_unit, config.ridge_alpha)


def evaluate_model(
    model: ForecastModel, config: ModelConfig, dataset: WindowDataset, rows: IntArray, prefix: str
) -> dict[str, float]:
    """Metrics of ``model`` on ``rows`` from its own predictions (CPU)."""
    prediction = predict_windows(model, dataset.windows(rows))
    return evaluate_predictions(
        probs=prediction.probs,
        expected_return=prediction.expected_return,
        score=prediction.score,
        y_class=dataset.y_class[rows],
        y_return=dataset.y_return[rows],
        timestamps=dataset.timestamps[rows],
        horizon_ns=dataset.horizon_ns,
        periods_per_year=dataset.periods_per_year,
        cost_bps=config.cost_bps,
        signal_threshold=config.signal_threshold,
        prefix=prefix,
    )


def train(config: ModelConfig, dataset: WindowDataset, split: Split, *, ctx: DistContext | None = None) -> TrainResult:
    """Fit ``config.family`` on ``split.train``, select on ``split.validation``,
    and score validation (and test) from predictions."""
    if dataset.window != config.window or dataset.horizon_bars != config.horizon_bars:
        raise ValueError(
            f"dataset built with window {dataset.window} / horizon {dataset.horizon_bars}, "
            f"config says {config.window} / {config.horizon_bars}"
        )
    if dataset.flat_band != config.flat_band:
        raise ValueError(f"dataset flat_band {dataset.flat_band} != config flat_band {config.flat_band}")
    if len(split.train) == 0 or len(split.validation) == 0:
        raise SplitError(f"split {split.name}: empty train or validation rows")
    device = ctx.device if ctx is not None else config.resolve_device()
    with _determinism(config.num_threads, device):
        torch.manual_seed(config.seed)
        model = build_model(config, dataset.n_features)
        mean, std = fit_standardizer(dataset, split.train)
        model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std), return_scale(dataset, split.train))
        history: tuple[EpochStats, ...] = ()
        best_epoch = 0
        if config.family == "linear_baseline":
            _fit_baseline(config, model, dataset, split)
        else:
            model.to(device)
            history, best_epoch = _fit_gradient(config, model, dataset, split, device, ctx)
            model.to("cpu")
        model.eval()
        metrics = evaluate_model(model, config, dataset, split.validation, "val")
        if len(split.test):
            metrics.update(evaluate_model(model, config, dataset, split.test, "test"))
    metrics["train_rows"] = float(len(split.train))
    metrics["epochs_run"] = float(len(history))
    metrics["best_epoch"] = float(best_epoch)
    if history:
        metrics["best_val_loss"] = min(h.val_loss for h in history)
    used = np.concatenate([split.train, split.validation])
    timestamps = dataset.timestamps[used]
    return TrainResult(
        model=model,
        config=config,
        feature_names=dataset.feature_names,
        feature_set_version=dataset.feature_set_version,
        metrics=metrics,
        history=history,
        best_epoch=best_epoch,
        device=str(device),
        data_start=int(timestamps.min()),
        data_end=int(timestamps.max()) + dataset.horizon_ns,
    )
