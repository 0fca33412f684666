"""Features agent: ``market.bars`` -> ``features`` + ``market.data_quality``.

Thin: decode (or dead-letter), run the pure :class:`FeaturePipeline`, send.
Per-stream feature state lives in a faust table (memory store, recovered from
its changelog topic after a restart or rebalance). The table is keyed by the
source message key (``symbol|timeframe``) with ``use_partitioner``: the
producer's partitioner puts a key's changelog record in the same partition as
the key's bars, so a worker that owns a bars partition recovers exactly the
state it needs. Table writes happen once per micro-batch per key. With
``TRADEFLOW_STALE_CHECK_S`` > 0 (live deployments) a timer reports stale feeds.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from prometheus_client import Counter

from agents.clock import Clock, FunctionClock
from agents.features.pipeline import FeaturePipeline
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.env import env_float
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.records import Bar, DataQualityEvent, FeatureVector
from topics.schema import codec_for

log = structlog.get_logger("agents.features")

NAME = "features"
BATCH_MAX = 500
BATCH_WAIT_S = 0.005

FEATURES_SUPPRESSED = Counter("tradeflow_features_suppressed_total", "Feature vectors withheld", ["reason"])
QUALITY_FINDINGS = Counter("tradeflow_data_quality_findings_total", "Data-quality findings", ["check", "severity"])


def register(app: Any, ctx: AgentContext, clock: Clock | None = None) -> Any:
    src = app.topic(ctx.topic("market.bars"))
    features_out = app.topic(ctx.topic("features"))
    quality_out = app.topic(ctx.topic("market.data_quality"))
    # values are orjson bytes (the app's serializers are raw bytes throughout)
    state = app.Table(
        "feature-state", default=None, partitions=8, key_type=bytes, value_type=bytes, use_partitioner=True
    )
    pipeline = FeaturePipeline(clock or FunctionClock(ctx.wall_clock))
    fv_codec = codec_for(FeatureVector)
    dq_codec = codec_for(DataQualityEvent)
    n_features = RECORDS_OUT.labels(NAME, "features")
    n_quality = RECORDS_OUT.labels(NAME, "market.data_quality")
    latency = PROCESS_LATENCY.labels(NAME)

    stale_every_s = env_float("TRADEFLOW_STALE_CHECK_S", 0.0)
    if stale_every_s > 0:
        # Live feeds only: a stream with no new bar for ``stale_after_bars``
        # timeframes (by the wall clock) is reported and blocked until bars return.
        # Off by default because a replay of history is "stale" by definition.
        @app.timer(interval=stale_every_s)  # type: ignore[untyped-decorator]
        async def check_stale_feeds() -> None:
            for f in pipeline.quality.check_staleness(ctx.wall_clock()):
                await quality_out.send(key=f.key(), value=dq_codec.encode(f))
                QUALITY_FINDINGS.labels(f.check, f.severity.value).inc()
                n_quality.inc()

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def compute_features(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            touched: dict[bytes, dict[str, Any]] = {}
            for event in events:
                bar = await decode_or_dead_letter(ctx, NAME, "market.bars", Bar, event)
                if bar is None:
                    continue
                key: bytes = event.message.key or bar.key()
                if not pipeline.has_state(bar):
                    _recover(pipeline, state, key, bar)
                out = pipeline.on_bar(bar)
                for f in out.quality:
                    quality_out.send_soon(key=f.key(), value=dq_codec.encode(f))
                    QUALITY_FINDINGS.labels(f.check, f.severity.value).inc()
                    n_quality.inc()
                if out.features is not None:
                    features_out.send_soon(key=out.features.key(), value=fv_codec.encode(out.features))
                    n_features.inc()
                elif out.blocked_by:
                    FEATURES_SUPPRESSED.labels("data_quality_block").inc()
                elif out.rejected is not None:
                    FEATURES_SUPPRESSED.labels(out.rejected.value).inc()
                    if out.needs_recompute:
                        log.warning(
                            "feature_recompute_needed",
                            symbol=bar.symbol,
                            timeframe=bar.timeframe.value,
                            open_time=bar.open_time,
                            reason=out.rejected.value,
                            event_id=bar.event_id,
                        )
                snap = pipeline.snapshot(bar)
                if snap is not None:
                    touched.setdefault(key, {})[f"{bar.source}|{bar.venue}"] = snap
            for key, snaps in touched.items():
                raw = state.get(key)
                current = orjson.loads(raw) if raw else {}
                current.update(snaps)
                state[key] = orjson.dumps(current)
            latency.observe(time.perf_counter() - t0)

    return compute_features


def _recover(pipeline: FeaturePipeline, table: Any, key: bytes, bar: Bar) -> None:
    raw = table.get(key)
    if not raw:
        return
    snaps = orjson.loads(raw)
    snap = snaps.get(f"{bar.source}|{bar.venue}")
    if snap is None:
        return
    try:
        pipeline.restore(snap)
    except ValueError as exc:  # another feature-set version or a malformed state: warm up afresh
        log.warning("feature_state_discarded", key=key.decode(errors="replace"), reason=str(exc))
