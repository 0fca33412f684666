"""Datasets, leakage-free splits and training on real BTC/USDT hourly candles.

The features here are deliberately simple and computed in this module (log
returns over a few windows, rolling volatility, range, volume ratio) from the
recorded Binance candles: the models code is written against the
``FeatureVector`` record, not against the feature engine. Labels come from the
candles' closes, passed separately.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.checkpoint import load_checkpoint
from models.config import ModelConfig
from models.dataset import (
    CLASS_DOWN,
    CLASS_FLAT,
    CLASS_UP,
    DatasetError,
    Split,
    SplitError,
    WindowDataset,
    build_dataset,
    closes_by_open_time,
    fit_standardizer,
    holdout_split,
    walk_forward_splits,
)
from models.inference import predict_windows
from models.metrics import evaluate_predictions
from models.training import (
    BF16_TOLERANCE,
    ENSEMBLE_WEIGHT_TOLERANCE,
    TrainResult,
    epoch_shard,
    precision_gaps,
    train,
    train_ensemble,
)
from tests import builders
from topics.records import Bar, FeatureVector, Timeframe

ROOT = Path(__file__).resolve().parents[2]
CANDLES = ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
NAMES = ("ret_1", "ret_4", "ret_12", "ret_24", "vol_24", "vol_72", "range", "logvolratio_24")
LOOKBACK = 72
H = Timeframe.H1.nanos


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# Real data helper
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def real_btc_vectors(start: int = 30_000, n_bars: int = 6_000) -> tuple[tuple[FeatureVector, ...], dict[int, float]]:
    """Feature vectors and closes (by open time) for ``n_bars`` real candles.

    Vector at bar i uses bars i-72..i only; the closes are the label source.
    """
    with open(CANDLES) as fh:
        rows = list(csv.DictReader(fh))[start : start + n_bars]
    t = np.array([int(datetime.fromisoformat(r["timestamp"]).timestamp()) * 10**9 for r in rows], dtype=np.int64)
    close, high, low, volume = (np.array([float(r[k]) for r in rows]) for k in ("close", "high", "low", "volume"))
    lc = np.log(close)
    r1 = np.concatenate([[np.nan], np.diff(lc)])
    vectors = []
    for i in range(LOOKBACK, len(rows)):
        values = (
            lc[i] - lc[i - 1],
            lc[i] - lc[i - 4],
            lc[i] - lc[i - 12],
            lc[i] - lc[i - 24],
            float(np.std(r1[i - 23 : i + 1])),
            float(np.std(r1[i - 71 : i + 1])),
            (high[i] - low[i]) / close[i],
            math.log((volume[i] + 1e-8) / (float(np.mean(volume[i - 23 : i + 1])) + 1e-8)),
        )
        vectors.append(
            builders.vector(
                bar_open_time=int(t[i]),
                names=NAMES,
                values=tuple(float(v) for v in values),
                feature_set_version="test-fs1",
                data_version="csv",
                lineage_id=f"test-{t[i]}",
            )
        )
    closes = {int(a): float(b) for a, b in zip(t, close, strict=True)}
    return tuple(vectors), closes


def real_dataset(config: ModelConfig, n_bars: int = 6_000) -> WindowDataset:
    vectors, closes = real_btc_vectors(n_bars=n_bars)
    return build_dataset(
        vectors, closes, window=config.window, horizon_bars=config.horizon_bars, flat_band=config.flat_band
    )


SMALL = ModelConfig(family="mlp", window=16, hidden_sizes=(32, 16), max_epochs=25, patience=4, device="cpu")


# ---------------------------------------------------------------------------
# Dataset: alignment and look-ahead
# ---------------------------------------------------------------------------


def _synthetic_vectors(n: int, skip: frozenset[int] = frozenset()) -> list[FeatureVector]:
    t0 = 1_600_000_000 // 3600 * 3600 * 10**9
    return [
        builders.vector(
            bar_open_time=t0 + i * H,
            names=("a", "b"),
            values=(float(i), float(-i)),
            venue="v",
            feature_set_version="fs-t",
            data_version="d",
        )
        for i in range(n)
        if i not in skip
    ]


def test_rows_then_window_ends_at_t_and_label_is_future_close_ratio() -> None:
    vectors = _synthetic_vectors(20)
    t0 = vectors[0].bar_open_time
    closes = {t0 + i * H: 100.0 * 1.01**i * (1.05 if i % 3 == 0 else 1.0) for i in range(20)}
    ds = build_dataset(vectors, closes, window=4, horizon_bars=2, flat_band=0.02)
    # First row: window of bars 0..3, decision at bar 3; last: bar 17 (needs close of 19).
    assert ds.n_rows == 20 - 3 - 2
    np.testing.assert_array_equal(ds.windows(np.array([0]))[0, :, 0], [0.0, 1.0, 2.0, 3.0])
    for row, t in enumerate(ds.timestamps.tolist()):
        assert ds.windows(np.array([row]))[0, -1, 0] == (t - t0) // H  # the newest vector is bar t itself
        assert ds.y_return[row] == pytest.approx(math.log(closes[t + 2 * H] / closes[t]))
    expected_class = np.where(ds.y_return < -0.02, CLASS_DOWN, np.where(ds.y_return > 0.02, CLASS_UP, CLASS_FLAT))
    np.testing.assert_array_equal(ds.y_class, expected_class)


def test_future_data_changed_then_past_rows_unchanged() -> None:
    vectors, closes = real_btc_vectors()
    base = build_dataset(vectors[:600], closes, window=8, horizon_bars=3, flat_band=0.002)
    cut = 400
    t_cut = vectors[cut].bar_open_time
    altered_vectors = list(vectors[: cut + 1]) + [
        dataclasses.replace(v, values=tuple(x * -7.0 + 1.0 for x in v.values)) for v in vectors[cut + 1 : 600]
    ]
    altered_closes = {t: (c if t <= t_cut else c * 3.0) for t, c in closes.items()}
    changed = build_dataset(altered_vectors, altered_closes, window=8, horizon_bars=3, flat_band=0.002)
    past = np.flatnonzero(base.timestamps <= t_cut)
    np.testing.assert_array_equal(base.windows(past), changed.windows(past))  # inputs: nothing after t
    labelled = np.flatnonzero(base.timestamps + 3 * H <= t_cut)
    np.testing.assert_array_equal(base.y_return[labelled], changed.y_return[labelled])
    later = np.flatnonzero((base.timestamps <= t_cut) & (base.timestamps + 3 * H > t_cut))
    assert len(later) == 3 and not np.array_equal(base.y_return[later], changed.y_return[later])


def test_missing_bar_then_windows_across_the_gap_dropped() -> None:
    vectors = _synthetic_vectors(30, skip=frozenset({10}))
    closes = {v.bar_open_time: 100.0 + i for i, v in enumerate(vectors)}
    closes[vectors[0].bar_open_time + 10 * H] = 111.0  # the close exists even if the vector does not
    ds = build_dataset(vectors, closes, window=5, horizon_bars=1, flat_band=0.0)
    newest = (ds.timestamps - vectors[0].bar_open_time) // H
    assert not any(10 <= b <= 14 for b in newest.tolist())  # any window touching bar 10
    assert newest.tolist() == [4, 5, 6, 7, 8, 9, *range(15, 29)]


def test_bars_with_revisions_then_closes_from_highest_closed_revision() -> None:
    t0 = 1_600_000_000 // 3600 * 3600 * 10**9

    def bar(i: int, close: float, revision: int, closed: bool = True) -> Bar:
        return builders.bar(venue="v", open_time=t0 + i * H, open=close, is_closed=closed, revision=revision)

    closes = closes_by_open_time([bar(0, 10.0, 1), bar(0, 9.0, 0), bar(1, 11.0, 0), bar(2, 12.0, 0, closed=False)])
    assert closes == {t0: 10.0, t0 + H: 11.0}


def test_mixed_or_unordered_streams_then_dataset_error() -> None:
    vectors = _synthetic_vectors(10)
    closes = {v.bar_open_time: 100.0 for v in vectors}
    with pytest.raises(DatasetError, match="mixed streams"):
        build_dataset(
            [*vectors[:5], dataclasses.replace(vectors[5], feature_set_version="other")],
            closes,
            window=2,
            horizon_bars=1,
            flat_band=0.0,
        )
    with pytest.raises(DatasetError, match="strictly increasing"):
        build_dataset([vectors[1], vectors[0]], closes, window=1, horizon_bars=1, flat_band=0.0)
    with pytest.raises(DatasetError, match="no complete row"):
        build_dataset(vectors[:3], closes, window=5, horizon_bars=1, flat_band=0.0)
    with pytest.raises(DatasetError, match="must be finite and > 0"):
        build_dataset(vectors, {**closes, vectors[4].bar_open_time: 0.0}, window=2, horizon_bars=1, flat_band=0.0)


def test_standardizer_then_fitted_on_training_vectors_only() -> None:
    config = SMALL
    ds = real_dataset(config, n_bars=1_500)
    split = holdout_split(ds.timestamps, validation_fraction=0.3, purge=ds.horizon_ns)
    mean, std = fit_standardizer(ds, split.train)
    covered = sorted({int(e) - k for e in ds.end_index[split.train] for k in range(config.window)})
    np.testing.assert_allclose(mean, ds.features[covered].mean(axis=0))
    np.testing.assert_allclose(std, ds.features[covered].std(axis=0))
    last_train_vector = max(covered)
    poisoned = ds.features.copy()
    poisoned[last_train_vector + 1 :] = 1e9  # everything only validation rows see
    mean2, std2 = fit_standardizer(dataclasses.replace(ds, features=poisoned), split.train)
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(std, std2)


def test_dataset_saved_and_loaded_then_identical() -> None:
    ds = real_dataset(SMALL, n_bars=800)
    path = ROOT / "artifacts" / "tests" / f"ds-{os.getpid()}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save(path)
        again = WindowDataset.load(path)
    finally:
        path.unlink(missing_ok=True)
    for name in ("features", "open_times", "end_index", "y_class", "y_return"):
        np.testing.assert_array_equal(getattr(ds, name), getattr(again, name))
    assert (again.feature_names, again.timeframe, again.window) == (ds.feature_names, ds.timeframe, ds.window)


# ---------------------------------------------------------------------------
# Splits: no leakage (property tests)
# ---------------------------------------------------------------------------


@st.composite
def _timelines(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(2, 400))
    gaps = draw(st.lists(st.sampled_from([0, 1, 1, 1, 2, 5]), min_size=n - 1, max_size=n - 1))
    return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64) * 10 + 1_000


@settings(max_examples=300, deadline=None)
@given(ts=_timelines(), n_folds=st.integers(1, 6), purge=st.integers(0, 60), embargo=st.integers(0, 60))
def test_walk_forward_random_sizes_then_no_overlap_with_validation_purge_or_embargo(
    ts: np.ndarray, n_folds: int, purge: int, embargo: int
) -> None:
    try:
        folds = walk_forward_splits(ts, n_folds, purge, embargo)
    except SplitError:
        return  # too few rows for this request: refused loudly, never an empty set
    assert len(folds) == n_folds
    previous_val_end = -1
    for k, fold in enumerate(folds):
        train, val = fold.train, fold.validation
        assert len(train) and len(val)
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) == 1)  # sorted; validation is one block
        assert not set(train.tolist()) & set(val.tolist())
        first_val, last_val = int(ts[val[0]]), int(ts[val[-1]])
        if k:  # blocks follow each other in time, without overlap
            assert val[0] == previous_val_end + 1 and first_val > int(ts[previous_val_end])
        # Purge: every training label interval (t, t + purge] ends before validation starts.
        assert np.all(ts[train] + purge <= first_val)
        # Embargo after every earlier validation block.
        for earlier in folds[:k]:
            end_j = int(ts[earlier.validation[-1]])
            assert not np.any((ts[train] > end_j) & (ts[train] <= end_j + embargo))
        # Nothing else is dropped: every earlier row outside the zones is trained on.
        candidates = np.flatnonzero(ts < first_val)
        allowed = candidates[ts[candidates] + purge <= first_val]
        for earlier in folds[:k]:
            end_j = int(ts[earlier.validation[-1]])
            allowed = allowed[~((ts[allowed] > end_j) & (ts[allowed] <= end_j + embargo))]
        np.testing.assert_array_equal(train, allowed)
        assert last_val >= first_val
        previous_val_end = int(val[-1])
    assert previous_val_end == len(ts) - 1  # the last fold validates on the newest rows


@settings(max_examples=200, deadline=None)
@given(ts=_timelines(), val=st.floats(0.05, 0.5), test=st.sampled_from([0.0, 0.1, 0.25]), purge=st.integers(0, 60))
def test_holdout_random_sizes_then_blocks_ordered_and_purged(
    ts: np.ndarray, val: float, test: float, purge: int
) -> None:
    try:
        split = holdout_split(ts, validation_fraction=val, test_fraction=test, purge=purge)
    except SplitError:
        return
    assert len(split.train) and len(split.validation)
    assert np.all(ts[split.train] + purge <= ts[split.validation].min())
    if len(split.test):
        assert split.test[-1] == len(ts) - 1 and np.all(np.diff(split.test) == 1)
        assert np.all(ts[split.validation] + purge <= ts[split.test].min())
    used = np.concatenate([split.train, split.validation, split.test])
    assert len(np.unique(used)) == len(used)


def test_comfortable_sizes_then_walk_forward_never_refuses() -> None:
    ts = np.arange(1_000, dtype=np.int64) * H
    folds = walk_forward_splits(ts, 5, purge=4 * H, embargo=24 * H)
    assert sorted({len(f.validation) for f in folds}) == [166, 167] and folds[0].validation[0] == 167
    # Purged: rows 164..166, whose 4-bar labels end inside validation; row 163's ends at its start.
    assert folds[0].train[-1] == 163 and len(folds[0].train) == 164
    # Fold 4 trains before row 667 minus the purge and the embargo zones after the
    # validation blocks of folds 1 and 2 (fold 3's falls inside fold 4's validation).
    assert folds[3].validation[0] == 667 and len(folds[3].train) == 667 - 3 - 2 * 24
    with pytest.raises(SplitError):
        walk_forward_splits(ts[:3], 5, purge=0, embargo=0)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _trained_small() -> tuple[TrainResult, WindowDataset, float]:
    ds = real_dataset(SMALL)
    split = holdout_split(ds.timestamps, validation_fraction=0.2, test_fraction=0.1, purge=ds.horizon_ns)
    start = time.perf_counter()
    result = train(SMALL, ds, split)
    return result, ds, time.perf_counter() - start


def test_small_mlp_on_real_btc_then_trains_fast_and_metrics_come_from_predictions() -> None:
    result, ds, seconds = _trained_small()
    assert ds.n_rows > 5_500  # ~6k real hourly bars
    assert seconds < 20.0
    assert result.device == "cpu"
    assert 1 <= result.best_epoch <= len(result.history) <= SMALL.max_epochs
    losses = [h.val_loss for h in result.history]
    assert result.history[result.best_epoch - 1].val_loss == min(losses)
    if len(result.history) < SMALL.max_epochs:  # stopped early: patience epochs without improvement
        assert len(result.history) - result.best_epoch == SMALL.patience
    # Recompute every validation metric from fresh predictions of the returned model.
    split = holdout_split(ds.timestamps, validation_fraction=0.2, test_fraction=0.1, purge=ds.horizon_ns)
    prediction = predict_windows(result.model, ds.windows(split.validation))
    expected = evaluate_predictions(
        probs=prediction.probs,
        expected_return=prediction.expected_return,
        score=prediction.score,
        y_class=ds.y_class[split.validation],
        y_return=ds.y_return[split.validation],
        timestamps=ds.timestamps[split.validation],
        horizon_ns=ds.horizon_ns,
        periods_per_year=ds.periods_per_year,
        cost_bps=SMALL.cost_bps,
        signal_threshold=SMALL.signal_threshold,
        prefix="val",
    )
    assert {k: v for k, v in result.metrics.items() if k.startswith("val_")} == expected
    assert result.metrics["val_rows"] == len(split.validation)
    assert result.metrics["test_rows"] == len(split.test)
    assert math.isfinite(result.metrics["val_log_loss"]) and 0 <= result.metrics["val_accuracy"] <= 1
    assert result.data_end == int(ds.timestamps[split.validation].max()) + ds.horizon_ns


def test_shuffled_training_labels_then_validation_at_chance() -> None:
    ds = real_dataset(SMALL)
    split = holdout_split(ds.timestamps, validation_fraction=0.25, purge=ds.horizon_ns)
    rng = np.random.default_rng(123)
    perm = split.train[rng.permutation(len(split.train))]
    y_class, y_return = ds.y_class.copy(), ds.y_return.copy()
    y_class[split.train], y_return[split.train] = ds.y_class[perm], ds.y_return[perm]
    shuffled = dataclasses.replace(ds, y_class=y_class, y_return=y_return)
    result = train(SMALL.replace(seed=3), shuffled, split)
    m = result.metrics
    # No information: balanced accuracy at 1/3, accuracy no better than always
    # guessing the majority class, IC within ~3 standard errors (1/sqrt(n)) of 0.
    n_val = len(split.validation)
    assert abs(m["val_balanced_accuracy"] - 1 / 3) < 0.04
    assert m["val_accuracy"] < m["val_majority_rate"] + 0.03
    assert abs(m.get("val_ic", 0.0)) < 3 / math.sqrt(n_val)
    assert m["val_log_loss"] > 1.0  # ~ln 3 = 1.0986 for an uninformed 3-class forecast


@pytest.mark.determinism
def test_same_seed_twice_then_identical_weights_and_metrics() -> None:
    config = SMALL.replace(max_epochs=4, patience=2)
    ds = real_dataset(config, n_bars=2_000)
    split = walk_forward_splits(ds.timestamps, 3, purge=ds.horizon_ns, embargo=24 * H)[1]
    first, second = train(config, ds, split), train(config, ds, split)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert first.metrics == second.metrics
    assert first.history == second.history
    other = train(config.replace(seed=1), ds, split)
    assert not torch.equal(
        other.model.state_dict()["core.body.0.weight"], first.model.state_dict()["core.body.0.weight"]
    )


def test_tcn_same_seed_twice_then_same_checkpoint_sha256(tmp_path: Path) -> None:
    config = SMALL.replace(family="tcn", hidden_sizes=(16, 8), max_epochs=3, patience=2)
    ds = real_dataset(config, n_bars=2_000)
    split = walk_forward_splits(ds.timestamps, 3, purge=ds.horizon_ns, embargo=24 * H)[1]
    first = train(config, ds, split)
    assert first.save(tmp_path / "a.ckpt") == train(config, ds, split).save(tmp_path / "b.ckpt")
    other = train(config.replace(seed=1), ds, split)
    assert other.save(tmp_path / "c.ckpt") != first.save(tmp_path / "a.ckpt")


@pytest.mark.parametrize("family", ["gru", "tcn", "linear_baseline"])
def test_other_families_on_real_btc_then_trained_and_scored(family: str) -> None:
    config = SMALL.replace(family=family, hidden_sizes=(16,), max_epochs=3, patience=2)
    ds = real_dataset(config, n_bars=2_000)
    split = holdout_split(ds.timestamps, validation_fraction=0.25, purge=ds.horizon_ns)
    result = train(config, ds, split)
    assert math.isfinite(result.metrics["val_log_loss"])
    assert "val_pnl_total_return" in result.metrics
    if family == "linear_baseline":
        assert result.history == () and result.best_epoch == 0
        again = train(config, ds, split)
        assert again.metrics == result.metrics  # closed form: deterministic
    else:
        assert len(result.history) >= 1


def test_dataset_built_for_another_window_then_refused() -> None:
    ds = real_dataset(SMALL, n_bars=800)
    split = holdout_split(ds.timestamps, validation_fraction=0.25, purge=ds.horizon_ns)
    with pytest.raises(ValueError, match="window"):
        train(SMALL.replace(window=8), ds, split)


# ---------------------------------------------------------------------------
# DDP: the shard plan, and torchrun at world sizes 1 and 2 (gloo on CPU)
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    n_rows=st.integers(1, 300),
    world_size=st.integers(1, 4),
    batch_size=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
)
def test_epoch_shards_then_rows_once_and_each_step_is_the_combined_single_process_step(
    n_rows: int, world_size: int, batch_size: int, seed: int, epoch: int
) -> None:
    shards = [epoch_shard(n_rows, batch_size, seed, epoch, rank, world_size) for rank in range(world_size)]
    single = epoch_shard(n_rows, batch_size * world_size, seed, epoch, 0, 1)
    assert single.real.all() and sorted(single.positions.tolist()) == list(range(n_rows))
    assert len({s.step_rows for s in shards}) == 1  # every rank takes every step, with the same denominator
    weighted = np.concatenate([s.positions[s.real] for s in shards])
    assert sorted(weighted.tolist()) == list(range(n_rows))  # each row carries weight exactly once
    assert len(shards[0].step_rows) == len(single.step_rows)
    for k, rows in enumerate(shards[0].step_rows):
        sl = slice(k * batch_size, (k + 1) * batch_size)  # how train() cuts a rank's step k
        step = np.concatenate([s.positions[sl][s.real[sl]] for s in shards])
        expected = single.positions[k * batch_size * world_size : (k + 1) * batch_size * world_size]
        assert sorted(step.tolist()) == sorted(expected.tolist())
        assert rows == single.step_rows[k] == len(expected)
    assert all(len(s.positions) <= len(s.step_rows) * batch_size for s in shards)  # no row past the last step


# One ``torchrun`` job per test, short: 3 epochs of 411 training rows (odd, so
# rank 1 gets one padding copy, and 411 = 6 * 64 + 27, so the last step is partial).
DDP_CONFIG = SMALL.replace(window=8, hidden_sizes=(16,), max_epochs=3, patience=3, dropout=0.0, batch_size=32)
DDP_BARS = 602
# Rank 0 and rank 1 each sum the gradient over 32 rows in float32, DDP adds the two
# halves; the single process sums 64 rows in one GEMM. Same terms, another order:
# each gradient element moves by float32 rounding (~1e-7 relative), and over 21
# AdamW steps the weights (|w| <= 0.3) end up apart by about one float32 ulp
# (1.5e-8 observed). 1e-6 leaves a wide margin and is still ~10^4 times smaller
# than what different steps on the same rows give (batch 32 single process: ~1e-2).
# AdamW divides by sqrt(v): a gradient component that is itself at rounding level
# could flip sign and move one weight by ~lr; none does on this data.
DDP_WEIGHT_ATOL = 1e-6
# Losses and val_log_loss are means over ~100-400 float32 row losses: ~3e-7 relative observed.
DDP_LOSS_RTOL = 1e-5
TEST_RUN_TOKEN = "DDP_TEST_RUN_TOKEN"  # marks every process a launch starts (not configuration)


def _tagged_pids(token: str) -> list[int]:
    """Processes whose environment carries ``token``: every process a launch
    started, whatever session it moved to (torchrun starts each rank in its own)."""
    needle = f"{TEST_RUN_TOKEN}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _launch(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a launcher (torchrun, or the CLI that wraps it) from the repository
    root with one intra-op thread, and leave no process of it behind: on a
    timeout the launcher's group gets SIGTERM (torchrun then stops its ranks),
    and whatever still carries this run's token is killed. A clean run must
    leave nothing (asserted)."""
    token = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", TEST_RUN_TOKEN: token}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"{argv[2:5]} still running after {timeout} s:\n{stderr[-3000:]}")
    finally:
        leftovers = _tagged_pids(token)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert leftovers == [], f"processes left behind by {argv[2:5]}: {leftovers}"
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _ddp_request(tmp_path: Path, config: ModelConfig, ds: WindowDataset) -> list[str]:
    ds.save(tmp_path / "rows.npz")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    return ["--config", str(tmp_path / "config.json"), "--dataset", str(tmp_path / "rows.npz")]


def _torchrun(nproc: int, ddp_args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return _launch([*argv, "-m", "gpu_workers.ddp", *ddp_args], timeout)


@pytest.mark.parametrize("family", ["mlp", "tcn"])
def test_torchrun_world_size_one_then_same_checkpoint_as_in_process(family: str, tmp_path: Path) -> None:
    config = SMALL.replace(family=family, window=8, hidden_sizes=(16,), max_epochs=3, patience=2)
    ds = real_dataset(config, n_bars=1_500)
    request = _ddp_request(tmp_path, config, ds)
    split = holdout_split(ds.timestamps, validation_fraction=0.2, purge=ds.horizon_ns)
    in_process_sha = train(config, ds, split).save(tmp_path / "in_process.ckpt")
    proc = _torchrun(1, [*request, "--out", str(tmp_path / "ddp.ckpt"), "--validation-fraction", "0.2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "ddp.ckpt.json").read_text())
    assert doc["world_size"] == 1 and doc["device"] == "cpu"
    assert doc["sha256"] == in_process_sha  # DDP(gloo) at world size 1 == plain training, bit for bit
    assert doc["config_hash"] == config.config_hash()


def test_torchrun_world_size_two_then_rows_split_once_and_weights_equal_combined_batch(tmp_path: Path) -> None:
    ds = real_dataset(DDP_CONFIG, n_bars=DDP_BARS)
    split = holdout_split(ds.timestamps, validation_fraction=0.2, purge=ds.horizon_ns)
    n_train = len(split.train)
    assert n_train % 2 == 1 and n_train % (2 * DDP_CONFIG.batch_size) != 0  # padding and a partial step, exercised
    request = _ddp_request(tmp_path, DDP_CONFIG, ds)
    started = time.perf_counter()
    proc = _torchrun(2, [*request, "--out", str(tmp_path / "ddp.ckpt"), "--row-log", str(tmp_path / "rows")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"torchrun world size 2: {time.perf_counter() - started:.1f} s")
    doc = json.loads((tmp_path / "ddp.ckpt.json").read_text())
    assert doc["world_size"] == 2 and doc["device"] == "cpu"

    # The reference: one process, twice the batch, the rows it trains on per step recorded the same way.
    combined: dict[tuple[int, int], list[int]] = {}

    def record(epoch: int, step: int, rows: npt.NDArray[np.int64]) -> None:
        combined[epoch, step] = rows.tolist()

    reference = train(DDP_CONFIG.replace(batch_size=2 * DDP_CONFIG.batch_size), ds, split, on_step=record)

    # (a) What each rank trained on, as it recorded it: disjoint, complete, and per step the combined batch.
    logs = [json.loads((tmp_path / "rows" / f"rows.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(log["rank"], log["world_size"]) for log in logs] == [(0, 2), (1, 2)]
    per_rank = [{(epoch, step): rows for epoch, step, rows in log["steps"]} for log in logs]
    assert per_rank[0].keys() == per_rank[1].keys() == combined.keys()
    epochs = sorted({epoch for epoch, _ in combined})
    assert epochs == [1, 2, 3]
    orders = []
    for epoch in epochs:
        shards = [[row for (e, _), rows in sorted(steps.items()) if e == epoch for row in rows] for steps in per_rank]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(split.train.tolist())  # every row exactly once
        assert abs(len(shards[0]) - len(shards[1])) == 1  # rank 1's padding copy carried no weight
        orders.append(shards[0])
    assert orders[0] != orders[1]  # reshuffled every epoch
    for key, rows in combined.items():
        assert sorted(per_rank[0][key] + per_rank[1][key]) == sorted(rows), key

    # (b) Gradients synchronised: the weights equal the single process's with the combined batch.
    ddp_state = load_checkpoint(tmp_path / "ddp.ckpt", doc["sha256"]).model.state_dict()
    ref_state = reference.model.state_dict()
    assert ddp_state.keys() == ref_state.keys()
    for name, tensor in ref_state.items():
        torch.testing.assert_close(ddp_state[name], tensor, rtol=0.0, atol=DDP_WEIGHT_ATOL, msg=name)
    assert doc["best_epoch"] == reference.best_epoch
    assert len(doc["history"]) == len(reference.history)
    for got, want in zip(doc["history"], reference.history, strict=True):
        assert got["train_loss"] == pytest.approx(want.train_loss, rel=DDP_LOSS_RTOL)  # all shards, not rank 0's
        assert got["val_loss"] == pytest.approx(want.val_loss, rel=DDP_LOSS_RTOL)
    assert doc["metrics"]["val_log_loss"] == pytest.approx(reference.metrics["val_log_loss"], rel=DDP_LOSS_RTOL)
    # The tolerance tells steps apart: the same rows in per-rank batches without the other rank are far off.
    unsynced = train(DDP_CONFIG, ds, split).model.state_dict()["core.body.0.weight"]
    assert float((unsynced - ddp_state["core.body.0.weight"]).abs().max()) > 1_000 * DDP_WEIGHT_ATOL


def test_cli_train_ddp_world_size_two_then_one_checkpoint_by_rank_zero_with_its_sha(tmp_path: Path) -> None:
    config = DDP_CONFIG.replace(max_epochs=1)
    request = _ddp_request(tmp_path, config, real_dataset(config, n_bars=DDP_BARS))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cli = [sys.executable, "-m", "ops.cli", "train", "ddp", "--nproc", "2", "--"]
    started = time.perf_counter()
    proc = _launch([*cli, *request, "--out", str(out_dir / "m.ckpt"), "--result", str(out_dir / "r.json")], 180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"tradeflow train ddp --nproc 2: {time.perf_counter() - started:.1f} s")
    doc = json.loads((out_dir / "r.json").read_text())
    assert doc["world_size"] == 2 and doc["device"] == "cpu" and doc["split"] == "holdout"
    assert doc["checkpoint"] == str(out_dir / "m.ckpt") and doc["config_hash"] == config.config_hash()
    assert hashlib.sha256((out_dir / "m.ckpt").read_bytes()).hexdigest() == doc["sha256"]
    # The rank that saves is the rank that announces, right after: one announcement, one writer.
    announced = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert announced == [{"sha256": doc["sha256"], "world_size": 2, "device": "cpu"}]
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.ckpt", "r.json"]  # no stray temp file


def test_cli_train_ddp_bad_request_then_exit_2_before_any_rank_starts(tmp_path: Path) -> None:
    request = _ddp_request(tmp_path, DDP_CONFIG, real_dataset(DDP_CONFIG, n_bars=DDP_BARS))
    (tmp_path / "config.json").write_text(json.dumps({**DDP_CONFIG.to_dict(), "lr": -1.0}))
    cli = [sys.executable, "-m", "ops.cli", "train", "ddp", "--nproc", "2", "--"]
    proc = _launch([*cli, *request, "--out", str(tmp_path / "m.ckpt")], 60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "bad request" in proc.stderr and "lr" in proc.stderr
    assert "torch.distributed" not in proc.stderr  # refused before torchrun started
    assert not (tmp_path / "m.ckpt").exists()


# ---------------------------------------------------------------------------
# bf16 autocast and vmapped ensembles (CPU here; the same code on CUDA)
# ---------------------------------------------------------------------------

ACCEL = SMALL.replace(max_epochs=4, patience=2, dropout=0.0)
ACCEL_FAMILIES = {"mlp": (32, 16), "gru": (16, 8)}


@functools.lru_cache(maxsize=2)
def _accel_data(family: str) -> tuple[ModelConfig, WindowDataset, Split]:
    config = ACCEL.replace(family=family, hidden_sizes=ACCEL_FAMILIES[family])
    ds = real_dataset(config, n_bars=2_000)
    return config, ds, walk_forward_splits(ds.timestamps, 3, purge=ds.horizon_ns, embargo=24 * H)[1]


def _max_relative_gap(a: TrainResult, b: TrainResult) -> float:
    """Largest |difference| of a weight over the largest |weight| of its tensor, over all tensors."""
    worst = 0.0
    for (name, x), (other, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert name == other
        worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)))
    return worst


@pytest.mark.parametrize("family", sorted(ACCEL_FAMILIES))
def test_bf16_on_cpu_then_trained_in_autocast_and_metrics_within_stated_tolerance(family: str) -> None:
    config, ds, split = _accel_data(family)
    fp32 = train(config, ds, split)
    bf16 = train(config.replace(precision="bf16"), ds, split)
    assert _max_relative_gap(fp32, bf16) > 1e-4  # autocast really ran: other weights than fp32
    gaps = precision_gaps(fp32.metrics, bf16.metrics)
    assert set(gaps) == set(BF16_TOLERANCE)
    assert all(g["within"] for g in gaps.values()), gaps
    assert bf16.model.core.class_head.weight.dtype == torch.float32  # master weights stay float32


def test_precision_gaps_then_a_metric_off_or_missing_is_outside() -> None:
    ref = {"best_val_loss": 1.0, "val_log_loss": 1.0, "val_accuracy": 0.5, "val_balanced_accuracy": 0.4}
    gaps = precision_gaps(ref, {**ref, "val_log_loss": 1.02, "val_accuracy": 0.52, "val_ic": 0.1})
    assert not gaps["val_log_loss"]["within"] and gaps["val_log_loss"]["gap"] == pytest.approx(0.02)
    assert gaps["val_accuracy"]["within"] and gaps["best_val_loss"]["within"]
    assert not gaps["val_ic"]["within"] and math.isnan(float(gaps["val_ic"]["gap"]))


@pytest.mark.parametrize("family", sorted(ACCEL_FAMILIES))
def test_vmapped_ensemble_then_each_member_equals_its_trial_trained_alone(family: str) -> None:
    config, ds, split = _accel_data(family)
    trials = [
        config.replace(lr=1e-3, seed=1),
        config.replace(lr=3e-3, weight_decay=0.1, seed=2),  # large enough that a lost decay shows
        config.replace(lr=5e-4, weight_decay=0.0, seed=3),
    ]
    ensemble = train_ensemble(trials, ds, split)
    for trial, member in zip(trials, ensemble, strict=True):
        alone = train(trial, ds, split)
        assert member.config == trial
        assert member.best_epoch == alone.best_epoch
        assert len(member.history) == len(alone.history)
        assert _max_relative_gap(alone, member) < ENSEMBLE_WEIGHT_TOLERANCE
        assert member.metrics["best_val_loss"] == pytest.approx(alone.metrics["best_val_loss"], rel=1e-5)
    assert _max_relative_gap(ensemble[0], ensemble[1]) > 0.01  # members are different trials


def test_ensemble_members_stopping_at_other_epochs_then_histories_as_alone() -> None:
    config, ds, split = _accel_data("mlp")
    trials = [config.replace(max_epochs=6, patience=1, lr=lr, seed=s) for s, lr in ((0, 1e-2), (1, 3e-4))]
    ensemble = train_ensemble(trials, ds, split)
    alone = [train(t, ds, split) for t in trials]
    assert len({len(r.history) for r in alone}) == 2  # the case under test: one stops before the other
    for a, m in zip(alone, ensemble, strict=True):
        assert [h.epoch for h in m.history] == [h.epoch for h in a.history]
        assert m.best_epoch == a.best_epoch
        assert _max_relative_gap(a, m) < ENSEMBLE_WEIGHT_TOLERANCE


def test_ensemble_of_other_architectures_then_refused() -> None:
    config, ds, split = _accel_data("mlp")
    with pytest.raises(ValueError, match="share everything but"):
        train_ensemble([config, config.replace(hidden_sizes=(16,))], ds, split)
    with pytest.raises(ValueError, match="at least one"):
        train_ensemble([], ds, split)
