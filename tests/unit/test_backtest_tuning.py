"""Tuning: metrics, activity constraints, ranking, and parallel searches that do not depend on worker timing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from agents.market.csv_import import import_csv_file
from backtest.reference import PriceSeries
from backtest.tuning import (
    Constraints,
    StudySpec,
    TrialResult,
    TuningCosts,
    best,
    check_constraints,
    daily_sharpe,
    evaluate,
    grid_candidates,
    max_drawdown,
    price_fingerprint,
    rank,
    run_grid,
    run_optuna,
    study_config,
    summary,
)
from topics.records import Timeframe
from topics.schema import TS_MIN_NS
from topics.units import NS_PER_DAY as DAY
from topics.units import NS_PER_HOUR as H

DATA = Path(__file__).resolve().parents[2] / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"


@pytest.fixture(scope="module")
def prices() -> PriceSeries:
    bars = import_csv_file(DATA, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
    # 2019-2020 only: enough for real trades, small enough to keep the test fast.
    return PriceSeries.from_bars([b for b in bars if 1_546_300_800 * 10**9 <= b.open_time < 1_609_459_200 * 10**9])


def _trial(number: int, score: float | None, feasible: bool, fast: int = 5, slow: int = 20) -> TrialResult:
    return TrialResult(number, fast, slow, {"trade_count": 3}, score, feasible, None if feasible else "x")


def test_daily_sharpe_formula_and_missing_states() -> None:
    t0 = 1_600_000_000 * 10**9 // DAY * DAY
    # Four days, two bars each; the day's last bar closes at 00:00 of the next day (counts to its own day).
    close_time = np.array(
        [
            t0 + 12 * H,
            t0 + DAY,
            t0 + DAY + 12 * H,
            t0 + 2 * DAY,
            t0 + 2 * DAY + 12 * H,
            t0 + 3 * DAY,
            t0 + 3 * DAY + 12 * H,
            t0 + 4 * DAY,
        ],
        dtype=np.int64,
    )
    equity = np.array([99.0, 100.0, 50.0, 110.0, 1.0, 99.0, 7.0, 108.9])
    # the project's one formula (backtest.sharpe): the initial cash is the equity before the first day
    r = np.array([100.0 / 100.0 - 1, 110.0 / 100.0 - 1, 99.0 / 110.0 - 1, 108.9 / 99.0 - 1])
    expected = r.mean() / r.std(ddof=1) * math.sqrt(365)
    assert daily_sharpe(close_time, equity, 100.0) == pytest.approx(expected)
    assert daily_sharpe(close_time[:2], equity[:2], 100.0) is None  # one day: one return, no stdev
    assert daily_sharpe(close_time, np.full(8, 100.0), 100.0) is None  # flat: zero stdev is missing, not 0.0
    assert daily_sharpe(close_time[:0], equity[:0], 100.0) is None


def test_max_drawdown() -> None:
    assert max_drawdown(np.array([100.0, 120.0, 90.0, 130.0, 117.0])) == pytest.approx(0.25)
    assert max_drawdown(np.array([100.0, 101.0])) == 0.0


def test_constraints_make_never_trade_infeasible_whatever_the_score() -> None:
    c = Constraints(min_trades=10, min_turnover=2.0)
    assert check_constraints({"trade_count": 10, "turnover": 2.0, "sharpe_daily": 1.0}, c) == []
    reasons = check_constraints({"trade_count": 0, "turnover": 0.0, "sharpe_daily": 9.9}, c)
    assert reasons == ["trade_count 0 < min_trades 10", "turnover 0 < min_turnover 2"]
    assert check_constraints({"trade_count": 50, "turnover": 9.0, "sharpe_daily": None}, c) == [
        "sharpe_daily undefined (fewer than 2 daily returns or zero variance)"
    ]
    # The best score is infeasible: it is not the winner, and not in the ranking at all.
    trials = [_trial(0, 5.0, False), _trial(1, 1.0, True), _trial(2, 1.0, True), _trial(3, 0.5, True)]
    assert best(trials) is trials[1]  # tie on score: the earlier trial
    assert [t.number for t in rank(trials)] == [1, 2, 3]
    assert best([_trial(0, 5.0, False)]) is None
    s = summary(trials)
    assert (s["feasible"], s["infeasible"], s["best"]["trial"]) == (3, 1, 1)


def test_evaluate_real_candidate_and_flat_candidate(prices: PriceSeries) -> None:
    costs = TuningCosts(fee_rate=0.001)
    ok = evaluate(prices, costs, Constraints(min_trades=10, min_turnover=1.0), 0, 10, 30)
    assert ok.feasible and ok.reason is None and ok.score is not None
    assert ok.metrics["trade_count"] is not None and int(ok.metrics["trade_count"]) >= 10
    assert ok.metrics["fees"] is not None and float(ok.metrics["fees"]) > 0.0
    # A window longer than the data never trades: activity constraints reject it (and its Sharpe is missing).
    flat = evaluate(prices, costs, Constraints(min_trades=1, min_turnover=0.1), 1, 10, len(prices) + 1)
    assert not flat.feasible and flat.metrics["trade_count"] == 0 and flat.metrics["sharpe_daily"] is None
    assert flat.metrics["turnover"] == 0.0 and flat.metrics["max_drawdown"] == 0.0
    assert flat.reason is not None and "trade_count 0 < min_trades 1" in flat.reason
    bad = evaluate(prices, costs, Constraints(), 2, 30, 30)
    assert not bad.feasible and bad.reason == "invalid params: fast 30 >= slow 30"


def test_grid_candidates_order() -> None:
    assert grid_candidates([20, 5, 5], [10, 30]) == [(5, 10), (5, 30), (20, 30)]


def test_grid_parallel_equals_serial_in_order(prices: PriceSeries) -> None:
    costs, c = TuningCosts(), Constraints(min_trades=20, min_turnover=5.0)
    fasts, slows = [5, 10, 20, 40], [30, 60, 120, 3000]
    serial = run_grid(prices, costs, c, fasts, slows, workers=1)
    parallel = run_grid(prices, costs, c, fasts, slows, workers=2)
    assert parallel == serial
    assert [(t.fast, t.slow) for t in serial] == grid_candidates(fasts, slows)
    assert any(t.feasible for t in serial) and any(not t.feasible for t in serial)
    winner = best(serial)
    assert winner is not None and winner.feasible
    assert all(
        winner.score is not None and t.score is not None and winner.score >= t.score for t in serial if t.feasible
    )


def test_optuna_seeded_is_reproducible_and_parallel(prices: PriceSeries) -> None:
    costs, c = TuningCosts(), Constraints(min_trades=20, min_turnover=5.0)

    def search() -> list[TrialResult]:
        return run_optuna(prices, costs, c, fast_range=(2, 60), slow_range=(10, 240), n_trials=12, seed=7, workers=2)

    a, b = search(), search()
    assert a == b
    assert [t.number for t in a] == list(range(12))
    for t in a:
        assert t.feasible == (t.reason is None)
        if t.fast >= t.slow:
            assert not t.feasible and t.reason is not None and t.reason.startswith("invalid params")
    winner = best(a)
    assert winner is None or winner.feasible


def test_study_id_is_deterministic_and_config_sensitive(prices: PriceSeries) -> None:
    fp = price_fingerprint(prices)
    cfg = study_config(TuningCosts(), Constraints(), {"fast": [5, 10], "slow": [30]})
    a = StudySpec.derive("grid", cfg, fp)
    assert a == StudySpec.derive("grid", cfg, fp)
    other = StudySpec.derive("grid", study_config(TuningCosts(fee_rate=0.002), Constraints(), cfg["space"]), fp)
    assert other.study_id != a.study_id
    assert StudySpec.derive("grid", cfg, fp, study_id="mine").study_id == "mine"
    assert _trial(0, 1.0, True).key == _trial(5, 2.0, True).key  # identity is the params only


# ---------------------------------------------------------------------------
# Model trials: grouped by architecture, trained as vmapped ensembles
# ---------------------------------------------------------------------------


def test_model_trials_then_grouped_by_architecture_and_returned_in_trial_order() -> None:
    import torch

    from backtest.tuning import TRIAL_METRIC_TOLERANCE, train_trials
    from models.dataset import walk_forward_splits
    from models.training import ENSEMBLE_WEIGHT_TOLERANCE, train
    from tests.unit.test_training import SMALL, H, real_dataset

    base = SMALL.replace(max_epochs=2, patience=2, dropout=0.0)
    ds = real_dataset(base, n_bars=2_000)
    split = walk_forward_splits(ds.timestamps, 3, purge=ds.horizon_ns, embargo=24 * H)[1]
    trials = [
        base.replace(lr=1e-3, seed=1),
        base.replace(hidden_sizes=(16,), seed=2),  # another architecture, alone in its group
        base.replace(lr=2e-3, seed=3),
        base.replace(family="linear_baseline"),
        base.replace(lr=4e-3, seed=4),
        base.replace(dropout=0.2, lr=1e-3, seed=5),  # dropout: alone, though its twin shares the architecture
        base.replace(dropout=0.2, lr=2e-3, seed=6),
    ]
    results = train_trials(trials, ds, split, max_members=2)  # the mlp group of 3 runs as 2 + 1
    assert [r.config for r in results] == trials
    trained_alone = {1, 3, 4, 5, 6}  # another architecture, the baseline, a chunk of one, dropout > 0
    for i, (trial, result) in enumerate(zip(trials, results, strict=True)):
        alone = train(trial, ds, split)
        pairs = list(zip(alone.model.state_dict().items(), result.model.state_dict().items(), strict=True))
        if i in trained_alone:  # through train itself: bit for bit
            assert all(torch.equal(a, b) for (_, a), (_, b) in pairs), i
            continue
        assert not all(torch.equal(a, b) for (_, a), (_, b) in pairs)  # the vmapped path ran
        for (name, a), (_, b) in pairs:
            assert float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) < ENSEMBLE_WEIGHT_TOLERANCE, name
        assert (result.best_epoch, len(result.history)) == (alone.best_epoch, len(alone.history))
        for k, (kind, bound) in TRIAL_METRIC_TOLERANCE.items():
            if k in alone.metrics:  # test_log_loss only where the split has test rows
                gap = abs(alone.metrics[k] - result.metrics[k])
                assert gap <= (bound * abs(alone.metrics[k]) if kind == "rel" else bound), (i, k, gap)
    with pytest.raises(ValueError, match="max_members"):
        train_trials(trials, ds, split, max_members=0)
