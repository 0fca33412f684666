"""Market-data benchmarks on the embedded default (``tradeflow bench market``).

- history import rate: the real Binance file (42,287 bars) from CSV to rows in
  Postgres (parse + publish + sink), vs the CSV parse alone (baseline);
- features through the live agent: bars already on ``market.bars`` -> the
  ``features`` agent (decode, quality, features, send) -> vectors on the
  ``features`` topic, vs the same pipeline in-process (baseline).
Medians over repeats; JSON to stdout and ``artifacts/bench_market.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.market.csv_import import import_csv_file
from ops.embedded.broker import EmbeddedBroker
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import ChildProcess, worker_argv
from ops.jobs.ingest import SAMPLE_DIR, import_file
from runtime.broker import ensure_topics
from runtime.exits import EXIT_OK
from runtime.publish import RecordPublisher
from storage.databases import create_database
from storage.migrate import migrate_dsn
from storage.sink import SinkConfig, TopicSink
from topics.catalogue import physical_name
from topics.records import Timeframe
from topics.schema import TS_MIN_NS

FILE = SAMPLE_DIR / "binance_btcusdt_1h_2017_2022.csv"


async def _fresh_db(pg: EmbeddedPostgres) -> str:
    name = f"bm_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg.dsn)
    await create_database(admin, name)
    await admin.close()
    dsn = pg.dsn.rsplit("/", 1)[0] + "/" + name
    await migrate_dsn(dsn)
    return dsn


async def bench_import(bootstrap: str, pg: EmbeddedPostgres, repeats: int) -> dict[str, Any]:
    rates, parse_rates = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(
            import_csv_file(FILE, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
        )
        parse_rates.append(n / (time.perf_counter() - t))
        ns, dsn = f"bi{uuid.uuid4().hex[:6]}", await _fresh_db(pg)
        await ensure_topics(bootstrap, namespace=ns)
        sink = TopicSink(
            SinkConfig(bootstrap=bootstrap, dsn=dsn, namespace=ns, topics=("market.bars.raw",), group_id=f"bench-{ns}")
        )
        await sink.start()
        runner = asyncio.create_task(sink.run())
        await asyncio.sleep(4)  # group joined before the clock starts
        t = time.perf_counter()
        async with RecordPublisher(bootstrap, ns) as pub:
            await import_file(FILE, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, publisher=pub)
        while sink.rows_written < n:
            await asyncio.sleep(0.01)
        rates.append(n / (time.perf_counter() - t))
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sink.stop()
        print(f"  import: {rates[-1]:,.0f} bars/s file->Postgres (parse alone {parse_rates[-1]:,.0f}/s)", flush=True)
    m, b = statistics.median(rates), statistics.median(parse_rates)
    return {
        "bars": n,
        "repeats": repeats,
        "file_to_postgres_bars_per_s_median": round(m),
        "baseline_csv_parse_bars_per_s_median": round(b),
        "ratio": round(m / b, 3),
    }


async def bench_features_agent(bootstrap: str, repeats: int, log_dir: Path) -> dict[str, Any]:
    bars = list(
        import_csv_file(FILE, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS).bars
    )[:20_000]
    clock = EventClock()
    pipe = FeaturePipeline(clock)
    expected = 0
    t = time.perf_counter()
    for b in bars:
        clock.advance(b.ts_event)
        if pipe.on_bar(b).features is not None:
            expected += 1
    in_process = len(bars) / (time.perf_counter() - t)
    rates = []
    for _ in range(repeats):
        ns = f"bf{uuid.uuid4().hex[:6]}"
        await ensure_topics(bootstrap, namespace=ns)
        async with RecordPublisher(bootstrap, ns) as pub:
            await pub.publish(bars, topic="market.bars")
        cons = AIOKafkaConsumer(
            physical_name("features", ns),
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await cons.start()
        worker = ChildProcess(
            "bench-features",
            worker_argv(bootstrap, "features", namespace=ns),
            log_dir / f"bench-features-{ns}.log",
            append=False,
        ).start()
        try:
            got, first = 0, None
            deadline = time.monotonic() + 300
            while got < expected and time.monotonic() < deadline:
                batch = await cons.getmany(timeout_ms=200)
                n = sum(len(v) for v in batch.values())
                if n and first is None:
                    first = time.perf_counter()  # the clock starts at the first vector (group join excluded)
                got += n
            if got < expected:
                raise RuntimeError(f"features agent produced {got}/{expected} within 300 s")
            assert first is not None
            rates.append(len(bars) / (time.perf_counter() - first))
        finally:
            worker.stop(timeout=30)
            await cons.stop()
        print(f"  features agent: {rates[-1]:,.0f} bars/s (in-process pipeline {in_process:,.0f}/s)", flush=True)
    m = statistics.median(rates)
    return {
        "bars": len(bars),
        "repeats": repeats,
        "agent_bars_per_s_median": round(m),
        "baseline_in_process_pipeline_bars_per_s": round(in_process),
        "ratio": round(m / in_process, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tradeflow bench market", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench_market.json"))
    out = ap.parse_args(argv).out
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with EmbeddedBroker(log_path=out.parent / "bench-market-tansu.log") as b, EmbeddedPostgres(persistent=True) as pg:
        print("history import ...", flush=True)
        results["import"] = asyncio.run(bench_import(b.bootstrap, pg, 3))
        print("features agent ...", flush=True)
        results["features_agent"] = asyncio.run(bench_features_agent(b.bootstrap, 3, out.parent))
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return EXIT_OK
