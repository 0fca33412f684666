"""Producing records to catalogued topics (the edge where records become bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from ops.metrics import RECORDS_OUT
from topics.catalogue import BY_NAME, physical_name
from topics.schema import Record, codec_for


class RecordPublisher:
    """Publishes records to the topic the catalogue assigns to their type.

    ``publish`` returns once the broker has acknowledged every record
    (acks=all), so a caller can checkpoint after it returns.
    """

    def __init__(self, bootstrap: str, namespace: str = "", name: str = "publisher", linger_ms: int = 5) -> None:
        self.namespace = namespace
        self.name = name
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )

    async def start(self) -> RecordPublisher:
        await self.producer.start()
        return self

    async def stop(self) -> None:
        await self.producer.stop()

    async def __aenter__(self) -> RecordPublisher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, records: Sequence[Record], topic: str | None = None) -> None:
        if not records:
            return
        name = topic or _default_topic(type(records[0]))
        physical = physical_name(name, self.namespace)
        codec = codec_for(type(records[0]))
        send = self.producer.send
        futs = [await send(physical, codec.encode(r), key=r.key()) for r in records]
        await asyncio.gather(*futs)
        RECORDS_OUT.labels(self.name, name).inc(len(records))

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Send bytes as they are (tests and tools that inject arbitrary input)."""
        await (await self.producer.send(physical_name(topic, self.namespace), value, key=key))


def _default_topic(cls: type[Record]) -> str:
    candidates = [t.name for t in BY_NAME.values() if t.record is cls]
    if len(candidates) != 1:
        raise ValueError(f"{cls.__name__} goes to several topics {candidates}: pass topic=")
    return candidates[0]
