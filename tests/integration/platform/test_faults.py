"""Faults while the platform runs (issue #12): SIGKILL of the object store, of PostgreSQL, and of the whole
platform at once, on the package's one running platform (see conftest.py; each test leaves it running).

What every test checks after its fault, beside the fault's own story: what was acknowledged before it is
still there, the pipeline goes on (new rows), the sink caught up (every distinct record of the checked topics
is a row), and nothing was doubled (:func:`assert_no_duplicates`). Timings are printed as ``observed ...``
lines (``pytest -s``): observations on a shared machine, not benchmarks (docs/recovery.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import defaultdict
from typing import Any

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from topics.catalogue import spec
from topics.records import Fill, OrderUpdate, Record, Signal
from topics.schema import codec_for

from .harness import ROOT, Up, rows, supervisorctl, wait

pytestmark = pytest.mark.integration

#: topics whose every record the checks read back (small enough to read whole), with their record type
#: and event table
CHECKED: dict[str, tuple[type[Record], str]] = {
    "signals": (Signal, "ev_signals"),
    "fills": (Fill, "ev_fills"),
    "orders.updates": (OrderUpdate, "ev_order_updates"),
}


def test_sigkill_of_the_object_store_then_loud_and_nothing_acknowledged_lost(platform: Up) -> None:
    """tansu keeps running while weed is down (its produces and fetches fail and are retried by the
    clients); supervisord restarts weed on the same dir and ports and the same broker serves again."""
    before = asyncio.run(read_topics(platform.info["bootstrap"]))
    signals = rows(platform, "SELECT count(*) FROM ev_signals")
    mark = len(platform.output())
    pid = program_pid(platform, "objectstore")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    wait(lambda: _logged(platform, mark, "program_back", "objectstore"), 120, "the object store back", platform)
    back_s = time.monotonic() - t0
    assert _logged(platform, mark, "program_down", "objectstore")  # loud, in tradeflow up's output
    assert program_pid(platform, "objectstore") != pid  # restarted by the supervisor, not by the test
    status = platform.cli("status")
    assert "outage    objectstore down at" in status.stdout, status.stdout + status.stderr

    wait(lambda: rows(platform, "SELECT count(*) FROM ev_signals") > signals, 240, "new signals", platform)
    flow_s = time.monotonic() - t0
    after = _assert_kept_and_stored(platform, before)
    assert_no_duplicates(platform, after)
    print(f"observed objectstore SIGKILL: back in {back_s:.1f} s, new signals stored {flow_s:.1f} s after the kill")


def test_sigkill_of_postgres_then_loud_no_crash_loop_and_the_sink_catches_up(platform: Up) -> None:
    """The postmaster SIGKILLed: supervisord restarts it (crash recovery from the WAL); the sink retries
    with backoff, workers that need the database crash and are restarted (or wait) without the platform
    calling it a crash loop; nothing is lost or doubled."""
    # the drill starts from a sink that is up and writing (a fault drill before this one may have left it
    # restarting: a sink not writing when the database dies has nothing to retry)
    stored = rows(platform, "SELECT count(*) FROM ev_signals")
    wait(lambda: rows(platform, "SELECT count(*) FROM ev_signals") > stored, 240, "the sink writing", platform)
    before = asyncio.run(read_topics(platform.info["bootstrap"]))
    fills = rows(platform, "SELECT count(*) FROM ev_fills")
    signals = rows(platform, "SELECT count(*) FROM ev_signals")
    mark = len(platform.output())
    sink_log = platform.data_dir / "logs" / "sink.log"
    sink_mark = sink_log.stat().st_size
    pid = program_pid(platform, "postgres")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    wait(lambda: _logged(platform, mark, "program_back", "postgres"), 180, "PostgreSQL back", platform)
    back_s = time.monotonic() - t0
    assert _logged(platform, mark, "program_down", "postgres")
    status = platform.cli("status")
    assert "outage    postgres down at" in status.stdout, status.stdout + status.stderr

    wait(lambda: rows(platform, "SELECT count(*) FROM ev_signals") > signals, 240, "new signals stored", platform)
    flow_s = time.monotonic() - t0
    with open(sink_log, "rb") as f:
        f.seek(sink_mark)
        assert b"sink_db_retry" in f.read()  # the sink said why it was not writing
    after = _assert_kept_and_stored(platform, before)
    assert rows(platform, "SELECT count(*) FROM ev_fills") >= fills
    assert_no_duplicates(platform, after)
    assert platform.proc is not None and platform.proc.poll() is None  # no crash loop stopped the platform
    print(f"observed postgres SIGKILL: back in {back_s:.1f} s, new signals stored {flow_s:.1f} s after the kill")


@pytest.mark.timeout(600)  # a whole restart (up to 240 s) and its checks
def test_sigkill_of_the_whole_platform_then_up_again_keeps_accounts_offsets_and_the_feed(platform: Up) -> None:
    """A power cut: ``tradeflow up``, supervisord and every program SIGKILLed at once. The files they
    leave (platform.json, the lock, postmaster.pid, the supervisor socket) do not block the next start,
    and the platform resumes from what was durable."""
    wait(lambda: rows(platform, "SELECT count(*) FROM ev_fills") > 0, 240, "a fill before the cut", platform)
    dsn = platform.info["dsn"]
    before = asyncio.run(read_topics(platform.info["bootstrap"]))
    state0 = asyncio.run(_durable_state(platform.info["bootstrap"], dsn))
    assert platform.proc is not None
    tree = [psutil.Process(platform.proc.pid), *psutil.Process(platform.proc.pid).children(recursive=True)]
    assert len(tree) >= 12  # up, supervisord, eleven programs (and their children)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived child (a postgres backend) ended by itself
            p.kill()
    t0 = time.monotonic()
    platform.proc.wait(30)
    wait(lambda: not [p for p in tree if _running(p)], 30, "every process of the platform gone", platform)
    assert (platform.data_dir / "run" / "platform.json").exists()  # stale: a power cut cleans nothing up
    assert (platform.data_dir / "pg" / "data" / "postmaster.pid").exists()

    platform.start()
    up_s = time.monotonic() - t0
    assert platform.info["dsn"] == dsn
    state1 = asyncio.run(_durable_state(platform.info["bootstrap"], dsn))
    # consumer offsets and the trading agent's position kept: nothing went back
    for tp, offset in state0["committed"].items():
        assert state1["committed"][tp] >= offset, (tp, offset, state1["committed"][tp])
    for tp, offset in state0["trading_offsets"].items():
        assert state1["trading_offsets"][tp] >= offset, (tp, offset, state1["trading_offsets"][tp])
    assert state1["events_applied"] >= state0["events_applied"]
    assert state1["feed_position"] >= state0["feed_position"]
    # the same accounts, and the portfolio went on from where it was
    assert state1["accounts"] == state0["accounts"]
    fills_applied = "SELECT max((payload->>'fills_applied')::bigint) FROM ev_portfolio_state"
    assert rows(platform, fills_applied) >= state0["fills_applied"]

    signals = rows(platform, "SELECT count(*) FROM ev_signals")
    wait(lambda: rows(platform, "SELECT count(*) FROM ev_signals") > signals, 240, "new signals", platform)
    flow_s = time.monotonic() - t0
    after = _assert_kept_and_stored(platform, before)
    assert_no_duplicates(platform, after)
    assert_feed_without_hole(platform, dsn)
    print(f"observed whole-platform SIGKILL: up again in {up_s:.1f} s, new signals {flow_s:.1f} s after the kill")


# ---------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------


def assert_no_duplicates(platform: Up, topics: dict[str, dict[str, set[bytes]]]) -> None:
    """Nothing doubled, in checks that a redelivery or a re-derivation after a restart would fail (the
    event tables' primary keys alone cannot: a doubled row there would need the same event id).

    - no order filled beyond its quantity, and one content per fill and per order update on the topics
      (an order executed twice, or re-derived differently after a restart, breaks these);
    - one signal per model version and bar, one feature vector per bar, one raw bar per bar and source;
    - the account's latest portfolio: its fills count and positions are the fills stored up to it.
    """
    assert all(len(v) == 1 for v in topics["fills"].values()), "a fill re-derived differently"
    assert all(len(v) == 1 for v in topics["orders.updates"].values()), "an order update re-derived differently"
    for what, sql in (
        (
            "orders filled beyond their quantity",
            "SELECT 1 FROM (SELECT payload->>'client_order_id' AS coid, sum((payload->>'quantity')::float8) AS q "
            "FROM ev_fills GROUP BY 1) f JOIN (SELECT payload->>'client_order_id' AS coid, "
            "max((payload->>'quantity')::float8) AS q FROM ev_order_updates GROUP BY 1) o USING (coid) "
            "WHERE f.q > o.q * (1 + 1e-9)",
        ),
        (
            "signals per model version and bar",
            "SELECT 1 FROM ev_signals GROUP BY payload->>'model_id', payload->>'model_version', "
            "payload->>'symbol', ts_event HAVING count(*) > 1",
        ),
        (
            "feature vectors per bar",
            "SELECT 1 FROM feature_snapshots GROUP BY symbol, timeframe, feature_set_version, bar_open_time "
            "HAVING count(*) > 1",
        ),
        (
            "raw bars per bar and source",
            "SELECT 1 FROM ev_market_bars_raw GROUP BY payload->>'source', payload->>'symbol', "
            "payload->>'timeframe', payload->>'open_time', payload->>'revision' HAVING count(*) > 1",
        ),
    ):
        assert rows(platform, f"SELECT count(*) FROM ({sql}) d") == 0, f"doubled: {what}"
    wait(lambda: asyncio.run(_portfolio_matches_fills(platform.info["dsn"])), 120, "portfolio = fills", platform)


async def _portfolio_matches_fills(dsn: str) -> bool:
    """The latest portfolio snapshot holds exactly the fills stored up to its time (False while the sink
    has not stored them all yet: the caller waits; more fills than it applied never become True)."""
    conn = await asyncpg.connect(dsn)
    try:
        snap = await conn.fetchrow(
            "SELECT payload::jsonb AS p FROM ev_portfolio_state "
            "ORDER BY (payload->>'as_of_ns')::bigint DESC, (payload->>'fills_applied')::bigint DESC LIMIT 1"
        )
        if snap is None:
            return False
        import json

        p = json.loads(snap["p"])
        fills = await conn.fetch(
            "SELECT payload->>'symbol' AS symbol, payload->>'side' AS side, (payload->>'quantity')::float8 AS q "
            "FROM ev_fills WHERE ts_event < $1",  # a fill's time is its bar's open, the snapshot's that bar's close
            int(p["as_of_ns"]),
        )
    finally:
        await conn.close()
    if len(fills) != p["fills_applied"]:
        return False
    held: dict[str, float] = defaultdict(float)
    for f in fills:
        held[f["symbol"]] += f["q"] if f["side"] == "buy" else -f["q"]
    return all(abs(held[s] - p["quantities"].get(s, 0.0)) < 1e-9 for s in {*held, *p["quantities"]})


def _assert_kept_and_stored(platform: Up, before: dict[str, dict[str, set[bytes]]]) -> dict[str, dict[str, set[bytes]]]:
    """Every record read before the fault is still on its topic, and the sink stores every distinct record
    of the checked topics (rows == records)."""
    after = asyncio.run(read_topics(platform.info["bootstrap"]))
    for topic, ids in before.items():
        lost = set(ids) - set(after[topic])
        assert not lost, f"{topic}: {len(lost)} acknowledged records lost, e.g. {sorted(lost)[:3]}"

    def stored() -> bool:
        return all(
            rows(platform, f"SELECT count(*) FROM {table}") >= len(after[topic])
            for topic, (_, table) in CHECKED.items()
        )

    wait(stored, 180, "the sink to store every record read", platform)
    ids = asyncio.run(_missing_rows(platform.info["dsn"], after))
    assert not ids, f"records on the topics without a row: {ids}"
    return after


async def _missing_rows(dsn: str, topics: dict[str, dict[str, set[bytes]]]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for topic, (_, table) in CHECKED.items():
            ids = list(topics[topic])
            have = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE event_id = ANY($1::text[])", ids)
            if have != len(ids):
                out[topic] = len(ids) - int(have)
        return out
    finally:
        await conn.close()


def assert_feed_without_hole(platform: Up, dsn: str) -> None:
    """The stored recorded bars since the start of the live part are exactly the file's rows over that span."""
    from datetime import datetime

    async def span() -> tuple[int, int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT min(open_time), max(open_time), count(*) FROM bars WHERE symbol = 'BTC/USDT' "
                "AND timeframe = '1h' AND open_time >= 1609459200000000000"
            )
            assert row is not None and row[0] is not None
            return int(row[0]), int(row[1]), int(row[2])
        finally:
            await conn.close()

    first, last, stored = asyncio.run(span())
    csv = ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
    expected = sum(
        1
        for line in csv.read_text().splitlines()[1:]
        if first <= int(datetime.fromisoformat(line.split(",", 1)[0]).timestamp()) * 1_000_000_000 <= last
    )
    assert stored == expected


# ---------------------------------------------------------------------------------------------------------
# reading the platform's state
# ---------------------------------------------------------------------------------------------------------


def program_pid(platform: Up, program: str) -> int:
    """The program's pid now, from supervisord (platform.json's may predate a restart)."""
    ctl = supervisorctl(platform, "pid", program)
    return int(ctl.stdout.strip())


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _logged(platform: Up, mark: int, event: str, program: str) -> bool:
    return any(
        f'"{event}"' in line and f'"program": "{program}"' in line for line in platform.output()[mark:].splitlines()
    )


async def read_topics(bootstrap: str) -> dict[str, dict[str, set[bytes]]]:
    """Every record of the checked topics up to their high-water marks: event id -> distinct contents."""
    out: dict[str, dict[str, set[bytes]]] = {t: defaultdict(set) for t in CHECKED}
    tps = [TopicPartition(t, p) for t in CHECKED for p in range(spec(t).partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await _start(consumer)
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        high: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                record_type = CHECKED[tp.topic][0]
                for m in msgs:
                    assert m.value is not None
                    out[tp.topic][codec_for(record_type).decode(m.value).event_id].add(m.value)
            high.update({tp: hw for tp in tps if (hw := consumer.highwater(tp)) is not None and tp not in high})
            if len(high) == len(tps) and all([await consumer.position(tp) >= high[tp] for tp in tps]):
                return {t: dict(ids) for t, ids in out.items()}
        raise AssertionError(f"topics not read to their high-water marks within 120 s: {high}")
    finally:
        await consumer.stop()


async def _start(client: Any) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.start()
            return
        except Exception:  # the broker may be coming back
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _durable_state(bootstrap: str, dsn: str) -> dict[str, Any]:
    """What must survive a power cut: the sink's committed offsets, the trading checkpoint's input
    offsets, the feed's position, the accounts and the latest portfolio's fill count."""
    tps = [TopicPartition(t, p) for t in ("market.bars.raw", "signals", "fills") for p in range(spec(t).partitions)]
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="tradeflow-sink", enable_auto_commit=False)
    await _start(group)
    try:
        committed = {f"{tp.topic}:{tp.partition}": (await group.committed(tp)) or 0 for tp in tps}
    finally:
        await group.stop()
    conn = await asyncpg.connect(dsn)
    try:
        cp = await conn.fetchrow("SELECT offsets, events_applied FROM trading_checkpoints WHERE account = 'paper'")
        assert cp is not None, "no trading checkpoint"
        import json

        offsets = json.loads(cp["offsets"])
        feed = await conn.fetchval("SELECT max(last_open_time_ns) FROM feed_positions")
        accounts = [
            r[0] for r in await conn.fetch("SELECT DISTINCT payload->>'account' FROM ev_portfolio_state ORDER BY 1")
        ]
        fills_applied = await conn.fetchval("SELECT max((payload->>'fills_applied')::bigint) FROM ev_portfolio_state")
    finally:
        await conn.close()
    return {
        "committed": committed,
        "trading_offsets": {f"{t}:{p}": o for t, parts in offsets.items() for p, o in parts.items()},
        "events_applied": int(cp["events_applied"]),
        "feed_position": int(feed or 0),
        "accounts": accounts,
        "fills_applied": int(fills_applied or 0),
    }
