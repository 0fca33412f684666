"""Model configuration: data, not code.

A :class:`ModelConfig` is everything that decides what a training run
produces (architecture, optimiser, labels, evaluation costs, seed, device).
It round-trips through a flat dict of JSON scalars (:meth:`ModelConfig.to_dict`
/ :meth:`ModelConfig.from_dict`) because that is what the ``TrainJob.hyperparams``
and ``ModelRegistryEvent.config`` record fields carry; ``hidden_sizes`` is
therefore written as a comma-separated string (``"64,32"``).

``config_hash()`` is the sha256 of the canonical JSON of that dict: two runs
with the same hash were asked for the same thing, so their metrics are
comparable and (on CPU) their weights are identical.

Versioning: ``config_version`` names the meaning of the fields. A change that
alters what an existing field means, or adds a field whose default changes a
result, bumps :data:`CONFIG_VERSION` with a changelog line here.

Adding a *value* (a family) changes no existing config, its dict or its hash,
so it does not bump the version; the family list is :data:`FAMILIES`.

Changelog
---------
- 1: initial fields. Families since: ``tcn`` (added without a version bump:
  existing configs keep their bytes and hashes, tested). ``precision`` added
  without a bump: its default ``fp32`` is what every earlier config trained
  with, and :meth:`ModelConfig.to_dict` leaves the field out at that default,
  so existing configs keep their dict, bytes and hash (tested).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

from runtime.errors import BadInput
from topics.records import TrainJob

__all__ = [
    "CONFIG_VERSION",
    "DEVICES",
    "FAMILIES",
    "PRECISIONS",
    "InvalidConfig",
    "ModelConfig",
]

CONFIG_VERSION: Final = 1
FAMILIES: Final = ("mlp", "gru", "tcn", "linear_baseline")
DEVICES: Final = ("auto", "cpu", "cuda")
PRECISIONS: Final = ("fp32", "bf16")
#: fields :meth:`ModelConfig.to_dict` leaves out while they hold this default (added after version 1)
_OMITTED_AT_DEFAULT: Final = {"precision": "fp32"}


class InvalidConfig(BadInput, ValueError):
    """A hyperparameter that cannot work. Not retriable: a human fixes the job.

    ``field`` names the offending field and ``reason`` says what is wrong, so a
    training worker can put both into a failed ``JobResult``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid model config: {field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """Hyperparameters of one model; validated on construction.

    Architecture
        ``family``: ``mlp`` (flattened window), ``gru`` (recurrent over the
        window), ``tcn`` (causal dilated convolutions over the window) or
        ``linear_baseline`` (closed-form ridge + Newton logistic, no gradient
        training). ``window``: number of past feature vectors per sample, the
        newest at the decision time. ``hidden_sizes``: MLP layer widths; for
        the GRU the first entry is the recurrent state size, for the TCN the
        channel width of its convolution stack (whose depth follows from
        ``window``), and the rest are the head's layers. ``dropout`` applies
        after hidden layers.
        ``input_clip``: standardised inputs are clipped to +-this many standard
        deviations, so one extreme bar (exchange glitch, flash crash) cannot
        dominate a forward pass.
    Optimisation
        AdamW with ``lr`` and ``weight_decay``; ``batch_size`` rows per step
        (per process under DDP); at most ``max_epochs``; early stopping after
        ``patience`` epochs without a validation-loss improvement;
        ``return_loss_weight`` weighs the MSE of the (unit-scaled) return head
        against the cross-entropy of the direction head. ``ridge_alpha`` is the
        L2 penalty of the linear baseline (both its regressions).
    Labels
        ``horizon_bars``: label = log(close[t+h] / close[t]); ``flat_band``:
        ``|label| <= flat_band`` is the flat class.
    Evaluation (used only for the reported strategy metrics)
        ``fee_bps`` + ``slippage_bps`` are charged per unit of position change;
        ``signal_threshold``: a position is taken only when
        ``|p_up - p_down| > signal_threshold``.
    Reproducibility
        ``seed`` seeds weights, dropout and shuffling; ``device`` is ``auto``
        (CUDA when available), ``cpu`` or ``cuda``; ``num_threads`` is the
        torch intra-op thread count used for the run on CPU.
        ``precision``: ``fp32`` (the default; bit-reproducible on CPU) or
        ``bf16``: the training forward and loss under ``torch.autocast``
        (bfloat16 matmuls, float32 weights and optimiser state; CUDA, and CPU
        for testing). Inference and the reported metrics always run in float32.
        bf16 metrics are compared with fp32 ones with a tolerance
        (docs/determinism.md), never bit for bit.
    """

    family: str = "mlp"
    window: int = 16
    hidden_sizes: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    input_clip: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 5
    return_loss_weight: float = 1.0
    ridge_alpha: float = 10.0
    horizon_bars: int = 1
    flat_band: float = 0.002
    fee_bps: float = 10.0
    slippage_bps: float = 5.0
    signal_threshold: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_threads: int = 1
    precision: str = "fp32"
    config_version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ----------------------------------------------------------
    def _validate(self) -> None:
        if self.config_version != CONFIG_VERSION:
            raise InvalidConfig(
                "config_version", f"{self.config_version!r} is not supported; this code speaks {CONFIG_VERSION}"
            )
        if self.family not in FAMILIES:
            raise InvalidConfig("family", f"unknown family {self.family!r}; expected one of {list(FAMILIES)}")
        if self.device not in DEVICES:
            raise InvalidConfig("device", f"unknown device {self.device!r}; expected one of {list(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise InvalidConfig(
                "precision", f"unknown precision {self.precision!r}; expected one of {list(PRECISIONS)}"
            )
        _int_at_least("window", self.window, 1)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("max_epochs", self.max_epochs, 1)
        _int_at_least("patience", self.patience, 1)
        _int_at_least("horizon_bars", self.horizon_bars, 1)
        _int_at_least("num_threads", self.num_threads, 1)
        _int_at_least("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise InvalidConfig("seed", f"must be < 2**63, got {self.seed}")
        if not isinstance(self.hidden_sizes, tuple) or not self.hidden_sizes:
            raise InvalidConfig("hidden_sizes", "must be a non-empty tuple of layer widths")
        for width in self.hidden_sizes:
            _int_at_least("hidden_sizes", width, 1)
        _float_in("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _float_in("lr", self.lr, low=0.0, low_open=True)
        _float_in("weight_decay", self.weight_decay, low=0.0)
        _float_in("input_clip", self.input_clip, low=0.0, low_open=True)
        _float_in("return_loss_weight", self.return_loss_weight, low=0.0)
        _float_in("ridge_alpha", self.ridge_alpha, low=0.0, low_open=True)
        _float_in("flat_band", self.flat_band, low=0.0)
        _float_in("fee_bps", self.fee_bps, low=0.0)
        _float_in("slippage_bps", self.slippage_bps, low=0.0)
        _float_in("signal_threshold", self.signal_threshold, low=0.0, high=1.0, high_open=True)

    # -- dict round trip -----------------------------------------------------
    def to_dict(self) -> dict[str, str | int | float | bool]:
        """Flat JSON-scalar dict (fits ``TrainJob.hyperparams`` / registry ``config``).

        Fields added after version 1 are left out while they hold their default
        (``precision="fp32"``), so older configs keep their dict and hash."""
        out: dict[str, str | int | float | bool] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _OMITTED_AT_DEFAULT and value == _OMITTED_AT_DEFAULT[f.name]:
                continue
            out[f.name] = ",".join(str(w) for w in value) if f.name == "hidden_sizes" else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are errors.

        Missing keys take their defaults, so a job may name only what it
        changes. ``hidden_sizes`` may be ``"64,32"`` or a list of ints.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidConfig(unknown[0], f"unknown field (known: {sorted(known)})")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            kwargs[name] = _coerce(name, known[name].type, value)
        return cls(**kwargs)

    @classmethod
    def from_train_job(cls, job: TrainJob) -> ModelConfig:
        """Config of a ``jobs.train`` record: family and seed from the record,
        everything else from ``hyperparams`` (which must not contradict them)."""
        params: dict[str, Any] = dict(job.hyperparams)
        for name, value in (("family", job.model_family), ("seed", job.seed)):
            if name in params and params[name] != value:
                raise InvalidConfig(name, f"hyperparams say {params[name]!r} but the job says {value!r}")
            params[name] = value
        return cls.from_dict(params)

    def config_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def architecture(self) -> ModelConfig:
        """This config with the per-trial fields of an ensemble (``lr``, ``weight_decay``,
        ``seed``) at their defaults: configs with equal architectures train together
        in :func:`models.training.train_ensemble`."""
        return self.replace(lr=1e-3, weight_decay=1e-4, seed=0)

    # -- derived -------------------------------------------------------------
    @property
    def cost_bps(self) -> float:
        """Cost charged per unit of position change: fee plus slippage."""
        return self.fee_bps + self.slippage_bps

    def resolve_device(self) -> torch.device:
        """``auto`` means CUDA when this process sees a GPU, else CPU.

        ``cuda`` without a GPU is an error rather than a silent CPU fallback:
        a job that asked for a GPU should fail loudly where there is none.
        """
        if self.device == "cpu":
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if self.device == "cuda":
            raise InvalidConfig("device", "cuda requested but torch.cuda.is_available() is false")
        return torch.device("cpu")


# ---------------------------------------------------------------------------
# Field checks
# ---------------------------------------------------------------------------


def _int_at_least(field: str, value: object, low: int) -> None:
    if type(value) is not int:
        raise InvalidConfig(field, f"must be an integer, got {value!r}")
    if value < low:
        raise InvalidConfig(field, f"must be >= {low}, got {value}")


def _float_in(
    field: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidConfig(field, f"must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise InvalidConfig(field, f"must be finite, got {x!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise InvalidConfig(field, f"must be {'>' if low_open else '>='} {low}, got {x!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise InvalidConfig(field, f"must be {'<' if high_open else '<='} {high}, got {x!r}")


def _coerce(name: str, annotation: object, value: Any) -> Any:
    """Turn a JSON value into the field's Python type, refusing lossy casts."""
    if name == "hidden_sizes":
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.split(","))
            except ValueError:
                raise InvalidConfig(name, f"expected comma-separated integers, got {value!r}") from None
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise InvalidConfig(name, f"expected '64,32' or a list of integers, got {value!r}")
    if annotation in ("float", float) and type(value) is int:
        return float(value)
    return value
