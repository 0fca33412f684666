"""Training: one loop for every gradient-trained family, one closed-form fit
for the baseline, and metrics computed from predictions on held-out time.

Loss: ``cross_entropy(logits, y_class) + return_loss_weight *
mean(((expected_return - y_return) / return_scale)^2)``; ``return_scale`` is
the train-set std of the label return, so both terms are O(1).

Optimisation: AdamW; shuffled mini-batches (a ``DistributedSampler`` ordering,
seeded by ``config.seed`` and the epoch, also in a single process: see
:func:`epoch_shard`); after every epoch the validation loss is measured, the
best state is kept, and training stops after ``patience`` epochs without
improvement; the best state is restored at the end. Validation therefore
selects the epoch: its metrics are slightly optimistic, which is what
``Split.test`` is for.

Data parallelism (:mod:`gpu_workers.ddp`): with ``W`` ranks of ``batch_size``
rows each, step ``k`` of the ``W`` ranks together covers exactly the rows of
step ``k`` of a single process with ``W * batch_size`` rows per step, and every
training row carries weight exactly once per epoch (the sampler's padding
copies carry weight 0). Each rank's loss is the sum of its rows' losses times
``W / rows in the step over all ranks``; DDP averages the gradients over the
``W`` ranks, so the step's gradient is the mean over the step's rows, as in
the single process. A world-size-W run therefore equals the single-process run
with ``W * batch_size`` up to float32 summation order (tested at W = 2), when
``dropout`` is 0: with dropout each rank draws its masks from a stream of its
own (seeded from ``seed`` and the rank once the weights are built), so the two
agree in distribution only.

Reproducibility: ``torch.manual_seed(seed)`` before the weights are built,
deterministic algorithms on, ``num_threads`` intra-op threads; the caller's
global settings and RNG state are restored afterwards. On CPU two runs with the same
config and data give bit-identical weights and metrics.

Device: ``config.resolve_device()`` (CUDA when ``auto`` and available), or the
device of the DDP process (:mod:`gpu_workers.ddp`). The rows go to the device
once per fit; steps gather theirs there by index. ``precision="bf16"`` runs the
forward under autocast (metrics within :data:`BF16_TOLERANCE` of fp32, not bit
for bit); :func:`train_ensemble` trains several trials of one architecture in
one vmapped loop. Design: docs/models.md#several-trials-at-once.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from models.baseline import LinearBaselineCore, fit_linear_baseline
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.config import ModelConfig
from models.dataset import IntArray, Split, SplitError, WindowDataset, fit_standardizer, return_scale
from models.inference import predict_windows
from models.metrics import evaluate_predictions
from models.nets import ForecastModel, GRUCore, build_model
from runtime.errors import BadInput

__all__ = [
    "BF16_TOLERANCE",
    "ENSEMBLE_WEIGHT_TOLERANCE",
    "DistContext",
    "EpochShard",
    "EpochStats",
    "StepObserver",
    "TrainResult",
    "TrainingDiverged",
    "epoch_shard",
    "evaluate_model",
    "precision_gaps",
    "train",
    "train_ensemble",
]

StepObserver = Callable[[int, int, IntArray], None]
"""Called before each optimiser step with ``(epoch, step, rows)``: the 1-based
epoch, the 0-based step, and the dataset rows that carry weight in this rank's
loss for that step (indices into the dataset, not into ``split.train``)."""


class TrainingDiverged(BadInput, RuntimeError):
    """The loss became NaN/inf. Not retriable as is: lower the learning rate."""


#: bf16 vs fp32 training of one config: metric -> (``"rel"`` or ``"abs"``, bound). The losses
#: relative, the rates absolute; the strategy metrics (pnl, Sharpe) are left out: a score near
#: ``signal_threshold`` flips a position on float rounding alone. docs/determinism.md.
BF16_TOLERANCE: dict[str, tuple[str, float]] = {
    "best_val_loss": ("rel", 0.01),
    "val_log_loss": ("rel", 0.01),
    "val_accuracy": ("abs", 0.03),
    "val_balanced_accuracy": ("abs", 0.03),
    "val_ic": ("abs", 0.03),
}
#: a vmapped ensemble member vs the same trial trained alone: largest |difference| of any weight
#: over that tensor's largest |weight| (docs/determinism.md)
ENSEMBLE_WEIGHT_TOLERANCE = 1e-4


def precision_gaps(reference: dict[str, float], other: dict[str, float]) -> dict[str, dict[str, float | bool]]:
    """Per :data:`BF16_TOLERANCE` metric: the gap of ``other`` from ``reference``, its bound and
    whether it is within (a metric present in only one of them is outside, gap NaN)."""
    out: dict[str, dict[str, float | bool]] = {}
    for name, (kind, bound) in BF16_TOLERANCE.items():
        if name not in reference and name not in other:
            continue
        if name not in reference or name not in other:
            out[name] = {"gap": math.nan, "bound": bound, "within": False}
            continue
        gap = abs(other[name] - reference[name])
        if kind == "rel":
            gap /= abs(reference[name])
        out[name] = {"gap": gap, "bound": bound, "within": gap <= bound}
    return out


#: with world_size > 1, rank r's dropout stream is seeded with ``seed + DROPOUT_STREAM_STRIDE * (r + 1)``
DROPOUT_STREAM_STRIDE = 1_000_003


@dataclass(frozen=True, slots=True)
class DistContext:
    """This process's place in a torch.distributed job (set up by the caller).

    With ``world_size > 1`` or ``wrap`` the model is wrapped in
    ``DistributedDataParallel``; each rank trains on its ``DistributedSampler``
    shard of every epoch (:func:`epoch_shard`). ``world_size`` must be the
    size of the process group DDP averages gradients over.
    """

    rank: int
    world_size: int
    device: torch.device
    wrap: bool = True


@dataclass(frozen=True, slots=True)
class EpochStats:
    """Mean training loss over the epoch's training rows (all ranks' shards
    together) and validation loss of one epoch."""

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


@dataclass(frozen=True, slots=True, eq=False)
class EpochShard:
    """One rank's training rows for one epoch, in step order.

    ``positions``: indices into the training rows, as the ``DistributedSampler``
    deals them to this rank (its padding copies included); ``real``: False for
    a padding copy; ``step_rows[k]``: the real rows of step ``k`` over all ranks,
    the denominator of that step's mean loss. Step ``k`` is
    ``positions[k * batch_size : (k + 1) * batch_size]``.
    """

    positions: IntArray
    real: npt.NDArray[np.bool_]
    step_rows: tuple[int, ...]
    batch_size: int


def epoch_shard(n_rows: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> EpochShard:
    """Rank ``rank``'s share of epoch ``epoch`` (0-based) of ``n_rows`` training rows.

    ``DistributedSampler`` (shuffle, ``seed + epoch``) permutes the rows, pads
    the permutation with its own first rows to a multiple of ``world_size``
    and deals position ``p`` to rank ``p % world_size``: every rank gets
    ``ceil(n_rows / world_size)`` rows, hence the same number of steps (DDP
    needs every rank in every step). Step ``k`` of rank ``r`` holds positions
    ``r + world_size * j`` for ``j`` in ``[k * batch_size, (k + 1) * batch_size)``,
    so step ``k`` of all ranks together is the contiguous block of positions
    ``[k * B * W, (k + 1) * B * W)``: step ``k`` of one process with
    ``batch_size * world_size`` rows. Positions ``>= n_rows`` are the padding.
    """
    sampler: DistributedSampler[int] = DistributedSampler(
        _RowCount(n_rows), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    positions = np.fromiter(sampler, dtype=np.int64)
    real = rank + world_size * np.arange(len(positions)) < n_rows
    step_rows = tuple(
        min(world_size * (start + batch_size), n_rows) - world_size * start
        for start in range(0, len(positions), batch_size)
    )
    return EpochShard(positions=positions, real=real, step_rows=step_rows, batch_size=batch_size)


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


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast for ``precision="bf16"``; nothing at all for fp32 (its path stays bit for bit)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _row_losses(
    model: nn.Module,
    x: Tensor,
    y_class: Tensor,
    y_return: Tensor,
    scale: float,
    weight: float,
    precision: str = "fp32",
) -> Tensor:
    """Per-row loss; its mean is the loss in the module docstring. Under bf16 the forward runs
    in autocast and the loss in float32."""
    with _autocast(x.device, precision):
        logits, expected = model(x)
    if precision != "fp32":
        logits, expected = logits.float(), expected.float()
    ce = nn.functional.cross_entropy(logits, y_class, reduction="none")
    return ce + weight * torch.square((expected - y_return) / scale)


def _validation_loss(
    model: ForecastModel,
    x: Tensor,
    y_class: Tensor,
    y_return: Tensor,
    scale: float,
    weight: float,
    batch: int,
    precision: str = "fp32",
) -> float:
    """Row-weighted mean loss over the validation set (eval mode, no grad)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            sl = slice(start, start + batch)
            total += float(_row_losses(model, x[sl], y_class[sl], y_return[sl], scale, weight, precision).sum())
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
    on_step: StepObserver | None,
) -> tuple[tuple[EpochStats, ...], int]:
    scale = float(model.return_scale)
    weight = config.return_loss_weight
    precision = config.precision
    # Device-resident data: every training and validation row goes to the device once per fit;
    # each step gathers its rows by index there (no DataLoader, no host copy per batch).
    x_tr, yc_tr, yr_tr = _tensors(dataset, split.train, torch.float32, device)
    x_va, yc_va, yr_va = _tensors(dataset, split.validation, torch.float32, device)
    distributed = ctx is not None and (ctx.world_size > 1 or ctx.wrap)
    net: nn.Module = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rank, world_size = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    n_train = len(split.train)
    history: list[EpochStats] = []
    best_loss = math.inf
    best_state: dict[str, Tensor] = {}
    best_epoch = 0
    stale = 0
    for epoch in range(config.max_epochs):
        shard = epoch_shard(n_train, config.batch_size, config.seed, epoch, rank, world_size)
        order = torch.from_numpy(shard.positions).to(device)
        row_weight = torch.from_numpy(shard.real).to(dtype=torch.float32, device=device)
        net.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for step, step_rows in enumerate(shard.step_rows):
            sl = slice(step * config.batch_size, (step + 1) * config.batch_size)
            idx = order[sl]
            losses = _row_losses(net, x_tr[idx], yc_tr[idx], yr_tr[idx], scale, weight, precision) * row_weight[sl]
            # DDP divides the summed gradients by world_size: the step's gradient is the mean over its step_rows rows.
            loss = losses.sum() * (world_size / step_rows)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)  # typed twin of loss.backward()
            optimizer.step()
            total += losses.detach().sum().to(torch.float64)  # no host sync per step
            if on_step is not None:
                on_step(epoch + 1, step, split.train[shard.positions[sl][shard.real[sl]]])
        val_loss = _validation_loss(model, x_va, yc_va, yr_va, scale, weight, _val_batch(config), precision)
        sums = torch.stack([total, torch.tensor(val_loss, dtype=torch.float64, device=device)])
        if world_size > 1:
            # Training loss over all shards; the validation loss is the same on every rank (same weights, all
            # validation rows), averaged anyway so that every rank takes the same early-stopping decision.
            dist.all_reduce(sums)
        train_loss = float(sums[0]) / n_train
        val_loss = float(sums[1]) / world_size
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


def _val_batch(config: ModelConfig) -> int:
    return max(config.batch_size, 1024)


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


def _check_inputs(config: ModelConfig, dataset: WindowDataset, split: Split) -> None:
    if dataset.window != config.window or dataset.horizon_bars != config.horizon_bars:
        raise ValueError(
            f"dataset built with window {dataset.window} / horizon {dataset.horizon_bars}, "
            f"config says {config.window} / {config.horizon_bars}"
        )
    if dataset.flat_band != config.flat_band:
        raise ValueError(f"dataset flat_band {dataset.flat_band} != config flat_band {config.flat_band}")
    if len(split.train) == 0 or len(split.validation) == 0:
        raise SplitError(f"split {split.name}: empty train or validation rows")


def _seeded_model(config: ModelConfig, dataset: WindowDataset, split: Split) -> ForecastModel:
    """``config``'s initial weights (from its seed) with the train-set normalisation installed."""
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.n_features)
    mean, std = fit_standardizer(dataset, split.train)
    model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std), return_scale(dataset, split.train))
    return model


def _scored(
    config: ModelConfig,
    model: ForecastModel,
    dataset: WindowDataset,
    split: Split,
    history: tuple[EpochStats, ...],
    best_epoch: int,
    device: torch.device,
) -> TrainResult:
    """The trained (CPU, eval-mode) model scored on validation (and test) rows."""
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


def train(
    config: ModelConfig,
    dataset: WindowDataset,
    split: Split,
    *,
    ctx: DistContext | None = None,
    on_step: StepObserver | None = None,
) -> TrainResult:
    """Fit ``config.family`` on ``split.train``, select on ``split.validation``,
    and score validation (and test) from predictions. ``ctx``: this process's
    place in a DDP job (None: a single process); ``on_step``: told which rows
    each optimiser step trains on (gradient families only; for audits)."""
    _check_inputs(config, dataset, split)
    device = ctx.device if ctx is not None else config.resolve_device()
    with _determinism(config.num_threads, device):
        model = _seeded_model(config, dataset, split)
        if ctx is not None and ctx.world_size > 1:
            # the weights are built (the same on every rank); dropout draws from a stream of the rank's
            # own, so rows at one batch position on two ranks do not share a mask
            torch.manual_seed(config.seed + DROPOUT_STREAM_STRIDE * (ctx.rank + 1))
        history: tuple[EpochStats, ...] = ()
        best_epoch = 0
        if config.family == "linear_baseline":
            _fit_baseline(config, model, dataset, split)
        else:
            model.to(device)
            history, best_epoch = _fit_gradient(config, model, dataset, split, device, ctx, on_step)
            model.to("cpu")
        return _scored(config, model, dataset, split, history, best_epoch, device)


# ---------------------------------------------------------------------------
# Ensembles: K trials of one architecture in one vmapped training loop
# ---------------------------------------------------------------------------

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class _StackedAdamW:
    """``torch.optim.AdamW``'s single-tensor update (default betas and eps, no amsgrad) on stacked
    ``[K, ...]`` parameters, member k with its own ``lr`` and ``weight_decay``, in AdamW's order of
    operations. Its per-member factors are float32 tensors on the device (made once, so a step
    copies nothing from the host), where AdamW multiplies by Python floats."""

    def __init__(self, params: dict[str, Tensor], lrs: list[float], decays: list[float]) -> None:
        like = next(iter(params.values()))
        self.params = params
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=like.device)
        shrink = [1 - lr * wd for lr, wd in zip(lrs, decays, strict=True)]
        self.shrink = torch.tensor(shrink, dtype=torch.float64).to(dtype=like.dtype, device=like.device)
        self.steps = 0

    @staticmethod
    def _shaped(v: Tensor, like: Tensor) -> Tensor:
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def step(self, grads: dict[str, Tensor]) -> None:
        self.steps += 1
        beta1, beta2 = _ADAM_BETAS
        bias2_sqrt = (1 - beta2**self.steps) ** 0.5
        neg_step = (-self.lr / (1 - beta1**self.steps)).to(self.shrink.dtype)
        with torch.no_grad():
            for name, p in self.params.items():
                g = grads[name]
                m, v = self.exp_avg[name], self.exp_avg_sq[name]
                p.mul_(self._shaped(self.shrink, p))
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / bias2_sqrt).add_(_ADAM_EPS)
                p.add_(m / denom * self._shaped(neg_step, p))


def train_ensemble(configs: Sequence[ModelConfig], dataset: WindowDataset, split: Split) -> tuple[TrainResult, ...]:
    """Train ``len(configs)`` trials of one architecture at once: their weights stacked
    (``torch.func.stack_module_state``) and every step one vmapped forward/backward
    (``vmap(grad(functional_call))``) plus one stacked AdamW update, on the device of the
    first config. Per trial: ``lr``, ``weight_decay`` and ``seed`` (initial weights and
    shuffling); everything else (:meth:`ModelConfig.architecture`) must be equal.

    Each member follows :func:`train` step for step: the same initial weights, the same
    rows per step, the same loss, AdamW's update, its own early stopping (a stopped member
    keeps its best state and its history ends where alone it would). Not bit-identical:
    vmap turns each gemm into a batched matmul whose sums round differently, so a member's
    weights equal its solo training within a tolerance (tested: 1e-4 relative on the
    weights, docs/determinism.md). The GRU runs its equations unrolled here
    (:meth:`models.nets.GRUCore.unrolled_state`), not ``nn.GRU``'s fused kernel: rounding
    again. With ``dropout > 0`` the masks come from one stream for
    all members (vmap ``randomness="different"``), so members agree with solo training in
    distribution only. Results come back in the order of ``configs``.
    """
    if not configs:
        raise ValueError("an ensemble needs at least one config")
    first = configs[0]
    for cfg in configs[1:]:
        if cfg.architecture() != first.architecture():
            raise ValueError("ensemble members must share everything but lr, weight_decay and seed")
    if first.family == "linear_baseline":
        raise ValueError("linear_baseline has no gradient training to ensemble")
    _check_inputs(first, dataset, split)
    device = first.resolve_device()
    with _determinism(first.num_threads, device):
        models = [_seeded_model(cfg, dataset, split) for cfg in configs]
        torch.manual_seed(first.seed)  # dropout's stream
        histories, best_epochs, best_states = _fit_ensemble(list(configs), models, dataset, split, device)
        results = []
        for cfg, model, history, best_epoch, state in zip(
            configs, models, histories, best_epochs, best_states, strict=True
        ):
            model.to("cpu")
            model.load_state_dict(state)
            results.append(_scored(cfg, model, dataset, split, history, best_epoch, device))
    return tuple(results)


def _fit_ensemble(
    configs: list[ModelConfig],
    models: list[ForecastModel],
    dataset: WindowDataset,
    split: Split,
    device: torch.device,
) -> tuple[list[tuple[EpochStats, ...]], list[int], list[dict[str, Tensor]]]:
    cfg = configs[0]
    k_members = len(configs)
    scale = float(models[0].return_scale)
    weight = cfg.return_loss_weight
    precision = cfg.precision
    params, buffers = stack_module_state([m.to(device) for m in models])
    params = {name: p.detach().clone() for name, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    if isinstance(base.core, GRUCore):
        base.core.unrolled = True  # aten::gru has no vmap batching rule
    x_tr, yc_tr, yr_tr = _tensors(dataset, split.train, torch.float32, device)
    x_va, yc_va, yr_va = _tensors(dataset, split.validation, torch.float32, device)
    n_train, n_val = len(split.train), len(split.validation)

    def member_loss(
        p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, yc: Tensor, yr: Tensor, inv_rows: Tensor
    ) -> tuple[Tensor, Tensor]:
        with _autocast(device, precision):
            logits, expected = functional_call(base, (p, b), (x,))
        if precision != "fp32":
            logits, expected = logits.float(), expected.float()
        losses = nn.functional.cross_entropy(logits, yc, reduction="none") + weight * torch.square(
            (expected - yr) / scale
        )
        return losses.sum() * inv_rows, losses.detach().sum()

    def member_val(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, yc: Tensor, yr: Tensor) -> Tensor:
        with _autocast(device, precision):
            logits, expected = functional_call(base, (p, b), (x,))
        if precision != "fp32":
            logits, expected = logits.float(), expected.float()
        ce = nn.functional.cross_entropy(logits, yc, reduction="none")
        return (ce + weight * torch.square((expected - yr) / scale)).sum()

    grad_step = vmap(grad(member_loss, has_aux=True), in_dims=(0, 0, 0, 0, 0, None), randomness="different")
    val_step = vmap(member_val, in_dims=(0, 0, None, None, None), randomness="different")
    lrs = [c.lr for c in configs]
    optimizer = _StackedAdamW(params, lrs, [c.weight_decay for c in configs])
    inv_rows: dict[int, Tensor] = {}
    histories: list[list[EpochStats]] = [[] for _ in configs]
    best_loss = [math.inf] * k_members
    best_epoch = [0] * k_members
    best_states: list[dict[str, Tensor]] = [{} for _ in configs]
    stale = [0] * k_members
    running = [True] * k_members
    for epoch in range(cfg.max_epochs):
        shards = [epoch_shard(n_train, cfg.batch_size, c.seed, epoch, 0, 1) for c in configs]
        order = torch.from_numpy(np.stack([s.positions for s in shards])).to(device)  # [K, n_train]
        base.train()
        total = torch.zeros(k_members, dtype=torch.float64, device=device)
        for step, step_rows in enumerate(shards[0].step_rows):
            idx = order[:, step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if step_rows not in inv_rows:
                inv_rows[step_rows] = torch.tensor(1.0 / step_rows, dtype=torch.float32, device=device)
            grads, sums = grad_step(params, buffers, x_tr[idx], yc_tr[idx], yr_tr[idx], inv_rows[step_rows])
            optimizer.step(grads)
            total += sums.to(torch.float64)
        base.eval()
        val_total = torch.zeros(k_members, dtype=torch.float64, device=device)
        with torch.no_grad():
            batch = _val_batch(cfg)
            for start in range(0, n_val, batch):
                sl = slice(start, start + batch)
                val_total += val_step(params, buffers, x_va[sl], yc_va[sl], yr_va[sl]).to(torch.float64)
        train_losses = (total / n_train).tolist()
        val_losses = (val_total / n_val).tolist()
        for k in range(k_members):
            if not running[k]:
                continue
            if not (math.isfinite(train_losses[k]) and math.isfinite(val_losses[k])):
                raise TrainingDiverged(
                    f"ensemble member {k} (lr {lrs[k]}), epoch {epoch + 1}: "
                    f"train loss {train_losses[k]}, validation loss {val_losses[k]}"
                )
            histories[k].append(EpochStats(epoch=epoch + 1, train_loss=train_losses[k], val_loss=val_losses[k]))
            if val_losses[k] < best_loss[k]:
                best_loss[k], best_epoch[k], stale[k] = val_losses[k], epoch + 1, 0
                state = {n: p[k].detach().to("cpu", copy=True) for n, p in params.items()}
                state.update({n: b[k].detach().to("cpu", copy=True) for n, b in buffers.items()})
                best_states[k] = state
            else:
                stale[k] += 1
                running[k] = stale[k] < cfg.patience
        if not any(running):
            break
    return [tuple(h) for h in histories], best_epoch, best_states
