"""Checkpoints (hash verified before loading, weights-only) and the Predictor
(deterministic, batch-composition invariant, feature-set checked)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointTampered, ModelCheckpointError, load_checkpoint
from models.config import ModelConfig
from models.dataset import WindowDataset, build_dataset, holdout_split
from models.inference import FeatureMismatch, Predictor, predict_windows, to_signals
from models.training import TrainResult, train
from tests.unit.test_training import real_btc_vectors
from topics.records import ModelRegistryEvent, ModelStage, Signal
from topics.schema import codec_for


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=4)
def _trained(family: str) -> tuple[TrainResult, WindowDataset]:
    config = ModelConfig(family=family, window=12, hidden_sizes=(16, 8), max_epochs=3, patience=2, device="cpu")
    vectors, closes = real_btc_vectors(n_bars=2_000)
    ds = build_dataset(vectors, closes, window=config.window, horizon_bars=1, flat_band=config.flat_band)
    split = holdout_split(ds.timestamps, validation_fraction=0.25, purge=ds.horizon_ns)
    return train(config, ds, split), ds


@pytest.mark.parametrize("family", ["mlp", "tcn"])
def test_saved_checkpoint_then_loads_with_same_outputs_and_metadata(family: str, tmp_path: Path) -> None:
    result, ds = _trained(family)
    sha = result.save(tmp_path / "m.ckpt")
    assert sha == result.save(tmp_path / "elsewhere.ckpt")  # bytes depend on content only
    loaded = load_checkpoint(tmp_path / "m.ckpt", sha)
    assert loaded.sha256 == sha
    assert loaded.meta.config == result.config
    assert loaded.meta.feature_names == ds.feature_names
    assert loaded.meta.feature_set_version == ds.feature_set_version
    assert loaded.meta.metrics == result.metrics
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    torch.testing.assert_close(loaded.model.input_std, result.model.input_std, rtol=0, atol=0)
    rows = np.arange(100, dtype=np.int64)
    a = predict_windows(result.model, ds.windows(rows))
    b = predict_windows(loaded.model, ds.windows(rows))
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.expected_return, b.expected_return)


def test_flipped_byte_then_checkpoint_tampered_with_both_hashes(tmp_path: Path) -> None:
    result, _ = _trained("mlp")
    path = tmp_path / "m.ckpt"
    sha = result.save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointTampered) as info:
        load_checkpoint(path, sha)
    assert info.value.expected == sha
    assert info.value.actual != sha
    assert sha in str(info.value) and info.value.actual in str(info.value)


def test_wrong_or_malformed_expected_hash_then_refused(tmp_path: Path) -> None:
    result, _ = _trained("mlp")
    path = tmp_path / "m.ckpt"
    sha = result.save(path)
    with pytest.raises(CheckpointTampered):
        load_checkpoint(path, "0" * 64)
    with pytest.raises(ModelCheckpointError, match="64 hex digits"):
        load_checkpoint(path, sha[:12])
    assert load_checkpoint(path, sha.upper()).sha256 == sha
    with pytest.raises(ModelCheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.ckpt", sha)


def test_verified_file_that_is_not_a_checkpoint_then_checkpoint_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": "something-else/9", "state_dict": {}}, buffer)
    path = tmp_path / "other.ckpt"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ModelCheckpointError, match="format"):
        load_checkpoint(path, hashlib.sha256(buffer.getvalue()).hexdigest())


@pytest.mark.determinism
@pytest.mark.parametrize("family", ["mlp", "gru", "tcn", "linear_baseline"])
def test_rows_one_by_one_then_bit_identical_to_a_batch_of_64(family: str, tmp_path: Path) -> None:
    """Exact equality, not a tolerance: the Predictor runs fixed-shape padded
    chunks, so a row's arithmetic does not depend on its batch (see
    models.inference). A plain forward pass of 1 vs 64 rows can differ by
    ~1e-7 (measured on this machine's CPU BLAS)."""
    result, ds = _trained(family)
    sha = result.save(tmp_path / "m.ckpt")
    predictor = Predictor.from_checkpoint(tmp_path / "m.ckpt", sha)
    windows = ds.windows(np.arange(200, 264, dtype=np.int64))
    batch = predictor.predict_batch(windows)
    singles = [predictor.predict_batch(windows[i : i + 1]) for i in range(64)]
    for field in ("p_down", "p_flat", "p_up", "expected_return", "score"):
        np.testing.assert_array_equal(getattr(batch, field), np.concatenate([getattr(s, field) for s in singles]))
    shifted = predictor.predict_batch(ds.windows(np.arange(190, 300, dtype=np.int64)))  # other neighbours
    np.testing.assert_array_equal(shifted.probs[10:74], batch.probs)
    np.testing.assert_allclose(batch.probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(batch.score, batch.p_up - batch.p_down)


def test_feature_vector_sequences_then_same_as_windows_and_signals_valid(tmp_path: Path) -> None:
    result, ds = _trained("mlp")
    sha = result.save(tmp_path / "m.ckpt")
    predictor = Predictor.from_checkpoint(tmp_path / "m.ckpt", sha)
    vectors, _ = real_btc_vectors(n_bars=2_000)
    rows = np.arange(300, 310, dtype=np.int64)
    sequences = [vectors[int(e) - predictor.window + 1 : int(e) + 1] for e in ds.end_index[rows]]
    from_vectors = predictor.predict_batch(sequences)
    np.testing.assert_array_equal(from_vectors.probs, predictor.predict_batch(ds.windows(rows)).probs)
    signals = to_signals(
        from_vectors,
        [s[-1] for s in sequences],
        model_id="mlp-btc",
        model_version=sha[:12],
        horizon="1h",
        shadow=True,
        ts_init=sequences[-1][-1].ts_event,
    )
    codec = codec_for(Signal)
    for sig, seq in zip(signals, sequences, strict=True):
        assert codec.decode(codec.encode(sig)) == sig  # valid record: probabilities sum to 1, all >= 0
        assert sig.feature_event_id == seq[-1].event_id and sig.causation_id == seq[-1].event_id
        assert sig.ts_event == seq[-1].ts_event
    again = to_signals(
        from_vectors,
        [s[-1] for s in sequences],
        model_id="mlp-btc",
        model_version=sha[:12],
        horizon="1h",
        shadow=True,
        ts_init=sequences[-1][-1].ts_event + 1,
    )
    assert [s.event_id for s in again] == [s.event_id for s in signals]  # redelivery dedupes


def test_vectors_of_another_feature_set_or_gap_then_feature_mismatch(tmp_path: Path) -> None:
    result, _ds = _trained("mlp")
    sha = result.save(tmp_path / "m.ckpt")
    predictor = Predictor.from_checkpoint(tmp_path / "m.ckpt", sha)
    vectors, _ = real_btc_vectors(n_bars=2_000)
    good = list(vectors[400 : 400 + predictor.window])
    with pytest.raises(FeatureMismatch, match="feature set"):
        predictor.predict_batch([[*good[:-1], dataclasses.replace(good[-1], feature_set_version="fs-other")]])
    with pytest.raises(FeatureMismatch, match="names"):
        predictor.predict_batch([[*good[:-1], dataclasses.replace(good[-1], names=tuple(reversed(good[-1].names)))]])
    with pytest.raises(FeatureMismatch, match="needs"):
        predictor.predict_batch([good[1:]])
    with pytest.raises(FeatureMismatch, match="consecutive"):
        predictor.predict_batch([[good[0], *good[2:], vectors[400 + predictor.window]]])
    with pytest.raises(FeatureMismatch, match="expected windows"):
        predictor.predict_batch(np.zeros((2, predictor.window + 1, len(predictor.feature_names))))


def test_train_result_then_registry_event_record_round_trips(tmp_path: Path) -> None:
    result, _ = _trained("gru")
    path = tmp_path / "gru.ckpt"
    sha = result.save(path)
    event = ModelRegistryEvent.new(
        ts_init=result.data_end,
        ts_event=result.data_end,
        model_id="gru-btc",
        version=sha[:12],
        stage=ModelStage.REGISTERED,
        feature_set_version=result.feature_set_version,
        config=result.config.to_dict(),
        data_start=result.data_start,
        data_end=result.data_end,
        seed=result.config.seed,
        metrics=result.metrics,
        checkpoint_path=str(path),
        checkpoint_sha256=sha,
    )
    codec = codec_for(ModelRegistryEvent)
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert ModelConfig.from_dict(decoded.config) == result.config
    assert load_checkpoint(Path(decoded.checkpoint_path), decoded.checkpoint_sha256).meta.metrics == result.metrics
