"""Model checkpoints: one file, one sha256, verified before anything is parsed.

File format ``tradeflow-model/1``: a ``torch.save`` archive of a plain dict

``{"format": str, "metadata_json": str, "state_dict": {name: tensor}}``

``metadata_json`` (canonical JSON) holds the model config (its flat dict),
feature names, feature-set version, number of features, the training data
span and the metrics. Only strings and tensors are stored, which is what
``torch.load(weights_only=True)`` accepts: loading never runs pickled code.

The archive is serialised in memory and written atomically (temp file +
rename). ``torch.save`` names its internal folder after the target file, so
serialising to a buffer instead makes the bytes, and therefore the sha256,
depend only on the content: the same weights and metadata always hash the
same, whatever the path (that is how the DDP test compares a torchrun
training with an in-process one).

:func:`load_checkpoint` reads the file once, hashes those bytes, compares with
the hash the registry published, and only then deserialises the same bytes
(no second read, so no swap between check and use).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch

from models.config import InvalidConfig, ModelConfig
from models.nets import ForecastModel, build_model
from runtime.errors import NeedsOperator

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMeta",
    "CheckpointTampered",
    "LoadedCheckpoint",
    "ModelCheckpointError",
    "checkpoint_bytes",
    "load_checkpoint",
    "save_checkpoint",
    "sha256_hex",
]

CHECKPOINT_FORMAT: Final = "tradeflow-model/1"
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


class ModelCheckpointError(NeedsOperator):
    """A checkpoint that cannot be used (unreadable, wrong format, does not
    match its config). Not retriable: needs a human or a new training."""


class CheckpointTampered(ModelCheckpointError):
    """The file's sha256 differs from the published one: refuse to load it."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(f"checkpoint {path} is not the published one: expected sha256 {expected}, file has {actual}")
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class CheckpointMeta:
    """What a checkpoint says about itself (everything except the weights)."""

    config: ModelConfig
    feature_names: tuple[str, ...]
    feature_set_version: str
    data_start: int
    data_end: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_json(self) -> str:
        doc = {
            "config": self.config.to_dict(),
            "feature_names": list(self.feature_names),
            "feature_set_version": self.feature_set_version,
            "n_features": self.n_features,
            "data_start": self.data_start,
            "data_end": self.data_end,
            "metrics": dict(self.metrics),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        doc: dict[str, Any] = json.loads(text)
        names = tuple(doc["feature_names"])
        if doc["n_features"] != len(names) or not all(isinstance(n, str) for n in names):
            raise ModelCheckpointError("metadata: feature_names do not match n_features")
        return cls(
            config=ModelConfig.from_dict(doc["config"]),
            feature_names=names,
            feature_set_version=str(doc["feature_set_version"]),
            data_start=int(doc["data_start"]),
            data_end=int(doc["data_end"]),
            metrics={str(k): float(v) for k, v in doc["metrics"].items()},
        )


@dataclass(frozen=True, slots=True, eq=False)
class LoadedCheckpoint:
    """A verified checkpoint: the model (CPU, eval mode), its metadata, its hash."""

    model: ForecastModel
    meta: CheckpointMeta
    sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_bytes(model: ForecastModel, meta: CheckpointMeta) -> bytes:
    """The exact bytes :func:`save_checkpoint` writes (deterministic)."""
    if model.n_features != meta.n_features or model.window != meta.config.window:
        raise ModelCheckpointError(
            f"model takes [W={model.window}, F={model.n_features}] but metadata says "
            f"[W={meta.config.window}, F={meta.n_features}]"
        )
    state = {name: tensor.detach().to("cpu").clone() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "metadata_json": meta.to_json(), "state_dict": state}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, model: ForecastModel, meta: CheckpointMeta) -> str:
    """Write the checkpoint atomically; return its sha256 (hex)."""
    data = checkpoint_bytes(model, meta)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return sha256_hex(data)


def load_checkpoint(path: Path, expected_sha256: str) -> LoadedCheckpoint:
    """Verify ``path`` against ``expected_sha256``, then load it (weights only).

    Raises :class:`CheckpointTampered` on a hash mismatch, before any byte is
    deserialised, and :class:`ModelCheckpointError` for a malformed expected hash,
    an unreadable file or a checkpoint that does not fit its own config.
    """
    path = Path(path)
    expected = expected_sha256.strip().lower()
    if not _SHA256_RE.match(expected):
        raise ModelCheckpointError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelCheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    actual = sha256_hex(data)
    if actual != expected:
        raise CheckpointTampered(path, expected, actual)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a verified file that torch cannot read is a bug upstream: say which file
        raise ModelCheckpointError(f"checkpoint {path} (sha256 {actual}) is not readable: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ModelCheckpointError(f"checkpoint {path}: format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        meta = CheckpointMeta.from_json(obj["metadata_json"])
    except (KeyError, TypeError, ValueError, InvalidConfig) as exc:
        raise ModelCheckpointError(f"checkpoint {path}: bad metadata: {exc}") from exc
    model = build_model(meta.config, meta.n_features)
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelCheckpointError(f"checkpoint {path}: weights do not fit the config: {exc}") from exc
    model.eval()
    return LoadedCheckpoint(model=model, meta=meta, sha256=actual)
