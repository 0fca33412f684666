"""Topic -> Postgres sink: batched, idempotent, offsets committed after the DB.

Why plain aiokafka and not a faust agent: the sink must (1) commit broker
offsets only after the database transaction that holds the rows has
committed, and (2) sustain tens of thousands of records per second. faust
acks per event and commits on its own timer, and its per-event overhead caps
a worker near 2k events/s here. A consumer-group loop over ``getmany``
batches gives both properties and scales the same way (more sink processes
in the group = more partitions in parallel).

Per batch:
1. decode + validate every message with the topic's record codec; failures
   become DeadLetter records (reason + original bytes), counted by reason;
2. one transaction: COPY good rows into per-table staging tables, then
   ``INSERT .. SELECT .. ON CONFLICT DO NOTHING`` into the event tables
   (unique event_id: a redelivered message never doubles a row), then the
   typed projections (latest bar revision wins);
3. dead letters are produced and acknowledged by the broker;
4. only then the consumed offsets are committed.
A crash anywhere before (4) means redelivery, which (2) absorbs.
Database errors are retried with capped backoff on the same batch; nothing
is committed to the broker meanwhile, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from runtime.agent import decode_message
from runtime.broker import client_security
from runtime.errors import Retriable
from runtime.metrics import (
    RECORDS_IN,
    SINK_BATCH,
    SINK_COMMIT_SECONDS,
    SINK_DB_ERRORS,
    SINK_ROWS,
    set_consumer_lag,
)
from topics.catalogue import TOPICS, TopicSpec, physical_name, spec
from topics.records import Bar, DeadLetter, FeatureVector
from topics.schema import Codec, Record, RecordError, codec_for
from topics.units import NS_PER_MS

log = structlog.get_logger("storage.sink")

EVENT_COLUMNS = (
    "event_id",
    "schema_version",
    "ts_event",
    "ts_init",
    "correlation_id",
    "causation_id",
    "kafka_partition",
    "kafka_offset",
    "msg_key",
    "payload",
)
BAR_COLUMNS = (
    "venue",
    "symbol",
    "timeframe",
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "is_closed",
    "revision",
    "source",
    "event_id",
)

_Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_RETRIABLE_DB = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # a pooled connection the server dropped can be handed out before asyncpg notices: "cannot switch
    # to state 15; another operation (2) is in progress" (see TopicSink._write)
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    OSError,
    asyncio.TimeoutError,
)


class DatabaseConnectionLost(Retriable, ConnectionError):
    """The server ended the sink's session while a write was in flight (retried on a fresh connection)."""


async def _abandon(conn: _Conn, body: asyncio.Future[None]) -> None:
    """Terminate ``conn`` (never back to the pool in an unknown state), then let ``body`` unwind.

    After the abort every wait inside ``body`` fails at once, so waiting for it cannot hang; what it
    raises while unwinding is the dead connection's noise (the caller reports the cause).
    """
    with contextlib.suppress(asyncpg.InterfaceError):  # already released: the pool dropped it
        conn.terminate()
    body.cancel()
    await asyncio.wait({body})
    if not body.cancelled():
        body.exception()  # retrieved, so asyncio does not log it as never retrieved


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    dsn: str
    namespace: str = ""
    group_id: str = "tradeflow-sink"
    topics: tuple[str, ...] = tuple(t.name for t in TOPICS)
    max_batch: int = 20_000
    fetch_wait_ms: int = 20
    db_timeout_s: float = 30.0
    retry_max_s: float = 10.0


@dataclass
class _Decoded:
    rows: dict[str, list[tuple[Any, ...]]]
    bars: list[tuple[Any, ...]]
    features: list[tuple[Any, ...]]
    dead: list[DeadLetter]
    offsets: dict[TopicPartition, int]
    n: int


class _TopicDecoder:
    """Decode one topic's messages into event-table rows (pure, no I/O)."""

    def __init__(self, topic_spec: TopicSpec, physical: str) -> None:
        self.spec = topic_spec
        self.physical = physical
        self.codec: Codec[Record] = codec_for(topic_spec.record)
        self.is_bar = topic_spec.record is Bar and topic_spec.name == "market.bars"
        self.is_features = topic_spec.name == "features"

    def row(self, msg: ConsumerRecord[bytes, bytes], rec: Record) -> tuple[Any, ...]:
        key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
        return (
            rec.event_id,
            rec.schema_version,
            rec.ts_event,
            rec.ts_init,
            rec.correlation_id,
            rec.causation_id,
            msg.partition,
            msg.offset,
            key,
            msg.value.decode("utf-8"),
        )


FEATURE_COLUMNS = (
    "event_id",
    "venue",
    "symbol",
    "timeframe",
    "bar_open_time",
    "feature_set_version",
    "data_version",
    "lineage_id",
    "bar_event_id",
    "names",
    "vals",
)


def _feature_row(f: FeatureVector) -> tuple[Any, ...]:
    return (
        f.event_id,
        f.venue,
        f.symbol,
        f.timeframe.value,
        f.bar_open_time,
        f.feature_set_version,
        f.data_version,
        f.lineage_id,
        f.causation_id,
        list(f.names),
        list(f.values),
    )


def _bar_row(b: Bar) -> tuple[Any, ...]:
    return (
        b.venue,
        b.symbol,
        b.timeframe.value,
        b.open_time,
        b.open_time + b.timeframe.nanos,
        b.open,
        b.high,
        b.low,
        b.close,
        b.volume,
        b.trade_count,
        b.is_closed,
        b.revision,
        b.source,
        b.event_id,
    )


class TopicSink:
    """Consumer-group sink from catalogued topics into Postgres."""

    consumer_name = "sink"

    def __init__(self, cfg: SinkConfig, wall_ns: Any = time.time_ns) -> None:
        self.cfg = cfg
        self._wall_ns = wall_ns
        self._decoders = {
            physical_name(n, cfg.namespace): _TopicDecoder(spec(n), physical_name(n, cfg.namespace)) for n in cfg.topics
        }
        self._dlq_topic = physical_name("deadletter", cfg.namespace)
        self._dlq_codec = codec_for(DeadLetter)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.pool: asyncpg.Pool | None = None
        self.rows_written = 0
        self.batches = 0
        self._stopping = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self._lag_recorded_at = 0.0

    # -- lifecycle ------------------------------------------------------------
    async def open_pool(self) -> None:
        """The sink's PostgreSQL pool (its sessions are named ``tradeflow-sink`` in pg_stat_activity)."""
        self.pool = await asyncpg.create_pool(
            self.cfg.dsn,
            min_size=1,
            max_size=2,
            command_timeout=self.cfg.db_timeout_s,
            server_settings={"application_name": "tradeflow-sink"},
        )

    async def start(self) -> None:
        await self.open_pool()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.cfg.bootstrap,
            acks="all",
            max_request_size=8 * 1024 * 1024,
            linger_ms=5,
            **client_security(),
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            *self._decoders,
            bootstrap_servers=self.cfg.bootstrap,
            group_id=self.cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.cfg.fetch_wait_ms,
            max_poll_records=self.cfg.max_batch,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            **client_security(),
        )
        await self.consumer.start()
        log.info("sink_started", topics=len(self._decoders), group=self.cfg.group_id)

    async def stop(self) -> None:
        self._stopping.set()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.close()

    async def run(self) -> None:
        """Fetch/decode batch N+1 while batch N is being written (one write in flight,
        so offsets are still committed in order)."""
        assert self.consumer is not None
        in_flight: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.cfg.max_batch)
                if not batch:
                    if in_flight is not None:
                        await in_flight
                        in_flight = None
                    if time.monotonic() - self._lag_recorded_at > 2.0:
                        self.record_lag()
                    continue
                decoded = self.decode(batch)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(self.persist(decoded))
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    # -- one batch ------------------------------------------------------------
    def decode(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> _Decoded:
        rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        bars: list[tuple[Any, ...]] = []
        features: list[tuple[Any, ...]] = []
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, int] = {}
        now: int = self._wall_ns()

        def stamp() -> int:  # one ts_init for the batch's dead letters
            return now

        for tp, msgs in batch.items():
            dec = self._decoders[tp.topic]
            table_rows = rows[dec.spec.table]
            codec = dec.codec
            RECORDS_IN.labels(self.consumer_name, dec.spec.name).inc(len(msgs))
            for msg in msgs:
                rec = decode_message(
                    codec,
                    consumer=self.consumer_name,
                    topic=dec.spec.name,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key,
                    value=msg.value,
                    ts_event=msg.timestamp * NS_PER_MS,
                    ts_init=stamp,
                    dead_letters=dead.append,
                    bad_input=RecordError,
                )
                if rec is None:
                    continue
                table_rows.append(dec.row(msg, rec))
                if dec.is_bar:
                    bars.append(_bar_row(rec))  # type: ignore[arg-type]
                elif dec.is_features:
                    features.append(_feature_row(rec))  # type: ignore[arg-type]
            offsets[tp] = msgs[-1].offset + 1
        return _Decoded(
            rows=rows, bars=bars, features=features, dead=dead, offsets=offsets, n=sum(len(v) for v in batch.values())
        )

    async def process(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Decode and persist one batch (no pipelining)."""
        await self.persist(self.decode(batch))

    async def persist(self, d: _Decoded) -> None:
        """DB transaction, then dead letters acknowledged, then offsets committed."""
        assert self.consumer is not None and self.producer is not None
        SINK_BATCH.observe(d.n)
        await self._write_with_retry(d)
        if d.dead:
            futs = [
                await self.producer.send(self._dlq_topic, self._dlq_codec.encode(dl), key=dl.key()) for dl in d.dead
            ]
            await asyncio.gather(*futs)
        await self.consumer.commit(d.offsets)
        self.batches += 1
        self._committed.update(d.offsets)
        self.record_lag()

    def record_lag(self) -> None:
        """``tradeflow_consumer_lag{consumer="sink"}``: fetch high-water mark - offset this process committed.

        The high-water mark is aiokafka's, from the last fetch response (tansu's ``end_offsets`` can be
        wrong). A partition this process has not committed yet has no series (unknown,
        not 0).
        """
        assert self.consumer is not None
        self._lag_recorded_at = time.monotonic()
        for tp in self.consumer.assignment():
            dec = self._decoders.get(tp.topic)
            if dec is None:
                continue
            set_consumer_lag(
                self.consumer_name, dec.spec.name, tp.partition, self.consumer.highwater(tp), self._committed.get(tp)
            )

    async def _write_with_retry(self, d: _Decoded) -> None:
        delay = 0.1
        while True:
            try:
                t0 = time.perf_counter()
                await self._write(d)
                SINK_COMMIT_SECONDS.observe(time.perf_counter() - t0)
                return
            except _RETRIABLE_DB as exc:
                SINK_DB_ERRORS.labels(type(exc).__name__).inc()
                log.error("sink_db_retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 2))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.cfg.retry_max_s)

    async def _write(self, d: _Decoded) -> None:
        """One transaction for the batch's rows and projections, guarded against a dead connection.

        asyncpg 0.32 does not notice every way a server can go away mid-write: a COPY whose socket was
        paused for writing waits on ``writing_allowed`` forever once the server ends the session
        (``connection_lost`` never resumes writing, and no command timeout covers that wait), and a
        pooled connection that got the server's FATAL while idle is handed out and fails with
        ``InternalClientError`` (both found by the database chaos drills). So the transaction runs as
        its own task, abandoned as soon as the connection reports its termination or after
        ``db_timeout_s``; a connection that failed or was abandoned is terminated, never handed back
        to the pool in an unknown protocol state, and the retry starts on a fresh one. Nothing was
        committed by an abandoned attempt (its transaction never reached COMMIT, or reached it and
        the retry's rows dedupe on event id).
        """
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_lost(_conn: object) -> None:
                if not lost.done():
                    lost.set_result(None)

            conn.add_termination_listener(on_lost)
            body = asyncio.ensure_future(self._write_tx(conn, d))
            try:
                await asyncio.wait({body, lost}, timeout=self.cfg.db_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                await _abandon(conn, body)
                raise
            if body.done():
                with contextlib.suppress(asyncpg.InterfaceError):  # released: the connection is gone
                    conn.remove_termination_listener(on_lost)
                exc = body.exception()
                if exc is None:
                    return
                if isinstance(exc, _RETRIABLE_DB):
                    await _abandon(conn, body)
                raise exc
            await _abandon(conn, body)
            if lost.done():
                raise DatabaseConnectionLost("the server ended the sink's session in the middle of a write")
            raise TimeoutError(f"no answer from PostgreSQL within {self.cfg.db_timeout_s} s")

    async def _write_tx(self, conn: _Conn, d: _Decoded) -> None:
        async with conn.transaction():
            for table, rows in d.rows.items():
                if rows:
                    inserted = await self._insert_events(conn, table, rows)
                    SINK_ROWS.labels(table).inc(inserted)
                    self.rows_written += inserted
            if d.bars:
                await self._upsert_bars(conn, d.bars)
            if d.features:
                await self._insert_rows(conn, "feature_snapshots", FEATURE_COLUMNS, d.features)

    @staticmethod
    async def _insert_events(conn: _Conn, table: str, rows: list[tuple[Any, ...]]) -> int:
        return await TopicSink._insert_rows(conn, table, EVENT_COLUMNS, rows)

    @staticmethod
    async def _insert_rows(conn: _Conn, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> int:
        """COPY straight into the table; on a duplicate event id fall back to a deduping insert.

        Duplicates only occur after a redelivery (crash before the offset
        commit) or a producer retry, so the fast path is the common one; the
        savepoint keeps the batch's transaction usable when it fails.
        """
        try:
            async with conn.transaction():  # savepoint
                await conn.copy_records_to_table(table, records=rows, columns=columns)
            return len(rows)
        except asyncpg.UniqueViolationError:
            pass
        stage = f"_stage_{table}"
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(stage, records=rows, columns=columns)
        cols = ", ".join(columns)
        status = await conn.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "  # noqa: S608 - names from the catalogue
            "ON CONFLICT (event_id) DO NOTHING"
        )
        return int(status.rsplit(" ", 1)[-1])

    @staticmethod
    async def _upsert_bars(conn: _Conn, bars: Sequence[tuple[Any, ...]]) -> None:
        # Highest revision per key within the batch first (ON CONFLICT cannot
        # touch the same row twice in one statement), then against the table.
        best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for b in bars:
            k = (b[0], b[1], b[2], b[3])
            cur = best.get(k)
            if cur is None or b[12] >= cur[12]:
                best[k] = b
        # Fast path: brand-new bars (history import, live closes) COPY straight in.
        try:
            async with conn.transaction():  # savepoint
                await conn.copy_records_to_table("bars", records=list(best.values()), columns=BAR_COLUMNS)
            return
        except asyncpg.UniqueViolationError:
            pass
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS _stage_bars (LIKE bars) ON COMMIT DELETE ROWS")
        await conn.copy_records_to_table("_stage_bars", records=list(best.values()), columns=BAR_COLUMNS)
        cols = ", ".join(BAR_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in BAR_COLUMNS[4:])
        await conn.execute(
            f"INSERT INTO bars ({cols}) SELECT {cols} FROM _stage_bars "  # noqa: S608 - fixed names
            f"ON CONFLICT (venue, symbol, timeframe, open_time) DO UPDATE SET {updates} "
            "WHERE EXCLUDED.revision > bars.revision"
        )


async def run_sink(cfg: SinkConfig, stop: asyncio.Event | None = None) -> TopicSink:
    sink = TopicSink(cfg)
    await sink.start()
    try:
        task = asyncio.create_task(sink.run())
        if stop is None:
            await task
        else:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await sink.stop()
    return sink
