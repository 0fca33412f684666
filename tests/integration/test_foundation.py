"""Foundation on real parts: tansu broker, PostgreSQL, faust worker, sink processes."""

from __future__ import annotations

import asyncio
import random
import urllib.request

import asyncpg
import orjson
import pytest

from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import Procs, wait_until
from tests.factories import sample
from topics.catalogue import TOPICS
from topics.records import Bar
from topics.schema import codec_for
from topics.units import NS_PER_HOUR as H

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T0 = 1_600_000_000_000_000_000 // H * H


def make_bars(n: int, symbol: str = "BTC/USDT", start: int = T0, revision: int = 0) -> list[Bar]:
    out = []
    for i in range(n):
        px = 100.0 + (i % 97) * 0.5
        out.append(
            builders.bar(
                symbol=symbol,
                open_time=start + i * H,
                open=px,
                high=px + 1.0,
                low=px - 1.0,
                close=px + 0.25,
                volume=float(i % 7),
                trade_count=i,
                revision=revision,
                ts_init=start,
            )
        )
    return out


async def count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_records_of_every_topic_when_sunk_then_rows_equal_what_was_produced(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    rng = random.Random(7)
    produced = {t.name: [sample(t.record, rng) for _ in range(25)] for t in TOPICS}
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        for name, recs in produced.items():
            await pub.publish(recs, topic=name)
    total = sum(len(v) for v in produced.values())

    async def all_rows() -> bool:
        q = " + ".join(f"(SELECT count(*) FROM {t.table})" for t in TOPICS)
        return await count(dsn, f"SELECT {q}") >= total

    await wait_until(all_rows, 60, f"{total} rows in the event tables")
    conn = await asyncpg.connect(dsn)
    try:
        for t in TOPICS:
            rows = await conn.fetch(f"SELECT event_id, payload::text AS p FROM {t.table}")
            got = {r["event_id"]: codec_for(t.record).decode(r["p"]) for r in rows}
            assert got == {r.event_id: r for r in produced[t.name]}, t.name
        assert await conn.fetchval("SELECT count(*) FROM bars") == 25  # projection of market.bars
    finally:
        await conn.close()


async def test_bars_through_checker_agent_when_sunk_then_postgres_equals_input(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    bars = make_bars(2_000) + make_bars(500, symbol="ETH/USDT")
    procs.worker(broker.bootstrap, namespace, "bars-checker")
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars.raw")
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM bars", len(bars)), 90, "all bars projected")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload::text AS p FROM ev_market_bars")
        assert sorted((codec_for(Bar).decode(r["p"]) for r in rows), key=lambda b: b.event_id) == sorted(
            bars, key=lambda b: b.event_id
        )
        closes = await conn.fetch("SELECT symbol, open_time, close FROM bars")
        assert {(r["symbol"], r["open_time"]): r["close"] for r in closes} == {
            (b.symbol, b.open_time): b.close for b in bars
        }
    finally:
        await conn.close()


async def _ge(dsn: str, sql: str, n: int) -> bool:
    return await count(dsn, sql) >= n


async def test_sink_killed_mid_stream_when_restarted_then_every_record_stored_exactly_once(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    n = 60_000
    bars = make_bars(n)
    sink = procs.sink(broker.bootstrap, namespace, dsn, "--topics", "market.bars")
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars")
    # kill -9 while it is part-way through
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_market_bars", 1), 60, "sink started writing")
    sink.kill()
    at_kill = await count(dsn, "SELECT count(*) FROM ev_market_bars")
    assert 0 < at_kill < n, f"kill must land mid-stream, had {at_kill}"
    procs.sink(broker.bootstrap, namespace, dsn, "--topics", "market.bars")
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_market_bars", n), 90, "all rows after restart")
    await asyncio.sleep(1.0)  # any redelivered tail has landed by now
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ev_market_bars") == n
        ids = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM ev_market_bars")}
        assert ids == {b.event_id for b in bars}
        assert await conn.fetchval("SELECT count(*) FROM bars") == n
    finally:
        await conn.close()


async def test_checker_worker_killed_mid_stream_when_restarted_then_nothing_lost_nothing_doubled(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    n = 60_000  # the getmany checker forwards ~30k bars/s: enough that the kill lands mid-stream
    bars = make_bars(n)
    worker = procs.worker(broker.bootstrap, namespace, "bars-checker")
    procs.sink(broker.bootstrap, namespace, dsn, "--topics", "market.bars")
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(bars, topic="market.bars.raw")
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_market_bars", 1), 60, "checker forwarding")
    worker.kill()
    at_kill = await count(dsn, "SELECT count(*) FROM ev_market_bars")
    assert at_kill < n, "kill must land mid-stream"
    procs.worker(broker.bootstrap, namespace, "bars-checker")
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_market_bars", n), 120, "all bars after restart")
    await asyncio.sleep(1.0)
    assert await count(dsn, "SELECT count(*) FROM ev_market_bars") == n


def _bar_dict(i: int, **overrides: object) -> dict[str, object]:
    d = codec_for(Bar).to_dict(make_bars(1, start=T0 + i * H)[0])
    d.update(overrides)
    return d


MALFORMED: list[tuple[str, bytes | None]] = [
    ("invalid_json", b"{this is not json"),
    ("not_an_object", b'["a", 1]'),
    ("wrong_type", orjson.dumps(_bar_dict(1001, open="100.5"))),
    ("not_finite", orjson.dumps(_bar_dict(1002)).replace(b'"high":', b'"high":NaN,"x":')),
    ("not_finite", orjson.dumps(_bar_dict(1003)).replace(b'"open":', b'"open":1e999,"x":')),
    ("out_of_range", orjson.dumps(_bar_dict(1004, low=-5.0))),
    ("unknown_enum", orjson.dumps(_bar_dict(1005, timeframe="2h"))),
    ("missing_field", orjson.dumps({k: v for k, v in _bar_dict(1006).items() if k != "volume"})),
    ("oversize", orjson.dumps(_bar_dict(1007, source="z" * 400_000))),
    ("schema_version", orjson.dumps(_bar_dict(1008, schema_version=99))),
    ("bad_timestamp", orjson.dumps(_bar_dict(1009, open_time=1))),
    ("invalid_value", None),  # tombstone: a null value
]


async def test_malformed_corpus_when_consumed_then_dead_lettered_counted_and_good_records_all_stored(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    good = make_bars(300)
    worker = procs.worker(broker.bootstrap, namespace, "bars-checker")
    sink = procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        # interleave: good, bad, good, bad, ... on the same key/partition
        for i, (_reason, payload) in enumerate(MALFORMED):
            await pub.publish(good[i * 20 : (i + 1) * 20], topic="market.bars.raw")
            await pub.send_raw("market.bars.raw", payload, key=b"BTC/USDT|1h")
        await pub.publish(good[len(MALFORMED) * 20 :], topic="market.bars.raw")

    checker_dl = "SELECT count(*) FROM dead_letters WHERE consumer = 'bars-checker'"
    await wait_until(lambda: _ge(dsn, checker_dl, len(MALFORMED)), 90, "every malformed message dead-lettered")
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_market_bars", len(good)), 60, "good bars stored")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT reason, original, source_topic, source_offset FROM dead_letters WHERE consumer='bars-checker'"
        )
        assert sorted(r["reason"] for r in rows) == sorted(r for r, _ in MALFORMED)
        originals = {bytes(r["original"]) for r in rows}
        assert originals == {p or b"" for _, p in MALFORMED}  # the original bytes, unmodified
        assert all(r["source_topic"] == "market.bars.raw" for r in rows)
        # the sink guards Postgres the same way: none reached the raw table either
        assert await conn.fetchval("SELECT count(*) FROM ev_market_bars_raw") == len(good)
        assert await conn.fetchval("SELECT count(*) FROM ev_market_bars") == len(good)
        assert await conn.fetchval("SELECT count(*) FROM dead_letters WHERE consumer='sink'") == len(MALFORMED)
        payloads = [r["p"] for r in await conn.fetch("SELECT payload::text AS p FROM ev_market_bars")]
        assert {codec_for(Bar).decode(p).event_id for p in payloads} == {b.event_id for b in good}
    finally:
        await conn.close()
    assert worker.alive and sink.alive, "bad input must never crash a worker"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker.extra['web_port']}/metrics", timeout=5).read().decode()
    for reason in {r for r, _ in MALFORMED}:
        line = f'tradeflow_dead_letters_total{{consumer="bars-checker",reason="{reason}",topic="market.bars.raw"}}'
        assert line in metrics, reason


async def test_broker_restarted_empty_when_workers_run_then_they_stop_loudly(
    namespace: str, dsn: str, procs: Procs
) -> None:
    from runtime.broker import ensure_topics

    b = EmbeddedBroker().start()
    try:
        await ensure_topics(b.bootstrap, namespace=namespace)
        worker = procs.worker(b.bootstrap, namespace, "bars-checker")
        sink = procs.sink(b.bootstrap, namespace, dsn)
        await wait_until(lambda: _true(worker.alive and "sink_started" in sink.output()), 60, "sink up")
        await asyncio.sleep(3)
        port = b.port
        b.stop()
        b = EmbeddedBroker(port=port).start()  # same address, memory engine: no topics, no offsets
        await wait_until(lambda: _true(not sink.alive and not worker.alive), 60, "both workers stopped")
        assert sink.popen is not None and sink.popen.returncode == 3
        assert worker.popen is not None and worker.popen.returncode != 0
        assert "broker_lost" in sink.output()
        assert "broker_lost" in worker.output() or "BrokerLost" in worker.output()
    finally:
        b.stop()


async def _true(v: bool) -> bool:
    return v
