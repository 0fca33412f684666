"""Features agent: ``market.bars`` -> ``features`` + ``market.data_quality``.

Thin: decode (or dead-letter), run the pure :class:`FeaturePipeline`, send. It runs on the getmany path
(:class:`runtime.batch_agent.BatchLoop`: micro-batches of up to ``BATCH_MAX`` bars or ``BATCH_WAIT_MS``,
outputs sent as a batch, offsets committed after their acks), not faust's per-event stream: a profile
showed that path costing ~1 ms a bar. Per-stream feature state is kept per bars partition in a
:class:`~runtime.batch_agent.ChangelogStore` (compacted topic ``<worker app id>.features.feature-state``,
partition p = the state of bars partition p, read back when the partition is assigned), keyed by the
message key (``symbol|timeframe``), one value per key holding each ``source|venue`` stream's
snapshot; saved with each commit, after the outputs (see :mod:`runtime.batch_agent`). With
``TRADEFLOW_STALE_CHECK_S`` > 0 (live feeds) a timer reports stale feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from agents.clock import Clock, FunctionClock
from agents.features.pipeline import FeaturePipeline
from runtime.agent import AgentContext
from runtime.batch_agent import BatchLoop, ChangelogStore, Output, decode_record, group_id
from runtime.env import env_float
from runtime.metrics import RECORDS_OUT
from topics.catalogue import spec
from topics.records import Bar, DataQualityEvent, FeatureVector
from topics.schema import codec_for

log = structlog.get_logger("agents.features")

NAME = "features"
BATCH_MAX = 2_000
BATCH_WAIT_MS = 5

FEATURES_SUPPRESSED = Counter("tradeflow_features_suppressed_total", "Feature vectors withheld", ["reason"])
QUALITY_FINDINGS = Counter("tradeflow_data_quality_findings_total", "Data-quality findings", ["check", "severity"])

_BAR = codec_for(Bar)
_FV = codec_for(FeatureVector)
_DQ = codec_for(DataQualityEvent)


def register(app: Any, ctx: AgentContext, clock: Clock | None = None) -> BatchLoop:
    agent = FeaturesAgent(ctx, clock or FunctionClock(ctx.wall_clock), group_id=group_id(app, NAME))
    quality_out = app.topic(ctx.topic("market.data_quality"))

    stale_every_s = env_float("TRADEFLOW_STALE_CHECK_S", 0.0)
    if stale_every_s > 0:
        # Live feeds only: a stream with no new bar for ``stale_after_bars``
        # timeframes (by the wall clock) is reported and blocked until bars return.
        # Off by default because a replay of history is "stale" by definition.
        @app.timer(interval=stale_every_s)  # type: ignore[untyped-decorator]
        async def check_stale_feeds() -> None:
            for f in agent.pipeline.quality.check_staleness(ctx.wall_clock()):
                await quality_out.send(key=f.key(), value=_DQ.encode(f))
                QUALITY_FINDINGS.labels(f.check, f.severity.value).inc()
                agent.n_quality.inc()

    return BatchLoop.hosted(
        app,
        ctx,
        name=NAME,
        inputs=["market.bars"],
        handle=agent.handle,
        setup=agent.store.create,
        stores=[agent.store],
        on_assigned=agent.assigned,
        on_revoked=agent.revoked,
        max_records=BATCH_MAX,
        within_ms=BATCH_WAIT_MS,
    )


class FeaturesAgent:
    """The handler of the features :class:`BatchLoop`: bars in, vectors, findings and state out."""

    def __init__(self, ctx: AgentContext, clock: Clock, *, group_id: str) -> None:
        self.ctx = ctx
        self.clock = clock
        self.group_id = group_id
        self.pipeline = FeaturePipeline(clock)
        self.store = ChangelogStore(ctx.bootstrap, f"{group_id}.feature-state", spec("market.bars").partitions)
        self.features_topic = ctx.topic("features")
        self.quality_topic = ctx.topic("market.data_quality")
        self.deadletter_topic = ctx.topic("deadletter")
        self.n_quality = RECORDS_OUT.labels(NAME, "market.data_quality")  # the stale-feed timer's findings

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        await self.store.restore(tp.partition for tp in partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Forget the revoked partitions' state; the streams still owned restore from the store."""
        self.store.forget(tp.partition for tp in partitions)
        self.pipeline = FeaturePipeline(self.clock)

    def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Output]:
        outputs: list[Output] = []
        pipeline = self.pipeline
        touched: dict[tuple[int, bytes], dict[str, Bar]] = {}

        for r in records:
            bar = decode_record(
                _BAR,
                r,
                consumer=NAME,
                topic="market.bars",
                wall_clock=self.ctx.wall_clock,
                deadletter_topic=self.deadletter_topic,
                outputs=outputs,
            )
            if bar is None:
                continue
            key: bytes = r.key or bar.key()
            if not pipeline.has_state(bar):
                _recover(pipeline, self.store.get(r.partition, key), key, bar)
            out = pipeline.on_bar(bar)
            for f in out.quality:
                outputs.append(Output(self.quality_topic, f.key(), _DQ.encode(f)))
                QUALITY_FINDINGS.labels(f.check, f.severity.value).inc()
            if out.features is not None:  # records in and out are counted by the loop
                outputs.append(Output(self.features_topic, out.features.key(), _FV.encode(out.features)))
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
            touched.setdefault((r.partition, key), {})[f"{bar.source}|{bar.venue}"] = bar
        # one state write per key and batch: each stream's state after its last bar of the batch
        for (partition, key), streams in touched.items():
            snaps = {sv: snap for sv, bar in streams.items() if (snap := pipeline.snapshot(bar)) is not None}
            if snaps:
                raw = self.store.get(partition, key)
                current = orjson.loads(raw) if raw else {}
                current.update(snaps)
                self.store.put(partition, key, orjson.dumps(current))  # saved at the next commit
        return outputs


def _recover(pipeline: FeaturePipeline, raw: bytes | None, key: bytes, bar: Bar) -> None:
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
