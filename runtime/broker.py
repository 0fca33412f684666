"""Broker administration and health, client side: topics created up front
from the catalogue, a probe, and the watchdog that stops a worker loudly when
the broker is lost.

tansu would auto-create unknown topics with 4 partitions, so every catalogued
topic is created with its own count first. A memory-engine broker loses all
topics and offsets on restart and clients do not notice by themselves:
:class:`BrokerWatchdog` probes the broker and raises :class:`BrokerLost` when
it is unreachable, when catalogued topics have vanished, or when its own
committed marker offset is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from runtime.env import ConfigError, env_str, read_secret
from runtime.errors import NeedsOperator
from topics.catalogue import TOPICS, TopicSpec, physical_name

_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def client_security(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """aiokafka client arguments for this process's broker user (``TRADEFLOW_KAFKA_SASL_*``); ``{}``
    without one (the embedded broker). Every client a service builds passes them: a broker with
    ACLs (compose.yaml) refuses a client that does not. Errors name variables, never the password."""
    user = env_str("TRADEFLOW_KAFKA_SASL_USERNAME", "", environ).strip()
    if not user:
        return {}
    password = read_secret("TRADEFLOW_KAFKA_SASL_PASSWORD", environ)
    if not password:
        raise ConfigError("TRADEFLOW_KAFKA_SASL_USERNAME is set but TRADEFLOW_KAFKA_SASL_PASSWORD(_FILE) is not")
    mechanism = env_str("TRADEFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256", environ).strip().upper()
    if mechanism not in _MECHANISMS:
        raise ConfigError(f"TRADEFLOW_KAFKA_SASL_MECHANISM={mechanism!r}: expected one of {list(_MECHANISMS)}")
    protocol = env_str("TRADEFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT", environ).strip().upper()
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"TRADEFLOW_KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {list(_PROTOCOLS)}")
    out: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }
    if protocol == "SASL_SSL":
        from aiokafka.helpers import create_ssl_context

        out["ssl_context"] = create_ssl_context()
    return out


log = structlog.get_logger("runtime.broker")


class BrokerError(NeedsOperator, RuntimeError):
    """The embedded broker could not be started or administered."""


class BrokerLost(NeedsOperator, RuntimeError):
    """The broker is gone or was restarted empty. Needs a human: stop trading."""


# ---------------------------------------------------------------------------
# Topic administration
# ---------------------------------------------------------------------------


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec] = TOPICS,
    namespace: str = "",
    timeout_s: float = 20.0,
    replication_factor: int = 1,
) -> list[str]:
    """Create every catalogued topic (idempotent). Returns the physical names.

    Partition counts of pre-existing topics are checked: a topic auto-created
    with the wrong count is an error, not something to paper over.
    """
    wanted = {physical_name(s.name, namespace): (s.partitions, s.config()) for s in specs}
    created = await _ensure(bootstrap, wanted, timeout_s, replication_factor)
    log.info("topics_ready", count=len(wanted), created=created, namespace=namespace or None)
    return list(wanted)


async def ensure_internal_topic(bootstrap: str, name: str, partitions: int, timeout_s: float = 20.0) -> None:
    """Create an agent's own compacted topic (a state changelog, outside the catalogue), or check its
    partition count: its partition p must hold the state of input partition p."""
    await _ensure(bootstrap, {name: (partitions, {"cleanup.policy": "compact"})}, timeout_s, 1)


async def _ensure(
    bootstrap: str, wanted: dict[str, tuple[int, dict[str, str]]], timeout_s: float, replication_factor: int
) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **client_security()
    )
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name=name, num_partitions=n, replication_factor=replication_factor, topic_configs=cfg)
            for name, (n, cfg) in wanted.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        for d in await admin.describe_topics(list(wanted)):
            name = d["topic"]
            n = len(d["partitions"])
            if n != wanted[name][0]:
                raise BrokerError(f"topic {name} has {n} partitions, catalogue says {wanted[name][0]}")
        return len(new)
    finally:
        await admin.close()


async def probe(bootstrap: str, expect_topics: Iterable[str], timeout_s: float = 5.0) -> None:
    """One health probe: metadata request plus presence of the expected topics.

    Raises :class:`BrokerLost` with the reason.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **client_security()
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        names = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
    except (TimeoutError, KafkaError, OSError) as exc:
        raise BrokerLost(f"broker {bootstrap} unreachable: {type(exc).__name__}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    missing = sorted(set(expect_topics) - names)
    if missing:
        raise BrokerLost(
            f"broker {bootstrap} lost {len(missing)} topics (e.g. {missing[:3]}): "
            "a memory-engine broker was restarted and its data and offsets are gone"
        )


_MARKER_OFFSET = 1
_MARKER_LOST = "committed offsets lost"


class BrokerWatchdog:
    """Periodic broker probe. ``run()`` raises BrokerLost after ``failures`` bad probes.

    Workers run it beside their consumers; on BrokerLost they log at
    critical level, flip the health gauge and stop (no silent carrying on
    against an empty broker).
    """

    def __init__(
        self, bootstrap: str, expect_topics: Iterable[str], interval_s: float = 2.0, failures: int = 2
    ) -> None:
        self.bootstrap = bootstrap
        self.expect = list(expect_topics)
        self.interval_s = interval_s
        self.failures = failures
        self._marker: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        from runtime.metrics import BROKER_UP

        bad = 0
        try:
            while True:
                try:
                    await probe(self.bootstrap, self.expect)
                    await self._check_marker()
                    bad = 0
                    BROKER_UP.set(1)
                except BrokerLost as exc:
                    bad += 1
                    BROKER_UP.set(0)
                    log.error("broker_probe_failed", reason=str(exc), consecutive=bad)
                    if bad >= self.failures:  # a lost marker stays lost: it fails every probe after
                        log.critical("broker_lost", reason=str(exc))
                        raise
                await asyncio.sleep(self.interval_s)
        finally:
            if self._marker is not None:
                with contextlib.suppress(Exception):
                    await self._marker.stop()

    async def _check_marker(self) -> None:
        """Catch a broker that came back empty with its topics already recreated (a supervisor restart plus
        topics-init between two probes): the topic check alone passes then. What a restart loses and a real
        cluster keeps is committed offsets, so the first probe commits one for this watchdog's own group and
        every later probe reads it back (and commits it again, so a real cluster's offset retention keeps it).
        """
        if not self.expect:
            return
        tp = TopicPartition(self.expect[0], 0)
        try:
            if self._marker is None:
                marker = AIOKafkaConsumer(
                    **client_security(),
                    bootstrap_servers=self.bootstrap,
                    enable_auto_commit=False,
                    group_id=f"tradeflow-watchdog-{uuid.uuid4().hex}",
                )
                await asyncio.wait_for(marker.start(), 5.0)
                marker.assign([tp])
                await asyncio.wait_for(marker.commit({tp: _MARKER_OFFSET}), 5.0)
                self._marker = marker
                return
            got = await asyncio.wait_for(self._marker.committed(tp), 5.0)
            if got != _MARKER_OFFSET:
                raise BrokerLost(
                    f"{_MARKER_LOST} on {self.bootstrap} (watchdog offset {got!r}, expected "
                    f"{_MARKER_OFFSET}): the broker was restarted empty and topics recreated"
                )
            await asyncio.wait_for(self._marker.commit({tp: _MARKER_OFFSET}), 5.0)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise BrokerLost(f"broker {self.bootstrap} unreachable: {type(exc).__name__}: {exc}") from exc
