"""Foundation benchmarks on the embedded default (tansu + PostgreSQL, this machine).

Measured, each with a baseline from the same run:
- produce rate: RecordPublisher (encode + send + acks) vs raw aiokafka sends of
  pre-encoded bytes;
- sink rate: topic -> Postgres records/s sustained (decode, validate, COPY,
  idempotent insert, bar projection, offset commit) and batch sizes, vs a bare
  COPY of the same rows into the same table (no broker, no validation);
- one-hop latency p50/p99 at a steady 200 and 1,000 records/s through the
  bars-checker faust agent (market.bars.raw -> market.bars), vs the broker
  alone (produce -> consume on one topic).
Medians over repeats. Results go to a JSON file and stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ops.bench.stats import percentile
from ops.embedded.broker import EmbeddedBroker
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import ChildProcess, worker_argv
from ops.host import cpu_seconds, postmaster_pid, process_tree
from runtime.broker import ensure_topics
from runtime.exits import EXIT_OK
from runtime.publish import RecordPublisher
from storage.bench import copy_baseline_batch, create_copy_baseline
from storage.databases import create_database
from storage.migrate import migrate_dsn
from storage.sink import SinkConfig, TopicSink
from topics.catalogue import physical_name
from topics.records import Bar, Timeframe
from topics.schema import codec_for
from topics.units import NS_PER_HOUR

_SEQ = itertools.count()  # unique open times across latency runs
T0 = 1_500_000_000_000_000_000 // NS_PER_HOUR * NS_PER_HOUR


def _bars(n: int, offset: int = 0, ts_init: int | None = None) -> list[Bar]:
    out = []
    for i in range(offset, offset + n):
        px = 100.0 + (i % 101)
        out.append(
            Bar.new(
                ts_init=ts_init or T0,
                ts_event=T0 + (i + 1) * NS_PER_HOUR,
                venue="bench",
                symbol="BTC/USDT",
                timeframe=Timeframe.H1,
                open_time=T0 + i * NS_PER_HOUR,
                open=px,
                high=px + 1,
                low=px - 1,
                close=px + 0.5,
                volume=1.0 + i % 3,
                trade_count=i % 50,
                is_closed=True,
                revision=0,
                source="bench",
            )
        )
    return out


def _pct(xs: list[float], q: float) -> float:
    p = percentile(xs, q)
    if p is None:
        raise ValueError("no latency samples")
    return round(p, 2)


# ---------------------------------------------------------------------------
# produce
# ---------------------------------------------------------------------------


async def bench_produce(bootstrap: str, n: int, repeats: int) -> dict[str, Any]:
    bars = _bars(n)
    codec = codec_for(Bar)
    encoded = [(codec.encode(b), b.key()) for b in bars]
    ours, raw = [], []
    for r in range(repeats):
        ns = f"bp{uuid.uuid4().hex[:6]}"
        await ensure_topics(bootstrap, namespace=ns)
        async with RecordPublisher(bootstrap, ns) as pub:
            t = time.perf_counter()
            for i in range(0, n, 10_000):
                await pub.publish(bars[i : i + 10_000], topic="market.bars.raw")
            ours.append(n / (time.perf_counter() - t))
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1024 * 1024)
        await prod.start()
        topic = physical_name("market.ticks", ns)
        t = time.perf_counter()
        for i in range(0, n, 10_000):
            futs = [await prod.send(topic, v, key=k) for v, k in encoded[i : i + 10_000]]
            await asyncio.gather(*futs)
        raw.append(n / (time.perf_counter() - t))
        await prod.stop()
        print(f"  produce run {r + 1}: publisher {ours[-1]:,.0f}/s, raw aiokafka {raw[-1]:,.0f}/s", flush=True)
    m_ours, m_raw = statistics.median(ours), statistics.median(raw)
    return {
        "records": n,
        "repeats": repeats,
        "publisher_records_per_s_median": round(m_ours),
        "baseline_raw_aiokafka_records_per_s_median": round(m_raw),
        "ratio_publisher_vs_raw": round(m_ours / m_raw, 3),
    }


# ---------------------------------------------------------------------------
# sink
# ---------------------------------------------------------------------------


def _cpu_by_process(broker_pid: int | None, pg: EmbeddedPostgres) -> dict[str, float]:
    """CPU seconds used so far by this process (the sink runs in it), the broker and the PostgreSQL
    server (postmaster and backends alive now)."""
    pg_pid = postmaster_pid(pg.data_dir) if pg.data_dir is not None else None
    return {
        "sink": cpu_seconds(os.getpid()),
        "broker": cpu_seconds(broker_pid) if broker_pid else 0.0,
        "postgres": sum(cpu_seconds(p) for p in process_tree(pg_pid)) if pg_pid else 0.0,
    }


async def bench_sink(
    bootstrap: str, pg: EmbeddedPostgres, n: int, repeats: int, topic: str, broker_pid: int | None = None
) -> dict[str, Any]:
    """Sink throughput (median of ``repeats``) beside a bare COPY of the same rows, and where the CPU went
    while the sink ran: seconds per process and their share of the 2 cores' wall time."""
    rates, copy_rates, batch_sizes = [], [], []
    cpu_shares: list[dict[str, float]] = []
    bars = _bars(n)
    for r in range(repeats):
        ns = f"bs{uuid.uuid4().hex[:6]}"
        db = f"bench_{uuid.uuid4().hex[:6]}"
        admin = await asyncpg.connect(pg.dsn)
        await create_database(admin, db)
        await admin.close()
        dsn = pg.dsn.rsplit("/", 1)[0] + "/" + db
        await migrate_dsn(dsn)
        await ensure_topics(bootstrap, namespace=ns)
        async with RecordPublisher(bootstrap, ns) as pub:
            for i in range(0, n, 20_000):
                await pub.publish(bars[i : i + 20_000], topic=topic)
        sink = TopicSink(
            SinkConfig(bootstrap=bootstrap, dsn=dsn, namespace=ns, topics=(topic,), group_id=f"bench-{ns}")
        )
        await sink.start()
        t = time.perf_counter()
        runner = asyncio.create_task(sink.run())
        while sink.rows_written == 0:
            await asyncio.sleep(0.005)
        t_first = time.perf_counter()  # group join excluded: first committed batch starts the clock
        cpu0 = _cpu_by_process(broker_pid, pg)
        first = sink.rows_written
        while sink.rows_written < n:
            await asyncio.sleep(0.005)
            if time.perf_counter() - t > 300:
                raise RuntimeError("sink benchmark did not finish in 300 s")
        elapsed = time.perf_counter() - t_first
        cpu1 = _cpu_by_process(broker_pid, pg)
        # backends that ended meanwhile are not counted: the postgres figure is a lower bound
        cpu_shares.append({k: round((cpu1[k] - cpu0[k]) / elapsed, 3) for k in cpu0})
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await sink.stop()
        sizes = [(n - first) / max(1, sink.batches - 1)]
        n_measured = n - first
        rates.append(n_measured / elapsed)
        batch_sizes += sizes
        # baseline: bare COPY of identical rows into an identical empty table
        enc = codec_for(Bar).encode
        rows = [
            (b.event_id, 1, b.ts_event, b.ts_init, b.correlation_id, None, 0, i, "k", enc(b).decode())
            for i, b in enumerate(bars)
        ]
        conn = await asyncpg.connect(dsn)
        await create_copy_baseline(conn)
        t = time.perf_counter()
        for i in range(0, n, 20_000):
            await copy_baseline_batch(conn, rows[i : i + 20_000])
        copy_rates.append(n / (time.perf_counter() - t))
        await conn.close()
        print(
            f"  sink run {r + 1}: {rates[-1]:,.0f} records/s (bare COPY {copy_rates[-1]:,.0f}/s), "
            f"{sink.batches} batches; CPU (cores busy) {cpu_shares[-1]}",
            flush=True,
        )
    m, mc = statistics.median(rates), statistics.median(copy_rates)
    return {
        "records": n,
        "repeats": repeats,
        "sink_records_per_s_median": round(m),
        "baseline_bare_copy_records_per_s_median": round(mc),
        "ratio_sink_vs_bare_copy": round(m / mc, 3),
        # per run: CPU seconds per wall second of the sink's run (1.0 = one core busy), per process
        "cores_busy_per_run": cpu_shares,
        "topic": topic,
        "mean_batch_size": round(statistics.mean(batch_sizes)),
        "max_batch_setting": SinkConfig.max_batch,
        "note": "sink = fetch + strict decode/validate + COPY (dedupe fallback) "
        + ("+ latest-revision bars upsert " if topic == "market.bars" else "")
        + "+ DB commit + offset commit",
    }


# ---------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------


async def _paced_latency(bootstrap: str, src: str, dst: str, rate: int, seconds: float) -> list[float]:
    """Send bars to ``src`` at ``rate``/s with ts_init = send time; latency = receive - ts_init on ``dst``."""
    codec = codec_for(Bar)
    # Only records stamped after this run started count (seek_to_end is unreliable on tansu).
    run_started = time.time_ns()
    cons = AIOKafkaConsumer(
        dst,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        group_id=None,
        enable_auto_commit=False,
    )
    await cons.start()
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await prod.start()
    lat: list[float] = []
    n = int(rate * seconds)
    done = asyncio.Event()

    async def receive() -> None:
        while len(lat) < n:
            batch = await cons.getmany(timeout_ms=100)
            now = time.time_ns()
            for msgs in batch.values():
                for m in msgs:
                    ts_init = codec.decode(m.value).ts_init
                    if ts_init >= run_started:
                        lat.append((now - ts_init) / 1e6)
        done.set()

    rx = asyncio.create_task(receive())
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        b = _bars(1, offset=next(_SEQ), ts_init=time.time_ns())[0]
        await prod.send(src, codec.encode(b), key=b.key())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        rx.cancel()
        await prod.stop()
        await cons.stop()
    return lat[int(len(lat) * 0.1) :]  # drop warm-up tenth


async def bench_latency(bootstrap: str, rates: list[int], seconds: float, log_dir: Path) -> dict[str, Any]:
    ns = f"bl{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, namespace=ns)
    out: dict[str, Any] = {"seconds_per_rate": seconds}
    worker = ChildProcess(
        "bench-worker", worker_argv(bootstrap, "bars-checker", namespace=ns), log_dir / "bench-worker.log", append=False
    ).start()
    try:
        # wait until the agent forwards (group joined, partitions assigned)
        await _wait_forwarding(bootstrap, ns)
        src, dst = physical_name("market.bars.raw", ns), physical_name("market.bars", ns)
        for rate in rates:
            lat = await _paced_latency(bootstrap, src, dst, rate, seconds)
            base = await _paced_latency(
                bootstrap, physical_name("market.ticks", ns), physical_name("market.ticks", ns), rate, seconds
            )
            out[f"{rate}_per_s"] = {
                "agent_hop_p50_ms": _pct(lat, 0.5),
                "agent_hop_p99_ms": _pct(lat, 0.99),
                "baseline_broker_only_p50_ms": _pct(base, 0.5),
                "baseline_broker_only_p99_ms": _pct(base, 0.99),
                "samples": len(lat),
            }
            print(f"  latency @{rate}/s: {out[f'{rate}_per_s']}", flush=True)
    finally:
        worker.stop(timeout=30)
    return out


async def _wait_forwarding(bootstrap: str, ns: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lat = await _paced_latency(
            bootstrap, physical_name("market.bars.raw", ns), physical_name("market.bars", ns), 20, 1.0
        )
        if lat:
            return
    raise RuntimeError("bars-checker did not start forwarding within 60 s")


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tradeflow bench foundation", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench.json"))
    ap.add_argument("--quick", action="store_true", help="smaller runs (smoke)")
    a = ap.parse_args(argv)
    out, quick = a.out, a.quick
    out.parent.mkdir(parents=True, exist_ok=True)
    n_produce, n_sink, repeats, secs = (20_000, 20_000, 1, 5.0) if quick else (200_000, 300_000, 3, 20.0)
    results: dict[str, Any] = {"machine": _machine()}
    with (
        EmbeddedBroker(log_path=out.parent / "bench-tansu.log") as b,
        EmbeddedPostgres(persistent=True, data_dir=None) as pg,
    ):
        print("produce ...", flush=True)
        results["produce"] = asyncio.run(bench_produce(b.bootstrap, n_produce, repeats))
        print("sink ...", flush=True)
        broker_pid = b.proc.pid if b.proc is not None else None
        results["sink_event_table"] = asyncio.run(
            bench_sink(b.bootstrap, pg, n_sink, repeats, "market.bars.raw", broker_pid)
        )
        results["sink_with_bars_projection"] = asyncio.run(
            bench_sink(b.bootstrap, pg, n_sink, repeats, "market.bars", broker_pid)
        )
        print("latency ...", flush=True)
        results["latency"] = asyncio.run(bench_latency(b.bootstrap, [200, 1000], secs, out.parent))
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return EXIT_OK


def _machine() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
