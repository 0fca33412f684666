"""``tradeflow``: the operator and developer command line.

Exit codes scripts can trust (:mod:`runtime.exits`): 0 success, 1 failure of
the job itself, 2 usage or configuration error, 3 infrastructure lost
(broker/database), 130 interrupted.

Configuration: flags win over their ``TRADEFLOW_*`` variable, read when the
parser is built. ``tradeflow topics --config`` prints the configuration
reference (every variable, from :data:`runtime.env.VARIABLES`);
``docs/configuration.md`` is its output (``tradeflow topics --config >
docs/configuration.md``) and a test keeps the two equal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from runtime import logs
from runtime.env import ConfigError, env_int, env_str
from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

log = structlog.get_logger("ops.cli")


def _bars_checker() -> Callable[[Any, Any], Any]:
    from agents.market import checker

    return checker.register


def _bar_aggregator() -> Callable[[Any, Any], Any]:
    from agents.market import aggregator

    return aggregator.register


def _features() -> Callable[[Any, Any], Any]:
    from agents.features import agent

    return agent.register


def _trading() -> Callable[[Any, Any], Any]:
    from agents.trading import agent

    return agent.register


def _governance() -> Callable[[Any, Any], Any]:
    from agents.governance import agent

    return agent.register


def _trainer() -> Callable[[Any, Any], Any]:
    from gpu_workers import agents

    return agents.register_trainer


def _inference() -> Callable[[Any, Any], Any]:
    from gpu_workers import agents

    return agents.register_inference


def _dashboard() -> Callable[[Any, Any], Any]:
    from ops.dashboard import agent

    return agent.register


#: agent name (each module's ``NAME``; a test keeps them equal) -> the loader of its ``register``. A worker
#: imports only the modules of the agents it hosts: the trainer and inference module imports torch (~5 s and
#: ~200 MiB per process), which no other worker needs.
AGENT_LOADERS: dict[str, Callable[[], Callable[[Any, Any], Any]]] = {
    "bars-checker": _bars_checker,
    "bar-aggregator": _bar_aggregator,
    "features": _features,
    "trading": _trading,
    "governance": _governance,
    "trainer": _trainer,
    "inference": _inference,
    "dashboard": _dashboard,
}


def _agent_registry(names: Sequence[str] | None = None) -> dict[str, Callable[[Any, Any], Any]]:
    """Agent name -> its ``register(app, ctx)``, importing only the modules of ``names`` (all when None);
    unknown names are left out."""
    return {n: AGENT_LOADERS[n]() for n in (AGENT_LOADERS if names is None else names) if n in AGENT_LOADERS}


#: What each agent of :func:`_agent_registry` reads, writes and needs: ``tradeflow worker --help``.
#: name -> (topics in, topics out, environment and flags it needs). A test keeps it equal to the agents.
AGENT_NEEDS: dict[str, tuple[str, str, str]] = {
    "bars-checker": ("market.bars.raw", "market.bars", "-"),
    "bar-aggregator": ("market.ticks", "market.bars.raw", "TRADEFLOW_BAR_TIMEFRAMES (default 1m)"),
    "features": (
        "market.bars",
        "features, market.data_quality",
        "TRADEFLOW_STALE_CHECK_S (live feeds; default 0 = off)",
    ),
    "inference": (
        "features, models.registry",
        "signals, ops.alerts",
        "a model version in models.registry (shadow, canary or active) whose checkpoint this machine can read; "
        "TRADEFLOW_SIGNAL_KEY_<ID> (signs signals; unset: unsigned)",
    ),
    "trading": (
        "signals, market.bars, control, models.registry",
        "orders.intents, risk.decisions, orders.updates, fills, portfolio.state, control.audit, ops.alerts, "
        "risk.opening",
        "TRADEFLOW_DSN / --dsn (checkpoint, journal), TRADEFLOW_CONTROL_KEY_<ID>, TRADEFLOW_SIGNAL_KEY_<ID> "
        "(refuses unsigned signals; unset: trusts every signal); optional TRADEFLOW_TRADING_* "
        "(TRADEFLOW_TRADING_CONFIG: a TOML file), TRADEFLOW_STRATEGY_*, TRADEFLOW_RISK_*, TRADEFLOW_PAPER_*, "
        "TRADEFLOW_EXECUTION_*; one worker per account",
    ),
    "governance": (
        "gates.results, control, models.registry",
        "governance.audit, models.registry, control.audit, ops.alerts",
        "TRADEFLOW_CONTROL_KEY_<ID>; optional TRADEFLOW_GOVERNANCE_*; one worker",
    ),
    "trainer": (
        "jobs.train",
        "jobs.results, models.registry",
        "TRADEFLOW_DSN / --dsn (reads features), TRADEFLOW_ARTIFACTS (checkpoints, default var/models)",
    ),
    "dashboard": (
        "market.bars, signals, portfolio.state, risk.decisions, orders.updates, fills, control.audit, "
        "ops.alerts, gates.results, models.registry, governance.audit, deadletter, risk.opening",
        "the page on --web-port (/dashboard)",
        "TRADEFLOW_DASHBOARD_TOKEN(_FILE) (the token every route asks for); optional TRADEFLOW_DSN (database probe, "
        "skip reasons)",
    ),
}


def agent_topics(names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The catalogue topics agents ``names`` read and write, from :data:`AGENT_NEEDS` (each once, in
    table order). Dead letters are not listed: every consumer may write ``deadletter``."""
    from topics.catalogue import TOPICS

    catalogue = {t.name for t in TOPICS}
    ins: dict[str, None] = {}
    outs: dict[str, None] = {}
    for name in names:
        inputs, outputs, _ = AGENT_NEEDS[name]
        ins.update((t, None) for t in (x.strip() for x in inputs.split(",")) if t in catalogue)
        outs.update((t, None) for t in (x.strip() for x in outputs.split(",")) if t in catalogue)
    return tuple(ins), tuple(outs)


def _agents_help() -> str:
    """The agents table for ``worker --help`` (every worker also needs the broker: --bootstrap)."""
    lines = ["agents (every one also needs the broker: --bootstrap / TRADEFLOW_BOOTSTRAP):", ""]
    for name, (inputs, outputs, needs) in AGENT_NEEDS.items():
        lines += [f"  {name}", f"      in:    {inputs}", f"      out:   {outputs}", f"      needs: {needs}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# worker / sink / infra
# ---------------------------------------------------------------------------


def cmd_worker(a: argparse.Namespace) -> int:
    import faust

    from runtime.agent import AgentContext
    from runtime.faust_app import WorkerSettings, create_app

    unknown = [n for n in a.agents if n not in AGENT_LOADERS]
    if unknown:
        print(f"unknown agents {unknown}; known: {sorted(AGENT_LOADERS)}", file=sys.stderr)
        return EXIT_USAGE
    registry = _agent_registry(a.agents)
    if a.web_port == 0:  # any free port
        from ops.embedded.broker import free_port

        a.web_port = free_port()
    app_id = a.app_id or "tradeflow-" + "-".join(sorted(a.agents)) + (f"-{a.namespace}" if a.namespace else "")
    app = create_app(
        WorkerSettings(
            app_id=app_id,
            bootstrap=a.bootstrap,
            namespace=a.namespace,
            web_port=a.web_port,
            web_host=a.web_host,
            data_dir=env_str("TRADEFLOW_DATA_DIR", "var"),
            fetch_wait_ms=env_int("TRADEFLOW_FETCH_WAIT_MS", 20, minimum=0),
            topics=tuple(dict.fromkeys(sum(agent_topics(a.agents), ()))),
        )
    )
    ctx = AgentContext(app=app, wall_clock=time.time_ns, namespace=a.namespace, bootstrap=a.bootstrap, dsn=a.dsn)
    for name in a.agents:
        registry[name](app, ctx)
    worker = faust.Worker(
        app,
        loglevel=a.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        logging_config=logs.stdlib_config(a.log_level),
    )
    worker.execute_from_commandline()  # exits the process; non-zero on crash (e.g. BrokerLost)
    return EXIT_OK


def cmd_sink(a: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from runtime.broker import BrokerLost, BrokerWatchdog
    from storage.sink import SinkConfig, TopicSink
    from topics.catalogue import TOPICS, physical_name

    if a.metrics_port:
        start_http_server(a.metrics_port, addr=a.metrics_host)
    topics = tuple(a.topics) if a.topics else tuple(t.name for t in TOPICS)
    cfg = SinkConfig(
        bootstrap=a.bootstrap,
        dsn=a.dsn,
        namespace=a.namespace,
        group_id=a.group,
        topics=topics,
        fetch_wait_ms=env_int("TRADEFLOW_SINK_FETCH_WAIT_MS", 20, minimum=0),
    )

    async def main() -> int:
        sink = TopicSink(cfg)
        await sink.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watchdog = BrokerWatchdog(a.bootstrap, [physical_name(t, a.namespace) for t in topics])
        tasks = {asyncio.create_task(sink.run()), asyncio.create_task(watchdog.run()), asyncio.create_task(stop.wait())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, BrokerLost):
                    log.critical("sink_stopping_broker_lost", reason=str(exc))
                    return EXIT_INFRA
                if exc is not None:
                    raise exc
            return EXIT_OK
        finally:
            for t in tasks:
                t.cancel()
            await sink.stop()

    return asyncio.run(main())


def cmd_ingest_csv(a: argparse.Namespace) -> int:
    from agents.market.csv_import import CsvFormatError
    from ops.jobs.ingest import import_file
    from runtime.publish import RecordPublisher
    from topics.records import Timeframe

    try:
        timeframe = Timeframe(a.timeframe)
    except ValueError:
        print(
            f"tradeflow ingest csv: --timeframe {a.timeframe!r} is not one of {[t.value for t in Timeframe]}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def main() -> int:
        async with RecordPublisher(a.bootstrap, a.namespace, name="csv-import") as pub:
            total = 0
            for f in a.files:
                try:
                    rep = await import_file(Path(f), venue=a.venue, symbol=a.symbol, timeframe=timeframe, publisher=pub)
                except (CsvFormatError, FileNotFoundError, IsADirectoryError) as exc:
                    print(f"tradeflow ingest csv: cannot import {f}: {exc}", file=sys.stderr)
                    return EXIT_USAGE
                total += rep.bars
                print(
                    f"{rep.file}: {rep.bars} bars -> market.bars.raw, {rep.rejects} rows dead-lettered, "
                    f"{rep.duplicates} duplicate rows reported, {rep.conflicting} conflicting rows withheld "
                    f"({rep.bars / max(rep.seconds, 1e-9):,.0f} bars/s)"
                )
                if rep.conflicting:
                    print(
                        f"tradeflow ingest csv: {rep.file}: {rep.conflicting} rows disagree about their open time; "
                        "those bars are not imported (see the deadletter topic for each line)",
                        file=sys.stderr,
                    )
        return EXIT_OK if total else EXIT_FAIL

    return asyncio.run(main())


def cmd_ingest_history(a: argparse.Namespace) -> int:
    from agents.market.exchanges import CollectorError
    from ops.jobs.collect import history

    try:
        rep = asyncio.run(
            history(
                exchange_id=a.exchange,
                market_type=a.market_type,
                symbol=a.symbol,
                timeframe=a.timeframe,
                start=a.start,
                end=a.end,
                bootstrap=a.bootstrap,
                namespace=a.namespace,
                dsn=a.dsn,
                metrics_port=a.metrics_port,
            )
        )
    except CollectorError as exc:
        print(f"history download failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(rep)
    return EXIT_OK


def cmd_collect(a: argparse.Namespace) -> int:
    from agents.market.exchanges import CollectorError
    from agents.tracks import Tracks
    from ops.jobs.collect import live, live_config

    try:
        symbols = a.symbols or list(Tracks.from_env().collected_symbols(a.market_type))
        cfg = live_config(a.exchange, a.market_type, symbols, a.timeframes, a.api_url or None)
    except ValueError as exc:  # the command line: fix it, a restart changes nothing
        print(f"tradeflow collect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(live(cfg, bootstrap=a.bootstrap, namespace=a.namespace, metrics_port=a.metrics_port))
    except CollectorError as exc:
        print(f"live collection stopped: {exc}", file=sys.stderr)
        return EXIT_INFRA
    return EXIT_OK


def cmd_topics(a: argparse.Namespace) -> int:
    from ops.cli.schema_docs import catalogue_markdown

    if a.config:
        from runtime.env import configuration_markdown

        print(configuration_markdown(), end="")
        return EXIT_OK
    if a.create:
        from runtime.broker import ensure_topics

        names = asyncio.run(ensure_topics(a.bootstrap, namespace=a.namespace, replication_factor=a.replication_factor))
        print("\n".join(names))
        return EXIT_OK
    print(catalogue_markdown())
    return EXIT_OK


def cmd_migrate(a: argparse.Namespace) -> int:
    from storage.migrate import DatabaseUnreachable, ensure_database, migrate_dsn, where

    try:
        if asyncio.run(ensure_database(a.dsn)):
            print(f"created database {where(a.dsn)}")
        applied = asyncio.run(migrate_dsn(a.dsn))
    except DatabaseUnreachable as exc:  # one line, never a traceback nor the password
        print(f"tradeflow migrate: {exc}", file=sys.stderr)
        return EXIT_INFRA
    print(f"applied migrations: {applied or 'none pending'}")
    return EXIT_OK


def cmd_backfill(a: argparse.Namespace) -> int:
    from ops.jobs.runjob import RunOptions, run_main_job

    opts = RunOptions(data_dir=Path(a.data_dir), files=tuple(a.files) if a.files else (), fresh_db=a.fresh_db)
    return run_main_job(opts)


def cmd_bench(a: argparse.Namespace) -> int:
    from ops import bench

    return bench.run(a.name, a.args)


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tradeflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log-level", default=env_str("TRADEFLOW_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    def infra(sp: argparse.ArgumentParser, dsn: bool = False) -> None:
        sp.add_argument(
            "--bootstrap",
            default=env_str("TRADEFLOW_BOOTSTRAP", "127.0.0.1:9092"),
            help="Kafka bootstrap servers (env TRADEFLOW_BOOTSTRAP)",
        )
        sp.add_argument(
            "--namespace",
            default=env_str("TRADEFLOW_NAMESPACE", ""),
            help="topic name prefix isolating a deployment or test run",
        )
        if dsn:
            sp.add_argument(
                "--dsn",
                default=env_str("TRADEFLOW_DSN", "postgresql://postgres@127.0.0.1/tradeflow"),
                help="PostgreSQL DSN (env TRADEFLOW_DSN)",
            )

    from ops.cli.up import add_parsers as add_up_parsers

    add_up_parsers(sub)

    sp = sub.add_parser(
        "backfill",
        help="one-shot batch job: import the bundled history, backtest it and evaluate the gates, then stop",
    )
    sp.add_argument(
        "--data-dir",
        default=env_str("TRADEFLOW_DATA_DIR", "var"),
        help="where the persistent Postgres cluster and logs live",
    )
    sp.add_argument("--file", dest="files", action="append", help="CSV to import (default: bundled sample data)")
    sp.add_argument("--fresh-db", action="store_true", help="drop and recreate the database before the run")
    sp.set_defaults(fn=cmd_backfill)

    sp = sub.add_parser(
        "worker",
        help="run a faust worker hosting the given agents",
        epilog=_agents_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infra(sp, dsn=True)
    sp.add_argument("--agents", nargs="+", required=True, help="agent names: " + ", ".join(AGENT_NEEDS))
    sp.add_argument("--app-id", default="")
    sp.add_argument("--web-port", type=int, default=6066, help="/metrics and /health port (0: any free port)")
    sp.add_argument(
        "--web-host",
        default=env_str("TRADEFLOW_WEB_HOST", "127.0.0.1"),
        help="bind address of the worker's web server (default loopback only)",
    )
    sp.set_defaults(fn=cmd_worker)

    sp = sub.add_parser("sink", help="persist catalogued topics into Postgres (consumer group)")
    infra(sp, dsn=True)
    sp.add_argument("--group", default="tradeflow-sink")
    sp.add_argument("--topics", nargs="*", help="catalogue names (default: all)")
    sp.add_argument("--metrics-port", type=int, default=0)
    sp.add_argument(
        "--metrics-host",
        default=env_str("TRADEFLOW_METRICS_HOST", "127.0.0.1"),
        help="bind address of /metrics (default loopback; 0.0.0.0 in containers)",
    )
    sp.set_defaults(fn=cmd_sink)

    sp = sub.add_parser("ingest", help="load market data: a CSV file or an exchange's history")
    isub = sp.add_subparsers(dest="source", required=True)
    ip = isub.add_parser("csv", help="import candle CSVs (shared format or CryptoDataDownload export)")
    infra(ip)
    ip.add_argument("files", nargs="+")
    ip.add_argument("--venue", required=True)
    ip.add_argument("--symbol", required=True, help="unified symbol, e.g. BTC/USDT")
    ip.add_argument("--timeframe", required=True, help="1m 5m 15m 30m 1h 4h 1d")
    ip.set_defaults(fn=cmd_ingest_csv)
    ip = isub.add_parser("history", help="paginated, resumable fetch_ohlcv download into market.bars.raw")
    infra(ip, dsn=True)
    ip.add_argument("--exchange", required=True, help="binance | bitget | coinbase | okx")
    ip.add_argument("--market-type", default="spot", choices=["spot", "swap"])
    ip.add_argument("--symbol", required=True)
    ip.add_argument("--timeframe", required=True)
    ip.add_argument("--start", required=True, help="ISO date/time, UTC")
    ip.add_argument("--end", required=True, help="ISO date/time, UTC (exclusive)")
    ip.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:N (0: off)")
    ip.set_defaults(fn=cmd_ingest_history)

    sp = sub.add_parser("collect", help="live collection: ccxt.pro websockets with REST fallback")
    infra(sp)
    sp.add_argument("--exchange", required=True)
    sp.add_argument("--market-type", default="spot", choices=["spot", "swap"])
    sp.add_argument(
        "--symbols",
        nargs="+",
        default=None,
        help="ccxt unified symbols (default: both tracks' symbols of --market-type, TRADEFLOW_TRACK_*_SYMBOLS)",
    )
    sp.add_argument("--timeframes", nargs="*", default=["1m"])
    sp.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:N (0: off)")
    sp.add_argument(
        "--api-url",
        default=env_str("TRADEFLOW_EXCHANGE_API_URL", ""),
        metavar="URL",
        help="send the exchange's REST requests to this http(s)://host[:port] (a proxy or mirror; REST polling only)",
    )
    sp.set_defaults(fn=cmd_collect)

    from ops.cli.models import add_parsers as add_model_parsers

    add_model_parsers(sub, infra)

    from ops.cli.control import add_parsers as add_control_parsers

    add_control_parsers(sub, infra)
    from ops.cli.tuning import add_parsers as add_tuning_parsers

    add_tuning_parsers(sub, infra)

    from ops.cli.backtest import add_parsers as add_backtest_parsers

    add_backtest_parsers(sub, infra)

    from ops.cli.governance import add_parsers as add_governance_parsers

    add_governance_parsers(sub, infra)

    from ops.cli.alerts import add_parsers as add_alerts_parsers

    add_alerts_parsers(sub, infra)

    from ops.cli.slo import add_parsers as add_slo_parsers

    add_slo_parsers(sub, infra)

    from ops.cli.gates import add_parsers as add_gates_parsers

    add_gates_parsers(sub, infra)

    from ops.cli.tail import add_parsers as add_tail_parsers

    add_tail_parsers(sub, infra)

    from ops.cli.audit import add_parsers as add_audit_parsers

    add_audit_parsers(sub, infra)

    from ops.cli.feed import add_parsers as add_feed_parsers

    add_feed_parsers(sub, infra)

    from ops.cli.drill import add_parsers as add_drill_parsers

    add_drill_parsers(sub)

    from ops.cli.trading import add_parsers as add_trading_parsers

    add_trading_parsers(sub, infra)

    sp = sub.add_parser("topics", help="print the topic catalogue and schemas, or create the topics")
    infra(sp)
    sp.add_argument("--create", action="store_true", help="create every catalogued topic (idempotent)")
    sp.add_argument(
        "--config",
        action="store_true",
        help="print the configuration reference instead (every TRADEFLOW_* variable; docs/configuration.md)",
    )
    sp.add_argument("--replication-factor", type=int, default=1)
    sp.set_defaults(fn=cmd_topics)

    sp = sub.add_parser(
        "migrate", help="create the database if missing, apply SQL migrations (exit 3: PostgreSQL unreachable)"
    )
    infra(sp, dsn=True)
    sp.set_defaults(fn=cmd_migrate)

    from ops.bench import BENCHMARKS

    sp = sub.add_parser(
        "bench",
        help="run a benchmark (`all`: every one, as `make bench` does)",
        description="\n".join(f"{k:<11} {v}" for k, v in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("name", choices=[*BENCHMARKS, "all"])
    sp.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (NAME --help)")
    sp.set_defaults(fn=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ops.embedded.platform import cli_env_from_platform

    # a running `tradeflow up` on the data dir supplies the defaults (flags and the environment still win)
    os.environ.update(cli_env_from_platform(os.environ, Path(env_str("TRADEFLOW_DATA_DIR", "var"))))
    parser = build_parser()
    a = parser.parse_args(argv)
    logs.configure(a.log_level)
    from aiokafka.errors import KafkaConnectionError

    try:
        rc: int = a.fn(a)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:  # names the variable, never a secret value
        print(f"tradeflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaConnectionError as exc:
        print(
            f"tradeflow: broker unreachable ({exc}); is it running? (--bootstrap / TRADEFLOW_BOOTSTRAP)",
            file=sys.stderr,
        )
        return EXIT_INFRA
    except OSError as exc:  # asyncpg connection refused and friends
        print(f"tradeflow: infrastructure unreachable: {exc}", file=sys.stderr)
        return EXIT_INFRA
    return rc
