"""Dashboard benchmark (``tradeflow bench dashboard [--quick] [--out artifacts/bench_dashboard.json]``).

Question: how fast does the page learn about a new event, and how many
open dashboards can one worker serve before the pipeline it shares the
worker with gets slower?

Setup (the embedded default, nothing faked): one worker hosting the ``trading`` and
``dashboard`` agents; for N = 0, 1, 10, 50, 100, 200 server-sent-event clients (one probe
parsing every snapshot), real BTC/USDT hourly bars are published one at a time and timed
from the publish to ``pipeline`` (the trading agent's ``portfolio.state`` for that bar at a
plain consumer) and ``dashboard`` (the probe's first snapshot as of that bar). Reported per
N: p50/p99 of both, frames published, clients dropped as slow. The bench's clients, the
broker and the worker share the machine's CPU.

Method: docs/benchmarks.md#dashboard-benchmark
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

from ops.bench.stats import percentile
from ops.embedded.broker import EmbeddedBroker, free_port
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import ChildProcess, worker_argv
from ops.jobs.ingest import SAMPLE_DIR
from runtime.broker import ensure_topics
from runtime.exits import EXIT_FAIL, EXIT_OK
from runtime.publish import RecordPublisher
from storage.migrate import migrate_dsn
from topics.catalogue import physical_name
from topics.records import Bar, PortfolioSnapshot, Timeframe
from topics.schema import codec_for

H = Timeframe.H1.nanos
ROOT = Path(__file__).resolve().parents[2]
BTC_FILE = "binance_btcusdt_1h_2017_2022.csv"
NAMESPACE = "benchdash"
LEVELS = (0, 1, 10, 50, 100, 200)


def _bars(n: int) -> list[Bar]:
    """``n`` consecutive real candles, re-stamped to close hourly up to one hour ago."""
    with (SAMPLE_DIR / BTC_FILE).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["timestamp"] >= "2020-10-03 02:00:00+00:00"][:n]
    last = time.time_ns() // H * H - H
    out = []
    for j, r in enumerate(rows):
        close = last - (n - 1 - j) * H
        out.append(
            Bar.new(
                ts_init=close,
                ts_event=close,
                venue="binance",
                symbol="BTC/USDT",
                timeframe=Timeframe.H1,
                open_time=close - H,
                open=float(r["open"]),
                high=float(r["high"]),
                low=float(r["low"]),
                close=float(r["close"]),
                volume=float(r["volume"]),
                trade_count=None,
                is_closed=True,
                revision=0,
                source=f"bench:{BTC_FILE}",
            )
        )
    return out


def _pct(xs: list[float], q: float) -> float | None:
    """Seconds in, milliseconds out."""
    p = percentile(xs, q)
    return None if p is None else round(p * 1000, 2)


class Observers:
    """Arrival times (perf_counter) of each bar's snapshot: on the topic and on the SSE probe."""

    def __init__(self) -> None:
        self.pipeline: dict[str, float] = {}
        self.dashboard: dict[str, float] = {}

    async def topic(self, bootstrap: str) -> None:
        consumer = AIOKafkaConsumer(
            physical_name("portfolio.state", NAMESPACE),
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await consumer.start()
        codec = codec_for(PortfolioSnapshot)
        try:
            async for msg in consumer:
                snap = codec.decode(msg.value)
                self.pipeline.setdefault(snap.as_of_event_id, time.perf_counter())
        finally:
            await consumer.stop()

    async def probe(self, session: aiohttp.ClientSession, url: str, ready: asyncio.Event) -> None:
        async with session.get(url) as resp:
            resp.raise_for_status()
            ready.set()
            buf = b""
            async for chunk in resp.content.iter_any():  # frames can exceed aiohttp's line limit
                now = time.perf_counter()
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    data = b"".join(ln[6:] for ln in frame.split(b"\n") if ln.startswith(b"data: "))
                    if data:
                        for p in orjson.loads(data)["portfolios"]:
                            self.dashboard.setdefault(p["as_of_event_id"], now)


async def _load_client(session: aiohttp.ClientSession, url: str, ready: asyncio.Event) -> None:
    async with session.get(url) as resp:
        resp.raise_for_status()
        ready.set()
        async for _ in resp.content.iter_any():
            pass


def _state(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/state", timeout=5) as r:  # noqa: S310 - our own http:// URL
        out: dict[str, Any] = json.loads(r.read())
        return out


async def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.002)
    return False


async def run(bars_per_level: int, levels: tuple[int, ...]) -> dict[str, Any]:
    bars = _bars(bars_per_level * len(levels) + 5)
    with EmbeddedBroker() as broker, EmbeddedPostgres(persistent=False) as pg:
        await ensure_topics(broker.bootstrap, namespace=NAMESPACE)
        await migrate_dsn(pg.dsn)  # the trading agent keeps checkpoints there; the dashboard probes it
        port = free_port()
        env = {
            **os.environ,
            "TRADEFLOW_CONTROL_KEY_BENCH": "bench-control-key-" + "x" * 32,
            "TRADEFLOW_TRADING_SYMBOLS": "BTC/USDT",
            "TRADEFLOW_TRADING_TIMEFRAMES": "1h",
            "TRADEFLOW_LOG_LEVEL": "WARNING",
        }
        env.pop("TRADEFLOW_DASHBOARD_TOKEN", None)
        env.pop("TRADEFLOW_DASHBOARD_TOKEN_FILE", None)
        worker = ChildProcess(
            "bench-dashboard-worker",
            worker_argv(broker.bootstrap, "trading", "dashboard", namespace=NAMESPACE, dsn=pg.dsn, web_port=port),
            ROOT / "artifacts" / "bench_dashboard_worker.log",
            env=env,
            cwd=ROOT,
            append=False,
        ).start()
        base = f"http://127.0.0.1:{port}/dashboard"
        obs = Observers()
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(obs.topic(broker.bootstrap))]
        results: list[dict[str, Any]] = []
        try:
            async with (
                RecordPublisher(broker.bootstrap, NAMESPACE, name="bench", linger_ms=0) as pub,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            ):
                it = iter(bars)
                # warm-up: the worker joins its group; wait for the first bars to come through
                for _ in range(5):
                    b = next(it)
                    await pub.publish([b], topic="market.bars")
                    if not await _wait(lambda b=b: b.event_id in obs.pipeline, 90):
                        raise RuntimeError("the worker did not process the warm-up bars")
                for n in levels:
                    results.append(await _level(n, bars_per_level, it, pub, session, base, obs))
                    print(json.dumps(results[-1]), flush=True)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            worker.stop(timeout=30)
    return {
        "bars_per_level": bars_per_level,
        "worker_agents": ["trading", "dashboard"],
        "levels": results,
        "machine_cpus": os.cpu_count(),
    }


async def _level(
    n: int, count: int, it: Any, pub: RecordPublisher, session: aiohttp.ClientSession, base: str, obs: Observers
) -> dict[str, Any]:
    load: list[asyncio.Task[None]] = []
    if n:
        ready = asyncio.Event()
        load.append(asyncio.create_task(obs.probe(session, base + "/events", ready)))
        await asyncio.wait_for(ready.wait(), 10)
    for _ in range(max(n - 1, 0)):
        ready = asyncio.Event()
        load.append(asyncio.create_task(_load_client(session, base + "/events", ready)))
        await asyncio.wait_for(ready.wait(), 10)
    before = await asyncio.to_thread(_state, base)
    pipe, dash = [], []
    for _ in range(count):
        b = next(it)
        t0 = time.perf_counter()
        await pub.publish([b], topic="market.bars")
        ok = await _wait(lambda b=b: b.event_id in obs.pipeline and (n == 0 or b.event_id in obs.dashboard), 10)
        if not ok:
            raise RuntimeError(f"bar {b.event_id} not seen within 10 s with {n} clients")
        pipe.append(obs.pipeline[b.event_id] - t0)
        if n:
            dash.append(obs.dashboard[b.event_id] - t0)
        await asyncio.sleep(0.1)
    after = await asyncio.to_thread(_state, base)
    for t in load:
        t.cancel()
    await asyncio.gather(*load, return_exceptions=True)
    await asyncio.sleep(0.5)
    return {
        "clients": n,
        "pipeline_ms_p50": _pct(pipe, 0.5),
        "pipeline_ms_p99": _pct(pipe, 0.99),
        "pipeline_ms_mean": round(statistics.fmean(pipe) * 1000, 2),
        "dashboard_ms_p50": _pct(dash, 0.5),
        "dashboard_ms_p99": _pct(dash, 0.99),
        "connected_during": after["clients"]["connected"],
        "dropped_slow_clients": after["clients"]["dropped"] - before["clients"]["dropped"],
        "bars": count,
        "snapshot_bytes": len(orjson.dumps(after)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tradeflow bench dashboard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="artifacts/bench_dashboard.json")
    p.add_argument("--quick", action="store_true", help="fewer bars and client levels (smoke run)")
    p.add_argument("--bars", type=int, default=0, help="bars per client level (default 40, quick 10)")
    a = p.parse_args(argv)
    levels = (0, 1, 50) if a.quick else LEVELS
    bars = a.bars or (10 if a.quick else 40)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    try:
        result = asyncio.run(run(bars, levels))
    except (RuntimeError, OSError) as exc:
        print(f"bench_dashboard failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return EXIT_OK
