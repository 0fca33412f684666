"""Training and inference workers on the real broker and PostgreSQL."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import asyncpg
import pytest

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.features.spec import FEATURE_SET_VERSION
from agents.market.csv_import import import_csv_file
from models.inference import Predictor, to_signals
from ops.embedded.broker import EmbeddedBroker
from ops.jobs.ingest import SAMPLE_DIR
from runtime.publish import RecordPublisher
from tests.conftest import Procs, wait_until
from topics.records import (
    Bar,
    FeatureVector,
    JobResult,
    JobStatus,
    ModelRegistryEvent,
    ModelStage,
    Signal,
    Timeframe,
    TrainJob,
)
from topics.schema import TS_MIN_NS, codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROWS = 1_600
HP = {"window": 8, "hidden_sizes": "16", "max_epochs": 4, "patience": 2, "batch_size": 128, "num_threads": 1}


def _data(tmp: Path) -> tuple[list[Bar], list[FeatureVector]]:
    src = SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv"
    path = tmp / "btc.csv"
    with src.open() as f:
        path.write_text("".join(itertools.islice(f, ROWS + 1)))
    bars = list(
        import_csv_file(path, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
    )
    clock = EventClock()
    pipe = FeaturePipeline(clock)
    vectors = []
    for b in bars:
        clock.advance(b.ts_event)
        out = pipe.on_bar(b)
        if out.features is not None:
            vectors.append(out.features)
    return bars, vectors


def _job(job_id: str, bars: list[Bar], **over: object) -> TrainJob:
    fields: dict[str, object] = dict(  # noqa: C408 - keyword form reads as the record
        ts_event=bars[-1].ts_event,
        ts_init=bars[-1].ts_event,
        job_id=job_id,
        model_family="mlp",
        symbols=("BTC/USDT",),
        timeframe=Timeframe.H1,
        data_start=bars[0].open_time,
        data_end=bars[-1].ts_event,
        feature_set_version=FEATURE_SET_VERSION,
        seed=11,
        hyperparams=dict(HP),
    )
    fields.update(over)
    return TrainJob.new(**fields)  # type: ignore[arg-type]


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_jobs_when_trained_and_served_then_registry_results_and_signals_match_offline_inference(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars, vectors = _data(tmp_path)
    monkeypatch.setenv("TRADEFLOW_ARTIFACTS", str(tmp_path / "models"))
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars")
        await pub.publish(vectors)

    async def persisted() -> bool:
        rows = await _fetch(dsn, "SELECT count(*) AS n FROM feature_snapshots")
        return bool(rows[0]["n"] >= len(vectors))

    await wait_until(persisted, 60, "features persisted", watch=procs)

    # -- training: one good job, three bad specs; the worker survives them all -------
    trainer = procs.cli(
        "trainer",
        "worker",
        "--bootstrap",
        broker.bootstrap,
        "--namespace",
        namespace,
        "--dsn",
        dsn,
        "--web-port",
        "0",
        "--agents",
        "trainer",
    )
    good = _job("job-good", bars)
    bad = [
        (_job("job-bad-lr", bars, hyperparams={**HP, "lr": -0.1}), "invalid_hyperparameter"),
        (_job("job-bad-symbol", bars, symbols=("DOGE/USDT",)), "unknown_symbol"),
        (_job("job-empty", bars, data_end=bars[0].open_time), "empty_range"),
    ]
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        for job, _ in bad:
            await pub.publish([job])
        await pub.publish([good])

    async def results() -> bool:
        return len(await _fetch(dsn, "SELECT 1 FROM ev_job_results")) >= 4

    await wait_until(results, 150, "4 job results", watch=procs)
    rows = await _fetch(dsn, "SELECT payload::text AS p FROM ev_job_results")
    by_job = {r.job_id: r for r in (codec_for(JobResult).decode(x["p"]) for x in rows)}
    for job, reason in bad:
        res = by_job[job.job_id]
        assert res.status is JobStatus.FAILED and res.reason is not None and res.reason.startswith(reason), res
    ok = by_job["job-good"]
    assert ok.status is JobStatus.SUCCEEDED, ok.reason
    assert trainer.alive
    # metrics are computed from predictions, not constants: they exist and are finite
    for k in ("val_log_loss", "val_accuracy", "val_ic", "val_pnl_total_return"):
        assert k in ok.metrics, k

    reg_rows = await _fetch(dsn, "SELECT payload::text AS p FROM ev_model_registry")
    (registered,) = [codec_for(ModelRegistryEvent).decode(r["p"]) for r in reg_rows]
    assert (
        registered.stage is ModelStage.REGISTERED
        and ok.artifacts["BTC/USDT"] == f"{registered.model_id}@{registered.version}"
    )
    assert Path(registered.checkpoint_path).exists()
    # the operator CLI reads the registry from Postgres
    lst = procs.cli("models-list", "models", "list", "--dsn", dsn)
    assert lst.popen is not None and lst.popen.wait(60) == 0
    assert registered.model_id in lst.output() and registered.version in lst.output()
    show = procs.cli("models-show", "models", "show", registered.model_id, registered.version, "--dsn", dsn)
    assert show.popen is not None and show.popen.wait(60) == 0
    assert registered.checkpoint_sha256 in show.output() and "val_log_loss" in show.output()

    # -- inference: the version goes active; a tampered shadow version is refused --------
    active = dataclasses.replace(
        registered, stage=ModelStage.ACTIVE, ts_event=registered.ts_event + 1, event_id=registered.event_id + "-active"
    )
    tampered = dataclasses.replace(
        registered,
        stage=ModelStage.SHADOW,
        version=registered.version + "x",
        ts_event=registered.ts_event + 2,
        event_id=registered.event_id + "-shadow",
        checkpoint_sha256="0" * 64,
    )
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish([active, tampered])
    procs.cli(
        "inference",
        "worker",
        "--bootstrap",
        broker.bootstrap,
        "--namespace",
        namespace,
        "--web-port",
        "0",
        "--agents",
        "inference",
    )

    predictor = Predictor.from_checkpoint(Path(registered.checkpoint_path), registered.checkpoint_sha256)
    w = predictor.window
    windows = [
        vectors[i - w + 1 : i + 1]
        for i in range(w - 1, len(vectors))
        if vectors[i].bar_open_time - vectors[i - w + 1].bar_open_time == (w - 1) * Timeframe.H1.nanos
    ]
    offline = to_signals(
        predictor.predict_batch(windows),
        [win[-1] for win in windows],
        model_id=registered.model_id,
        model_version=registered.version,
        horizon=f"{HP.get('horizon_bars', 1)}x1h",
        shadow=False,
        ts_init=TS_MIN_NS,
    )

    async def signals_in() -> bool:
        return len(await _fetch(dsn, "SELECT 1 FROM ev_signals")) >= len(offline)

    await wait_until(signals_in, 90, f"{len(offline)} signals", watch=procs)
    got = {
        s.event_id: s
        for s in (
            codec_for(Signal).decode(r["p"]) for r in await _fetch(dsn, "SELECT payload::text AS p FROM ev_signals")
        )
    }
    assert set(got) == {s.event_id for s in offline}  # no shadow signals from the refused version
    for s in offline:
        g = got[s.event_id]
        assert (g.p_up, g.p_flat, g.p_down, g.expected_return, g.score) == (
            s.p_up,
            s.p_flat,
            s.p_down,
            s.expected_return,
            s.score,
        ), "worker and offline inference must agree exactly"
        assert not g.shadow and g.model_version == registered.version

    async def alerted() -> bool:
        return len(await _fetch(dsn, "SELECT 1 FROM ev_alerts")) >= 1

    await wait_until(alerted, 30, "checkpoint_refused alert", watch=procs)
    (alert,) = await _fetch(dsn, "SELECT payload::text AS p FROM ev_alerts")
    a = json.loads(alert["p"])
    assert a["code"] == "checkpoint_refused" and a["labels"]["version"] == tampered.version
    assert "sha256" in a["message"] or "hash" in a["message"].lower()


async def test_optuna_study_when_run_then_trials_are_training_jobs_and_study_persists_in_postgres(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path
) -> None:
    import optuna

    from gpu_workers.tuning import TuneSpec, sqlalchemy_url, tune

    bars, vectors = _data(tmp_path)
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars")
        await pub.publish(vectors)

    async def persisted() -> bool:
        rows = await _fetch(dsn, "SELECT count(*) AS n FROM feature_snapshots")
        return bool(rows[0]["n"] >= len(vectors))

    await wait_until(persisted, 60, "features persisted", watch=procs)
    spec = TuneSpec(
        study="t1",
        family="mlp",
        symbol="BTC/USDT",
        timeframe=Timeframe.H1,
        data_start=bars[0].open_time,
        data_end=bars[-1].ts_event,
        feature_set_version=FEATURE_SET_VERSION,
        trials=3,
        fixed=(("max_epochs", 3), ("patience", 1), ("num_threads", 1)),
    )
    space = {"lr": ("float", 1e-3, 1e-2, True), "window": ("int", 4, 8)}
    await tune(spec, dsn=dsn, bootstrap=broker.bootstrap, namespace=namespace, artifacts=tmp_path / "m", space=space)

    # the study is in Postgres: a fresh process (here: a fresh storage object) loads it
    study = optuna.load_study(study_name="t1", storage=sqlalchemy_url(dsn))
    assert len(study.trials) == 3
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete

    async def results() -> bool:
        return len(await _fetch(dsn, "SELECT 1 FROM ev_job_results")) >= 3

    await wait_until(results, 60, "3 job results", watch=procs)
    rows = await _fetch(dsn, "SELECT payload::text AS p FROM ev_job_results")
    by_job = {r.job_id: r for r in (codec_for(JobResult).decode(x["p"]) for x in rows)}
    for t in complete:  # each trial's score is its training job's validation log loss
        assert t.value == by_job[t.user_attrs["job_id"]].metrics["val_log_loss"]
