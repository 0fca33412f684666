"""A ``jobs.train`` record -> a trained, registered model version and a job result.

The edge between the job topic and the pure training code in ``models``:
validates the job, loads persisted features (``feature_snapshots``) and closes
(``bars``) from Postgres, splits by time with a purge gap, trains (CUDA when
present, in a worker thread so the event loop keeps heartbeating), saves a
hash-verified checkpoint, and returns the registry event and the job result.

One model per symbol: a job naming several symbols trains one version per
symbol (each its own registry entry).

Idempotent: the version id is a hash of the job id, symbol, config and data
range, so a redelivered job maps to the same version; when that version's
checkpoint already exists with its recorded hash, it is not trained again.
Bad specs never raise: they end in a ``failed`` JobResult with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from models.checkpoint import sha256_hex
from models.config import InvalidConfig, ModelConfig
from models.dataset import DatasetError, SplitError, build_dataset, holdout_split
from models.training import TrainingDiverged, train
from runtime.errors import BadInput
from storage.bars import closes_from, count_bars
from storage.connection import Conn
from storage.features import feature_vectors
from topics.records import FeatureVector, JobResult, JobStatus, JobType, ModelRegistryEvent, ModelStage, TrainJob

log = structlog.get_logger("gpu_workers.training")

MIN_ROWS = 200


class JobFailed(BadInput):
    """A job that cannot succeed; ``reason`` is a stable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TrainOutcome:
    result: JobResult
    registry: tuple[ModelRegistryEvent, ...]


def model_id_for(family: str, symbol: str, timeframe: str) -> str:
    return f"{family}-{symbol.replace('/', '').replace(':', '-').lower()}-{timeframe}"


class TrainingService:
    def __init__(
        self, dsn: str, artifacts_dir: Path, validation_fraction: float = 0.2, test_fraction: float = 0.1
    ) -> None:
        self.dsn = dsn
        self.artifacts_dir = artifacts_dir
        self.validation_fraction = validation_fraction
        self.test_fraction = test_fraction

    async def run_job(self, job: TrainJob, ts_init: int) -> TrainOutcome:
        try:
            registry, metrics, artifacts = await self._run(job, ts_init)
        except JobFailed as exc:
            log.warning("train_job_failed", job_id=job.job_id, reason=exc.reason, detail=exc.detail)
            return TrainOutcome(self._result(job, ts_init, JobStatus.FAILED, f"{exc.reason}: {exc.detail}", {}, {}), ())
        return TrainOutcome(self._result(job, ts_init, JobStatus.SUCCEEDED, None, metrics, artifacts), registry)

    @staticmethod
    def _result(
        job: TrainJob,
        ts_init: int,
        status: JobStatus,
        reason: str | None,
        metrics: dict[str, float],
        artifacts: dict[str, str],
    ) -> JobResult:
        return JobResult.new(
            ts_event=job.ts_event,
            ts_init=ts_init,
            correlation_id=job.correlation_id,
            causation_id=job.event_id,
            job_id=job.job_id,
            job_type=JobType.TRAIN,
            status=status,
            reason=reason,
            metrics=metrics,
            artifacts=artifacts,
        )

    # -- the job ------------------------------------------------------------------
    async def _run(
        self, job: TrainJob, ts_init: int
    ) -> tuple[tuple[ModelRegistryEvent, ...], dict[str, float], dict[str, str]]:
        try:
            config = ModelConfig.from_train_job(job)
        except InvalidConfig as exc:
            raise JobFailed("invalid_hyperparameter", str(exc)) from None
        if job.data_end <= job.data_start:
            raise JobFailed("empty_range", f"data_end {job.data_end} <= data_start {job.data_start}")
        if not job.symbols:
            raise JobFailed("no_symbols", "the job names no symbol")
        registry: list[ModelRegistryEvent] = []
        metrics: dict[str, float] = {}
        artifacts: dict[str, str] = {}
        conn = await asyncpg.connect(self.dsn)
        try:
            loaded = {sym: await self._load(conn, job, sym) for sym in job.symbols}
        finally:
            await conn.close()
        for sym, (venue, vectors, closes) in loaded.items():
            ev = await self._train_one(job, config, sym, venue, vectors, closes, ts_init)
            registry.append(ev)
            prefix = "" if len(job.symbols) == 1 else f"{sym}:"
            metrics.update({f"{prefix}{k}": v for k, v in ev.metrics.items()})
            artifacts[sym] = f"{ev.model_id}@{ev.version}"
        return tuple(registry), metrics, artifacts

    async def _load(self, conn: Conn, job: TrainJob, symbol: str) -> tuple[str, list[FeatureVector], dict[int, float]]:
        known = await count_bars(conn, symbol, job.timeframe)
        if not known:
            raise JobFailed("unknown_symbol", f"no {job.timeframe.value} bars for {symbol!r}")
        vectors = await feature_vectors(
            conn, symbol, job.timeframe, job.feature_set_version, job.data_start, job.data_end
        )
        if len(vectors) < MIN_ROWS:
            raise JobFailed(
                "insufficient_data",
                f"{len(vectors)} feature vectors of {job.feature_set_version} for "
                f"{symbol} in the range (need >= {MIN_ROWS})",
            )
        venues = {v.venue for v in vectors}
        if len(venues) != 1:
            raise JobFailed("ambiguous_venue", f"{symbol} has features from several venues {sorted(venues)}")
        venue = venues.pop()
        return venue, vectors, await closes_from(conn, venue, symbol, job.timeframe, job.data_start)

    async def _train_one(
        self,
        job: TrainJob,
        config: ModelConfig,
        symbol: str,
        venue: str,
        vectors: list[FeatureVector],
        closes: dict[int, float],
        ts_init: int,
    ) -> ModelRegistryEvent:
        try:
            ds = build_dataset(
                vectors, closes, window=config.window, horizon_bars=config.horizon_bars, flat_band=config.flat_band
            )
            split = holdout_split(
                ds.timestamps,
                validation_fraction=self.validation_fraction,
                test_fraction=self.test_fraction,
                purge=ds.horizon_ns,
            )
        except (DatasetError, SplitError) as exc:
            raise JobFailed("insufficient_data", str(exc)) from None
        model_id = model_id_for(config.family, symbol, job.timeframe.value)
        version = hashlib.sha256(
            f"{job.job_id}|{symbol}|{config.config_hash()}|{job.data_start}|{job.data_end}".encode()
        ).hexdigest()[:12]
        path = self.artifacts_dir / model_id / f"{version}.ckpt"
        try:
            result = await asyncio.to_thread(train, config, ds, split)
        except TrainingDiverged as exc:
            raise JobFailed("training_diverged", str(exc)) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        sha = await asyncio.to_thread(result.save, path)
        assert sha == sha256_hex(path.read_bytes())
        cfg: dict[str, str | int | float | bool] = {
            **config.to_dict(),
            "symbol": symbol,
            "venue": venue,
            "timeframe": job.timeframe.value,
        }
        log.info(
            "model_trained",
            model_id=model_id,
            version=version,
            job_id=job.job_id,
            device=result.device,
            epochs=result.metrics.get("epochs_run"),
            val_log_loss=result.metrics.get("val_log_loss"),
        )
        return ModelRegistryEvent.new(
            ts_event=job.ts_event,
            ts_init=ts_init,
            correlation_id=job.correlation_id,
            causation_id=job.event_id,
            model_id=model_id,
            version=version,
            stage=ModelStage.REGISTERED,
            feature_set_version=result.feature_set_version,
            config=cfg,
            data_start=result.data_start,
            data_end=result.data_end,
            seed=config.seed,
            metrics={k: float(v) for k, v in result.metrics.items()},
            checkpoint_path=str(path),
            checkpoint_sha256=sha,
        )
