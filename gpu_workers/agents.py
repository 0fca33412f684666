"""GPU worker agents: ``trainer`` (jobs.train) and ``inference`` (features -> signals).

trainer: one job at a time per worker (training saturates the device);
scale by running more workers in the group (``jobs.train`` has 4 partitions).
A bad spec ends in a failed JobResult; the worker stays up.

inference: a consumer group on ``features`` (8 partitions: run up to 8
instances), on the getmany loop (:class:`runtime.batch_agent.BatchLoop`).
Micro-batches bounded by size and wait, across symbols; windows scored per
model version in one ``predict_batch`` call (CUDA when present). The versions to run
come from ``models.registry``, read from the beginning at start-up by a
background task (the compacted-topic-as-state pattern; no reliance on broker
compaction). A checkpoint whose sha256 does not match the registry is refused:
an ``ops.alerts`` record, a critical log, and no signals from that version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Histogram

from agents.signals.signing import signal_signer_from_env
from gpu_workers.training_service import TrainingService
from models.checkpoint import ModelCheckpointError
from models.inference import Predictor, to_signals
from models.serving import InferenceStep, RolloutState, Served
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.batch_agent import BatchLoop, Output, decode_record
from runtime.broker import client_security
from runtime.env import env_str
from runtime.metrics import SIGNAL_LATENCY
from topics.records import Alert, FeatureVector, ModelRegistryEvent, Severity, Signal, TrainJob
from topics.schema import RecordError, codec_for

log = structlog.get_logger("gpu_workers")

TRAINER = "trainer"
INFERENCE = "inference"
BATCH_MAX = 1_024
BATCH_WAIT_MS = 10

_FV = codec_for(FeatureVector)
_SIGNAL = codec_for(Signal)

INFERENCE_BATCH = Histogram(
    "tradeflow_inference_batch_rows", "Rows per predict_batch call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
INFERENCE_SECONDS = Histogram(
    "tradeflow_inference_batch_seconds",
    "predict_batch latency",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
CHECKPOINTS_REFUSED = Counter("tradeflow_checkpoints_refused_total", "Checkpoints refused", ["reason"])
JOBS = Counter("tradeflow_train_jobs_total", "Training jobs", ["status"])


def artifacts_dir() -> Path:
    """Where trained checkpoints are written (``TRADEFLOW_ARTIFACTS``, read now)."""
    return Path(env_str("TRADEFLOW_ARTIFACTS", "var/models"))


def register_trainer(app: Any, ctx: AgentContext) -> Any:
    if not ctx.dsn:
        raise ValueError("the trainer needs --dsn (or TRADEFLOW_DSN): it reads persisted features")
    service = TrainingService(ctx.dsn, artifacts_dir())
    results = app.topic(ctx.topic("jobs.results"))
    registry = app.topic(ctx.topic("models.registry"))
    src = app.topic(ctx.topic("jobs.train"))

    @app.agent(src, name=TRAINER, concurrency=1)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, TRAINER)
    async def run_jobs(stream: Any) -> None:
        async for event in stream.events():
            job = await decode_or_dead_letter(ctx, TRAINER, "jobs.train", TrainJob, event)
            if job is None:
                continue
            log.info("train_job_started", job_id=job.job_id, symbols=list(job.symbols), event_id=job.event_id)
            outcome = await service.run_job(job, ctx.wall_clock())
            for ev in outcome.registry:
                await registry.send(key=ev.key(), value=codec_for(ModelRegistryEvent).encode(ev))
            await results.send(key=outcome.result.key(), value=codec_for(type(outcome.result)).encode(outcome.result))
            JOBS.labels(outcome.result.status.value).inc()

    return run_jobs


class _Models:
    """Verified predictors by (model_id, version); refused versions remembered."""

    def __init__(self) -> None:
        self.loaded: dict[tuple[str, str], Predictor] = {}
        self.refused: dict[tuple[str, str], str] = {}

    def get(self, s: Served) -> Predictor | ModelCheckpointError | None:
        key = (s.model_id, s.version)
        if key in self.refused:
            return None
        p = self.loaded.get(key)
        if p is not None:
            return p
        try:
            p = Predictor.from_checkpoint(Path(s.event.checkpoint_path), s.event.checkpoint_sha256)
        except (ModelCheckpointError, OSError) as exc:
            err = (
                exc if isinstance(exc, ModelCheckpointError) else ModelCheckpointError(f"cannot read checkpoint: {exc}")
            )
            self.refused[key] = str(err)
            return err
        self.loaded[key] = p
        return p


def register_inference(app: Any, ctx: AgentContext) -> Any:
    signals = ctx.topic("signals")
    signer = signal_signer_from_env(os.environ)  # TRADEFLOW_SIGNAL_KEY_<ID>: signed per model version
    if signer is None:
        log.warning("inference_signals_unsigned", hint="set TRADEFLOW_SIGNAL_KEY_<ID>(_FILE)")
    sign = signer.sign if signer is not None else _unsigned
    alerts = ctx.topic("ops.alerts")
    deadletter = ctx.topic("deadletter")
    rollout = RolloutState()
    registry_ready = asyncio.Event()
    step = InferenceStep()
    models = _Models()

    @app.task  # type: ignore[untyped-decorator]
    async def follow_registry() -> None:
        consumer = AIOKafkaConsumer(
            ctx.topic("models.registry"),
            bootstrap_servers=ctx.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **client_security(),
        )
        await consumer.start()
        codec = codec_for(ModelRegistryEvent)
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    for m in msgs:
                        try:
                            ev = codec.decode(m.value or b"")
                        except RecordError as exc:
                            log.warning("registry_record_invalid", offset=m.offset, reason=exc.reason.value)
                            continue
                        if rollout.apply(ev):
                            log.info("rollout_changed", model_id=ev.model_id, version=ev.version, stage=ev.stage.value)
                if not batch:
                    registry_ready.set()  # caught up with the registry at least once
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Output]:
        outputs: list[Output] = []
        work: dict[tuple[str, str], tuple[Served, Predictor, list[list[FeatureVector]], list[FeatureVector]]] = {}
        for r in records:
            fv = decode_record(
                _FV,
                r,
                consumer=INFERENCE,
                topic="features",
                wall_clock=ctx.wall_clock,
                deadletter_topic=deadletter,
                outputs=outputs,
            )
            if fv is None:
                continue
            buf = step.push(fv)
            for served in rollout.serving(fv.symbol, fv.timeframe.value):
                if served.event.feature_set_version != fv.feature_set_version:
                    continue
                window = step.window_of(buf, fv, served.window)
                if window is None:
                    continue
                pred = models.get(served)
                if isinstance(pred, ModelCheckpointError):
                    outputs.append(_refusal(ctx, alerts, served, pred))
                    continue
                if pred is None:
                    continue
                slot = work.setdefault((served.model_id, served.version), (served, pred, [], []))
                slot[2].append(window)
                slot[3].append(fv)
        now = ctx.wall_clock()
        for served, pred, windows, newest in work.values():
            for fv in newest:  # feature produced -> signal produced (wall clock, incl. broker hop)
                SIGNAL_LATENCY.labels(served.model_id).observe(max(now - fv.ts_init, 0) / 1e9)
            t1 = time.perf_counter()
            prediction = pred.predict_batch(windows)
            INFERENCE_SECONDS.observe(time.perf_counter() - t1)
            INFERENCE_BATCH.observe(len(windows))
            cfg = served.event.config
            for sig in to_signals(
                prediction,
                newest,
                model_id=served.model_id,
                model_version=served.version,
                horizon=f"{cfg['horizon_bars']}x{cfg['timeframe']}",
                shadow=served.shadow,
                ts_init=now,
            ):
                outputs.append(Output(signals, sig.key(), _SIGNAL.encode(sign(sig))))
        return outputs

    # micro-batches across symbols, one predict_batch per model version; scoring starts once the
    # registry was read to its end (the versions to serve are known)
    return BatchLoop.hosted(
        app,
        ctx,
        name=INFERENCE,
        inputs=["features"],
        handle=handle,
        setup=registry_ready.wait,
        max_records=BATCH_MAX,
        within_ms=BATCH_WAIT_MS,
    )


def _unsigned(sig: Signal) -> Signal:
    return sig


def _refusal(ctx: AgentContext, alerts: str, served: Served, err: ModelCheckpointError) -> Output:
    """A refused checkpoint: counted, logged at critical level, and an ``ops.alerts`` record to send."""
    reason = type(err).__name__
    CHECKPOINTS_REFUSED.labels(reason).inc()
    log.critical(
        "checkpoint_refused", model_id=served.model_id, version=served.version, reason=reason, detail=str(err)[:300]
    )
    alert = Alert.new(
        ts_event=served.event.ts_event,
        ts_init=ctx.wall_clock(),
        causation_id=served.event.event_id,
        severity=Severity.CRITICAL,
        source=INFERENCE,
        code="checkpoint_refused",
        message=f"{served.model_id}@{served.version}: {err}"[:1000],
        dedupe_key=f"{served.model_id}@{served.version}",
        labels={"model_id": served.model_id, "version": served.version, "reason": reason},
    )
    return Output(alerts, alert.key(), codec_for(Alert).encode(alert))
