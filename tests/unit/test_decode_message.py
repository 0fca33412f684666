"""``runtime.agent.decode_message``: the one decode-or-dead-letter path of the agents and the sink."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from runtime.agent import decode_message, decode_or_dead_letter
from storage.sink import SinkConfig, TopicSink
from topics.records import Bar, DeadLetter, Timeframe
from topics.schema import ErrorReason, RecordError, codec_for
from topics.units import NS_PER_HOUR, NS_PER_MS, NS_PER_SECOND

T0 = 1_700_000_000 * NS_PER_SECOND // NS_PER_HOUR * NS_PER_HOUR
BAR = Bar.new(
    ts_init=T0,
    ts_event=T0 + NS_PER_HOUR,
    venue="binance",
    symbol="BTC/USDT",
    timeframe=Timeframe.H1,
    open_time=T0,
    open=100.0,
    high=101.0,
    low=99.0,
    close=100.5,
    volume=1.0,
    trade_count=None,
    is_closed=True,
    revision=0,
    source="test",
)
WALL = 1_800_000_000 * NS_PER_SECOND
BROKER_MS = 1_700_000_123_000  # whole seconds: a faust timestamp (float seconds) holds it exactly


def _count(consumer: str, topic: str, reason: str) -> float:
    labels = {"consumer": consumer, "topic": topic, "reason": reason}
    return REGISTRY.get_sample_value("tradeflow_dead_letters_total", labels) or 0.0


def _decode(value: bytes | None, **kw: Any) -> tuple[Bar | None, list[DeadLetter]]:
    dead: list[DeadLetter] = []
    rec = decode_message(
        codec_for(Bar),
        consumer="c",
        topic="market.bars",
        partition=2,
        offset=7,
        key=b"k",
        value=value,
        ts_event=5,
        ts_init=lambda: 9,
        dead_letters=dead.append,
        **kw,
    )
    return rec, dead


def test_valid_value_then_record_and_no_dead_letter() -> None:
    assert _decode(codec_for(Bar).encode(BAR)) == (BAR, [])


@pytest.mark.parametrize(
    ("value", "reason"), [(None, "invalid_value"), (b"{bad", "invalid_json"), (b"[]", "not_an_object")]
)
def test_bad_value_then_dead_letter_with_reason_bytes_and_coordinates(value: bytes | None, reason: str) -> None:
    before = _count("c", "market.bars", reason)
    rec, dead = _decode(value)
    assert rec is None and len(dead) == 1
    dl = dead[0]
    assert (dl.consumer, dl.source_topic, dl.source_partition, dl.source_offset, dl.reason) == (
        "c",
        "market.bars",
        2,
        7,
        reason,
    )
    assert (dl.original_key_b64, dl.original_size) == ("aw==", len(value or b""))
    assert _count("c", "market.bars", reason) == before + 1


def test_error_outside_bad_input_then_raised_not_dead_lettered() -> None:
    class Broken:
        def decode(self, _: bytes) -> Bar:
            raise KeyError("bug")

    dead: list[DeadLetter] = []
    kw: dict[str, Any] = {
        "consumer": "c",
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "key": None,
        "value": b"{}",
        "ts_event": 0,
        "ts_init": lambda: 0,
        "dead_letters": dead.append,
    }
    with pytest.raises(KeyError):
        decode_message(Broken(), bad_input=RecordError, **kw)  # type: ignore[arg-type]
    assert decode_message(Broken(), **kw) is None  # type: ignore[arg-type]
    assert dead[0].reason == ErrorReason.INVALID_VALUE.value and dead[0].detail == "KeyError: 'bug'"


def test_agent_and_sink_then_same_dead_letter_for_same_message() -> None:
    sent: list[DeadLetter] = []

    class Ctx:
        wall_clock = staticmethod(lambda: WALL)

        async def dead_letter(self, dl: DeadLetter) -> None:
            sent.append(dl)

    msg = SimpleNamespace(partition=1, offset=3, key=b"k", value=b"{bad", timestamp=BROKER_MS / 1000)
    got = asyncio.run(decode_or_dead_letter(Ctx(), "sink", "market.bars", Bar, SimpleNamespace(message=msg)))  # type: ignore[arg-type]
    assert got is None and len(sent) == 1

    sink = TopicSink(
        SinkConfig(bootstrap="127.0.0.1:1", dsn="postgresql://unused/x", topics=("market.bars",)), wall_ns=lambda: WALL
    )
    physical = next(iter(sink._decoders))
    rec = ConsumerRecord(physical, 1, 3, BROKER_MS, 0, b"k", b"{bad", None, 4, 4, ())
    decoded = sink.decode({TopicPartition(physical, 1): [rec]})
    assert decoded.dead == sent and not any(decoded.rows.values())
    assert sent[0].ts_event == BROKER_MS * NS_PER_MS and sent[0].ts_init == WALL
