"""A ``jobs.train`` record -> a trained, registered model version and a job result.

The edge between the job topic and the pure training code in ``models``:
validates the job, loads persisted features (``feature_snapshots``) and closes
(``bars``) from Postgres, splits by time with a purge gap, trains (CUDA when
present, in a worker thread so the event loop keeps heartbeating), saves a
hash-verified checkpoint, and returns the registry event and the job result.

One model per symbol: a job naming several symbols trains one version per
symbol (each its own registry entry). Several jobs at once (``run_jobs``, the
tuner's batches): data loaded and datasets built once per key, jobs sharing a
dataset trained together by ``backtest.tuning.train_trials`` (docs/models.md).

Idempotent: the version id is a hash of the job id, symbol, config and data
range, so a redelivered job maps to the same version; when that version's
checkpoint already exists with its recorded hash, it is not trained again.
Bad specs never raise: they end in a ``failed`` JobResult with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from backtest.tuning import train_trials
from models.checkpoint import sha256_hex
from models.config import InvalidConfig, ModelConfig
from models.dataset import DatasetError, Split, SplitError, WindowDataset, build_dataset, holdout_split
from models.training import TrainingDiverged, TrainResult, train
from runtime.errors import BadInput
from storage.bars import closes_from, count_bars
from storage.connection import Conn
from storage.features import feature_vectors
from topics.records import FeatureVector, JobResult, JobStatus, JobType, ModelRegistryEvent, ModelStage, TrainJob

log = structlog.get_logger("gpu_workers.training")

MIN_ROWS = 200

#: (symbol, timeframe, feature set version, data_start, data_end): what one load reads
_DataKey = tuple[str, str, str, int, int]
#: a data key and the dataset's window, horizon_bars and flat_band: what one dataset is built from
_DatasetKey = tuple[_DataKey, int, int, float]
#: (venue, feature vectors, closes by open time) of one data key
_Loaded = tuple[str, list[FeatureVector], dict[int, float]]


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
        return (await self.run_jobs([job], ts_init))[0]

    async def run_jobs(self, jobs: Sequence[TrainJob], ts_init: int) -> list[TrainOutcome]:
        """Several jobs at once, one outcome per job in the order of ``jobs``, each exactly
        the record :meth:`run_job` gives for it alone (within the ensemble tolerance, see
        :func:`backtest.tuning.train_trials`). Data are loaded and the dataset and split
        built once per data/window key, and the jobs sharing one are trained together by
        ``train_trials``. A job that fails (validation, data, divergence) fails alone."""
        failed: dict[int, JobFailed] = {}
        configs: dict[int, ModelConfig] = {}
        for i, job in enumerate(jobs):
            try:
                configs[i] = self._checked(job)
            except JobFailed as exc:
                failed[i] = exc
        loaded = await self._load_all(jobs, configs, failed)
        units = self._datasets(jobs, configs, loaded, failed)
        trained: dict[tuple[int, str], TrainResult] = {}
        for ds, split, members in units:
            outcomes = await asyncio.to_thread(_train_together, [configs[i] for i, _ in members], ds, split)
            for (i, sym), got in zip(members, outcomes, strict=True):
                if isinstance(got, JobFailed):
                    failed.setdefault(i, got)
                else:
                    trained[(i, sym)] = got
        out: list[TrainOutcome] = []
        for i, job in enumerate(jobs):
            if i in failed:
                why = failed[i]
                log.warning("train_job_failed", job_id=job.job_id, reason=why.reason, detail=why.detail)
                reason = f"{why.reason}: {why.detail}"
                out.append(TrainOutcome(self._result(job, ts_init, JobStatus.FAILED, reason, {}, {}), ()))
                continue
            registry = [
                await self._register(job, sym, loaded[_data_key(job, sym)][0], trained[(i, sym)], ts_init)
                for sym in job.symbols
            ]
            metrics: dict[str, float] = {}
            artifacts: dict[str, str] = {}
            for sym, ev in zip(job.symbols, registry, strict=True):
                prefix = "" if len(job.symbols) == 1 else f"{sym}:"
                metrics.update({f"{prefix}{k}": v for k, v in ev.metrics.items()})
                artifacts[sym] = f"{ev.model_id}@{ev.version}"
            out.append(
                TrainOutcome(self._result(job, ts_init, JobStatus.SUCCEEDED, None, metrics, artifacts), tuple(registry))
            )
        return out

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

    # -- the jobs -----------------------------------------------------------------
    @staticmethod
    def _checked(job: TrainJob) -> ModelConfig:
        try:
            config = ModelConfig.from_train_job(job)
        except InvalidConfig as exc:
            raise JobFailed("invalid_hyperparameter", str(exc)) from None
        if job.data_end <= job.data_start:
            raise JobFailed("empty_range", f"data_end {job.data_end} <= data_start {job.data_start}")
        if not job.symbols:
            raise JobFailed("no_symbols", "the job names no symbol")
        return config

    async def _load_all(
        self, jobs: Sequence[TrainJob], configs: dict[int, ModelConfig], failed: dict[int, JobFailed]
    ) -> dict[_DataKey, _Loaded]:
        """Every symbol of every valid job, each data key read once; a job whose symbol
        cannot be loaded goes to ``failed`` with the first such symbol's reason."""
        loaded: dict[_DataKey, _Loaded] = {}
        refused: dict[_DataKey, JobFailed] = {}
        if not configs:
            return loaded
        conn = await asyncpg.connect(self.dsn)
        try:
            for i in configs:
                for sym in jobs[i].symbols:
                    key = _data_key(jobs[i], sym)
                    if key not in loaded and key not in refused:
                        try:
                            loaded[key] = await self._load(conn, jobs[i], sym)
                        except JobFailed as exc:
                            refused[key] = exc
                    if key in refused:
                        failed[i] = refused[key]
                        break
        finally:
            await conn.close()
        return loaded

    def _datasets(
        self,
        jobs: Sequence[TrainJob],
        configs: dict[int, ModelConfig],
        loaded: dict[_DataKey, _Loaded],
        failed: dict[int, JobFailed],
    ) -> list[tuple[WindowDataset, Split, list[tuple[int, str]]]]:
        """The (job, symbol) units to train, with the dataset and split they train on: one
        per data key and window/horizon/flat band, built once."""
        built: dict[_DatasetKey, tuple[WindowDataset, Split] | JobFailed] = {}
        units: dict[_DatasetKey, list[tuple[int, str]]] = {}
        for i, config in configs.items():
            if i in failed:
                continue
            mine: list[tuple[_DatasetKey, str]] = []
            for sym in jobs[i].symbols:
                key = (_data_key(jobs[i], sym), config.window, config.horizon_bars, config.flat_band)
                if key not in built:
                    _, vectors, closes = loaded[key[0]]
                    built[key] = self._dataset(config, vectors, closes)
                got = built[key]
                if isinstance(got, JobFailed):
                    failed[i] = got
                    break
                mine.append((key, sym))
            else:
                for key, sym in mine:
                    units.setdefault(key, []).append((i, sym))
        out: list[tuple[WindowDataset, Split, list[tuple[int, str]]]] = []
        for key, members in units.items():
            pair = built[key]
            assert not isinstance(pair, JobFailed)
            out.append((pair[0], pair[1], members))
        return out

    def _dataset(
        self, config: ModelConfig, vectors: list[FeatureVector], closes: dict[int, float]
    ) -> tuple[WindowDataset, Split] | JobFailed:
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
            return JobFailed("insufficient_data", str(exc))
        return ds, split

    async def _load(self, conn: Conn, job: TrainJob, symbol: str) -> _Loaded:
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

    async def _register(
        self, job: TrainJob, symbol: str, venue: str, result: TrainResult, ts_init: int
    ) -> ModelRegistryEvent:
        """Save the trained model's checkpoint and describe it as a registry event."""
        config = result.config
        model_id = model_id_for(config.family, symbol, job.timeframe.value)
        version = hashlib.sha256(
            f"{job.job_id}|{symbol}|{config.config_hash()}|{job.data_start}|{job.data_end}".encode()
        ).hexdigest()[:12]
        path = self.artifacts_dir / model_id / f"{version}.ckpt"
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


def _data_key(job: TrainJob, symbol: str) -> _DataKey:
    return (symbol, job.timeframe.value, job.feature_set_version, job.data_start, job.data_end)


def _train_together(configs: list[ModelConfig], ds: WindowDataset, split: Split) -> list[TrainResult | JobFailed]:
    """``train_trials`` over configs sharing one dataset, one architecture at a time; when
    an ensemble diverges, its configs again alone, so only the diverged trials fail (each
    with its own reason). Results in the order of ``configs``."""
    groups: dict[ModelConfig, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(config.architecture(), []).append(i)
    out: dict[int, TrainResult | JobFailed] = {}
    for members in groups.values():
        try:
            out.update(zip(members, train_trials([configs[i] for i in members], ds, split), strict=True))
            continue
        except TrainingDiverged:
            log.warning("ensemble_diverged_training_alone", trials=len(members))
        for i in members:
            try:
                out[i] = train(configs[i], ds, split)
            except TrainingDiverged as exc:
                out[i] = JobFailed("training_diverged", str(exc))
    return [out[i] for i in range(len(configs))]
