"""Bar checker agent: ``market.bars.raw`` -> ``market.bars``.

Thin: decode + validate (strict codec), dead-letter what fails, forward the
original bytes of good bars unchanged. The data-quality engine hooks in here
(``agents.market.quality``) so that the checked topic only carries bars that
passed decode; findings go to ``market.data_quality``.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.records import Bar

log = structlog.get_logger("agents.market.checker")

NAME = "bars-checker"
BATCH_MAX = 500
BATCH_WAIT_S = 0.005


def register(app: Any, ctx: AgentContext) -> Any:
    src = app.topic(ctx.topic("market.bars.raw"))
    dst = app.topic(ctx.topic("market.bars"))

    out_counter = RECORDS_OUT.labels(NAME, "market.bars")
    latency = PROCESS_LATENCY.labels(NAME)

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def check_bars(stream: Any) -> None:
        # Micro-batches bounded by size and time: faust acks the whole batch after
        # this loop body, i.e. after every forward was handed to the producer
        # (which faust flushes before committing offsets): at-least-once.
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            for event in events:
                bar = await decode_or_dead_letter(ctx, NAME, "market.bars.raw", Bar, event)
                if bar is not None:
                    dst.send_soon(key=bar.key(), value=event.value)
                    out_counter.inc()
            latency.observe(time.perf_counter() - t0)

    return check_bars
