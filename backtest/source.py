"""Bars for a replay straight from the recorded ``market.bars`` topic, in large batches.

:func:`read_topic_bars` assigns every partition of the (namespaced) topic,
reads each from its first retained offset to the high-water mark that fetch
responses report (tansu's ``end_offsets`` can be wrong, the fetch high-water
mark is not), with big fetches (``max_records`` per ``getmany``), and keeps
the closed bars of the wanted symbols and timeframe with
``start_ns <= open_time < end_ns``. There is no per-event round trip.

Nothing is dropped silently: a message that does not decode as a
:class:`~topics.records.Bar` is counted in :class:`TopicRead` (the sink has already
dead-lettered it). Revisions and redeliveries are resolved by the replay
(:func:`backtest.replay.order_bars`: the highest revision per key, the rule of the ``bars``
projection), so a replay from the topic and one from Postgres see the same bars. Which
bars come from the topic and which from Postgres is decided by :mod:`backtest.runs`.

Design: docs/replay.md#bars-from-the-topic
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.broker import client_security
from runtime.errors import Retriable
from topics.catalogue import physical_name
from topics.records import Bar, Timeframe
from topics.schema import RecordError, codec_for

__all__ = ["BrokerReadError", "TopicRead", "read_topic_bars"]

_BATCH = 50_000


class BrokerReadError(Retriable, RuntimeError):
    """The topic could not be read to its end in time (broker gone or stuck)."""


@dataclass(slots=True)
class TopicRead:
    bars: list[Bar] = field(default_factory=list)
    messages: int = 0
    undecodable: int = 0
    partitions: int = 0


async def read_topic_bars(
    bootstrap: str,
    namespace: str,
    symbols: Sequence[str],
    timeframe: Timeframe,
    start_ns: int,
    end_ns: int,
    *,
    topic: str = "market.bars",
    timeout_s: float = 60.0,
) -> TopicRead:
    """Every matching bar the topic holds (module docstring); raises :class:`BrokerReadError`."""
    name = physical_name(topic, namespace)
    wanted = frozenset(symbols)
    codec = codec_for(Bar)
    out = TopicRead()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **client_security(),
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(name) or set()
        if not parts:
            await consumer.topics()  # refresh metadata once
            parts = consumer.partitions_for_topic(name) or set()
        if not parts:
            raise BrokerReadError(f"topic {name!r} does not exist on {bootstrap}")
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        out.partitions = len(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = set(tps)
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerReadError(f"{name}: {len(pending)} partitions not read to their end in {timeout_s}s")
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=_BATCH)
            for msgs in batch.values():
                for m in msgs:
                    out.messages += 1
                    try:
                        bar = codec.decode(m.value or b"")
                    except RecordError:
                        out.undecodable += 1
                        continue
                    if (
                        bar.symbol in wanted
                        and bar.timeframe is timeframe
                        and bar.is_closed
                        and start_ns <= bar.open_time < end_ns
                    ):
                        out.bars.append(bar)
            for tp in list(pending):
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out
