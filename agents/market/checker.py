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

from runtime.agent import AgentContext, decode_message
from runtime.batch_agent import BatchLoop, Output
from topics.records import Bar, DeadLetter
from topics.schema import codec_for

NAME = "bars-checker"
BATCH_MAX = 2_000
BATCH_WAIT_MS = 5

_BAR = codec_for(Bar)
_DL = codec_for(DeadLetter)


def register(app: Any, ctx: AgentContext) -> BatchLoop:
    bars_out = ctx.topic("market.bars")
    deadletter = ctx.topic("deadletter")

    def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Output]:
        outputs: list[Output] = []

        def dead_letter(dl: DeadLetter) -> None:
            outputs.append(Output(deadletter, dl.key(), _DL.encode(dl)))

        for r in records:
            bar = decode_message(
                _BAR,
                consumer=NAME,
                topic="market.bars.raw",
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value,
                ts_event=r.timestamp * 1_000_000 if r.timestamp and r.timestamp > 0 else 0,
                ts_init=ctx.wall_clock,
                dead_letters=dead_letter,
            )
            if bar is not None and r.value is not None:
                outputs.append(Output(bars_out, bar.key(), r.value))
        return outputs

    loop = BatchLoop(
        name=NAME,
        bootstrap=ctx.bootstrap,
        namespace=ctx.namespace,
        group_id=f"{app.conf.id}.{NAME}",
        topics=[ctx.topic("market.bars.raw")],
        handle=handle,
        crash=app.crash,
        max_records=BATCH_MAX,
        within_ms=BATCH_WAIT_MS,
        fetch_wait_ms=app.fetch_wait_ms,
    )
    app.task(loop.run)
    return loop
