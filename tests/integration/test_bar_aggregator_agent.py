"""Ticks on the real broker -> bar-aggregator agent -> bars in Postgres, equal to the engine in-process."""

from __future__ import annotations

import random

import asyncpg
import pytest

from agents.market.bars import AggregatorConfig, BarAggregator
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import Procs, wait_until
from topics.records import AggressorSide, Bar, Tick, Timeframe
from topics.schema import codec_for
from topics.units import NS_PER_MINUTE
from topics.units import NS_PER_SECOND as S

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = 1_700_000_040_000_000_000 // NS_PER_MINUTE * NS_PER_MINUTE


def _ticks(n: int) -> list[Tick]:
    rng = random.Random(3)
    out, px = [], 37_000.0
    for i in range(n):
        px *= 1 + rng.gauss(0, 2e-4)
        ts = T0 + i * 500_000_000  # two trades a second over n/2 seconds
        out.append(
            builders.tick(
                trade_id=str(10_000 + i),
                ts=ts,
                price=round(px, 2),
                quantity=round(rng.uniform(0.001, 0.5), 6),
                aggressor=rng.choice([AggressorSide.BUY, AggressorSide.SELL]),
            )
        )
    return out


async def test_ticks_when_aggregated_by_the_agent_then_closed_bars_in_postgres_equal_the_engine(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    ticks = _ticks(720)  # six minutes
    # the tick that moves the watermark past the last minute's close
    closer = builders.tick(trade_id="closer", ts=T0 + 400 * S, price=37_000.0, quantity=0.01)

    class _Clock:
        now = 0

        def now_ns(self) -> int:
            return self.now

    clock = _Clock()
    engine = BarAggregator(AggregatorConfig(timeframes=(Timeframe.M1,)), clock)
    expected: list[Bar] = []
    for t in [*ticks, closer]:
        clock.now = max(clock.now, t.ts_event)
        expected.extend(engine.on_tick(t).bars)
    assert len(expected) == 6

    procs.worker(broker.bootstrap, namespace, "bar-aggregator", "bars-checker")
    procs.sink(broker.bootstrap, namespace, dsn, "--topics", "market.bars", "deadletter")
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish([*ticks, closer])

    async def stored() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM bars")) >= len(expected)
        finally:
            await conn.close()

    await wait_until(stored, 90, "six 1m bars", watch=procs)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload::text AS p FROM ev_market_bars ORDER BY ts_event")
    finally:
        await conn.close()
    got = [codec_for(Bar).decode(r["p"]) for r in rows]
    key = lambda b: (b.open_time, b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.event_id)  # noqa: E731
    assert [key(b) for b in got] == [key(b) for b in expected]
    assert sum(b.volume for b in got) == pytest.approx(sum(t.quantity for t in ticks))
