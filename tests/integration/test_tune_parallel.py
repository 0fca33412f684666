"""Optuna trials trained several at once (``tune(parallel=K)``, ``TrainingService.run_jobs``)
on the real broker and PostgreSQL, compared with the same trials trained one at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.features.spec import FEATURE_SET_VERSION
from backtest.tuning import TRIAL_METRIC_TOLERANCE
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests.conftest import Procs, wait_until
from tests.integration.test_model_workers import HP, _data, _fetch, _job
from topics.records import Bar, JobResult, JobStatus, ModelRegistryEvent, Timeframe
from topics.schema import codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FIXED = (
    ("max_epochs", 3),
    ("patience", 1),
    ("num_threads", 1),
    ("hidden_sizes", "16"),
    ("dropout", 0.0),
    ("batch_size", 128),
)
SPACE = {
    "lr": ("float", 1e-4, 1e-1, True),
    "weight_decay": ("float", -0.1, 0.1, False),  # a negative decay is an invalid trial
    "window": ("cat", [8, 12]),
}
#: trials 0, 2 share a dataset and an architecture (one ensemble), 3 has its own window (alone),
#: 1 is invalid; with parallel 4 the second batch is 4 and 5 (another ensemble)
TRIALS = [
    {"lr": 3e-3, "weight_decay": 1e-4, "window": 8},
    {"lr": 1e-3, "weight_decay": -0.05, "window": 8},
    {"lr": 5e-3, "weight_decay": 1e-2, "window": 8},
    {"lr": 2e-3, "weight_decay": 1e-3, "window": 12},
    {"lr": 1e-3, "weight_decay": 0.0, "window": 8},
    {"lr": 8e-3, "weight_decay": 5e-2, "window": 8},
]
ENSEMBLED = {0, 2, 4, 5}


async def _features_in(broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp: Path) -> list[Bar]:
    bars, vectors = _data(tmp)
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars")
        await pub.publish(vectors)

    async def persisted() -> bool:
        rows = await _fetch(dsn, "SELECT count(*) AS n FROM feature_snapshots")
        return bool(rows[0]["n"] >= len(vectors))

    await wait_until(persisted, 60, "features persisted", watch=procs)
    return bars


def _within(metric: str, a: float, b: float) -> bool:
    kind, bound = TRIAL_METRIC_TOLERANCE[metric]
    return abs(a - b) <= (bound * abs(a) if kind == "rel" else bound)


async def test_tune_in_batches_then_every_trial_recorded_and_metrics_equal_the_study_one_at_a_time(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path
) -> None:
    import optuna

    from gpu_workers.tuning import TuneSpec, sqlalchemy_url, tune

    bars = await _features_in(broker, namespace, dsn, procs, tmp_path)
    studies = {}
    for name, parallel in (("par", 4), ("seq", 1)):
        spec = TuneSpec(
            study=name,
            family="mlp",
            symbol="BTC/USDT",
            timeframe=Timeframe.H1,
            data_start=bars[0].open_time,
            data_end=bars[-1].ts_event,
            feature_set_version=FEATURE_SET_VERSION,
            trials=len(TRIALS),
            fixed=FIXED,
        )
        pre = optuna.create_study(study_name=name, storage=sqlalchemy_url(dsn), direction="minimize")
        for params in TRIALS:  # fixed params: both studies train the same trials
            pre.enqueue_trial(params)
        await tune(
            spec,
            dsn=dsn,
            bootstrap=broker.bootstrap,
            namespace=namespace,
            artifacts=tmp_path / "m",
            space=SPACE,
            parallel=parallel,
        )
        studies[name] = sorted(
            optuna.load_study(study_name=name, storage=sqlalchemy_url(dsn)).trials, key=lambda t: t.number
        )

    n_jobs = 2 * len(TRIALS)

    async def results() -> bool:
        return len(await _fetch(dsn, "SELECT 1 FROM ev_job_results")) >= n_jobs

    await wait_until(results, 90, f"{n_jobs} job results", watch=procs)
    rows = await _fetch(dsn, "SELECT payload::text AS p FROM ev_job_results")
    decoded = [codec_for(JobResult).decode(r["p"]) for r in rows]
    assert sorted(r.job_id for r in decoded) == sorted(  # one job result per trial
        f"{name}-trial-{n}" for name in studies for n in range(len(TRIALS))
    )
    by_job = {r.job_id: r for r in decoded}
    registry = {
        f"{e.model_id}@{e.version}": e
        for e in (
            codec_for(ModelRegistryEvent).decode(r["p"])
            for r in await _fetch(dsn, "SELECT payload::text AS p FROM ev_model_registry")
        )
    }

    bit_equal = set()
    for par, seq in zip(studies["par"], studies["seq"], strict=True):
        n = par.number
        assert par.params == seq.params == TRIALS[n]
        res_par, res_seq = by_job[par.user_attrs["job_id"]], by_job[seq.user_attrs["job_id"]]
        if n == 1:  # the invalid trial fails alone, in its batch as alone
            for t, res in ((par, res_par), (seq, res_seq)):
                assert t.state == optuna.trial.TrialState.FAIL
                assert res.status is JobStatus.FAILED and res.reason is not None
                assert res.reason.startswith("invalid_hyperparameter") and t.user_attrs["failure"] == res.reason
            continue
        for t, res in ((par, res_par), (seq, res_seq)):
            assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs
            assert t.value == res.metrics["val_log_loss"]
            event = registry[t.user_attrs["artifact"]]  # the trial's artifact is a registered checkpoint
            assert res.artifacts["BTC/USDT"] == t.user_attrs["artifact"] and Path(event.checkpoint_path).exists()
            assert event.config["lr"] == TRIALS[n]["lr"] and event.config["window"] == TRIALS[n]["window"]
        for k in ("epochs_run", "best_epoch", "train_rows"):
            assert res_par.metrics[k] == res_seq.metrics[k], (n, k)
        for k in TRIAL_METRIC_TOLERANCE:
            assert _within(k, res_seq.metrics[k], res_par.metrics[k]), (n, k, res_seq.metrics[k], res_par.metrics[k])
        if res_par.metrics == res_seq.metrics:
            bit_equal.add(n)
    # the trial with its own window trained alone (bit for bit); the others in ensembles (rounding)
    assert bit_equal == {3}, bit_equal
    assert ENSEMBLED.isdisjoint(bit_equal)


async def test_jobs_in_one_batch_when_some_are_bad_then_each_fails_alone_and_the_rest_train_as_alone(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path
) -> None:
    from gpu_workers.training_service import TrainingService

    bars = await _features_in(broker, namespace, dsn, procs, tmp_path)
    hp = {**HP, "dropout": 0.0}
    jobs = [
        _job("good-a", bars, hyperparams={**hp, "lr": 3e-3}),
        _job("diverges", bars, hyperparams={**hp, "lr": 1e8}),  # in the same ensemble as good-a and good-b
        _job("bad-symbol", bars, symbols=("DOGE/USDT",)),
        _job("bad-lr", bars, hyperparams={**hp, "lr": -1.0}),
        _job("good-b", bars, hyperparams={**hp, "lr": 1e-3, "weight_decay": 1e-2}),
    ]
    service = TrainingService(dsn, tmp_path / "m")
    batch = await service.run_jobs(jobs, bars[-1].ts_event)
    assert [o.result.job_id for o in batch] == [j.job_id for j in jobs]
    reasons = {o.result.job_id: (o.result.reason or "").split(":")[0] for o in batch}
    assert reasons == {
        "good-a": "",
        "diverges": "training_diverged",
        "bad-symbol": "unknown_symbol",
        "bad-lr": "invalid_hyperparameter",
        "good-b": "",
    }
    for job, outcome in zip(jobs, batch, strict=True):
        if outcome.result.status is JobStatus.FAILED:
            assert outcome.registry == ()
            continue
        alone = await service.run_job(job, bars[-1].ts_event)
        assert alone.result.status is JobStatus.SUCCEEDED
        assert outcome.result.artifacts == alone.result.artifacts  # same version id: same job, config, data
        (event,) = outcome.registry
        assert Path(event.checkpoint_path).exists()
        for k in TRIAL_METRIC_TOLERANCE:
            assert _within(k, alone.result.metrics[k], outcome.result.metrics[k]), k


def test_tune_cli_parallel_below_one_then_usage_error() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "train",
            "tune",
            "--study",
            "s",
            "--symbol",
            "BTC/USDT",
            "--start",
            "2020-01-01",
            "--end",
            "2020-02-01",
            "--dsn",
            "postgresql://nobody@127.0.0.1:1/none",
            "--parallel",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "--parallel must be >= 1" in r.stderr, (r.returncode, r.stderr)
