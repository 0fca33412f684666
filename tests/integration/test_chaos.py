"""Chaos drills on the embedded default: real tansu, real PostgreSQL, real ccxt, real CLI processes.

Each drill that breaks infrastructure breaks its OWN instance (a dedicated EmbeddedPostgres or
EmbeddedBroker), never the session fixtures other tests share.

1. database down mid-stream: the sink backs off (log + metric), stays up, commits no offsets,
   and after the restart every record is stored exactly once;
2. exchange errors and jitter: ccxt against a local HTTP venue that answers with recorded
   Binance error bodies, random latency, timeouts and dropped connections; retries stay
   within ``max_attempts`` with one client order id, then a classified reject, or ``unknown``
   (still in flight) when the order may have landed, until a query by client order id finds it;
   a restart fetches back the fill of an order placed before the crash;
3. broker lost: the broker process is SIGKILLed under a trading worker and a sink and an empty
   one comes back on the same address (also with its topics recreated at once, which only the
   watchdog's committed-offset marker can tell); both exit non-zero with a critical
   ``broker_lost`` within a bound, and no order appears afterwards;
4. degraded model: degraded backtest evidence -> the real ``tradeflow gates evaluate`` fails
   the gates -> the governance worker rolls the candidate back.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from ops.embedded.broker import EmbeddedBroker, free_port
from ops.embedded.postgres import EmbeddedPostgres
from runtime.broker import ensure_topics
from runtime.publish import RecordPublisher
from storage.migrate import migrate_dsn
from storage.sink import SinkConfig, TopicSink
from tests.conftest import Proc, Procs, wait_until
from tests.integration.test_foundation import make_bars
from topics.catalogue import physical_name, spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def metric(port: int, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in scrape(port).items() if n == name and want <= set(lab))


def log_events(proc: Proc) -> list[dict[str, Any]]:
    """The JSON log lines of a process (structlog renders one object per line)."""
    out = []
    for line in proc.output().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def fetchval(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on the catalogue ``topic`` (namespaced physical name).

    ``committed()`` works on tansu; listing a group's offsets breaks the connection.
    """
    physical, partitions = topic, spec(topic.split(".", 1)[1]).partitions
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(physical, p)) or 0 for p in range(partitions)])
    finally:
        await consumer.stop()


async def _ge_committed(bootstrap: str, group: str, topic: str, n: int) -> bool:
    return await committed_total(bootstrap, group, topic) >= n


async def _true(v: bool) -> bool:
    return v


# ---------------------------------------------------------------------------
# 1. database slow / down
# ---------------------------------------------------------------------------


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server only this drill uses: its data dir survives stop/start (not a temp cluster)."""
    pg = EmbeddedPostgres(data_dir=tmp_path / "pg" / "data", persistent=False, database="chaos")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


async def test_database_down_mid_stream_when_restarted_then_sink_backed_off_and_stored_everything_once(
    broker: EmbeddedBroker, namespace: str, own_pg: EmbeddedPostgres, procs: Procs
) -> None:
    dsn = own_pg.dsn
    await migrate_dsn(dsn)
    group, mport = f"chaos-sink-{namespace}", free_port()
    topic = physical_name("market.bars", namespace)
    sink = procs.sink(
        broker.bootstrap, namespace, dsn, "--topics", "market.bars", "--group", group, "--metrics-port", str(mport)
    )
    first, slow = make_bars(3_000), make_bars(2_000, symbol="ADA/USDT")
    during, after = make_bars(6_000, symbol="ETH/USDT"), make_bars(2_000, symbol="SOL/USDT")
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(first, topic="market.bars")

        async def stored(n: int) -> bool:
            return int(await fetchval(dsn, "SELECT count(*) FROM ev_market_bars")) >= n

        await wait_until(lambda: stored(len(first)), 60, "the first batch stored", watch=procs)
        await wait_until(
            lambda: _ge_committed(broker.bootstrap, group, topic, len(first)), 30, "the first batch's offsets committed"
        )

        # slow: another session holds the event table locked for 4 s; the sink's write waits, commits nothing
        locker = await asyncpg.connect(dsn)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE ev_market_bars IN ACCESS EXCLUSIVE MODE")
        await pub.publish(slow, topic="market.bars")
        await asyncio.sleep(4.0)
        assert await committed_total(broker.bootstrap, group, topic) == len(first)
        await tx.rollback()
        await locker.close()
        n_ok = len(first) + len(slow)
        await wait_until(lambda: stored(n_ok), 30, "the slow batch stored once the lock is gone", watch=procs)

        # down: Postgres stops while records keep streaming in (the sink is mid-write)
        async def stream() -> None:
            for i in range(0, len(during), 100):
                await pub.publish(during[i : i + 100], topic="market.bars")
                await asyncio.sleep(0.03)

        producer = asyncio.create_task(stream())
        await wait_until(lambda: stored(n_ok + 300), 30, "the sink mid-stream", every=0.1)
        await asyncio.to_thread(own_pg.stop)
        with pytest.raises(OSError):  # the drill is void unless the server is really gone
            await asyncpg.connect(dsn, timeout=5)
        t_down = time.monotonic()
        await producer

        async def backing_off() -> bool:
            return metric(mport, "tradeflow_sink_db_errors_total") >= 3 and "sink_db_retry" in sink.output()

        await wait_until(backing_off, 30, "the sink to retry against the stopped database", watch=procs)
        committed_while_down = await committed_total(broker.bootstrap, group, topic)
        await asyncio.sleep(2.0)
        assert sink.alive, "the sink must not exit while the database is down:\n" + sink.output()[-3000:]
        # the batch being retried is not acknowledged to the broker, and nothing moves while the database is down
        assert committed_while_down < n_ok + len(during)
        assert await committed_total(broker.bootstrap, group, topic) == committed_while_down
        retries = [e for e in log_events(sink) if e.get("event") == "sink_db_retry"]
        assert retries and all(e.get("level") == "error" for e in retries)
        delays = [float(e["retry_in_s"]) for e in retries]
        assert delays == sorted(delays) and max(delays) <= 10.0, delays  # capped exponential backoff

        await asyncio.to_thread(own_pg.start)  # same data dir, same port
        downtime = time.monotonic() - t_down
        await pub.publish(after, topic="market.bars")
        total = n_ok + len(during) + len(after)
        await wait_until(lambda: stored(total), 60, "every record after the database came back", watch=procs)
        await wait_until(lambda: _ge_committed(broker.bootstrap, group, topic, total), 30, "offsets caught up")

    assert sink.alive
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT event_id FROM ev_market_bars")
        ids = [r["event_id"] for r in rows]
        assert len(ids) == len(set(ids)) == total  # exactly once
        assert set(ids) == {b.event_id for b in first + slow + during + after}
        assert await conn.fetchval("SELECT count(*) FROM bars") == total
    finally:
        await conn.close()
    assert downtime > 2.0


async def _sink_sessions(dsn: str, state: str, statement: str = "") -> list[int]:
    """Backend pids of the sink's sessions in ``state`` whose query starts with ``statement``."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tradeflow-sink' AND state = $1"
            " AND starts_with(query, $2)",
            state,
            statement,
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


def _sink_db_errors() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for fam in REGISTRY.collect()
        if fam.name == "tradeflow_sink_db_errors"
        for s in fam.samples
        if s.name == "tradeflow_sink_db_errors_total"
    )


#: a write whose session was killed must be retried long before the sink's 30 s statement deadline would
#: rescue it: the connection's termination is what abandons the attempt (before the fix it hung for ever)
KILLED_WRITE_RETRIED_WITHIN_S = 20.0


@pytest.mark.parametrize(
    "statement",
    ['COPY "ev_market_bars"', 'COPY "bars"', None],
    ids=["mid-event-copy", "mid-projection-copy", "idle-in-pool"],
)
async def test_sink_session_killed_when_writing_then_retried_on_fresh_connection_and_stored_once(
    own_pg: EmbeddedPostgres, statement: str | None
) -> None:
    """The server ends the sink's session (pg_terminate_backend, as a failover or an administrator
    would) in the middle of a batch's COPY, or while the connection idles in the pool between batches.
    The write is retried at once on a fresh connection and every row is stored once.

    Found by the database-down drill above, which failed in CI: a pooled connection that got the
    server's FATAL was handed out and failed with ``InternalClientError: cannot switch to state 15;
    another operation (2) is in progress``, which the sink did not count as a database error and died
    on. Looking for the cause found a second defect: asyncpg 0.32 waits for ever in a COPY whose session
    the server ended while the socket was paused for writing (the mid-copy cases hang without the fix).
    """
    dsn = own_pg.dsn
    await migrate_dsn(dsn)
    sink = TopicSink(SinkConfig(bootstrap="127.0.0.1:1", dsn=dsn, topics=("market.bars",), retry_max_s=0.5))
    assert sink.cfg.db_timeout_s > KILLED_WRITE_RETRIED_WITHIN_S
    await sink.open_pool()
    dec = next(iter(sink._decoders.values()))
    warmup, bars = make_bars(50, symbol="DOT/USDT"), make_bars(60_000, symbol="XRP/USDT")

    def decoded(batch: list[Any], first_offset: int) -> Any:
        msgs = [
            ConsumerRecord(dec.physical, 0, first_offset + i, 0, 0, b.key(), dec.codec.encode(b), None, 0, 0, ())
            for i, b in enumerate(batch)
        ]
        return sink.decode({TopicPartition(dec.physical, 0): msgs})

    errors_before = _sink_db_errors()
    killed: list[int] = []
    try:
        await sink._write_with_retry(decoded(warmup, 0))  # the pool now holds an idle, used connection
        if statement is None:
            idle = await _sink_sessions(dsn, "idle")
            assert idle, "no idle sink session in the pool; the drill is void"
            killed.extend(idle)
            await fetchval(dsn, f"SELECT count(pg_terminate_backend(pid)) FROM unnest(ARRAY{idle}::int[]) pid")
        write = asyncio.create_task(sink._write_with_retry(decoded(bars, len(warmup))))
        if statement is not None:

            async def killed_mid_statement() -> bool:
                if write.done():
                    return True
                pids = await _sink_sessions(dsn, "active", statement)
                if pids:
                    await fetchval(dsn, f"SELECT pg_terminate_backend({pids[0]})")
                    killed.append(pids[0])
                return bool(killed)

            await wait_until(killed_mid_statement, 60, f"the sink's session in {statement}", every=0.02)
            assert killed, f"the write finished before its session could be killed in {statement}; the drill is void"
        done, _ = await asyncio.wait({write}, timeout=KILLED_WRITE_RETRIED_WITHIN_S)
        assert write in done, "the write hung after the server ended its session"
        write.result()
    finally:
        if sink.pool is not None:
            sink.pool.terminate()
    if statement is not None:  # a killed idle connection may be discarded by the pool before it is used
        assert _sink_db_errors() > errors_before  # the failure was seen, counted and retried, not swallowed
    conn = await asyncpg.connect(dsn)
    try:
        ids = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM ev_market_bars")]
        assert len(ids) == len(set(ids)) == len(warmup) + len(bars)
        assert set(ids) == {b.event_id for b in warmup + bars}
        assert await conn.fetchval("SELECT count(*) FROM bars") == len(warmup) + len(bars)
        assert not set(killed) & {
            r["pid"]
            for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = 'tradeflow-sink'")
        }
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# 3. broker lost
# ---------------------------------------------------------------------------

#: how long a worker may take to notice a lost broker and stop (watchdog: 2 s probes, 2 failures, 5 s timeouts)
BROKER_LOST_BOUND_S = 30.0
ORDER_TOPICS = ("orders.intents", "risk.decisions", "orders.updates", "fills")


@pytest.fixture
def trading_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the trading worker needs to start (Procs passes os.environ to the subprocesses)."""
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", "chaos-drill-control-key-0123456789abcdef")
    monkeypatch.setenv("TRADEFLOW_TRADING_SYMBOLS", "BTC/USDT")
    monkeypatch.setenv("TRADEFLOW_TRADING_TIMEFRAMES", "1h")


async def records_on(bootstrap: str, topic: str, wait_s: float = 3.0) -> int:
    """How many records ``topic`` holds, by reading it from the start (end offsets are unreliable on tansu)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(spec(topic.split(".", 1)[1]).partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, deadline = 0, time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            n += sum(len(v) for v in batch.values())
        return n
    finally:
        await consumer.stop()


@pytest.mark.parametrize("topics_back_at_once", [False, True], ids=["empty", "topics-recreated-at-once"])
async def test_broker_killed_under_trading_when_restarted_empty_then_workers_stop_loudly_and_no_order_follows(
    dsn: str, procs: Procs, trading_env: None, tmp_path: Path, topics_back_at_once: bool
) -> None:
    """``topics_back_at_once``: a supervisor restarts the broker AND recreates the topics (topics-init) before
    the workers' next probe, so the topic-presence check alone cannot see the loss."""
    from tests.integration.test_trading_agents import BTC_FILE, Feed, H, anchor_ns, bars, signal

    ns = f"bl{uuid.uuid4().hex[:8]}"
    a = anchor_ns()
    btc = bars(BTC_FILE, 6, a)  # closes a-5h .. a
    b = EmbeddedBroker(log_path=tmp_path / "tansu-1.log").start()
    b2: EmbeddedBroker | None = None
    try:
        await ensure_topics(b.bootstrap, namespace=ns)
        port = free_port()
        worker = procs.cli(
            "worker",
            "worker",
            "--bootstrap",
            b.bootstrap,
            "--namespace",
            ns,
            "--dsn",
            dsn,
            "--web-port",
            str(port),
            "--agents",
            "trading",
        )
        worker.extra["web_port"] = port
        sink = procs.sink(b.bootstrap, ns, dsn)
        async with RecordPublisher(b.bootstrap, ns) as pub:
            feed = Feed(pub, procs, worker.extra["web_port"])
            await feed.send(*btc[:4], timeout=90)
            await feed.send(signal("BTC/USDT", a - 2 * H, 0.9, "before"), btc[4])  # an order, filled on btc[4]

        async def order_filled() -> bool:
            return int(await fetchval(dsn, "SELECT count(*) FROM ev_fills")) >= 1

        await wait_until(order_filled, 30, "the order before the drill filled and stored", watch=procs)
        intents_before = int(await fetchval(dsn, "SELECT count(*) FROM ev_order_intents"))
        assert intents_before == 1

        # the broker process dies (SIGKILL: no goodbye), and a supervisor brings an empty one back at once
        assert b.proc is not None
        b.proc.kill()
        b.proc.wait(5)
        t_kill = time.monotonic()
        b2 = EmbeddedBroker(port=b.port, log_path=tmp_path / "tansu-2.log").start()
        if topics_back_at_once:
            await ensure_topics(b2.bootstrap, namespace=ns)

        await wait_until(
            lambda: _true(not worker.alive and not sink.alive),
            BROKER_LOST_BOUND_S,
            f"trading worker and sink to stop within {BROKER_LOST_BOUND_S}s of the broker loss",
        )
        stopped_after = time.monotonic() - t_kill
        assert worker.popen is not None and worker.popen.returncode not in (0, None), worker.output()[-3000:]
        assert sink.popen is not None and sink.popen.returncode == 3, sink.output()[-3000:]
        for proc in (worker, sink):
            lost = [
                e for e in log_events(proc) if "broker_lost" in str(e.get("event")) and e.get("level") == "critical"
            ]
            assert lost, f"{proc.name}: no critical broker_lost log:\n{proc.output()[-3000:]}"

        # nothing goes on silently: the topics are back and a new signal + bar arrive, yet no order is made
        await ensure_topics(b2.bootstrap, namespace=ns)
        async with RecordPublisher(b2.bootstrap, ns) as pub:
            await pub.publish([signal("BTC/USDT", a - H, 0.9, "after")])
            await pub.publish([btc[5]], topic="market.bars")
        await asyncio.sleep(3.0)
        for t in ORDER_TOPICS:
            assert await records_on(b2.bootstrap, physical_name(t, ns)) == 0, t
        assert int(await fetchval(dsn, "SELECT count(*) FROM ev_order_intents")) == intents_before
        assert stopped_after < BROKER_LOST_BOUND_S
    finally:
        b.stop()
        if b2 is not None:
            b2.stop()


# ---------------------------------------------------------------------------
# 2. exchange errors and jitter
# ---------------------------------------------------------------------------

Reply = tuple[float, int, Any]  # (seconds before answering, HTTP status, JSON body or "filled")


class ChaosVenue:
    """A local HTTP server speaking Binance's REST paths: markets from the recorded fixture, and a
    script of order answers (recorded Binance error bodies, latency, answers slower than the client's
    timeout). ccxt talks to it over real HTTP: its own signing, aiohttp session, timeout handling,
    status/error mapping. Every order POST is recorded with its client order id and arrival time; an
    order the script fills is placed (even when its answer comes too late), and ``GET /api/v3/order``
    by ``origClientOrderId`` answers it as Binance's order query does (or -2013 when none was placed)."""

    def __init__(self, script: list[Reply], jitter_s: float, seed: int) -> None:
        from tests.fixtures.ccxt.replay import load_interactions

        self.static = {i.path: i.response for i in load_interactions("binance_spot_markets.json")}
        self.script = list(script)
        self.rng = random.Random(seed)
        self.jitter_s = jitter_s
        self.posts: list[tuple[float, str]] = []
        self.placed: dict[str, dict[str, Any]] = {}  # client order id -> the venue's order (query answer)
        self.queries: list[str] = []
        self.url = ""
        self._runner: Any = None

    async def start(self) -> ChaosVenue:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: Any) -> Any:
        from urllib.parse import parse_qsl

        from aiohttp import web

        await asyncio.sleep(self.rng.uniform(0, self.jitter_s))  # latency jitter on every answer
        if request.method == "GET" and request.path in self.static:
            resp = self.static[request.path]
            assert resp is not None
            return web.json_response(resp["body"], status=int(resp.get("status", 200)))
        if request.method == "POST" and request.path == "/api/v3/order":
            form = dict(parse_qsl(await request.text() or request.query_string))
            coid = form["newClientOrderId"]
            self.posts.append((time.monotonic(), coid))
            delay, status, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            await asyncio.sleep(delay)
            if body == "filled":
                from tests.unit.test_ccxt_execution import binance_filled

                self.placed.setdefault(coid, _queried(coid, form))
                body = binance_filled(coid)
            if body == "drop":  # the connection dies without an answer
                request.transport.abort()
                return web.Response(status=500)
            if isinstance(body, str):
                return web.Response(text=body, status=status, content_type="text/html")
            return web.json_response(body, status=status)
        if request.method == "GET" and request.path == "/api/v3/order":
            coid = request.query.get("origClientOrderId", "")
            self.queries.append(coid)
            if coid in self.placed:
                return web.json_response(self.placed[coid])
            return web.json_response({"code": -2013, "msg": "Order does not exist."}, status=400)
        return web.json_response({"code": -1, "msg": f"unexpected {request.method} {request.path}"}, status=404)


def _queried(coid: str, form: dict[str, str]) -> dict[str, Any]:
    """Binance's ``GET /api/v3/order`` answer for a market order filled in full at 29,012 (no trades, no fee)."""
    qty = float(form["quantity"])
    return {
        "symbol": form["symbol"],
        "orderId": 28,
        "orderListId": -1,
        "clientOrderId": coid,
        "price": "0.00000000",
        "origQty": form["quantity"],
        "executedQty": form["quantity"],
        "cummulativeQuoteQty": f"{qty * 29_012.0:.8f}",
        "status": "FILLED",
        "timeInForce": "GTC",
        "type": form["type"],
        "side": form["side"],
        "time": 1609495200123,
        "updateTime": 1609495200123,
        "isWorking": True,
        "workingTime": 1609495200123,
        "selfTradePreventionMode": "NONE",
    }


@pytest.fixture
async def chaos_exchange() -> AsyncIterator[Any]:
    """Build (venue, adapter) pairs; closes what it built."""
    from agents.clock import EventClock
    from agents.execution.ccxt_live import CcxtExecutionAdapter, LiveExecutionConfig, make_execution_exchange
    from tests.unit.test_ccxt_execution import KEYS, NOW

    built: list[tuple[ChaosVenue, Any]] = []

    async def make(
        script: list[Reply],
        *,
        max_attempts: int = 3,
        timeout_ms: int = 400,
        jitter_s: float = 0.08,
        seed: int = 7,
        venue: ChaosVenue | None = None,
    ) -> tuple[ChaosVenue, CcxtExecutionAdapter]:
        """A new venue with ``script``, or a new client (another process) of ``venue``."""
        if venue is None:
            venue = await ChaosVenue(script, jitter_s, seed).start()
        config = LiveExecutionConfig(
            exchange_id="binance",
            dry_run=False,
            max_attempts=max_attempts,
            retry_base_delay_s=0.05,
            connect_timeout_s=10,
        )
        exchange = make_execution_exchange(config, KEYS, timeout_ms=timeout_ms)
        for name, url in list(exchange.urls["api"].items()):
            if isinstance(url, str):
                exchange.urls["api"][name] = url.replace("https://api.binance.com", venue.url)
        built.append((venue, exchange))
        adapter = CcxtExecutionAdapter(exchange, config, EventClock(NOW))  # real asyncio.sleep between retries
        await adapter.connect()
        return venue, adapter

    yield make
    for _, exchange in built:
        await exchange.close()
    for venue in {id(v): v for v, _ in built}.values():
        await venue.stop()


def _rate_limited() -> Reply:
    return (
        0.0,
        429,
        {
            "code": -1003,
            "msg": "Too much request weight used; current limit is 6000 request weight "
            "per 1 MINUTE. Please use WebSocket Streams for live updates.",
        },
    )


async def test_exchange_rate_limited_with_jitter_then_retried_with_backoff_and_filled_once(chaos_exchange: Any) -> None:
    from agents.execution.interface import client_order_id_for
    from tests.unit.test_ccxt_execution import mkt, order

    venue, adapter = await chaos_exchange([_rate_limited(), _rate_limited(), (0.0, 200, "filled")], max_attempts=4)
    it, dec = order()
    out = await adapter.submit(it, dec, mkt())
    assert [coid for _, coid in venue.posts] == [client_order_id_for(it.event_id)] * 3  # one id, 3 attempts
    gaps = [b - a for (a, _), (b, _) in zip(venue.posts, venue.posts[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.10, gaps  # exponential backoff really waited
    assert out[-1].status.value == "filled"
    assert sum(1 for r in out if type(r).__name__ == "Fill") == 2


async def test_exchange_timeout_then_retry_and_duplicate_answer_means_already_placed(chaos_exchange: Any) -> None:
    from tests.unit.test_ccxt_execution import mkt, order

    # the first answer comes after the client's 400 ms timeout (the order did land); the retry with the same id
    # gets Binance's duplicate answer
    duplicate = (0.0, 400, {"code": -2010, "msg": "Duplicate order sent."})
    venue, adapter = await chaos_exchange([(1.0, 200, "filled"), duplicate])
    out = await adapter.submit(*order(), mkt())
    assert len(venue.posts) == 2 and len({c for _, c in venue.posts}) == 1
    assert [(u.status.value, u.reason) for u in out] == [("new", None), ("acknowledged", "already_placed")]


@pytest.mark.parametrize(
    ("reply", "status", "reason", "attempts"),
    [
        (_rate_limited(), "rejected", "rate_limited", 3),  # retriable: every attempt used, then the classified reject
        # the request may have reached the matching engine (Binance: 5xx and -1001 mean "execution status
        # unknown"; a lost connection or a late answer say nothing): unknown, not rejected
        ((0.0, 503, "<html><body><h1>503 Service Unavailable</h1></body></html>"), "unknown", "network_error", 3),
        ((0.0, 200, "drop"), "unknown", "network_error", 3),
        (
            (0.0, 400, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
            "unknown",
            "network_error",
            3,
        ),  # Binance DISCONNECTED: ccxt OperationFailed, transient
        ((1.0, 200, {}), "unknown", "venue_timeout", 3),  # every answer slower than the client timeout
        ((0.0, 400, {"code": -1022, "msg": "Signature for this request is not valid."}), "rejected", "auth_failed", 1),
        (
            (0.0, 401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}),
            "rejected",
            "auth_failed",
            1,
        ),
        (
            (0.0, 400, {"code": -2010, "msg": "Account has insufficient balance for requested action."}),
            "rejected",
            "insufficient_funds",
            1,
        ),
    ],
)
async def test_exchange_failing_every_attempt_then_retries_within_limit_and_classified(
    chaos_exchange: Any, reply: Reply, status: str, reason: str, attempts: int
) -> None:
    from tests.unit.test_ccxt_execution import mkt, order

    venue, adapter = await chaos_exchange([reply], max_attempts=3)
    out = await adapter.submit(*order(), mkt())
    assert len(venue.posts) == attempts, venue.posts  # never more than max_attempts; none for a final error
    assert len({c for _, c in venue.posts}) == 1
    assert (out[-1].status.value, out[-1].reason) == (status, reason)
    assert [u.status.value for u in out[:-1]] == (["new"] if status == "unknown" else [])


async def test_exchange_timing_out_every_attempt_but_placed_then_unknown_in_flight_until_found_with_its_fill(
    chaos_exchange: Any,
) -> None:
    from agents.execution.interface import InFlightOrders, OpenOrder, client_order_id_for
    from tests.unit.test_ccxt_execution import NOW, mkt, order
    from topics.records import Fill, OrderStatus

    venue, adapter = await chaos_exchange([(1.0, 200, "filled")], max_attempts=3)  # lands, answers too late
    it, dec = order(qty=0.01)
    coid = client_order_id_for(it.event_id)
    in_flight = InFlightOrders(ttl_ns=3_600 * 10**9)  # what risk and strategy measure exposure with
    in_flight.add(coid, it.symbol, it.side, dec.approved_quantity, NOW)
    out = await adapter.submit(it, dec, mkt())
    assert [c for _, c in venue.posts] == [coid] * 3 and coid in venue.placed  # it is live at the venue
    assert [(u.status.value, u.reason) for u in out] == [("new", None), ("unknown", "venue_timeout")]
    for rec in out:
        in_flight.on_execution(rec)
    assert in_flight.net(it.symbol, NOW) == pytest.approx(0.01)  # still counted: it may fill
    unknown = OpenOrder(intent=it, decision=dec, market=mkt(), status=OrderStatus.UNKNOWN, quantity=0.01)
    found = await adapter.follow(unknown)
    assert venue.queries == [coid]
    assert [r.status.value if not isinstance(r, Fill) else "fill" for r in found] == ["acknowledged", "fill", "filled"]
    fill = found[1]
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(0.01) and fill.price == pytest.approx(29_012.0)
    assert fill.fee_estimated and fill.fee > 0  # Binance's order query has no fee: estimated, flagged, not 0.0
    for rec in found:
        in_flight.on_execution(rec)
    assert in_flight.net(it.symbol, NOW) == 0.0 and len(in_flight) == 0


async def test_exchange_never_got_an_unknown_order_then_rejected_not_found(chaos_exchange: Any) -> None:
    from agents.execution.interface import OpenOrder
    from tests.unit.test_ccxt_execution import mkt, order
    from topics.records import OrderStatus

    _, adapter = await chaos_exchange([(0.0, 200, "drop")], max_attempts=2)  # lost before the venue took it
    it, dec = order(qty=0.01)
    out = await adapter.submit(it, dec, mkt())
    assert out[-1].status.value == "unknown"
    (rej,) = await adapter.follow(OpenOrder(intent=it, decision=dec, market=mkt(), status=OrderStatus.UNKNOWN))
    assert (rej.status.value, rej.reason) == ("rejected", "not_found_after_unknown")


async def test_restart_after_an_order_was_placed_then_its_fill_is_fetched_back_and_applied_once(
    chaos_exchange: Any,
) -> None:
    """The crash falls between placing an order and applying the venue's answer: the restored core
    (its checkpoint) holds the order open; the restarted adapter finds it by client order id and its
    fill moves the position exactly once."""
    from agents.trading.checkpoint import dump_core, load_core
    from agents.trading.core import TradingCore
    from tests.unit.test_trading_determinism import KEYRING, load_bars
    from tests.unit.test_trading_external_execution import EXTERNAL, _strong
    from topics.records import Fill

    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    ((intent, decision, market),) = core.on_signal(_strong(bars, 29)).to_submit
    checkpoint = dump_core(core)  # external execution checkpoints after every batch: the order is handed out
    venue, before_crash = await chaos_exchange([(0.0, 200, "filled")])
    lost = await before_crash.submit(intent, decision, market)  # placed and filled; the worker dies now
    assert [r for r in lost if isinstance(r, Fill)] and len(venue.placed) == 1

    restored = load_core(checkpoint, KEYRING)
    assert restored.portfolio_state().positions.get("BTC/USDT") is None
    (open_order,) = restored.open_orders()
    venue.script = [(0.0, 500, {"code": -1, "msg": "no order may be sent again"})]
    _, after_restart = await chaos_exchange([], venue=venue)  # the restarted worker's own exchange client
    fetched = await after_restart.follow(open_order)
    applied = [r for a in fetched for r in restored.on_execution(a).records]
    fills = [r for r in applied if isinstance(r, Fill)]
    assert len(fills) == 1 and restored.open_orders() == ()
    qty = restored.portfolio_state().positions["BTC/USDT"].quantity
    assert qty == pytest.approx(fills[0].quantity) and qty > 0
    assert fills[0].quantity == pytest.approx(decision.approved_quantity, rel=1e-3)  # the venue's precision
    # a second restart from the same checkpoint, with the answers delivered twice: applied once
    again = load_core(checkpoint, KEYRING)
    (order_again,) = again.open_orders()
    twice = await after_restart.follow(order_again)
    for answer in [*twice[:2], *twice]:
        again.on_execution(answer)
    assert again.portfolio_state().positions["BTC/USDT"].quantity == pytest.approx(qty)
    assert venue.queries == [open_order.client_order_id] * 2 and len(venue.posts) == 1  # queried, never re-sent


async def test_trading_worker_restarted_after_an_order_was_placed_then_reconciles_its_fill_before_any_input(
    broker: EmbeddedBroker, namespace: str, dsn: str, chaos_exchange: Any, tmp_path: Path
) -> None:
    """The agent itself (real broker, real PostgreSQL, ccxt over HTTP): the checkpoint holds an order
    handed out whose answer the crash lost; the restarted worker's reconciliation, before it consumes
    anything, fetches the order back, publishes its fill once and checkpoints the position."""
    from agents.execution.interface import client_order_id_for
    from agents.trading.agent import TradingWorker
    from agents.trading.checkpoint import seal
    from agents.trading.checkpointer import LiveState, restore
    from agents.trading.core import TradingCore
    from runtime.agent import AgentContext
    from runtime.batch_agent import batch_producer
    from runtime.faust_app import WorkerSettings, create_app
    from storage.trading import load_checkpoint, save_checkpoint
    from tests.unit.test_trading_determinism import KEYRING, load_bars
    from tests.unit.test_trading_external_execution import EXTERNAL, _strong

    bars = load_bars()
    crashed = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        crashed.on_bar(bar)
    ((intent, decision, market),) = crashed.on_signal(_strong(bars, 29)).to_submit
    conn = await asyncpg.connect(dsn)
    try:
        await save_checkpoint(conn, seal(crashed, config_hash="h1", offsets={}, events_applied=0, keyring=KEYRING))
    finally:
        await conn.close()
    venue, before_crash = await chaos_exchange([(0.0, 200, "filled")])
    await before_crash.submit(intent, decision, market)  # placed and filled; the worker dies before applying it

    live = LiveState(TradingCore(EXTERNAL, KEYRING))
    await asyncio.to_thread(restore, live, dsn, KEYRING, "h1")  # as at start-up, on its own event loop
    assert len(live.core.open_orders()) == 1
    _, adapter = await chaos_exchange([], venue=venue)
    app = create_app(WorkerSettings(app_id=f"{namespace}-trading", bootstrap=broker.bootstrap, data_dir=str(tmp_path)))
    ctx = AgentContext(app, wall_clock=time.time_ns, namespace=namespace, bootstrap=broker.bootstrap, dsn=dsn)
    worker = TradingWorker(app, ctx, live, adapter, keyring=KEYRING, config_hash="h1")
    worker.producer = batch_producer(broker.bootstrap)
    await worker.producer.start()
    try:
        await worker.reconcile()
    finally:
        await worker.producer.stop()
        if worker.checkpointer.db is not None:
            await worker.checkpointer.db.close()
    assert venue.queries == [client_order_id_for(intent.event_id)] and len(venue.posts) == 1
    assert live.core.open_orders() == ()
    qty = live.core.portfolio_state().positions["BTC/USDT"].quantity
    assert qty == pytest.approx(decision.approved_quantity, rel=1e-3)
    assert await records_on(broker.bootstrap, physical_name("fills", namespace)) == 1
    statuses = [
        json.loads(v)["status"] for v in await values_on(broker.bootstrap, physical_name("orders.updates", namespace))
    ]
    assert statuses == ["acknowledged", "filled"]
    conn = await asyncpg.connect(dsn)
    try:
        saved = await load_checkpoint(conn, "paper")
    finally:
        await conn.close()
    assert saved is not None and saved.events_applied == 3  # acknowledged, fill, filled: journaled and checkpointed


async def values_on(bootstrap: str, topic: str, wait_s: float = 3.0) -> list[bytes]:
    """The values ``topic`` holds (single-key topics keep their order), read from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(spec(topic.split(".", 1)[1]).partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[bytes] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out += [r.value for r in recs if r.value is not None]
        return out
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------
# 4. degraded model
# ---------------------------------------------------------------------------

DEGRADED = {"sharpe_daily": 0.31, "max_drawdown": 0.19, "reject_rate": 0.04, "pnl": -80.0}


@pytest.fixture
def gov_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", "chaos-drill-governance-key-0123456789abcdef")
    monkeypatch.setenv("TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE", "2")
    monkeypatch.setenv("TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK", "2")


async def test_degraded_model_when_real_gates_evaluate_it_then_they_fail_and_governance_rolls_it_back(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, gov_env: None
) -> None:
    """The whole chain with real parts: degraded backtest evidence in Postgres -> ``tradeflow gates evaluate``
    (the real gate engine, twice: two windows) -> ``gates.results`` -> the governance worker -> rollback of
    the candidate in ``models.registry`` and ``rollout_audit``; the active version keeps serving."""
    from datetime import timedelta

    from tests.integration.test_gates import AS_OF, add_run, ensure_backtest_tables
    from tests.integration.test_gates import gates as gates_cli
    from tests.integration.test_governance import MODEL, consumed, decisions, registry, stages, start_worker
    from topics.records import ModelStage

    procs.sink(
        broker.bootstrap,
        namespace,
        dsn,
        "--topics",
        "gates.results",
        "governance.audit",
        "models.registry",
        "control.audit",
        "ops.alerts",
    )
    worker = await start_worker(procs, broker, namespace)
    t0 = int((AS_OF - timedelta(days=10)).timestamp()) * 10**9
    async with RecordPublisher(broker.bootstrap, namespace, name="chaos") as pub:
        await pub.publish(
            [
                registry("v1", ModelStage.REGISTERED, t0),
                registry("v1", ModelStage.ACTIVE, t0 + 1),
                registry("v2", ModelStage.REGISTERED, t0 + 2),
                registry("v2", ModelStage.SHADOW, t0 + 3),
            ]
        )

    async def registry_seen() -> bool:
        return await consumed(worker, "models.registry") >= 4

    await wait_until(registry_seen, 30, "governance to fold the registry", watch=procs)

    conn = await asyncpg.connect(dsn)
    try:
        await ensure_backtest_tables(conn)
        for i, age in enumerate((1.0, 2.0, 3.0)):
            await add_run(conn, f"degraded-{i}", MODEL, age_days=age, metrics=DEGRADED)
    finally:
        await conn.close()

    infra = ("--bootstrap", broker.bootstrap, "--namespace", namespace, "--dsn", dsn)
    published: set[str] = set()
    for as_of in (AS_OF, AS_OF + timedelta(hours=1)):  # two evaluation windows
        rc, rows, out = await gates_cli("evaluate", "--track", MODEL, "--as-of", as_of.isoformat(), "--json", *infra)
        assert rc == 1, out[-2000:]  # a failed gate: not ready
        by = {(r["gate"], r["metric"]): r for r in rows}
        for metric in ("sharpe_daily", "max_drawdown"):
            assert by[("hard_metrics", metric)]["status"] == "failed", by[("hard_metrics", metric)]
            assert by[("hard_metrics", metric)]["value"] == pytest.approx(DEGRADED[metric])
        # the backtest's simulated 4 % rejects are information; no real order: not observed
        assert by[("execution", "reject_rate")]["status"] == "insufficient_observation"
        published |= {r["result_id"] for r in rows}

    async def rolled_back() -> bool:
        return await stages(dsn) == {"v1": "active", "v2": "rolled_back"}

    await wait_until(rolled_back, 60, "v2 rolled back and v1 still active in model_registry", watch=procs)
    audit = await decisions(dsn)
    assert [(r["version"], r["action"], r["from_stage"], r["to_stage"]) for r in audit] == [
        ("v2", "hold", "shadow", "shadow"),
        ("v2", "rollback", "shadow", "rolled_back"),
    ]
    last = audit[-1]
    assert last["trigger"] == "gates" and last["window_status"] == "failed"
    assert set(json.loads(last["gate_result_ids"])) <= published  # decided on what the real gates published
    assert worker.alive
