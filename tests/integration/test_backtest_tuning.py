"""Tuning studies in a real PostgreSQL: idempotent persistence, conflicts refused, the CLI end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from agents.market.csv_import import import_csv_file
from backtest.reference import PriceSeries
from backtest.tuning import (
    Constraints,
    StudyConflictError,
    StudySpec,
    TuningCosts,
    best,
    persist,
    price_fingerprint,
    run_grid,
    study_config,
)
from ops.embedded.broker import free_port
from topics.records import Timeframe
from topics.schema import TS_MIN_NS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"


@pytest.fixture(scope="module")
def prices() -> PriceSeries:
    bars = import_csv_file(DATA, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
    return PriceSeries.from_bars([b for b in bars if b.open_time >= 1_577_836_800 * 10**9])  # 2020 onwards


async def _rows(dsn: str, study_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT trial_key, trial_number, params::text, metrics::text, score, feasible, reason "
                "FROM tuning_trials WHERE study_id = $1 ORDER BY trial_number",
                study_id,
            )
        )
    finally:
        await conn.close()


async def test_grid_study_persisted_idempotently_and_conflicts_refused(dsn: str, prices: PriceSeries) -> None:
    costs, constraints = TuningCosts(), Constraints(min_trades=15, min_turnover=5.0)
    fasts, slows = [5, 10, 20], [30, 60, 2500]
    trials = run_grid(prices, costs, constraints, fasts, slows, workers=2)
    spec = StudySpec.derive(
        "grid", study_config(costs, constraints, {"fast": fasts, "slow": slows}), price_fingerprint(prices)
    )
    assert await persist(dsn, spec, trials) == {"trials_new": len(trials), "trials_already_stored": 0}
    first = await _rows(dsn, spec.study_id)
    assert len(first) == len(trials) == 9

    # Same study again (a re-run): nothing new, rows unchanged.
    again = run_grid(prices, costs, constraints, fasts, slows, workers=1)
    assert await persist(dsn, spec, again) == {"trials_new": 0, "trials_already_stored": len(trials)}
    assert await _rows(dsn, spec.study_id) == first

    # Stored values are the computed ones; infeasible rows carry their reason; missing stays null.
    by_number = {r["trial_number"]: r for r in first}
    for t in trials:
        row = by_number[t.number]
        assert json.loads(row["params"]) == t.params and json.loads(row["metrics"]) == t.metrics
        assert (row["score"], row["feasible"], row["reason"]) == (t.score, t.feasible, t.reason)
    infeasible = [r for r in first if not r["feasible"]]
    assert infeasible and all("min_trades" in r["reason"] for r in infeasible)

    # The leaderboard view agrees with the code's ranking; infeasible trials are never in it.
    conn = await asyncpg.connect(dsn)
    try:
        board = await conn.fetch(
            "SELECT rank, trial_number FROM tuning_leaderboard WHERE study_id = $1 ORDER BY rank", spec.study_id
        )
    finally:
        await conn.close()
    winner = best(trials)
    assert winner is not None and board[0]["trial_number"] == winner.number
    assert len(board) == sum(t.feasible for t in trials)

    # The same id with another config, or a trial with other results: refused, never overwritten.
    other = dataclasses.replace(spec, config={**spec.config, "costs": {"fee_rate": 0.002}})
    with pytest.raises(StudyConflictError, match="another config"):
        await persist(dsn, other, trials)
    tampered = [dataclasses.replace(trials[0], metrics={**trials[0].metrics, "fees": 0.0}), *trials[1:]]
    with pytest.raises(StudyConflictError, match="other results"):
        await persist(dsn, spec, tampered)
    assert await _rows(dsn, spec.study_id) == first


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "tune", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_cli_grid_and_optuna_on_postgres(dsn: str) -> None:
    grid = ("grid", "--fast", "10,20", "--slow", "50:150:50", "--min-trades", "20", "--min-turnover", "5", "--dsn", dsn)
    first = await asyncio.to_thread(_cli, *grid)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["trials"] == 6 and out["persisted"] == {"trials_new": 6, "trials_already_stored": 0}
    assert out["best"]["params"]["fast"] in (10, 20) and out["best"]["params"]["slow"] in (50, 100, 150)
    rerun = await asyncio.to_thread(_cli, *grid)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["persisted"] == {"trials_new": 0, "trials_already_stored": 6}
    assert json.loads(rerun.stdout)["best"] == out["best"]

    optuna_args = (
        "optuna",
        "--fast-range",
        "2:40",
        "--slow-range",
        "20:300",
        "--trials",
        "8",
        "--seed",
        "3",
        "--optuna-storage",
        "postgres",
        "--min-trades",
        "20",
        "--min-turnover",
        "5",
        "--dsn",
        dsn,
    )
    o1 = await asyncio.to_thread(_cli, *optuna_args)
    assert o1.returncode in (0, 1), o1.stderr  # 1 only if no candidate was feasible; both are honest outcomes
    study_id = json.loads(o1.stdout)["study_id"]
    rows = await _rows(dsn, study_id)
    assert 1 <= len(rows) <= 8  # optuna may propose the same params twice: one row per (study, params)
    o2 = await asyncio.to_thread(_cli, *optuna_args)  # the RDB study is complete: continued, nothing re-run
    assert o2.returncode == o1.returncode, o2.stderr
    assert json.loads(o2.stdout)["trials"] == 8 and json.loads(o2.stdout)["persisted"]["trials_new"] == 0
    assert await _rows(dsn, study_id) == rows


async def test_cli_exit_codes(dsn: str) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nope"
    r = await asyncio.to_thread(_cli, "grid", "--fast", "10", "--slow", "50", "--dsn", dead)
    assert r.returncode == 3 and "unreachable" in r.stderr
    r = await asyncio.to_thread(_cli, "grid", "--fast", "50", "--slow", "10", "--dsn", dsn)
    assert r.returncode == 2 and "no fast < slow" in r.stderr
    r = await asyncio.to_thread(_cli, "grid", "--fast", "10", "--slow", "50", "--file", "/nonexistent.csv")
    assert r.returncode == 2 and "cannot use" in r.stderr
    # Activity constraints nobody can meet: the search runs, no winner, exit 1 (and it is persisted).
    r = await asyncio.to_thread(_cli, "grid", "--fast", "10", "--slow", "50", "--min-trades", "100000", "--dsn", dsn)
    assert r.returncode == 1 and "no candidate" in r.stderr
    assert json.loads(r.stdout)["best"] is None and json.loads(r.stdout)["infeasible"] == 1
