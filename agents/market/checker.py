"""Bar checker agent: ``market.bars.raw`` -> ``market.bars``.

Thin: decode + validate (strict codec), dead-letter what fails, forward the
original bytes of good bars unchanged. It runs on the getmany path
(:class:`runtime.batch_agent.BatchLoop`: micro-batches of up to ``BATCH_MAX`` bars
or ``BATCH_WAIT_MS``, forwards sent as a batch, offsets committed in the
background after their acks): at-least-once, and a forwarded bar is the same
bytes under the same key whichever path sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord

from runtime.agent import AgentContext
from runtime.batch_agent import BatchLoop, Output, decode_record
from topics.records import Bar
from topics.schema import codec_for

NAME = "bars-checker"
BATCH_MAX = 2_000
BATCH_WAIT_MS = 5

_BAR = codec_for(Bar)


def register(app: Any, ctx: AgentContext) -> BatchLoop:
    bars_out = ctx.topic("market.bars")
    deadletter = ctx.topic("deadletter")

    def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Output]:
        outputs: list[Output] = []
        for r in records:
            bar = decode_record(
                _BAR,
                r,
                consumer=NAME,
                topic="market.bars.raw",
                wall_clock=ctx.wall_clock,
                deadletter_topic=deadletter,
                outputs=outputs,
            )
            if bar is not None and r.value is not None:
                outputs.append(Output(bars_out, bar.key(), r.value))
        return outputs

    return BatchLoop.hosted(
        app, ctx, name=NAME, inputs=["market.bars.raw"], handle=handle, max_records=BATCH_MAX, within_ms=BATCH_WAIT_MS
    )
