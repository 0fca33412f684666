"""Parameter tuning of the reference strategy: grid and optuna searches in parallel worker processes.

Each candidate ``(fast, slow)`` is a full backtest of
:func:`backtest.reference.run_sma_cross` with the study's fixed costs. Candidates run in a
``spawn`` process pool; results come back in *submission* order, so results, ranking and
persisted rows do not depend on which worker finished first.

Objective (maximised): daily Sharpe after costs (:mod:`backtest.sharpe`, the formula of
``backtest_metrics.sharpe_daily``). A candidate below ``min_trades`` round trips or
``min_turnover``, or with an undefined score, is *infeasible* with its reason and never wins;
ranking is feasible first, score descending, earlier trial on ties. Optuna runs a seeded
``TPESampler`` in batches of ``workers`` trials told in trial order: the same seed and worker
count give the same trials. :func:`persist` writes ``tuning_studies`` / ``tuning_trials``
idempotently; differing results for a stored study are an error, never an overwrite.

Model trials (:func:`train_trials`): a study's training configs grouped by architecture, each
group trained as vmapped ensembles (:func:`models.training.train_ensemble`), so trials that
differ only in ``lr``, ``weight_decay`` or ``seed`` share one device (with ``dropout`` 0);
results in trial order.

Design: docs/reference_strategy.md#tuning, docs/models.md#several-trials-at-once
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backtest import sharpe
from backtest.reference import FloatArray, IntArray, PriceSeries, SmaCrossParams, run_sma_cross
from runtime.errors import NeedsOperator

if TYPE_CHECKING:
    from models.config import ModelConfig
    from models.dataset import Split, WindowDataset
    from models.training import TrainResult
    from storage.tuning import StoredTrial

__all__ = [
    "TRIAL_METRIC_TOLERANCE",
    "Constraints",
    "StudyConflictError",
    "StudySpec",
    "TrialResult",
    "TuningCosts",
    "best",
    "check_constraints",
    "daily_sharpe",
    "evaluate",
    "grid_candidates",
    "max_drawdown",
    "persist",
    "price_fingerprint",
    "rank",
    "run_grid",
    "run_optuna",
    "study_config",
    "summary",
    "train_trials",
]

STRATEGY = "sma_cross"
OBJECTIVE = "sharpe_daily"

Metrics = dict[str, float | int | None]


class StudyConflictError(NeedsOperator, RuntimeError):
    """A study id reused with another config, or a re-run whose results differ from the stored ones."""


@dataclass(frozen=True, slots=True)
class Constraints:
    """Activity floors a winner must clear."""

    min_trades: int = 10
    min_turnover: float = 1.0

    def __post_init__(self) -> None:
        if self.min_trades < 0 or not (math.isfinite(self.min_turnover) and self.min_turnover >= 0.0):
            raise ValueError(f"constraints must be >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class TuningCosts:
    """What every candidate of a study shares (not searched)."""

    fee_rate: float = 0.001
    initial_cash: float = 1_000_000.0
    lot_size: float | None = 1.0

    def params(self, fast: int, slow: int) -> SmaCrossParams:
        return SmaCrossParams(
            fast, slow, fee_rate=self.fee_rate, initial_cash=self.initial_cash, lot_size=self.lot_size
        )


@dataclass(frozen=True, slots=True)
class TrialResult:
    """One evaluated candidate. ``reason`` is None exactly when ``feasible``."""

    number: int
    fast: int
    slow: int
    metrics: Metrics
    score: float | None
    feasible: bool
    reason: str | None

    @property
    def params(self) -> dict[str, int]:
        return {"fast": self.fast, "slow": self.slow}

    @property
    def key(self) -> str:
        """sha256 of the canonical params JSON: the trial's identity inside a study."""
        return _sha256(_canonical(self.params))


# ---------------------------------------------------------------------------
# Metrics, constraints, ranking (pure)
# ---------------------------------------------------------------------------


def daily_sharpe(close_time: IntArray, equity: FloatArray, initial_cash: float) -> float | None:
    """Annualised daily Sharpe of an equity curve: the one formula of
    :func:`backtest.sharpe.daily_sharpe` (None when undefined)."""
    return sharpe.daily_sharpe(list(zip(close_time.tolist(), equity.tolist(), strict=True)), initial_cash)


def max_drawdown(equity: FloatArray) -> float:
    """Largest peak-to-trough fall as a fraction of the peak (0.0 for a curve that never falls)."""
    if equity.shape[0] == 0:
        return 0.0
    peak = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peak))


def check_constraints(metrics: Mapping[str, float | int | None], c: Constraints) -> list[str]:
    """Reasons a candidate is infeasible (empty list: feasible). Stable wording, read by people."""
    reasons = []
    trades = metrics.get("trade_count")
    turnover = metrics.get("turnover")
    if trades is None or trades < c.min_trades:
        reasons.append(f"trade_count {trades} < min_trades {c.min_trades}")
    if turnover is None or turnover < c.min_turnover:
        shown = "None" if turnover is None else f"{turnover:.4g}"
        reasons.append(f"turnover {shown} < min_turnover {c.min_turnover:g}")
    if metrics.get(OBJECTIVE) is None:
        reasons.append(f"{OBJECTIVE} undefined (fewer than 2 daily returns or zero variance)")
    return reasons


def evaluate(
    prices: PriceSeries, costs: TuningCosts, constraints: Constraints, number: int, fast: int, slow: int
) -> TrialResult:
    """Backtest one candidate and judge it. Pure: same inputs, same result."""
    if not fast < slow:
        return TrialResult(number, fast, slow, {}, None, False, f"invalid params: fast {fast} >= slow {slow}")
    r = run_sma_cross(prices, costs.params(fast, slow))
    metrics: Metrics = {
        "final_equity": r.final_equity,
        "pnl_after_costs": r.final_equity - costs.initial_cash,
        "fees": r.total_fees,
        "trade_count": r.trade_count,
        "turnover": r.turnover,
        OBJECTIVE: daily_sharpe(prices.close_time, r.equity, costs.initial_cash),
        "max_drawdown": max_drawdown(r.equity),
        "skipped_entries": r.skipped_entries,
    }
    reasons = check_constraints(metrics, constraints)
    score = metrics[OBJECTIVE]
    return TrialResult(
        number, fast, slow, metrics, None if score is None else float(score), not reasons, "; ".join(reasons) or None
    )


def rank(trials: Iterable[TrialResult]) -> list[TrialResult]:
    """Feasible trials, best first (score descending, earlier trial first on a tie)."""
    ok = [t for t in trials if t.feasible and t.score is not None]
    return sorted(ok, key=lambda t: (-(t.score or 0.0), t.number))


def best(trials: Iterable[TrialResult]) -> TrialResult | None:
    """The winner, or None when no candidate is feasible (never an infeasible one)."""
    ranked = rank(trials)
    return ranked[0] if ranked else None


def grid_candidates(fasts: Sequence[int], slows: Sequence[int]) -> list[tuple[int, int]]:
    """Every ``(fast, slow)`` with ``fast < slow``, in ascending order (the trial numbers)."""
    return [(f, s) for f in sorted(set(fasts)) for s in sorted(set(slows)) if f < s]


def price_fingerprint(prices: PriceSeries) -> dict[str, Any]:
    """What the study ran on: market, range, bar count and a sha256 of the columns used."""
    h = hashlib.sha256()
    for col in (prices.open_time, prices.open, prices.close):
        h.update(np.ascontiguousarray(col).tobytes())
    return {
        "venue": prices.venue,
        "symbol": prices.symbol,
        "timeframe": prices.timeframe.value,
        "bars": len(prices),
        "first_open_time": int(prices.open_time[0]),
        "last_open_time": int(prices.open_time[-1]),
        "sha256": h.hexdigest(),
    }


# ---------------------------------------------------------------------------
# Parallel evaluation
# ---------------------------------------------------------------------------

# Per worker process: set once by the pool initializer, so the prices are pickled once per worker.
_WORKER: dict[str, Any] = {}


def _init_worker(prices: PriceSeries, costs: TuningCosts, constraints: Constraints) -> None:
    _WORKER.update(prices=prices, costs=costs, constraints=constraints)


def _evaluate_in_worker(job: tuple[int, int, int]) -> TrialResult:
    number, fast, slow = job
    return evaluate(_WORKER["prices"], _WORKER["costs"], _WORKER["constraints"], number, fast, slow)


class _Evaluator:
    """Runs batches of candidates in order, in-process (workers=1) or in a spawn pool."""

    def __init__(self, prices: PriceSeries, costs: TuningCosts, constraints: Constraints, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._args = (prices, costs, constraints)
        self._pool = (
            multiprocessing.get_context("spawn").Pool(workers, _init_worker, self._args) if workers > 1 else None
        )
        self._workers = workers

    def __enter__(self) -> _Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()

    def map(self, jobs: Sequence[tuple[int, int, int]]) -> list[TrialResult]:
        if self._pool is None:
            prices, costs, constraints = self._args
            return [evaluate(prices, costs, constraints, n, f, s) for n, f, s in jobs]
        chunk = max(1, len(jobs) // (self._workers * 4))
        return self._pool.map(_evaluate_in_worker, jobs, chunksize=chunk)


def run_grid(
    prices: PriceSeries,
    costs: TuningCosts,
    constraints: Constraints,
    fasts: Sequence[int],
    slows: Sequence[int],
    *,
    workers: int = 2,
) -> list[TrialResult]:
    """Exhaustive search; results in grid order whatever the completion order."""
    jobs = [(n, f, s) for n, (f, s) in enumerate(grid_candidates(fasts, slows))]
    if not jobs:
        raise ValueError("empty grid: no fast < slow pair")
    with _Evaluator(prices, costs, constraints, workers) as ev:
        return ev.map(jobs)


def run_optuna(
    prices: PriceSeries,
    costs: TuningCosts,
    constraints: Constraints,
    *,
    fast_range: tuple[int, int],
    slow_range: tuple[int, int],
    n_trials: int,
    seed: int,
    workers: int = 2,
    storage_url: str | None = None,
    study_name: str = "tune",
) -> list[TrialResult]:
    """TPE search in batches of ``workers``; returns every trial of the study in trial-number order."""
    import optuna

    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    sampler = optuna.samplers.TPESampler(seed=seed)  # reads the constraints each trial sets (_tell)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage_url,
        direction="maximize",
        sampler=sampler,
        load_if_exists=storage_url is not None,
    )
    done = [t for t in study.trials if t.state.is_finished()]
    remaining = n_trials - len(done)
    with _Evaluator(prices, costs, constraints, workers) as ev:
        while remaining > 0:
            batch = [study.ask() for _ in range(min(workers, remaining))]
            jobs = [(t.number, t.suggest_int("fast", *fast_range), t.suggest_int("slow", *slow_range)) for t in batch]
            for trial, result in zip(batch, ev.map(jobs), strict=True):
                _tell(study, trial, result, constraints)
            remaining -= len(batch)
    return [_from_frozen(t) for t in sorted(study.trials, key=lambda t: t.number) if t.state.is_finished()]


def _tell(study: Any, trial: Any, r: TrialResult, c: Constraints) -> None:
    import optuna

    trades = r.metrics.get("trade_count")
    turnover = r.metrics.get("turnover")
    # Optuna's convention: feasible when every value is <= 0. An unevaluated candidate violates both.
    trial.set_constraint("min_trades", float(c.min_trades - trades) if isinstance(trades, int) else 1.0)
    trial.set_constraint("min_turnover", float(c.min_turnover - turnover) if isinstance(turnover, float) else 1.0)
    trial.set_user_attr("result", {"metrics": r.metrics, "score": r.score, "feasible": r.feasible, "reason": r.reason})
    if r.score is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, r.score)


def _from_frozen(t: Any) -> TrialResult:
    saved = t.user_attrs["result"]
    return TrialResult(
        t.number,
        int(t.params["fast"]),
        int(t.params["slow"]),
        dict(saved["metrics"]),
        saved["score"],
        bool(saved["feasible"]),
        saved["reason"],
    )


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StudySpec:
    """A study's identity: its id and the config (space, constraints, costs, data) it was run with."""

    study_id: str
    method: str
    config: Mapping[str, Any]
    data_source: Mapping[str, Any]

    @property
    def config_hash(self) -> str:
        return _sha256(_canonical({"config": self.config, "data_source": self.data_source}))

    @classmethod
    def derive(
        cls, method: str, config: Mapping[str, Any], data_source: Mapping[str, Any], study_id: str | None = None
    ) -> StudySpec:
        """``study_id`` or, by default, a deterministic id from the config: re-running is idempotent."""
        probe = cls("", method, config, data_source)
        return cls(study_id or f"{STRATEGY}-{method}-{probe.config_hash[:16]}", method, config, data_source)


def study_config(costs: TuningCosts, constraints: Constraints, space: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "strategy": STRATEGY,
        "objective": OBJECTIVE,
        "costs": asdict(costs),
        "constraints": asdict(constraints),
        "space": dict(space),
    }


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def persist(dsn: str, spec: StudySpec, trials: Sequence[TrialResult]) -> dict[str, int]:
    """Write the study and its trials idempotently; returns counts of new and already-stored trials.

    A trial evaluated twice in one study (optuna may propose the same params
    again) is one row: its first trial number. Raises :class:`StudyConflictError`
    when the stored study has another config or a stored trial other results.
    """
    import asyncpg

    from storage import tuning as tuning_store

    first: dict[str, TrialResult] = {}
    for t in trials:
        first.setdefault(t.key, t)
    rows = list(first.values())
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await tuning_store.insert_study(
                conn,
                spec.study_id,
                spec.method,
                STRATEGY,
                OBJECTIVE,
                _canonical(spec.config),
                spec.config_hash,
                _canonical(spec.data_source),
            )
            stored_hash = await tuning_store.study_config_hash(conn, spec.study_id)
            if stored_hash != spec.config_hash:
                raise StudyConflictError(
                    f"study {spec.study_id!r} exists with another config "
                    f"(hash {(stored_hash or '')[:12]} != {spec.config_hash[:12]}); "
                    "use a new study id"
                )
            new = await tuning_store.insert_trials(
                conn,
                spec.study_id,
                [
                    tuning_store.TrialRow(
                        key=t.key,
                        number=t.number,
                        params=_canonical(t.params),
                        metrics=_canonical(t.metrics),
                        score=t.score,
                        feasible=t.feasible,
                        reason=t.reason,
                    )
                    for t in rows
                ],
            )
            known = [t for t in rows if t.key not in new]
            if known:
                _check_existing(
                    spec.study_id, known, await tuning_store.stored_trials(conn, spec.study_id, [t.key for t in known])
                )
    finally:
        await conn.close()
    return {"trials_new": len(new), "trials_already_stored": len(rows) - len(new)}


def _check_existing(study_id: str, trials: Sequence[TrialResult], stored: Mapping[str, StoredTrial]) -> None:
    """Every already-stored trial must have been stored with the results it has now."""
    for t in trials:
        row = stored[t.key]
        same = (
            json.loads(row.metrics) == t.metrics
            and row.score == t.score
            and row.feasible == t.feasible
            and row.reason == t.reason
        )
        if not same:
            raise StudyConflictError(
                f"study {study_id!r} trial {t.params} is stored with other results; "
                "the code or data changed: use a new study id"
            )


def summary(trials: Sequence[TrialResult], top: int = 5) -> dict[str, Any]:
    """Counts, the winner and a leaderboard, JSON-ready."""
    ranked = rank(trials)
    winner = ranked[0] if ranked else None

    def row(t: TrialResult) -> dict[str, Any]:
        return {"trial": t.number, "params": t.params, "score": t.score, "metrics": t.metrics}

    reasons: dict[str, int] = {}
    for t in trials:
        if not t.feasible and t.reason:
            for part in t.reason.split("; "):
                head = part.split(" ")[0]
                reasons[head] = reasons.get(head, 0) + 1
    return {
        "trials": len(trials),
        "feasible": sum(t.feasible for t in trials),
        "infeasible": sum(not t.feasible for t in trials),
        "infeasible_by_reason": reasons,
        "best": None if winner is None else row(winner),
        "leaderboard": [row(t) for t in ranked[:top]],
    }


# ---------------------------------------------------------------------------
# Model trials: several at once on one device
# ---------------------------------------------------------------------------


#: a trial trained by :func:`train_trials` in an ensemble vs the same trial trained alone: metric ->
#: (``"rel"`` or ``"abs"``, bound), the format of ``models.training.BF16_TOLERANCE``. Epochs run and
#: best epoch are equal; the strategy metrics (pnl, Sharpe) are left out (a score near
#: ``signal_threshold`` flips a position on rounding alone). Measured on CPU: losses within 2.2e-9
#: relative, the rates equal. docs/models.md#several-trials-at-once
TRIAL_METRIC_TOLERANCE: dict[str, tuple[str, float]] = {
    "best_val_loss": ("rel", 1e-5),
    "val_log_loss": ("rel", 1e-5),
    "test_log_loss": ("rel", 1e-5),
    "val_accuracy": ("abs", 0.01),
    "val_balanced_accuracy": ("abs", 0.01),
    "val_ic": ("abs", 0.01),
}


def train_trials(
    configs: Sequence[ModelConfig], dataset: WindowDataset, split: Split, *, max_members: int = 16
) -> list[TrainResult]:
    """Train every trial config; those of one architecture (:meth:`ModelConfig.architecture`)
    together, ``max_members`` at a time, as vmapped ensembles. Alone, through
    :func:`models.training.train`: the linear baseline (closed form), a config with
    ``dropout > 0`` (in an ensemble its masks would come from a stream shared with the
    other members, so its result would depend on the batch it ran in) and a chunk of one
    (bit for bit its solo training). Results in the order of ``configs`` whatever the
    grouping. A diverged member raises :class:`models.training.TrainingDiverged` for its
    whole ensemble."""
    from models.training import train, train_ensemble

    if max_members < 1:
        raise ValueError(f"max_members must be >= 1, got {max_members}")
    groups: dict[ModelConfig, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(cfg.architecture(), []).append(i)
    out: dict[int, TrainResult] = {}
    for arch, members in groups.items():
        if arch.family == "linear_baseline" or arch.dropout > 0.0:
            out.update((i, train(configs[i], dataset, split)) for i in members)
            continue
        for start in range(0, len(members), max_members):
            chunk = members[start : start + max_members]
            if len(chunk) == 1:
                out[chunk[0]] = train(configs[chunk[0]], dataset, split)
            else:
                out.update(zip(chunk, train_ensemble([configs[i] for i in chunk], dataset, split), strict=True))
    return [out[i] for i in range(len(configs))]
