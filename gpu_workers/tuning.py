"""Hyperparameter search: optuna trials run as training jobs, the study in PostgreSQL.

Each trial samples hyperparameters, becomes a ``TrainJob`` (job id
``<study>-trial-<n>``) and runs through the same :class:`TrainingService` the
trainer worker uses (same validation, data loading, split, registry event and
job result), and the results are published to ``jobs.results`` /
``models.registry`` like any job. Trials are asked ``parallel`` at a time and
trained by ``TrainingService.run_jobs``: those sharing a dataset and an
architecture train together as one vmapped ensemble (docs/models.md). The objective is the validation log loss
(lower is better); a trial whose job fails is recorded as failed with its
reason, never as a good score. The study uses optuna's RDB storage on the
project's PostgreSQL database, so it survives restarts and can be resumed or
inspected (``optuna.load_study``) from any machine with the DSN.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import structlog

from gpu_workers.training_service import TrainingService
from runtime.publish import RecordPublisher
from topics.records import JobResult, JobStatus, Timeframe, TrainJob

log = structlog.get_logger("gpu_workers.tuning")

#: name -> (kind, low, high[, log]) ; categorical as ("cat", choices)
DEFAULT_SPACE: dict[str, tuple[Any, ...]] = {
    "lr": ("float", 1e-4, 1e-2, True),
    "weight_decay": ("float", 1e-6, 1e-2, True),
    "dropout": ("float", 0.0, 0.5, False),
    "window": ("int", 4, 32),
    "hidden_sizes": ("cat", ["32", "64", "64,32", "128,64"]),
}

#: trials asked of optuna and trained at once (``tradeflow train tune --parallel``); 1 is one at a time
DEFAULT_PARALLEL = 8


@dataclass(frozen=True)
class TuneSpec:
    study: str
    family: str
    symbol: str
    timeframe: Timeframe
    data_start: int
    data_end: int
    feature_set_version: str
    trials: int
    seed: int = 7
    fixed: tuple[tuple[str, str | int | float | bool], ...] = ()


def sqlalchemy_url(dsn: str) -> str:
    """asyncpg DSN -> SQLAlchemy URL for optuna's RDB storage."""
    return "postgresql+psycopg2://" + dsn.split("://", 1)[1]


def _sample(trial: optuna.Trial, space: dict[str, tuple[Any, ...]]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for name, spec in space.items():
        if spec[0] == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        elif spec[0] == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        else:
            out[name] = trial.suggest_categorical(name, spec[1])
    return out


async def tune(
    spec: TuneSpec,
    *,
    dsn: str,
    bootstrap: str,
    namespace: str,
    artifacts: Path,
    space: dict[str, tuple[Any, ...]] | None = None,
    parallel: int = DEFAULT_PARALLEL,
) -> optuna.Study:
    """Run ``spec.trials`` more trials of the study, asked ``parallel`` at a time."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    space = space or DEFAULT_SPACE
    storage = optuna.storages.RDBStorage(sqlalchemy_url(dsn))
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        # constant liar: a batch's later trials see its earlier ones (running) as poor, not absent
        sampler=optuna.samplers.TPESampler(seed=spec.seed, constant_liar=parallel > 1),
    )
    service = TrainingService(dsn, artifacts)
    async with RecordPublisher(bootstrap, namespace, name="tuner") as pub:
        remaining = spec.trials
        while remaining > 0:
            now = time.time_ns()
            batch = [study.ask() for _ in range(min(parallel, remaining))]
            jobs = [_job(spec, trial, {**_sample(trial, space), **dict(spec.fixed)}, now) for trial in batch]
            remaining -= len(batch)
            await pub.publish(jobs)
            outcomes = await service.run_jobs(jobs, now)
            for trial, job, outcome in zip(batch, jobs, outcomes, strict=True):
                await pub.publish(list(outcome.registry))
                await pub.publish([outcome.result])
                _tell(study, trial, spec, job, outcome.result)
            await asyncio.sleep(0)
    return study


def _job(spec: TuneSpec, trial: optuna.Trial, params: dict[str, str | int | float | bool], now: int) -> TrainJob:
    return TrainJob.new(
        ts_event=now,
        ts_init=now,
        job_id=f"{spec.study}-trial-{trial.number}",
        model_family=spec.family,
        symbols=(spec.symbol,),
        timeframe=spec.timeframe,
        data_start=spec.data_start,
        data_end=spec.data_end,
        feature_set_version=spec.feature_set_version,
        seed=spec.seed,
        hyperparams=params,
    )


def _tell(study: optuna.Study, trial: optuna.Trial, spec: TuneSpec, job: TrainJob, res: JobResult) -> None:
    trial.set_user_attr("job_id", job.job_id)
    if res.status is JobStatus.SUCCEEDED and "val_log_loss" in res.metrics:
        trial.set_user_attr("artifact", res.artifacts.get(spec.symbol, ""))
        for k in ("val_accuracy", "val_ic", "val_pnl_sharpe", "val_pnl_total_return"):
            if k in res.metrics:
                trial.set_user_attr(k, res.metrics[k])
        study.tell(trial, res.metrics["val_log_loss"])
    else:
        trial.set_user_attr("failure", res.reason or "no val_log_loss")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    log.info(
        "trial_done",
        study=spec.study,
        trial=trial.number,
        status=res.status.value,
        val_log_loss=res.metrics.get("val_log_loss"),
        reason=res.reason,
    )
