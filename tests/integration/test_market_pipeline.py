"""Market data end to end on the real broker and PostgreSQL:
file import -> market.bars.raw -> checker -> market.bars -> features agent -> features -> Postgres."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import asyncpg
import pytest

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.features.spec import lineage_matches
from agents.market.csv_import import import_csv_file
from ops.embedded.broker import EmbeddedBroker
from ops.jobs.ingest import SAMPLE_DIR, import_file
from runtime.publish import RecordPublisher
from tests.conftest import Procs, wait_until
from topics.records import Bar, FeatureVector, Timeframe
from topics.schema import TS_MIN_NS, codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROWS = 1_500  # per file: enough for warm-up (73 bars), gaps and a quality block


def _subset(src: Path, dst: Path, rows: int) -> Path:
    with src.open() as f:
        dst.write_text("".join(itertools.islice(f, rows + 1)))
    return dst


async def _n(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def test_btc_and_eth_files_when_imported_then_features_in_postgres_equal_replay_and_resolve_to_bars(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path
) -> None:
    files = [
        (
            _subset(SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv", tmp_path / "btc.csv", ROWS),
            "binance",
            "BTC/USDT",
            Timeframe.H1,
        ),
        (
            _subset(SAMPLE_DIR / "gymcrypto_ethusd_30m_2017_2019.csv", tmp_path / "eth.csv", ROWS),
            "gymcrypto",
            "ETH/USD",
            Timeframe.M30,
        ),
    ]
    # What the pipeline must produce: the same pure code, replayed in-process over the same bars.
    expected: dict[str, FeatureVector] = {}
    n_findings = 0
    all_bars: dict[str, Bar] = {}
    for path, venue, symbol, tf in files:
        clock = EventClock()
        pipe = FeaturePipeline(clock)
        for bar in import_csv_file(path, venue=venue, symbol=symbol, timeframe=tf, ts_init=TS_MIN_NS).bars:
            clock.advance(bar.ts_event)  # replay: event time is the clock
            all_bars[bar.event_id] = bar
            out = pipe.on_bar(bar)
            n_findings += len(out.quality)
            if out.features is not None:
                expected[out.features.event_id] = out.features
    assert len(expected) > 2 * (ROWS - 200)
    assert n_findings > 0  # the real BTC file opens with a spike: findings exist and block features

    procs.worker(broker.bootstrap, namespace, "bars-checker", "features")
    procs.sink(broker.bootstrap, namespace, dsn)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        for path, venue, symbol, tf in files:
            rep = await import_file(path, venue=venue, symbol=symbol, timeframe=tf, publisher=pub)
            assert rep.bars == ROWS

    await wait_until(
        lambda: _ge(dsn, "SELECT count(*) FROM feature_snapshots", len(expected)),
        150,
        f"{len(expected)} feature snapshots",
        watch=procs,
    )
    await wait_until(lambda: _ge(dsn, "SELECT count(*) FROM ev_data_quality", n_findings), 30, "quality findings")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT payload::text AS p FROM ev_features")
        got = {fv.event_id: fv for fv in (codec_for(FeatureVector).decode(r["p"]) for r in rows)}
        assert set(got) == set(expected)
        for eid, fv in expected.items():
            assert got[eid].values == fv.values, eid  # bit-identical: the same engine code
            assert got[eid].lineage_id == fv.lineage_id
        # lineage resolves back to the stored bars: fetch the window from Postgres, recompute the digest
        for fv in list(expected.values())[:: max(1, len(expected) // 25)]:
            from agents.features.spec import parse_lineage_id

            ref = parse_lineage_id(fv.lineage_id)
            bar_rows = await conn.fetch(
                "SELECT event_id FROM bars WHERE venue=$1 AND symbol=$2 AND timeframe=$3 "
                "AND open_time BETWEEN $4 AND $5 ORDER BY open_time",
                fv.venue,
                fv.symbol,
                fv.timeframe.value,
                ref.first_open_time,
                ref.last_open_time,
            )
            window = [all_bars[r["event_id"]] for r in bar_rows]
            assert lineage_matches(fv.lineage_id, window)
        dq = await conn.fetch("SELECT check_name, ref_time FROM data_quality WHERE symbol = 'BTC/USDT'")
        checks = {r["check_name"] for r in dq}
        assert "spike_range" in checks  # 2017-08-17 04:00, the bogus opening candle
    finally:
        await conn.close()


async def _ge(dsn: str, sql: str, n: int) -> bool:
    return await _n(dsn, sql) >= n


async def test_full_binance_file_when_imported_then_partial_last_candle_is_reported(
    broker: EmbeddedBroker, namespace: str
) -> None:
    from datetime import UTC, datetime

    from aiokafka import AIOKafkaConsumer

    from topics.catalogue import physical_name
    from topics.records import DataQualityEvent

    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        rep = await import_file(
            SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv",
            venue="binance",
            symbol="BTC/USDT",
            timeframe=Timeframe.H1,
            publisher=pub,
        )
    assert rep.bars == 42_287 and rep.partial_last == 1
    cons = AIOKafkaConsumer(
        physical_name("market.data_quality", namespace),
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await cons.start()
    try:
        batch = await cons.getmany(timeout_ms=5000)
    finally:
        await cons.stop()
    found = [codec_for(DataQualityEvent).decode(m.value) for msgs in batch.values() for m in msgs]
    (partial,) = [f for f in found if f.check == "partial"]
    assert partial.ref_time == int(datetime(2022, 6, 15, tzinfo=UTC).timestamp()) * 1_000_000_000


async def test_feed_that_stops_when_stale_check_is_on_then_stale_feed_finding_is_stored(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _subset(SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv", tmp_path / "btc.csv", 20)
    monkeypatch.setenv("TRADEFLOW_STALE_CHECK_S", "1")
    procs.worker(broker.bootstrap, namespace, "features")
    procs.sink(broker.bootstrap, namespace, dsn, "--topics", "market.data_quality")
    bars = import_csv_file(path, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(list(bars), topic="market.bars")  # 2017 bars: no new bar for years by the wall clock

    async def stale() -> bool:
        return await _n(dsn, "SELECT count(*) FROM data_quality WHERE check_name = 'stale_feed'") >= 1

    await wait_until(stale, 60, "a stale_feed finding", watch=procs)
    rows = await _fetch_one(dsn, "SELECT symbol, blocking FROM data_quality WHERE check_name = 'stale_feed'")
    assert rows["symbol"] == "BTC/USDT" and rows["blocking"] is True


async def _fetch_one(dsn: str, sql: str) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(sql)
        assert row is not None
        return row
    finally:
        await conn.close()


async def test_features_worker_sigkilled_mid_stream_then_restart_restores_state_and_no_vector_is_lost(
    broker: EmbeddedBroker, namespace: str, procs: Procs
) -> None:
    """The getmany features agent killed twice while bars stream in (state on its changelog topic, offsets
    committed after outputs and state): the vectors on the topic are the in-process replay's, every one
    of them, with the same values (a state restored wrong, or skipped, would change or lose some)."""
    from aiokafka import AIOKafkaConsumer

    from topics.catalogue import physical_name

    bars = list(
        import_csv_file(
            SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv",
            venue="binance",
            symbol="BTC/USDT",
            timeframe=Timeframe.H1,
            ts_init=TS_MIN_NS,
        ).bars
    )[:3_000]
    clock = EventClock()
    pipe = FeaturePipeline(clock)
    expected: dict[str, FeatureVector] = {}
    for bar in bars:
        clock.advance(bar.ts_event)
        out = pipe.on_bar(bar)
        if out.features is not None:
            expected[out.features.event_id] = out.features

    topic = physical_name("features", namespace)
    got: dict[str, set[tuple[float, ...]]] = {}
    cons = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest")
    await cons.start()

    async def read(at_least: int) -> bool:
        for msgs in (await cons.getmany(timeout_ms=200)).values():
            for m in msgs:
                fv = codec_for(FeatureVector).decode(m.value)
                got.setdefault(fv.event_id, set()).add(tuple(fv.values))
        return len(got) >= at_least

    try:
        worker = procs.worker(broker.bootstrap, namespace, "features")
        async with RecordPublisher(broker.bootstrap, namespace) as pub:
            for part in range(3):
                chunk = bars[part * 1_000 : (part + 1) * 1_000]
                for i in range(0, len(chunk), 100):  # a stream, not one burst
                    await pub.publish(chunk[i : i + 100], topic="market.bars")
                if part == 0:  # after the chunk's vectors came out (its state saved, or not yet)
                    await wait_until(lambda: read(800), 60, "vectors of the first chunk", watch=procs)
                if part < 2:  # the second time right after publishing: mid-chunk, uncommitted inputs
                    worker.kill()
                    worker = procs.worker(broker.bootstrap, namespace, "features")
        await wait_until(lambda: read(len(expected)), 120, f"all {len(expected)} vectors", watch=procs)
        await asyncio.sleep(1.0)
        await read(0)
    finally:
        await cons.stop()
    assert "changelog_restored" in worker.output()
    assert set(got) == set(expected), "a vector lost, or one the replay does not make"
    for eid, fv in expected.items():
        assert got[eid] == {tuple(fv.values)}, eid  # redelivered inputs re-derive the same values
