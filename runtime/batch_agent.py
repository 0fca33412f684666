"""Agents on aiokafka's getmany path: micro-batches in, outputs sent as a batch, offsets after the acks.

Why not faust's stream: a profile of the features agent (py-spy, 20,000 bars already on the broker,
``docs/performance.md#profiles``) found the worker's event loop saturated at about 1 ms a bar, of which
the feature engine was a few per cent. The rest was faust's per-event path (the fetcher thread's
hand-off, the conductor, the stream iterator, one ack per event), ``Topic.send_soon``'s producer
buffer (one task per message), and a state snapshot per bar. :class:`BatchLoop` runs inside the same
faust worker (its web page, metrics, broker watchdog, crash handling) with a consumer and a producer
of its own:

- ``getmany`` up to ``max_records`` records or ``within_ms`` (the latency bound), each partition's
  records in offset order;
- the handler (synchronous: decode, engine, encode) turns the batch into :class:`Output` s;
- every output is handed to the producer without awaiting it; deliveries are awaited before offsets
  are committed, so a commit never covers an input whose outputs could still be lost (a failed
  delivery crashes the worker; the uncommitted inputs are redelivered: at-least-once, and every
  consumer downstream is idempotent by event id);
- offsets are committed every ``commit_every_s`` (in the background, so the acks and the commit
  do not hold up the next batches; one commit at a time, and one that failed crashes the worker)
  and before a partition is revoked.

:class:`ChangelogStore` is per-partition key -> bytes state on a compacted topic of the agent's own
(partition p holds the state of input partition p), read back when a partition is assigned: faust's
table with ``use_partitioner``, on this path. A commit saves it the way Kafka Streams does: the
outputs delivered first, then the keys changed since the last commit (their latest values),
delivered, then the offsets. The state saved is therefore never ahead of delivered outputs (a
restart cannot skip an input as already seen while its outputs were lost) and, once the offsets are
committed, exactly the state of the inputs they cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, RebalanceInProgressError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.structs import ConsumerRecord

from runtime.agent import crash_worker_on_bug, decode_message
from runtime.broker import client_security, ensure_internal_topic
from runtime.metrics import PROCESS_LATENCY, RECORDS_IN, RECORDS_OUT, logical_topic, set_consumer_lag
from topics.records import DeadLetter
from topics.schema import Codec, Record, codec_for

__all__ = [
    "BatchLoop",
    "ChangelogStore",
    "Delivery",
    "Output",
    "batch_consumer",
    "batch_producer",
    "decode_record",
    "group_id",
    "send_batches",
]

log = structlog.get_logger("runtime.batch_agent")

R = TypeVar("R", bound=Record)

#: producer batches up to this size (bytes): a micro-batch of feature vectors fills few requests
MAX_BATCH_BYTES = 512 * 1024
MAX_REQUEST_BYTES = 8 * 1024 * 1024
_PARTITIONER = DefaultPartitioner()


@functools.lru_cache(maxsize=65_536)
def _key_index(key: bytes, n: int) -> int:
    """The index ``DefaultPartitioner`` picks for ``key`` among ``n`` partitions (aiokafka's murmur2 is pure
    Python, ~10 us a key; the keys of an agent's outputs are a few symbols and accounts)."""
    index: int = (murmur2(key) & 0x7FFFFFFF) % n
    return index


class Output(NamedTuple):
    """One message to send: physical topic, key, value; ``partition`` None = the key's partition."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None


Handler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], list[Output]]

_DEAD_LETTER = codec_for(DeadLetter)


def decode_record(
    codec: Codec[R],
    r: ConsumerRecord[bytes, bytes],
    *,
    consumer: str,
    topic: str,
    wall_clock: Callable[[], int],
    deadletter_topic: str,
    outputs: list[Output],
) -> R | None:
    """Decode one consumed record (:func:`runtime.agent.decode_message`); one that is not a valid record
    becomes a dead letter appended to ``outputs`` (sent with the batch) and None is returned."""

    def dead_letter(dl: DeadLetter) -> None:
        outputs.append(Output(deadletter_topic, dl.key(), _DEAD_LETTER.encode(dl)))

    return decode_message(
        codec,
        consumer=consumer,
        topic=topic,
        partition=r.partition,
        offset=r.offset,
        key=r.key,
        value=r.value,
        ts_event=r.timestamp * 1_000_000 if r.timestamp and r.timestamp > 0 else 0,
        ts_init=wall_clock,
        dead_letters=dead_letter,
    )


class ChangelogStore:
    """Key -> bytes for each owned input partition, saved on a compacted topic (module docstring)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.dirty: set[tuple[int, bytes]] = set()

    async def create(self) -> None:
        await ensure_internal_topic(self.bootstrap, self.topic, self.partitions)

    async def restore(self, partitions: Iterable[int]) -> None:
        """Read the changelog partitions from their start to their end (the last value per key wins)."""
        wanted = sorted(set(partitions) - set(self.data))
        if not wanted:
            return
        t0 = time.perf_counter()
        tps = [TopicPartition(self.topic, p) for p in wanted]
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            **client_security(),
        )
        await reader.start()
        try:
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            data: dict[int, dict[bytes, bytes]] = {p: {} for p in wanted}
            todo = {tp for tp in tps if ends[tp] > 0}
            while todo:
                for tp, records in (await reader.getmany(*todo, timeout_ms=200)).items():
                    for r in records:
                        if r.key is not None and r.value is not None:
                            data[tp.partition][r.key] = r.value
                for tp in list(todo):
                    # the fetch's high watermark (tansu's end_offsets may be one batch short)
                    end = max(ends[tp], reader.highwater(tp) or 0)
                    if await reader.position(tp) >= end:
                        todo.discard(tp)
        finally:
            await reader.stop()
        self.data.update(data)
        log.info(
            "changelog_restored",
            topic=self.topic,
            partitions=wanted,
            keys=sum(len(d) for d in data.values()),
            seconds=round(time.perf_counter() - t0, 3),
        )

    def forget(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for p in gone:
            self.data.pop(p, None)
        self.dirty = {(p, k) for p, k in self.dirty if p not in gone}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Set ``key``; it is saved with the next commit (:meth:`dirty_outputs`)."""
        self.data.setdefault(partition, {})[key] = value
        self.dirty.add((partition, key))

    def dirty_outputs(self) -> list[Output]:
        """The changelog messages of the keys set since the last call (their latest values)."""
        out = [Output(self.topic, key, self.data[p][key], p) for p, key in sorted(self.dirty) if p in self.data]
        self.dirty.clear()
        return out


class Delivery(NamedTuple):
    """One record batch handed to the producer: ``future`` resolves to its metadata (the offset of its
    first record) or raises the send's error; its records are ``offset .. offset + records - 1``."""

    topic: str
    partition: int
    records: int
    future: asyncio.Future[Any]


async def send_batches(
    producer: AIOKafkaProducer, outputs: Iterable[Output], partitions: dict[str, list[int]]
) -> list[Delivery]:
    """Hand ``outputs`` to the producer as one record batch per partition (in order within each), not
    awaiting their delivery; a keyed output goes to its key's partition under the Java client's murmur2
    partitioner, as every other producer of the platform sends it. ``partitions`` caches each topic's
    partition list."""
    by_partition: dict[tuple[str, int], list[Output]] = {}
    for out in outputs:
        partition = out.partition
        if partition is None:
            known = partitions.get(out.topic)
            if known is None:
                known = partitions[out.topic] = sorted(await producer.partitions_for(out.topic))
            if out.key is None:
                partition = _PARTITIONER(out.key, known, known)
            else:
                partition = known[_key_index(out.key, len(known))]
        by_partition.setdefault((out.topic, partition), []).append(out)
    deliveries: list[Delivery] = []
    for (topic, partition), outs in by_partition.items():
        batch, n = producer.create_batch(), 0
        for out in outs:
            if batch.append(key=out.key, value=out.value, timestamp=None) is None:  # full: send it
                deliveries.append(
                    Delivery(topic, partition, n, await producer.send_batch(batch, topic, partition=partition))
                )
                batch, n = producer.create_batch(), 0
                if batch.append(key=out.key, value=out.value, timestamp=None) is None:
                    raise ValueError(f"a message of {len(out.value)} bytes does not fit a batch ({topic})")
            n += 1
        deliveries.append(Delivery(topic, partition, n, await producer.send_batch(batch, topic, partition=partition)))
    return deliveries


def batch_producer(bootstrap: str) -> AIOKafkaProducer:
    """The producer of a getmany agent: acks from every replica, batches up to ``MAX_BATCH_BYTES``."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=1,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        **client_security(),
    )


def batch_consumer(bootstrap: str, group_id: str, *, fetch_wait_ms: int, max_records: int) -> AIOKafkaConsumer:
    """The consumer of a getmany agent: a group member committing by hand, from the start when the group
    has no offsets."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_records=max_records,
        **client_security(),
    )


def group_id(app: Any, name: str) -> str:
    """The consumer group of agent ``name`` in faust worker ``app`` (its app id carries the namespace)."""
    return f"{app.conf.id}.{name}"


@dataclass
class _Pending:
    """Deliveries not yet awaited and the input offsets they cover."""

    deliveries: list[asyncio.Future[Any]]
    offsets: dict[TopicPartition, int]


class BatchLoop:
    """One agent's consume -> handle -> produce -> commit loop (module docstring).

    ``setup`` runs first (e.g. :meth:`ChangelogStore.create`); ``on_assigned`` runs for partitions
    newly assigned before the first of their records is handled; ``on_revoked`` inside the rebalance,
    after the revoked partitions' outputs are delivered and committed. ``namespace`` only strips topic names for metric
    labels.
    """

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        namespace: str = "",
        group_id: str,
        topics: Sequence[str],
        handle: Handler,
        setup: Callable[[], Awaitable[None]] | None = None,
        stores: Sequence[ChangelogStore] = (),
        on_assigned: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]] | None = None,
        max_records: int = 2_000,
        within_ms: int = 5,
        fetch_wait_ms: int = 20,
        commit_every_s: float = 0.5,
    ) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.namespace = namespace
        self.group_id = group_id
        self.topics = list(topics)
        self.handle = handle
        self.setup = setup
        self.stores = list(stores)
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.max_records = max_records
        self.within_ms = within_ms
        self.fetch_wait_ms = fetch_wait_ms
        self.commit_every_s = commit_every_s
        self.pending = _Pending([], {})
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.latency = PROCESS_LATENCY.labels(name)
        self._in: dict[str, Any] = {}
        self._partitions: dict[str, list[int]] = {}
        self._committing: asyncio.Future[None] | None = None
        #: partitions whose ``on_assigned`` ran since they were (last) assigned
        self._prepared: set[TopicPartition] = set()
        self._out: dict[str, Any] = {}

    @classmethod
    def hosted(
        cls, app: Any, ctx: Any, *, name: str, inputs: Sequence[str], handle: Handler, **options: Any
    ) -> BatchLoop:
        """A loop run as a task of faust worker ``app`` (started with it, crashing it on failure): group
        ``<app id>.<name>``, the worker's broker, namespace and fetch wait; ``inputs`` are catalogue
        names; ``options`` as for the constructor."""
        loop = cls(
            name=name,
            bootstrap=ctx.bootstrap,
            namespace=ctx.namespace,
            group_id=group_id(app, name),
            topics=[ctx.topic(n) for n in inputs],
            handle=handle,
            fetch_wait_ms=app.fetch_wait_ms,
            **options,
        )
        app.task(crash_worker_on_bug(app, name)(loop.run))
        return loop

    async def run(self) -> None:
        """The loop. Hosted, any exception crashes the worker (:func:`runtime.agent.crash_worker_on_bug`):
        the uncommitted inputs are redelivered."""
        if self.setup is not None:
            await self.setup()
        self.producer = batch_producer(self.bootstrap)
        self.consumer = batch_consumer(
            self.bootstrap, self.group_id, fetch_wait_ms=self.fetch_wait_ms, max_records=self.max_records
        )
        await self.producer.start()
        try:
            self.consumer.subscribe(self.topics, listener=_Listener(self))
            await self.consumer.start()
            try:
                await self._loop(self.consumer, self.producer)
            except asyncio.CancelledError:  # the worker stops: commit what was processed (best effort)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.commit(), timeout=5)
                raise
            finally:
                await self.consumer.stop()
        finally:
            await self.producer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        last_commit = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=self.within_ms if self.pending.offsets else 1_000)
            if batch:
                t0 = time.perf_counter()
                new = set(batch) - self._prepared
                if new:
                    # aiokafka may hand out a new partition's records before its assignment callback has
                    # finished: the partition is prepared (e.g. its state read back) here, before any of them
                    if self.on_assigned is not None:
                        await self.on_assigned(new)
                    self._prepared |= new
                records = [r for tp in sorted(batch) for r in batch[tp]]
                for tp, rs in batch.items():
                    self._counter(self._in, tp.topic, RECORDS_IN).inc(len(rs))
                outputs = self.handle(records)
                self.pending.deliveries += await self.send(producer, outputs)
                for tp, rs in batch.items():
                    self.pending.offsets[tp] = rs[-1].offset + 1
                self.latency.observe(time.perf_counter() - t0)
                for tp in batch:  # labelled by group, as faust's workers are; lag behind what is processed
                    set_consumer_lag(
                        self.group_id,
                        logical_topic(tp.topic, self.namespace),
                        tp.partition,
                        consumer.highwater(tp),
                        self.pending.offsets[tp],
                    )
            committing = self._committing
            if committing is not None and committing.done():
                committing.result()  # a failed delivery or commit raises here: the worker crashes
                self._committing = committing = None
            now = time.monotonic()
            if committing is None and self.pending.offsets and now - last_commit >= self.commit_every_s:
                # in the background: the next batches are not held up by the acks and the commit
                self._committing = asyncio.ensure_future(self._commit(*self._cut()))
                last_commit = now

    async def send(self, producer: AIOKafkaProducer, outputs: Iterable[Output]) -> list[asyncio.Future[Any]]:
        """Hand ``outputs`` to the producer (:func:`send_batches`), counted per topic; the deliveries."""
        sent = await send_batches(producer, outputs, self._partitions)
        for d in sent:
            self._counter(self._out, d.topic, RECORDS_OUT).inc(d.records)
        return [d.future for d in sent]

    def _cut(self) -> tuple[list[asyncio.Future[Any]], list[Output], dict[TopicPartition, int]]:
        """What a commit covers, taken between batches: the deliveries so far, the stores' changed keys
        (their values now, i.e. the state after exactly these inputs) and the offsets."""
        pending = self.pending
        deliveries, pending.deliveries = pending.deliveries, []
        offsets, pending.offsets = pending.offsets, {}
        return deliveries, [o for store in self.stores for o in store.dirty_outputs()], offsets

    async def _commit(
        self, deliveries: list[asyncio.Future[Any]], state: list[Output], offsets: dict[TopicPartition, int]
    ) -> None:
        """The outputs delivered (a failure raises), then the state saved and delivered, then the offsets."""
        if deliveries:
            await asyncio.gather(*deliveries)
        if state and self.producer is not None:
            await asyncio.gather(*await self.send(self.producer, state))
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, RebalanceInProgressError) as exc:
                # the group is rebalancing: the revocation commits what this member still owns
                log.warning("batch_agent_commit_deferred", agent=self.name, error=f"{type(exc).__name__}: {exc}")
                for tp, offset in offsets.items():
                    self.pending.offsets[tp] = max(offset, self.pending.offsets.get(tp, 0))

    async def commit(self) -> None:
        """Everything processed so far, now (a revocation): after any commit still running."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing
        await self._commit(*self._cut())

    def _counter(self, cache: dict[str, Any], topic: str, metric: Any) -> Any:
        c = cache.get(topic)
        if c is None:
            c = cache[topic] = metric.labels(self.name, logical_topic(topic, self.namespace))
        return c


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: BatchLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self.loop.commit()
            self.loop._prepared -= set(revoked)
            if self.loop.on_revoked is not None:
                await self.loop.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Logged only: the loop prepares a partition when its first records arrive."""
        names = sorted(f"{t.topic}[{t.partition}]" for t in assigned)
        log.info("batch_agent_assigned", agent=self.loop.name, partitions=names)
