"""Producing records to catalogued topics (the edge where records become bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from runtime.broker import client_security
from runtime.metrics import RECORDS_OUT
from topics.catalogue import DEFAULT_TOPIC, physical_name
from topics.schema import Record, codec_for


class RecordPublisher:
    """Publishes records to the topic the catalogue assigns to their type.

    ``publish`` returns once the broker has acknowledged every record
    (acks=all), so a caller can checkpoint after it returns.
    """

    def __init__(self, bootstrap: str, namespace: str = "", name: str = "publisher", linger_ms: int = 5) -> None:
        self.bootstrap = bootstrap
        self.namespace = namespace
        self.name = name
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("RecordPublisher not started")
        return self._producer

    async def start(self) -> RecordPublisher:
        # Created here, not in __init__: an unstarted publisher holds no client to leak.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
            **client_security(),
        )
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()
            self._producer = None
            raise
        return self

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> RecordPublisher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, records: Sequence[Record], topic: str | None = None) -> None:
        if not records:
            return
        name = topic or DEFAULT_TOPIC[type(records[0])]
        physical = physical_name(name, self.namespace)
        codec = codec_for(type(records[0]))
        send = self.producer.send
        futs = [await send(physical, codec.encode(r), key=r.key()) for r in records]
        await asyncio.gather(*futs)
        RECORDS_OUT.labels(self.name, name).inc(len(records))

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Send bytes as they are (tests and tools that inject arbitrary input)."""
        await (await self.producer.send(physical_name(topic, self.namespace), value, key=key))
