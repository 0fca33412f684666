"""The durable log: tansu on ``s3://`` storage in the embedded SeaweedFS object store.

Real processes, no mocks: SIGKILL of the broker and of the object store,
restarts on the same data dir, what survives them, and where the object
store's secret must never appear. Each test has its own data dir (the
session broker of ``conftest`` is the memory engine and is not touched).
"""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from structlog.testing import capture_logs

import ops.embedded.broker as broker_module
import ops.embedded.objectstore as objectstore_module
from ops.embedded.broker import DurableBroker
from ops.embedded.objectstore import ObjectStoreError
from runtime.broker import ensure_topics
from runtime.publish import RecordPublisher
from tests.builders import T0, bar
from topics.catalogue import TOPICS, physical_name, spec
from topics.records import Bar
from topics.schema import codec_for

pytestmark = pytest.mark.integration

TOPIC = "market.bars.raw"
PARTITIONS = spec(TOPIC).partitions
HOUR_NS = 3_600_000_000_000


def bars(n: int, first: int = 0) -> list[Bar]:
    """``n`` distinct bars over 64 symbols, spread over the partitions."""
    return [bar(symbol=f"C{i % 64}/USDT", open_time=T0 + (first + i) * HOUR_NS) for i in range(n)]


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[DurableBroker]:
    d = DurableBroker(tmp_path / "data")
    try:
        yield d.start()
    finally:
        d.stop(grace_s=2)  # a throwaway store: not worth weed's 15 s graceful stop (tests stay well under 15 min)


async def read_ids(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> tuple[list[str], int]:
    """The event ids of the first ``n`` records of ``topic`` and the sum of the fetch high-waters.

    The high-water comes from fetch responses (tansu's list-offsets answer can be wrong).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await consumer.start()  # inside the try: a failed start must not leak the client into the next test
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        codec = codec_for(Bar)
        ids: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(ids) < n or any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(ids)} of {n} records of {topic} in {timeout_s}s")
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                ids += [codec.decode(m.value).event_id for m in msgs if m.value is not None]
        return ids, sum(consumer.highwater(tp) or 0 for tp in tps)
    finally:
        await consumer.stop()


async def consume_and_commit(bootstrap: str, topic: str, group: str, n: int) -> dict[int, int]:
    """Read ``n`` records as ``group`` and commit half of each partition's count; the offsets committed."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while sum(seen.values()) < n:
            assert time.monotonic() < deadline, f"group {group} read {sum(seen.values())} of {n}"
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                seen[tp.partition] = seen.get(tp.partition, 0) + len(msgs)
        offsets = {p: count // 2 for p, count in seen.items()}
        await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
        return offsets
    finally:
        await consumer.stop()


async def committed(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_broker_sigkilled_then_restarted_on_its_storage_with_every_record_and_committed_offset(
    durable: DurableBroker,
) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    b = durable.bootstrap
    created = await asyncio.wait_for(ensure_topics(b, namespace=ns), 60)
    assert sorted(created) == sorted(physical_name(s.name, ns) for s in TOPICS)
    topic = physical_name(TOPIC, ns)
    sent = bars(400)
    async with RecordPublisher(b, namespace=ns) as pub:
        await asyncio.wait_for(pub.publish(sent), 60)  # returns once every record is acknowledged
    offsets = await asyncio.wait_for(consume_and_commit(b, topic, "durable-g", len(sent)), 90)
    assert len(offsets) > 1 and sum(offsets.values()) > 0

    port, pid = durable.broker.port, durable.broker.proc.pid if durable.broker.proc else None
    durable.broker.kill()
    assert not durable.broker.alive
    durable.broker.restart()
    assert durable.broker.port == port and durable.broker.proc is not None and durable.broker.proc.pid != pid

    assert set(created) <= await asyncio.wait_for(topic_names(b), 30)
    assert sorted(await asyncio.wait_for(ensure_topics(b, namespace=ns), 60)) == sorted(created)  # counts checked
    ids, high = await read_ids(b, topic, len(sent))
    assert sorted(ids) == sorted(r.event_id for r in sent)
    assert high == len(sent)
    assert await asyncio.wait_for(committed(b, topic, "durable-g"), 30) == {
        p: offsets.get(p) for p in range(PARTITIONS)
    }


async def test_object_store_sigkilled_then_produce_fails_loudly_and_after_its_restart_nothing_acked_is_lost(
    durable: DurableBroker,
) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    b = durable.bootstrap
    await asyncio.wait_for(ensure_topics(b, [spec(TOPIC)], namespace=ns), 60)
    topic = physical_name(TOPIC, ns)
    before, during, after = bars(200), bars(1, first=200), bars(50, first=201)
    async with RecordPublisher(b, namespace=ns) as pub:
        await asyncio.wait_for(pub.publish(before), 60)

        durable.object_store.kill()
        started = time.monotonic()
        with pytest.raises((KafkaError, TimeoutError)):
            await asyncio.wait_for(pub.publish(during), 30)
        assert time.monotonic() - started < 30

        durable.object_store.start()
        deadline = time.monotonic() + 60
        while True:  # the broker serves again once the store is back: a bounded retry, not a wait
            try:
                await asyncio.wait_for(pub.publish(after), 15)
                break
            except (KafkaError, TimeoutError):
                assert time.monotonic() < deadline, "the broker did not serve again after the object store restart"
    assert durable.broker.alive
    ids, high = await read_ids(b, topic, len(before) + len(after))
    assert {r.event_id for r in before} | {r.event_id for r in after} <= set(ids)
    assert sorted(i for i in ids if i in {r.event_id for r in before}) == sorted(r.event_id for r in before)
    assert high == len(ids)


async def test_start_then_credentials_private_and_secret_in_no_log_repr_or_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = DurableBroker(tmp_path / "data")
    config = d.object_store.config
    secret = config.credentials.secret_key
    with capture_logs() as events:
        # fresh loggers bound inside the capture (module loggers may be cached on an earlier configuration)
        monkeypatch.setattr(objectstore_module, "log", structlog.get_logger("ops.embedded.objectstore"))
        monkeypatch.setattr(broker_module, "log", structlog.get_logger("ops.embedded.broker"))
        try:
            d.start()
            ns = f"t{uuid.uuid4().hex[:10]}"
            await asyncio.wait_for(ensure_topics(d.bootstrap, [spec(TOPIC)], namespace=ns), 60)
            async with RecordPublisher(d.bootstrap, namespace=ns) as pub:
                await asyncio.wait_for(pub.publish(bars(10)), 60)
            procs = [d.object_store.proc, d.broker.proc]
            cmdlines = [Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in procs if p is not None]
        finally:
            d.stop()
    assert {"objectstore_started", "broker_started", "durable_broker_started"} <= {e["event"] for e in events}
    assert secret not in repr(events)
    assert str(config.credentials_path) in repr(events)  # the path is logged, the secret is not
    for path in (config.credentials_path, config.identities_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.root.stat().st_mode) == 0o700
    assert secret in config.credentials_path.read_text()
    logs = tmp_path / "data" / "logs"
    assert (logs / "weed.log").stat().st_size > 0 and (logs / "tansu.log").stat().st_size > 0
    for f in (logs / "weed.log", logs / "tansu.log"):
        assert secret not in f.read_text(errors="replace")
    assert len(cmdlines) == 2 and all(secret.encode() not in c for c in cmdlines)
    for text in (repr(config), repr(d), repr(d.broker), str(config.argv()), str(d.broker.argv())):
        assert secret not in text


async def test_second_start_then_same_credentials_ports_and_log_and_refused_while_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ns = f"t{uuid.uuid4().hex[:10]}"
    sent = bars(30)
    with DurableBroker(data) as first:
        with pytest.raises(ObjectStoreError, match="in use"):  # one store per data dir
            DurableBroker(data).start()
        assert first.object_store.alive and first.broker.alive
        await asyncio.wait_for(ensure_topics(first.bootstrap, [spec(TOPIC)], namespace=ns), 60)
        async with RecordPublisher(first.bootstrap, namespace=ns) as pub:
            await asyncio.wait_for(pub.publish(sent), 60)
        config, bootstrap = first.object_store.config, first.bootstrap
    credentials_file = config.credentials_path.read_bytes()

    second = DurableBroker(data)
    assert second.object_store.config == config  # same credentials, ports, paths
    assert second.object_store.endpoint == config.endpoint and second.bootstrap == bootstrap
    with second:
        assert config.credentials_path.read_bytes() == credentials_file
        ids, high = await read_ids(bootstrap, physical_name(TOPIC, ns), len(sent))
    assert sorted(ids) == sorted(r.event_id for r in sent) and high == len(sent)
