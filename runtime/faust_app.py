"""faust-streaming application factory, tuned for the embedded broker.

No module-level app: ``create_app(settings)`` builds one per worker process.

Tuning (measured on tansu; docs/operations.md#the-embedded-default-faust-tuning-and-binaries):
- ``broker_session_timeout`` 6 s: group join waits session_timeout/2;
- fetch wait 20 ms (``TRADEFLOW_FETCH_WAIT_MS``) instead of faust's hard-coded
  1.5 s (p50 ~600 ms -> ~30 ms): faust does not expose it, so the transport's
  consumer thread overrides it with the app's ``fetch_wait_ms``;
- all topics pre-created from the catalogue; faust declares none of them;
- memory table store (tables recover from their changelog topics).

Every worker also runs the broker watchdog: a lost broker crashes the worker
loudly (exit code != 0) instead of consuming from an empty broker.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, cast

import faust
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.broker import BrokerLost, BrokerWatchdog, client_security
from runtime.metrics import logical_topic, set_consumer_lag
from topics.catalogue import TOPICS, physical_name

log = structlog.get_logger("runtime.faust_app")


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its fetcher in start().
        consumer._fetch_max_wait_ms = cast("TunedApp", self.app).fetch_wait_ms
        return consumer

    async def subscribe(self, topics: Any) -> None:
        """No faust subscription at all when the worker hosts only getmany agents
        (:mod:`runtime.batch_agent`): aiokafka refuses an empty topic list."""
        topics = set(topics)
        if topics:
            await super().subscribe(topics)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        """No commit after a failed produce (see :class:`SendFailures`): the inputs whose outputs were
        lost stay uncommitted, the worker stops, and its restart reads them again (at-least-once)."""
        failures = cast("TunedApp", self.app).send_failures
        if failures:
            log.critical("commit_refused_after_a_failed_send", failed_sends=len(failures), error=failures[0])
            return False
        return bool(await super()._commit(offsets))


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class SendFailures(faust.Sensor):
    """Every produce that failed, remembered on the app, and the worker stopped loudly.

    faust's ``Topic.send_soon`` logs a failed delivery as a warning and goes on, and its consumer then
    commits the inputs whose outputs were lost: seen on ``tradeflow up`` when the object store was
    SIGKILLed under the bars-checker (one checked bar never written, its raw bar committed). With this
    sensor the consumer commits nothing after the first failure (:meth:`_Consumer._commit`) and the
    worker crashes; the supervisor restarts it and the uncommitted inputs are processed again.
    """

    def __init__(self, app: TunedApp) -> None:
        super().__init__()
        self._app = app
        self._stopping: asyncio.Future[None] | None = None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        first = not self._app.send_failures
        self._app.send_failures.append(f"{type(exc).__name__}: {exc}")
        if first:
            log.critical("produce_failed_worker_stopping", error=f"{type(exc).__name__}: {exc}")
            self._stopping = asyncio.ensure_future(self._app.crash(exc))


class TunedApp(faust.App):
    #: consumer fetch wait (ms); set from :class:`WorkerSettings` by :func:`create_app`
    fetch_wait_ms: int = 20
    #: failed produces since start (:class:`SendFailures`): once there is one, nothing more is committed
    send_failures: list[str]

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)

    async def _wait_for_table_recovery_completed(self) -> bool:
        """faust starts tasks, timers and the web server only once its tables recovered, which waits for
        a partition assignment; a worker of getmany agents only (:mod:`runtime.batch_agent`) subscribes
        to nothing through faust and gets none, so there it is done at once."""
        if not self.agents and not self.tables:
            return bool(self.should_stop)
        return bool(await super()._wait_for_table_recovery_completed())


@dataclass(frozen=True)
class WorkerSettings:
    app_id: str
    bootstrap: str
    namespace: str = ""
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    watchdog_interval_s: float = 2.0
    lag_interval_s: float = 2.0
    #: ``TRADEFLOW_FETCH_WAIT_MS`` and ``TRADEFLOW_DATA_DIR`` (faust's table metadata under ``<data_dir>/faust``)
    fetch_wait_ms: int = 20
    data_dir: str = "var"
    #: Catalogue topics the worker's agents use, inputs first (empty: every catalogue topic). The broker
    #: watchdog expects these: with per-service ACLs a client sees only the topics it may use.
    topics: tuple[str, ...] = ()


def create_app(s: WorkerSettings) -> Any:
    data_root = os.path.join(s.data_dir, "faust")
    os.makedirs(data_root, exist_ok=True)
    security = client_security()  # TRADEFLOW_KAFKA_SASL_*: the service's broker user, if any
    credentials = None
    if security:
        credentials = faust.SASLCredentials(
            username=security["sasl_plain_username"],
            password=security["sasl_plain_password"],
            mechanism=security["sasl_mechanism"],
            ssl_context=security.get("ssl_context"),
        )
    app = TunedApp(
        s.app_id,
        broker=f"kafka://{s.bootstrap}",
        broker_credentials=credentials,
        store="memory://",
        autodiscover=False,
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=True,
        web_bind=s.web_host,
        web_host=s.web_host,
        web_port=s.web_port,
        web_in_thread=False,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_request_timeout=30.0,
        broker_commit_interval=0.5,
        broker_commit_every=1000,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        producer_linger_ms=1,
        producer_max_request_size=8 * 1024 * 1024,
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
        # faust keeps table metadata in a directory per app; keep it out of the source tree
        datadir=os.path.join(data_root, "{conf.id}-data"),
    )
    app.fetch_wait_ms = s.fetch_wait_ms
    app.send_failures = []
    app.sensors.add(SendFailures(app))

    @app.page("/metrics")
    async def metrics(self: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is ASCII.
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/health")
    async def health(self: Any, request: Any) -> Any:
        return self.json({"app": s.app_id, "ok": not app.should_stop})

    expect = [physical_name(t, s.namespace) for t in (s.topics or tuple(t.name for t in TOPICS))]
    watchdog = BrokerWatchdog(s.bootstrap, expect, interval_s=s.watchdog_interval_s)

    @app.task  # type: ignore[untyped-decorator]
    async def broker_watchdog() -> None:
        try:
            await watchdog.run()
        except BrokerLost as exc:
            log.critical("worker_stopping_broker_lost", reason=str(exc))
            await app.crash(exc)

    @app.timer(interval=s.lag_interval_s)  # type: ignore[untyped-decorator]
    async def consumer_lag() -> None:
        record_consumer_lag(app, s.app_id, s.namespace)

    return app


def record_consumer_lag(app: Any, consumer: str, namespace: str) -> None:
    """``tradeflow_consumer_lag`` for every assigned partition: fetch high-water - committed offset.

    Both come from the consumer's own state, no broker round trip: the high-water mark is the one
    aiokafka took from the last fetch response (reliable on tansu, unlike ``end_offsets``), the
    committed offset is faust's (the next offset to process). During a rebalance the assignment
    can change under us; a partition that is no longer assigned is simply skipped this round.
    """
    try:
        assigned = app.consumer.assignment()
    except Exception:  # consumer not started yet, or being rebuilt by a rebalance
        return
    for tp in assigned:
        try:
            highwater = app.consumer.highwater(tp)
        except AssertionError:  # aiokafka asserts the partition is assigned: revoked since assignment()
            continue
        committed = app.consumer._committed_offset.get(tp)  # faust keeps no public accessor
        set_consumer_lag(consumer, logical_topic(tp.topic, namespace), tp.partition, highwater, committed)
