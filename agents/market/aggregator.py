"""Bar aggregator agent: ``market.ticks`` -> ``market.bars.raw``.

Thin: decode (or dead-letter), :class:`~agents.market.bars.BarAggregator`
(pure, event-time watermark per (venue, symbol)), send. Ticks are keyed by
symbol, so one symbol's ticks stay in order on one worker: scale by
partitions. Late ticks past the grace window produce revised bars; ticks past
the maximum lateness and duplicates are counted (``dropped``), not silently
lost. Timeframes come from ``TRADEFLOW_BAR_TIMEFRAMES`` (default ``1m``).
At-least-once without losing open bars: the aggregator's open bars live in
memory, so a tick is acknowledged (its offset becomes committable) only once
every bar it belongs to is final, i.e. the symbol's event time has passed the
bar's close + grace + max lateness. After a crash the unacknowledged ticks are
redelivered and rebuild those bars; bars re-emitted that way carry the same
identity, hence the same event id, and dedupe downstream.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from agents.clock import EventClock
from agents.market.bars import AggregatorConfig, BarAggregator
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.env import ConfigError, env_list
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.records import Bar, Tick, Timeframe
from topics.schema import codec_for

NAME = "bar-aggregator"

TICKS_DROPPED = Counter("tradeflow_ticks_dropped_total", "Ticks not aggregated", ["reason"])


def bar_timeframes(environ: Mapping[str, str] | None = None) -> tuple[Timeframe, ...]:
    """``TRADEFLOW_BAR_TIMEFRAMES`` (comma list, default ``1m``); ConfigError names a bad timeframe."""
    names = env_list("TRADEFLOW_BAR_TIMEFRAMES", ("1m",), environ)
    try:
        return tuple(Timeframe(t) for t in names)
    except ValueError as exc:
        raise ConfigError(f"TRADEFLOW_BAR_TIMEFRAMES: {exc}") from None


def register(app: Any, ctx: AgentContext) -> Any:
    tfs = bar_timeframes()
    clock = EventClock()  # ts_init of emitted bars = newest tick event time (deterministic)
    engine = BarAggregator(AggregatorConfig(timeframes=tfs), clock)
    src = app.topic(ctx.topic("market.ticks"))
    dst = app.topic(ctx.topic("market.bars.raw"))
    codec = codec_for(Bar)
    out = RECORDS_OUT.labels(NAME, "market.bars.raw")
    latency = PROCESS_LATENCY.labels(NAME)

    hold_ns = max(tf.nanos for tf in tfs) + engine.config.grace_ns + engine.config.max_lateness_ns
    held: deque[tuple[Any, tuple[str, str], int]] = deque()  # (event, stream, release at symbol time)
    newest: dict[tuple[str, str], int] = {}

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def aggregate(stream: Any) -> None:
        async for event in stream.noack().events():
            t0 = time.perf_counter()
            tick = await decode_or_dead_letter(ctx, NAME, "market.ticks", Tick, event)
            if tick is None:
                await stream.ack(event)  # dead-lettered: nothing to hold
                continue
            key = (tick.venue, tick.symbol)
            newest[key] = max(newest.get(key, tick.ts_event), tick.ts_event)
            clock.advance(tick.ts_event)
            res = engine.on_tick(tick)
            for bar in res.bars:
                dst.send_soon(key=bar.key(), value=codec.encode(bar))
                out.inc()
            for d in res.dropped:
                TICKS_DROPPED.labels(d.reason.value).inc()
            held.append((event, key, tick.ts_event + hold_ns))
            while held and newest[held[0][1]] >= held[0][2]:
                await stream.ack(held.popleft()[0])
            latency.observe(time.perf_counter() - t0)

    return aggregate
