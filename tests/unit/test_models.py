"""Model config, torch modules, the linear baseline and the metric functions
(checked against hand-computed values)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from models.baseline import LinearBaselineCore, fit_linear_baseline
from models.config import CONFIG_VERSION, InvalidConfig, ModelConfig
from models.metrics import (
    accuracy,
    balanced_accuracy,
    evaluate_predictions,
    log_loss,
    majority_rate,
    non_overlapping_rows,
    positions_from_scores,
    spearman_ic,
    strategy_pnl,
)
from models.nets import ForecastModel, TCNCore, build_model, tcn_blocks
from topics.records import Timeframe, TrainJob
from topics.schema import codec_for


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "reason_part"),
    [
        ({"lr": -0.001}, "lr", "> 0"),
        ({"lr": 0.0}, "lr", "> 0"),
        ({"lr": float("nan")}, "lr", "finite"),
        ({"window": 0}, "window", ">= 1"),
        ({"window": 2.5}, "window", "integer"),
        ({"family": "transformer"}, "family", "unknown family"),
        ({"device": "tpu"}, "device", "unknown device"),
        ({"dropout": 1.0}, "dropout", "< 1.0"),
        ({"dropout": -0.1}, "dropout", ">= 0.0"),
        ({"hidden_sizes": ()}, "hidden_sizes", "non-empty"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes", ">= 1"),
        ({"batch_size": 0}, "batch_size", ">= 1"),
        ({"max_epochs": 0}, "max_epochs", ">= 1"),
        ({"patience": 0}, "patience", ">= 1"),
        ({"weight_decay": -1.0}, "weight_decay", ">= 0.0"),
        ({"horizon_bars": 0}, "horizon_bars", ">= 1"),
        ({"flat_band": float("inf")}, "flat_band", "finite"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"num_threads": 0}, "num_threads", ">= 1"),
        ({"ridge_alpha": 0.0}, "ridge_alpha", "> 0"),
        ({"signal_threshold": 1.0}, "signal_threshold", "< 1.0"),
        ({"lr": True}, "lr", "number"),
        ({"config_version": CONFIG_VERSION + 1}, "config_version", "not supported"),
    ],
)
def test_invalid_hyperparameter_then_invalid_config_names_field_and_reason(
    changes: dict[str, Any], field: str, reason_part: str
) -> None:
    with pytest.raises(InvalidConfig) as info:
        ModelConfig(**changes)
    assert info.value.field == field
    assert reason_part in info.value.reason
    assert field in str(info.value)


def test_unknown_key_in_dict_then_invalid_config() -> None:
    with pytest.raises(InvalidConfig) as info:
        ModelConfig.from_dict({"learning_rate": 0.1})
    assert info.value.field == "learning_rate"
    assert "unknown field" in info.value.reason


def test_config_round_trip_through_train_job_record_then_equal_and_same_hash() -> None:
    config = ModelConfig(family="gru", window=24, hidden_sizes=(32, 16), lr=3e-4, seed=7, horizon_bars=4)
    flat = config.to_dict()
    assert flat["hidden_sizes"] == "32,16"
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())
    job = TrainJob.new(
        ts_init=1_700_000_000_000_000_000,
        ts_event=1_700_000_000_000_000_000,
        job_id="j1",
        model_family="gru",
        symbols=("BTC/USDT",),
        timeframe=Timeframe.H1,
        data_start=1_600_000_000_000_000_000,
        data_end=1_700_000_000_000_000_000,
        feature_set_version="fs1.x",
        seed=7,
        hyperparams=flat,
    )
    codec = codec_for(TrainJob)
    decoded = codec.decode(codec.encode(job))
    again = ModelConfig.from_train_job(decoded)
    assert again == config
    assert again.config_hash() == config.config_hash()
    assert ModelConfig.from_dict({"hidden_sizes": [32, 16]}).hidden_sizes == (32, 16)


# sha256 of the canonical config JSON, computed before the tcn family existed: adding a
# family must not change an existing config's dict, bytes or hash (registry and checkpoints
# key on them).
PINNED_CONFIG_HASHES = (
    ({}, "701f03d5aabf54f003c996b318b4a84fb47e35f67f4f00fd6b6ce47d59a1b4e9"),
    (
        {"family": "gru", "window": 24, "hidden_sizes": (32, 16), "lr": 3e-4, "seed": 7, "horizon_bars": 4},
        "c59905d3c1fee55518e1b74b1fc35bac79415be77233319eeeb278db0f0a4e00",
    ),
    ({"family": "linear_baseline"}, "e94fc1fb2d3470402baaab07f64ac6b0c9577b05aca023dc98174efd11db507c"),
)


@pytest.mark.parametrize(("fields", "expected"), PINNED_CONFIG_HASHES)
def test_existing_configs_after_tcn_added_then_same_bytes_and_hash(fields: dict[str, Any], expected: str) -> None:
    config = ModelConfig(**fields)
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == expected
    assert config.config_hash() == expected
    # no new field in the dict (precision is left out at its default fp32: see the config's changelog)
    assert list(config.to_dict()) == [f.name for f in dataclasses.fields(ModelConfig) if f.name != "precision"]


def test_precision_bf16_then_in_dict_round_trips_and_hashes_apart_from_fp32() -> None:
    fp32 = ModelConfig(device="cpu")
    bf16 = fp32.replace(precision="bf16")
    assert "precision" not in fp32.to_dict() and bf16.to_dict()["precision"] == "bf16"
    assert ModelConfig.from_dict(bf16.to_dict()) == bf16
    assert ModelConfig.from_dict({**fp32.to_dict(), "precision": "fp32"}).config_hash() == fp32.config_hash()
    assert bf16.config_hash() != fp32.config_hash()
    with pytest.raises(InvalidConfig) as err:
        fp32.replace(precision="fp16")
    assert err.value.field == "precision"


def test_tcn_train_job_then_config_round_trips_and_hashes_apart_from_mlp() -> None:
    config = ModelConfig(family="tcn", window=32, hidden_sizes=(64, 32), seed=3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.config_hash() != config.replace(family="mlp").config_hash()
    job = TrainJob.new(
        ts_init=1_700_000_000_000_000_000,
        ts_event=1_700_000_000_000_000_000,
        job_id="j-tcn",
        model_family="tcn",
        symbols=("BTC/USDT",),
        timeframe=Timeframe.H1,
        data_start=1_600_000_000_000_000_000,
        data_end=1_700_000_000_000_000_000,
        feature_set_version="fs1.x",
        seed=3,
        hyperparams={"window": 32, "hidden_sizes": "64,32"},
    )
    assert ModelConfig.from_train_job(job) == config  # what the trainer worker builds from a job


def test_changed_hyperparameter_then_hash_changes() -> None:
    base = ModelConfig()
    assert base.config_hash() == ModelConfig().config_hash()
    assert base.replace(lr=2e-3).config_hash() != base.config_hash()
    assert base.replace(fee_bps=20.0).config_hash() != base.config_hash()


def test_train_job_contradicting_its_hyperparams_then_invalid_config() -> None:
    job = TrainJob.new(
        ts_init=1_700_000_000_000_000_000,
        ts_event=1_700_000_000_000_000_000,
        job_id="j2",
        model_family="mlp",
        symbols=("BTC/USDT",),
        timeframe=Timeframe.H1,
        data_start=1_600_000_000_000_000_000,
        data_end=1_700_000_000_000_000_000,
        feature_set_version="fs1.x",
        seed=1,
        hyperparams={"family": "gru"},
    )
    with pytest.raises(InvalidConfig) as info:
        ModelConfig.from_train_job(job)
    assert info.value.field == "family"


def test_cuda_requested_without_gpu_then_invalid_config() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidConfig) as info:
        ModelConfig(device="cuda").resolve_device()
    assert info.value.field == "device"
    assert ModelConfig(device="auto").resolve_device() == torch.device("cpu")


# ---------------------------------------------------------------------------
# Nets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mlp", "gru", "tcn", "linear_baseline"])
def test_window_batch_through_each_family_then_three_logits_and_one_return(family: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(family=family, window=6, hidden_sizes=(8, 4))
    model = build_model(config, n_features=5)
    logits, expected = model(torch.randn(7, 6, 5))
    assert logits.shape == (7, 3)
    assert expected.shape == (7,)
    assert {"input_mean", "input_std", "return_scale"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="expected windows"):
        model(torch.randn(7, 5, 5))


def _dilated_tcn_reference(core: TCNCore, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook evaluation of the same weights: every step of every block, with
    causally left-padded, dilated ``conv1d``s; read at the newest step."""
    c = core.channels
    h = torch.nn.functional.linear(z, core.project.weight, core.project.bias).transpose(1, 2)  # [B, C, W]
    for i, (temporal, mix) in enumerate(zip(core.temporal, core.mix, strict=True)):
        dilation = 2**i
        kernel = torch.stack([temporal.weight[:, :c], temporal.weight[:, c:]], dim=2)  # taps: t - d, t
        padded = torch.nn.functional.pad(h, (dilation, 0))
        step = torch.relu(torch.nn.functional.conv1d(padded, kernel, temporal.bias, dilation=dilation))
        h = h + torch.nn.functional.conv1d(step, mix.weight[:, :, None], mix.bias)
    hidden = core.head(h[:, :, -1])
    return core.class_head(hidden), core.return_head(hidden).squeeze(-1)


@pytest.mark.parametrize("window", [1, 2, 5, 12, 16, 17])
def test_tcn_newest_step_then_equals_full_dilated_causal_convolution(window: int) -> None:
    torch.manual_seed(window)
    model = build_model(ModelConfig(family="tcn", window=window, hidden_sizes=(32, 8)), n_features=3).eval()
    core = model.core.double()
    assert isinstance(core, TCNCore)
    assert 2 ** tcn_blocks(window) >= window > 2 ** (tcn_blocks(window) - 1) or window == 1
    z = torch.randn(64, window, 3, dtype=torch.float64)
    with torch.no_grad():
        logits, unit = core(z)
        ref_logits, ref_unit = _dilated_tcn_reference(core, z)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-12)
        torch.testing.assert_close(unit, ref_unit, rtol=0, atol=1e-12)
        # Receptive field = the whole window: the oldest step moves the forecast.
        older = z.clone()
        older[:, 0] += 3.0
        assert not torch.equal(core(older)[0], logits)


def test_normalisation_installed_then_outputs_scale_with_return_scale() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(window=3, hidden_sizes=(4,), dropout=0.0), n_features=2).eval()
    x = torch.randn(4, 3, 2) * 10 + 5
    model.set_normalization(torch.tensor([5.0, 5.0]), torch.tensor([10.0, 10.0]), 1.0)
    _, unit = model(x)
    model.set_normalization(torch.tensor([5.0, 5.0]), torch.tensor([10.0, 10.0]), 0.01)
    _, scaled = model(x)
    torch.testing.assert_close(scaled, unit * 0.01)
    z = model.standardize(torch.full((1, 3, 2), 1e6))
    assert float(z.max()) == ModelConfig().input_clip
    with pytest.raises(ValueError):
        model.set_normalization(torch.zeros(2), torch.zeros(2), 1.0)


# ---------------------------------------------------------------------------
# Baseline
# ---------------------------------------------------------------------------


def test_baseline_on_linear_data_then_recovers_coefficients_and_direction() -> None:
    rng = np.random.default_rng(0)
    n, window, n_features = 4000, 2, 3
    z = rng.standard_normal((n, window, n_features))
    true_coef = np.array([0.5, 0.0, -0.3, 0.2, 0.0, 0.1])
    y = z.reshape(n, -1) @ true_coef + 0.05 + 0.05 * rng.standard_normal(n)
    y_class = np.where(y < -0.2, 0, np.where(y > 0.2, 2, 1)).astype(np.int64)
    core = LinearBaselineCore(window, n_features)
    fit = fit_linear_baseline(core, z, y_class, y, alpha=1.0)
    assert fit.converged
    np.testing.assert_allclose(core.ridge_coef.numpy(), true_coef, atol=0.01)
    assert abs(float(core.ridge_intercept) - 0.05) < 0.01
    logits, _unit = core(torch.from_numpy(z))
    probs = torch.softmax(logits, dim=1).numpy()
    assert accuracy(probs, y_class) > 0.85
    # Deterministic: a refit gives the same bits.
    again = LinearBaselineCore(window, n_features)
    fit_linear_baseline(again, z, y_class, y, alpha=1.0)
    assert torch.equal(again.logit_coef, core.logit_coef)
    assert torch.equal(again.ridge_coef, core.ridge_coef)


def test_baseline_family_then_float64_model() -> None:
    model = build_model(ModelConfig(family="linear_baseline", window=2), n_features=3)
    assert isinstance(model, ForecastModel)
    assert model.input_mean.dtype == torch.float64


# ---------------------------------------------------------------------------
# Metrics on hand-computed examples
# ---------------------------------------------------------------------------

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
LABELS = np.array([0, 1, 2, 2], dtype=np.int64)


def test_classification_metrics_on_four_rows_then_hand_values() -> None:
    assert log_loss(PROBS, LABELS) == pytest.approx(
        -(math.log(0.7) + math.log(0.8) + math.log(0.5) + math.log(0.1)) / 4
    )
    assert log_loss(PROBS, LABELS) == pytest.approx(0.8938879, abs=1e-6)
    assert accuracy(PROBS, LABELS) == 0.75  # predictions 0, 1, 2, 0
    assert balanced_accuracy(PROBS, LABELS) == pytest.approx((1 + 1 + 0.5) / 3)
    assert majority_rate(LABELS) == 0.5
    zero = np.array([[1.0, 0.0, 0.0]])
    assert log_loss(zero, np.array([2], dtype=np.int64)) == pytest.approx(-math.log(1e-15))


def test_spearman_with_ties_then_hand_value_and_none_when_constant() -> None:
    # realised ranks: 5->1, 6->2, 7,7 -> 3.5, 8->5; centred dot 8, norms 10 and 9.5.
    ic = spearman_ic(np.array([1.0, 2, 3, 4, 5]), np.array([5.0, 6, 7, 8, 7]))
    assert ic == pytest.approx(8 / math.sqrt(10 * 9.5))
    assert spearman_ic(np.array([3.0, 2, 1]), np.array([1.0, 2, 3])) == pytest.approx(-1.0)
    assert spearman_ic(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])) is None
    assert spearman_ic(np.array([1.0]), np.array([2.0])) is None


def test_strategy_pnl_on_four_periods_then_hand_values() -> None:
    positions = np.array([1.0, 1.0, -1.0, 0.0])
    log_returns = np.log(np.array([1.10, 0.95, 0.90, 1.20]))
    report = strategy_pnl(positions, log_returns, cost_bps=10.0, periods_per_year=4.0)
    # r = +0.10 - 0.001 (enter), -0.05, +0.10 - 0.002 (flip), 0 - 0.001 (exit)
    r = [0.099, -0.05, 0.098, -0.001]
    assert report.total_return == pytest.approx(1.099 * 0.95 * 1.098 * 0.999 - 1)
    assert report.mean_return == pytest.approx(0.0365)
    assert report.sharpe == pytest.approx(0.0365 / float(np.std(r, ddof=1)) * 2.0)
    assert report.sharpe == pytest.approx(0.0365 / math.sqrt(0.016577 / 3) * 2.0)
    assert report.trade_count == 3
    assert report.turnover == 4.0
    assert report.max_drawdown == pytest.approx(0.05)
    assert report.exposure == 0.75
    assert report.buy_hold_total_return == pytest.approx(1.1 * 0.95 * 0.9 * 1.2 - 1)


def test_flat_book_then_sharpe_left_out_not_zero() -> None:
    report = strategy_pnl(np.zeros(5), np.full(5, 0.01), cost_bps=10.0, periods_per_year=8760.0)
    assert report.sharpe is None
    assert report.total_return == 0.0
    assert report.trade_count == 0
    metrics = evaluate_predictions(
        probs=np.tile([0.2, 0.6, 0.2], (5, 1)),
        expected_return=np.zeros(5),
        score=np.zeros(5),
        y_class=np.array([2, 2, 1, 0, 2], dtype=np.int64),
        y_return=np.full(5, 0.01),
        timestamps=np.arange(5, dtype=np.int64),
        horizon_ns=1,
        periods_per_year=8760.0,
        cost_bps=15.0,
        signal_threshold=0.0,
        prefix="val",
    )
    assert "val_pnl_sharpe" not in metrics
    assert "val_ic" not in metrics  # constant forecast: undefined, not 0
    assert metrics["val_accuracy"] == 0.2
    assert metrics["val_pnl_trade_count"] == 0.0


def test_positions_and_non_overlapping_periods_then_hand_values() -> None:
    np.testing.assert_array_equal(positions_from_scores(np.array([0.3, -0.05, -0.2, 0.0]), 0.1), [1.0, 0.0, -1.0, 0.0])
    rows = non_overlapping_rows(np.array([0, 1, 2, 3, 4, 10, 11], dtype=np.int64), 2)
    np.testing.assert_array_equal(rows, [0, 2, 4, 5])


def test_evaluate_predictions_with_horizon_then_pnl_uses_every_hth_row() -> None:
    n = 6
    score = np.array([0.5, -0.5, 0.5, -0.5, 0.5, -0.5])
    y_return = np.log(np.array([1.02, 1.0, 0.99, 1.0, 1.01, 1.0]))
    metrics = evaluate_predictions(
        probs=np.tile([0.25, 0.25, 0.5], (n, 1)),
        expected_return=score,
        score=score,
        y_class=np.array([2, 1, 0, 1, 2, 1], dtype=np.int64),
        y_return=y_return,
        timestamps=np.arange(n, dtype=np.int64),
        horizon_ns=2,
        periods_per_year=100.0,
        cost_bps=0.0,
        signal_threshold=0.0,
        prefix="test",
    )
    # Rows 0, 2, 4 all long: 1.02 * 0.99 * 1.01 - 1, one trade (the entry).
    assert metrics["test_pnl_periods"] == 3.0
    assert metrics["test_pnl_total_return"] == pytest.approx(1.02 * 0.99 * 1.01 - 1)
    assert metrics["test_pnl_trade_count"] == 1.0
    assert metrics["test_accuracy"] == pytest.approx(2 / 6)
