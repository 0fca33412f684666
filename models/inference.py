"""Batch and streaming inference from a verified checkpoint.

One function, :func:`predict_windows`, turns raw windows into probabilities,
an expected return and a score. Training metrics, offline batch inference and
the streaming worker all call it, so a model is scored exactly the way it is
served.

Batch-composition invariance: a BLAS gemm computes a batch's rows with different kernels by
position and thread split, so on CPU the model runs its row-invariant forward
(:meth:`~models.nets.ForecastModel.forward_rows`: every linear map a per-row reduction) on
fixed-shape chunks of ``chunk_rows`` rows (the last zero-padded, so elementwise kernels see one
shape too) and post-processes per row in float64: a row's outputs are bit-identical however the
caller batches, on every CPU kernel selection, so a replay reproduces the streaming worker's
signals. On CUDA the plain (gemm) forward runs and outputs agree with the CPU's within the
contract's tolerance (docs/determinism.md).

Design: docs/model_internals.md#batch-composition-invariance
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from models.checkpoint import LoadedCheckpoint, load_checkpoint
from models.config import ModelConfig
from models.nets import ForecastModel
from runtime.errors import BadInput
from topics.records import FeatureVector, Signal
from topics.schema import event_id_for, keyword_constructor

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "FeatureMismatch",
    "Prediction",
    "Predictor",
    "predict_windows",
    "to_signals",
]

DEFAULT_CHUNK_ROWS: Final = 64
#: CUDA: rows per forward (bounds activation memory), and the size from which the input is pinned
CUDA_SLICE_ROWS: Final = 16_384
CUDA_PIN_ROWS: Final = 4_096

FloatArray = npt.NDArray[np.float64]


class FeatureMismatch(BadInput, ValueError):
    """Inputs that do not fit the model (feature set, names, window length,
    non-consecutive bars). Not retriable: the model cannot score them."""


@dataclass(frozen=True, slots=True, eq=False)
class Prediction:
    """Per-row outputs (float64 arrays of equal length).

    ``score = p_up - p_down`` in [-1, 1]: the signed conviction the strategy
    sizes on and the evaluation trades on.
    """

    p_down: FloatArray
    p_flat: FloatArray
    p_up: FloatArray
    expected_return: FloatArray
    score: FloatArray

    def __len__(self) -> int:
        return len(self.score)

    @property
    def probs(self) -> FloatArray:
        """``[N, 3]`` in class order down, flat, up."""
        return np.stack([self.p_down, self.p_flat, self.p_up], axis=1)


def predict_windows(
    model: ForecastModel,
    windows: FloatArray,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: torch.device | None = None,
) -> Prediction:
    """Run ``model`` on raw windows ``[N, W, F]`` in fixed, padded chunks."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (model.window, model.n_features):
        raise FeatureMismatch(f"expected windows [N, {model.window}, {model.n_features}], got {list(x.shape)}")
    n = x.shape[0]
    device = device or torch.device("cpu")
    logits_out = np.empty((n, 3), dtype=np.float64)
    returns_out = np.empty(n, dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        if device.type == "cuda":
            _outputs_cuda(model, x, device, logits_out, returns_out)
        else:
            _outputs_cpu(model, x, chunk_rows, logits_out, returns_out)
    finally:
        model.train(was_training)
    shifted = logits_out - logits_out.max(axis=1, keepdims=True)
    expd = np.exp(shifted)
    probs = expd / expd.sum(axis=1, keepdims=True)
    return Prediction(
        p_down=probs[:, 0].copy(),
        p_flat=probs[:, 1].copy(),
        p_up=probs[:, 2].copy(),
        expected_return=returns_out,
        score=probs[:, 2] - probs[:, 0],
    )


def _outputs_cpu(
    model: ForecastModel, x: FloatArray, chunk_rows: int, logits_out: FloatArray, returns_out: FloatArray
) -> None:
    """Row-invariant forward on fixed, zero-padded chunks (module docstring)."""
    n, dtype = x.shape[0], model.input_mean.dtype
    with torch.inference_mode():
        chunk = torch.zeros((chunk_rows, model.window, model.n_features), dtype=dtype)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            if stop - start < chunk_rows:  # the last chunk: zero padding (a full one is overwritten whole)
                chunk.zero_()
            chunk[: stop - start] = torch.from_numpy(x[start:stop]).to(dtype=dtype)
            logits, expected = model.forward_rows(chunk)
            logits_out[start:stop] = logits[: stop - start].to(torch.float64).numpy()
            returns_out[start:stop] = expected[: stop - start].to(torch.float64).numpy()


def _outputs_cuda(
    model: ForecastModel, x: FloatArray, device: torch.device, logits_out: FloatArray, returns_out: FloatArray
) -> None:
    """The plain (gemm/cuDNN) forward in the model's dtype, in large slices of one device-resident copy of
    the input: one host-to-device copy, one device-to-host copy, no padding (CUDA is compared with a
    tolerance, docs/determinism.md). TF32 stays off (its 10-bit mantissa would exceed the tolerance)."""
    dtype = model.input_mean.dtype
    if next(model.parameters()).device != device:
        raise ValueError(f"the model is on {next(model.parameters()).device}, not on {device}")
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            _forward_cuda(model, x, device, dtype, logits_out, returns_out)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def _forward_cuda(
    model: ForecastModel,
    x: FloatArray,
    device: torch.device,
    dtype: torch.dtype,
    logits_out: FloatArray,
    returns_out: FloatArray,
) -> None:
    n = x.shape[0]
    with torch.inference_mode():
        host = torch.from_numpy(x).to(dtype=dtype)
        if n >= CUDA_PIN_ROWS:
            host = host.pin_memory()
        inputs = host.to(device, non_blocking=True)
        logits = torch.empty((n, 3), dtype=torch.float64, device=device)
        returns = torch.empty(n, dtype=torch.float64, device=device)
        for start in range(0, n, CUDA_SLICE_ROWS):
            stop = min(start + CUDA_SLICE_ROWS, n)
            out_logits, out_returns = model(inputs[start:stop])
            logits[start:stop] = out_logits.to(torch.float64)
            returns[start:stop] = out_returns.to(torch.float64)
        logits_out[:] = logits.cpu().numpy()
        returns_out[:] = returns.cpu().numpy()


class Predictor:
    """A verified checkpoint ready to score windows or feature-vector sequences.

    Deterministic on CPU: the same checkpoint and inputs give bit-identical
    outputs, independent of how rows are batched (module docstring).
    """

    def __init__(
        self, loaded: LoadedCheckpoint, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, device: str | torch.device = "cpu"
    ) -> None:
        self._loaded = loaded
        self._device = torch.device(device)
        self._model = loaded.model.to(self._device).eval()
        self.chunk_rows = chunk_rows

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        expected_sha256: str,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """Load (hash-verified, weights only) and wrap; see :func:`load_checkpoint`."""
        return cls(load_checkpoint(path, expected_sha256), chunk_rows=chunk_rows, device=device)

    @property
    def config(self) -> ModelConfig:
        return self._loaded.meta.config

    @property
    def sha256(self) -> str:
        return self._loaded.sha256

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._loaded.meta.feature_names

    @property
    def feature_set_version(self) -> str:
        return self._loaded.meta.feature_set_version

    @property
    def window(self) -> int:
        return self.config.window

    def predict_batch(self, inputs: FloatArray | Sequence[Sequence[FeatureVector]]) -> Prediction:
        """Score raw windows ``[N, W, F]`` or N sequences of W feature vectors."""
        windows = inputs if isinstance(inputs, np.ndarray) else self.windows_from_vectors(inputs)
        return predict_windows(self._model, windows, chunk_rows=self.chunk_rows, device=self._device)

    def windows_from_vectors(self, sequences: Sequence[Sequence[FeatureVector]]) -> FloatArray:
        """Stack vector sequences into ``[N, W, F]``, refusing anything the
        model was not trained on: another feature set, other names or order,
        a wrong window length, or bars that are not consecutive."""
        # Overlapping windows share vectors: each distinct vector (by identity) is checked and converted
        # once, the windows gathered from that table by index and checked with array operations. Any
        # failed check goes to the per-vector walk below, which names the first offence.
        width = self.window
        if any(len(seq) != width for seq in sequences):
            return self._windows_walked(sequences)
        flat = list(chain.from_iterable(sequences))
        if not flat:
            return np.empty((len(sequences), width, len(self.feature_names)), dtype=np.float64)
        ids = np.fromiter(map(id, flat), dtype=np.uintp, count=len(flat))
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        unique = [flat[i] for i in first.tolist()]
        fsv, names = self.feature_set_version, self.feature_names
        if any(v.feature_set_version != fsv or v.names != names for v in unique):
            return self._windows_walked(sequences)
        index = inverse.reshape(len(sequences), width)
        if width > 1:
            try:
                consecutive = _consecutive(unique, index)
            except OverflowError:  # times beyond int64: let the walk judge them
                consecutive = False
            if not consecutive:
                return self._windows_walked(sequences)
        table = np.asarray([v.values for v in unique], dtype=np.float64).reshape(len(unique), len(names))
        return table[index]

    def _windows_walked(self, sequences: Sequence[Sequence[FeatureVector]]) -> FloatArray:
        """:meth:`windows_from_vectors` one vector at a time: raises on the first offence, in order."""
        # Overlapping windows share vectors: each distinct vector is checked and converted once, then
        # gathered into the windows by index (the same float64 values as a per-window copy).
        rows: dict[int, int] = {}  # id(vector) -> its row in ``unique`` (the vectors live in ``sequences``)
        unique: list[Sequence[float]] = []
        index: list[list[int]] = []
        for i, seq in enumerate(sequences):
            if len(seq) != self.window:
                raise FeatureMismatch(f"sequence {i}: {len(seq)} vectors, the model needs {self.window}")
            step = seq[0].timeframe.nanos
            at: list[int] = []
            for j, v in enumerate(seq):
                r = rows.get(id(v))
                if r is None:
                    if v.feature_set_version != self.feature_set_version:
                        raise FeatureMismatch(
                            f"sequence {i}: feature set {v.feature_set_version!r}, "
                            f"the model was trained on {self.feature_set_version!r}"
                        )
                    if v.names != self.feature_names:
                        raise FeatureMismatch(f"sequence {i}: feature names differ from the model's")
                    r = rows[id(v)] = len(unique)
                    unique.append(v.values)
                if j and (v.symbol != seq[0].symbol or v.bar_open_time - seq[j - 1].bar_open_time != step):
                    raise FeatureMismatch(f"sequence {i}: vectors are not consecutive bars of one symbol")
                at.append(r)
            index.append(at)
        if not unique:
            return np.empty((len(sequences), self.window, len(self.feature_names)), dtype=np.float64)
        table = np.asarray(unique, dtype=np.float64).reshape(len(unique), len(self.feature_names))
        return table[np.asarray(index, dtype=np.intp)]


def _consecutive(vectors: Sequence[FeatureVector], index: npt.NDArray[np.intp]) -> bool:
    """Whether each row of ``index`` (positions in ``vectors``) names consecutive bars of one symbol,
    spaced by the timeframe of the row's first vector."""
    n = len(vectors)
    symbols = {s: k for k, s in enumerate(dict.fromkeys(v.symbol for v in vectors))}
    code = np.fromiter((symbols[v.symbol] for v in vectors), dtype=np.intp, count=n)
    open_time = np.fromiter((v.bar_open_time for v in vectors), dtype=np.int64, count=n)
    step = np.fromiter((v.timeframe.nanos for v in vectors), dtype=np.int64, count=n)
    first = index[:, :1]
    same_symbol = bool((code[index] == code[first]).all())
    return same_symbol and bool((np.diff(open_time[index], axis=1) == step[first]).all())


def to_signals(
    prediction: Prediction,
    newest: Sequence[FeatureVector],
    *,
    model_id: str,
    model_version: str,
    horizon: str,
    shadow: bool,
    ts_init: int | Sequence[int],
) -> list[Signal]:
    """One ``Signal`` per row, caused by the row's newest feature vector.

    ``ts_event`` is the vector's event time (the bar close the forecast is
    made at); the id is deterministic (model, version, symbol, vector), so a
    redelivered vector yields the same signal id. ``ts_init``: one for all
    rows, or one per row. Each signal is the record ``Signal.new`` builds.
    """
    if len(newest) != len(prediction):
        raise ValueError(f"{len(newest)} vectors for {len(prediction)} predictions")
    stamps: Sequence[int] | repeat[int]
    if isinstance(ts_init, Sequence):
        stamps = ts_init
        if len(stamps) != len(newest):
            raise ValueError(f"{len(stamps)} ts_init values for {len(newest)} vectors")
    else:  # one stamp for every row (an int, or any integer scalar a caller passes)
        stamps = repeat(ts_init)
    kind = Signal.KIND
    version = Signal.SCHEMA_VERSION
    # tolist(): the same Python floats as float(array[i]), converted in one call
    columns = zip(
        prediction.p_up.tolist(),
        prediction.p_flat.tolist(),
        prediction.p_down.tolist(),
        prediction.expected_return.tolist(),
        prediction.score.tolist(),
        strict=True,
    )
    signals: list[Signal] = []
    for v, stamp, (p_up, p_flat, p_down, expected, score) in zip(newest, stamps, columns, strict=False):
        event_id = event_id_for(kind, model_id, model_version, v.symbol, v.event_id)
        signals.append(
            _make_signal(
                event_id=event_id,
                schema_version=version,
                ts_init=stamp,
                correlation_id=v.correlation_id if v.correlation_id is not None else event_id,
                causation_id=v.event_id,
                ts_event=v.ts_event,
                symbol=v.symbol,
                model_id=model_id,
                model_version=model_version,
                horizon=horizon,
                p_up=p_up,
                p_flat=p_flat,
                p_down=p_down,
                expected_return=expected,
                score=score,
                shadow=shadow,
                feature_event_id=v.event_id,
                lineage_id=v.lineage_id,
            )
        )
    return signals


_make_signal = keyword_constructor(Signal)
