"""``tradeflow backfill``: the one-shot batch job on the embedded default, end to end.

1. a persistent PostgreSQL cluster under ``<data-dir>/pg`` (migrations applied);
2. a tansu broker on a free 127.0.0.1 port, every catalogued topic created;
3. worker processes: the faust worker hosting the pipeline agents, and the sink;
4. the bundled real candles imported into ``market.bars.raw``;
5. wait until every imported bar has flowed through the agents into Postgres;
6. a summary: records per topic, rows per table, dead letters, timings.

Re-running is idempotent: the same bars have the same event ids, so the row
counts do not grow (the summary says how many rows were new).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.market.csv_import import CsvFormatError, import_csv_file
from ops.embedded.broker import EmbeddedBroker
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import ChildProcess, cli_argv, worker_argv
from ops.jobs.ingest import SAMPLE_DIR, SAMPLE_FILES, ImportReport, SampleFile, import_file
from runtime.broker import client_security, ensure_topics
from runtime.exits import EXIT_OK, EXIT_USAGE
from runtime.publish import RecordPublisher
from storage.bars import count_checked
from storage.databases import recreate_database
from storage.features import count_stored, values_of
from storage.gates import count_results
from storage.migrate import migrate_dsn
from storage.status import data_quality_counts, dead_letter_counts, table_counts
from topics.records import FeatureVector
from topics.schema import TS_MIN_NS

log = structlog.get_logger("ops.jobs.runjob")

PIPELINE_AGENTS = ("bars-checker", "features")


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path
    files: tuple[str, ...] = ()
    fresh_db: bool = False
    timeout_s: float = 900.0


def _child(name: str, argv: list[str], log_dir: Path) -> ChildProcess:
    """A worker subprocess whose output goes to ``<log_dir>/<name>.log``."""
    return ChildProcess(name, argv, log_dir / f"{name}.log").start()


def _samples(opts: RunOptions) -> list[tuple[Path, SampleFile]]:
    if not opts.files:
        return [(SAMPLE_DIR / s.filename, s) for s in SAMPLE_FILES]
    by_name = {s.filename: s for s in SAMPLE_FILES}
    out = []
    for f in opts.files:
        p = Path(f)
        s = by_name.get(p.name)
        if s is None:
            raise SystemExit(f"{p.name}: unknown file; the run job imports the bundled files {sorted(by_name)}")
        out.append((p, s))
    return out


def _unreadable(opts: RunOptions) -> str | None:
    """Why a file to import cannot be read as a candle CSV (checked before anything starts)."""
    for path, s in _samples(opts):
        try:
            import_csv_file(path, venue=s.venue, symbol=s.symbol, timeframe=s.timeframe, ts_init=TS_MIN_NS)
        except (CsvFormatError, OSError) as exc:
            return f"cannot use {path}: {exc}"
    return None


def run_main_job(opts: RunOptions) -> int:
    problem = _unreadable(opts)
    if problem is not None:
        print(f"tradeflow backfill: {problem}", file=sys.stderr)
        return EXIT_USAGE
    data_dir = opts.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pg = EmbeddedPostgres(data_dir=data_dir / "pg", persistent=True)
    pg.start()
    broker = EmbeddedBroker(log_path=log_dir / "tansu.log")
    children: list[ChildProcess] = []
    try:
        broker.start()
        if opts.fresh_db:
            asyncio.run(_recreate_db(pg))
        asyncio.run(migrate_dsn(pg.dsn))
        asyncio.run(ensure_topics(broker.bootstrap))
        for agent in PIPELINE_AGENTS:  # one process per agent: they use separate cores
            children.append(_child(f"worker-{agent}", worker_argv(broker.bootstrap, agent), log_dir))
        children.append(_child("sink", cli_argv("sink", "--bootstrap", broker.bootstrap, "--dsn", pg.dsn), log_dir))
        summary = asyncio.run(_main(opts, pg.dsn, broker.bootstrap, children))
        summary["research"] = _research(pg.dsn, broker.bootstrap, children, log_dir)
    finally:
        for c in children:
            c.stop(timeout=20, kill_timeout=5)
        broker.stop()
        pg.stop()
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    _print_summary(summary)
    return EXIT_OK


async def _recreate_db(pg: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(pg.dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await recreate_database(conn, pg.database)
    finally:
        await conn.close()


async def _main(opts: RunOptions, dsn: str, bootstrap: str, children: list[ChildProcess]) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    before = await table_counts(conn)
    reports: list[ImportReport] = []
    t0 = time.perf_counter()
    async with RecordPublisher(bootstrap, name="csv-import") as pub:
        for path, s in _samples(opts):
            rep = await import_file(path, venue=s.venue, symbol=s.symbol, timeframe=s.timeframe, publisher=pub)
            reports.append(rep)
            log.info(
                "imported",
                file=rep.file,
                bars=rep.bars,
                rejects=rep.rejects,
                duplicates=rep.duplicates,
                seconds=round(rep.seconds, 2),
            )
    import_s = time.perf_counter() - t0
    expected = sum(r.bars for r in reports)
    replay = _replay_features(opts)
    # Every imported bar must arrive in the checked-bars table: the pipeline is done
    # when the projection holds one row per imported (venue, symbol, timeframe, open_time).
    keys = [(s.venue, s.symbol, s.timeframe) for _, s in _samples(opts)]
    deadline = time.monotonic() + opts.timeout_s
    last_report = 0.0
    while True:
        done = 0
        for venue, symbol, tf in keys:
            done += await count_checked(conn, venue, symbol, tf)
        if done >= expected:
            break
        for c in children:
            c.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"pipeline did not drain within {opts.timeout_s}s: {done}/{expected} bars")
        if time.monotonic() - last_report > 5:
            log.info("waiting_for_pipeline", stored=done, expected=expected)
            last_report = time.monotonic()
        await asyncio.sleep(0.5)
    # ... and every feature vector the same engines produce when replayed in-process.
    want = sorted(replay.vectors)
    while True:
        got = await count_stored(conn, want)
        if got >= len(want):
            break
        for c in children:
            c.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"features did not arrive within {opts.timeout_s}s: {got}/{len(want)}")
        if time.monotonic() - last_report > 5:
            log.info("waiting_for_features", stored=got, expected=len(want))
            last_report = time.monotonic()
        await asyncio.sleep(0.5)
    # Rows may already be there from an earlier run (idempotent re-run), so the rows
    # alone do not prove this run's messages flowed: also wait until the sink group
    # has committed this run's messages (the broker is fresh, offsets start at 0).
    await _wait_committed(bootstrap, {"market.bars": expected, "features": len(want)}, children, deadline)
    pipeline_s = time.perf_counter() - t0
    rows = await values_of(conn, want)
    live_digest = _digest(rows)
    replay_digest = _digest((eid, fv.values) for eid, fv in replay.vectors.items())
    await asyncio.sleep(1.0)  # let the sink flush the last dead letters / findings
    after = await table_counts(conn)
    dl = await dead_letter_counts(conn)
    dq = await data_quality_counts(conn)
    await conn.close()
    return {
        "imports": [r.__dict__ for r in reports],
        "import_seconds": round(import_s, 2),
        "pipeline_seconds": round(pipeline_s, 2),
        "bars_per_second_end_to_end": round(expected / pipeline_s, 1),
        "tables": {k: {"rows": v, "new_this_run": v - before.get(k, 0)} for k, v in after.items()},
        "dead_letters": dl,
        "data_quality": dq,
        "features": {
            "via_agents": len(rows),
            "via_in_process_replay": len(replay.vectors),
            "withheld_by_quality_block": replay.blocked,
            "warm_up_bars": replay.warm_up,
            "identical": live_digest == replay_digest,
            "digest": live_digest,
        },
        "data_dir": str(opts.data_dir),
        "pid": os.getpid(),
    }


async def _wait_committed(bootstrap: str, want: dict[str, int], children: list[ChildProcess], deadline: float) -> None:
    """Until the sink group's committed offsets cover ``want[topic]`` messages per topic."""
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id="tradeflow-sink", enable_auto_commit=False, **client_security()
    )
    await probe.start()
    try:
        await probe.topics()  # loads partition metadata for every topic
        while True:
            short = {}
            for name, n in want.items():
                parts = probe.partitions_for_topic(name) or set()
                total = 0
                for p in parts:
                    total += await probe.committed(TopicPartition(name, p)) or 0
                if total < n:
                    short[name] = (total, n)
            if not short:
                return
            for c in children:
                c.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"sink did not commit this run's messages in time: {short}")
            await asyncio.sleep(0.5)
    finally:
        await probe.stop()


@dataclass
class _Replay:
    vectors: dict[str, FeatureVector]
    blocked: int
    warm_up: int


def _replay_features(opts: RunOptions) -> _Replay:
    """The same feature pipeline, in-process over the same files, event time as the clock."""
    out = _Replay({}, 0, 0)
    for path, s in _samples(opts):
        clock = EventClock()
        pipe = FeaturePipeline(clock)
        for bar in import_csv_file(path, venue=s.venue, symbol=s.symbol, timeframe=s.timeframe, ts_init=TS_MIN_NS).bars:
            clock.advance(bar.ts_event)
            o = pipe.on_bar(bar)
            if o.features is not None:
                out.vectors[o.features.event_id] = o.features
            elif o.blocked_by:
                out.blocked += 1
            elif o.rejected is None:
                out.warm_up += 1
    return out


def _digest(items: Iterable[tuple[str, tuple[float, ...]]]) -> str:
    h = hashlib.sha256()
    for eid, vals in sorted(items):
        h.update(eid.encode())
        h.update(struct.pack(f"<{len(vals)}d", *vals))
    return h.hexdigest()


#: The research step of the main job: a walk-forward backtest of the tanh-sizer on model signals
#: (MLP trained in-process per window, polarity chosen on each training span) over a year of the
#: bundled Binance BTC/USDT 1h bars, then the gates on its track.
BACKTEST_ARGS = (
    "--symbols",
    "BTC/USDT",
    "--from",
    "2021-01-01",
    "--to",
    "2022-01-01",
    "--walk-forward",
    "4",
    "--polarity",
    "auto_train_ic",
    "--source",
    "prod",
)


def _research(dsn: str, bootstrap: str, children: list[ChildProcess], log_dir: Path) -> dict[str, Any]:
    """Backtest (results into Postgres) and gates (results on ``gates.results`` -> the sink -> Postgres),
    through the operator CLI, as a researcher would run them."""
    import json

    t0 = time.perf_counter()
    bt = subprocess.run(  # noqa: S603 - argv is ours
        cli_argv("backtest", "run", "--dsn", dsn, *BACKTEST_ARGS),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    (log_dir / "backtest.log").write_text(bt.stdout + bt.stderr)
    if bt.returncode != 0:
        raise RuntimeError(f"backtest failed (exit {bt.returncode}): {bt.stderr[-2000:]}")
    backtest = json.loads(bt.stdout.strip().splitlines()[-1])
    backtest_s = time.perf_counter() - t0
    gates = subprocess.run(  # noqa: S603 - argv is ours
        cli_argv(
            "gates",
            "evaluate",
            "--dsn",
            dsn,
            "--bootstrap",
            bootstrap,
            "--track",
            backtest["track"],
            "--json",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    (log_dir / "gates.log").write_text(gates.stdout + gates.stderr)
    if gates.returncode not in (0, 1):  # 1 = a gate failed / not ready: a verdict, not an error
        raise RuntimeError(f"gates evaluate failed (exit {gates.returncode}): {gates.stderr[-2000:]}")
    results = [json.loads(line) for line in gates.stdout.splitlines() if line.startswith("{")]
    ids = [r["result_id"] for r in results]

    async def stored() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + 60
            while True:
                n = await count_results(conn, ids)
                if n >= len(ids) or time.monotonic() > deadline:
                    return n
                for c in children:
                    c.check_alive()
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    return {
        "backtest": backtest,
        "backtest_seconds": round(backtest_s, 1),
        "gates": results,
        "gates_exit": gates.returncode,
        "gate_rows_stored": asyncio.run(stored()),
    }


def _print_summary(s: dict[str, Any]) -> None:
    print("\n=== tradeflow backfill: summary ===")
    for r in s["imports"]:
        print(
            f"imported {r['file']}: {r['bars']} bars, {r['rejects']} rejected rows, "
            f"{r['duplicates']} duplicate rows, partial last candle: {'yes' if r['partial_last'] else 'no'} "
            f"({r['seconds']:.2f}s)"
        )
    print(
        f"import {s['import_seconds']}s; pipeline drained in {s['pipeline_seconds']}s "
        f"({s['bars_per_second_end_to_end']} bars/s end to end)"
    )
    print("\nPostgres rows per table (new this run):")
    for table, v in s["tables"].items():
        print(f"  {table:<24} {v['rows']:>9}  (+{v['new_this_run']})")
    f = s["features"]
    print(
        f"\nfeatures: {f['via_agents']} via the agents, {f['via_in_process_replay']} via in-process replay of the "
        f"same engines; identical: {f['identical']} (sha256 {f['digest'][:16]}); "
        f"{f['withheld_by_quality_block']} withheld by quality blocks, {f['warm_up_bars']} warm-up bars"
    )
    print("\ndata-quality findings (venue symbol timeframe check severity: count, first at):")
    for d in s["data_quality"]:
        first = datetime.fromtimestamp(d["first"] / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M")
        print(
            f"  {d['venue']:<10} {d['symbol']:<9} {d['timeframe']:<4} {d['check_name']:<20} {d['severity']:<8} "
            f"{d['n']:>5}  {first}"
        )
    print("\ndead letters by consumer/source/reason:")
    for d in s["dead_letters"] or []:
        print(f"  {d['consumer']:<14} {d['source_topic']:<40} {d['reason']:<20} {d['n']}")
    if not s["dead_letters"]:
        print("  none")
    r = s.get("research")
    if r:
        b = r["backtest"]
        m = b["metrics"]
        print(
            f"\nbacktest {b['run_id'][:16]} ({b['status']}, source {b['source']}, track {b['track']}, "
            f"{r['backtest_seconds']}s): decision hash {b['decision_hash'][:16]}, {b['fills']} fills"
        )
        for k in (
            "pnl_after_costs",
            "fees",
            "slippage",
            "impact",
            "sharpe_daily",
            "max_drawdown",
            "turnover",
            "trade_count",
            "win_rate",
            "reject_rate",
            "observation_days",
        ):
            v = m.get(k)
            print(f"  {k:<18} {'missing' if v is None else round(v, 4)}")
        print(
            f"gates on that track (exit {r['gates_exit']}: {'ready' if r['gates_exit'] == 0 else 'not ready'}; "
            f"{r['gate_rows_stored']}/{len(r['gates'])} results stored via the broker):"
        )
        for g in r["gates"]:
            value = "missing" if g.get("value") is None else round(g["value"], 4)
            print(
                f"  {g['gate']:<10} {g['metric']:<16} {g['status']:<24} value {value} "
                f"{g.get('comparator', '')} {g.get('threshold', '')}"
                + (f"  blockers: {'; '.join(g['blockers'])}" if g.get("blockers") else "")
            )
    print(f"\ntotal {s['total_seconds']}s; data in {s['data_dir']}")
