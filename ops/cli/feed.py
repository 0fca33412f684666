"""``tradeflow feed``: the recorded-market feed, the bundled candles played as a live market.

``tradeflow feed [--file NAME ...] [--pace 1.0] [--from ISO] [--until ISO] [--max-bars N] [--warmup N] [--feed NAME]``
    Publishes the recorded bars to ``market.bars.raw`` in event-time order (every bar
    closing at the same instant together, across symbols) at ``--pace`` bars per second
    of the longest timeframe fed: 1.0 over the bundled files is one 1h bar per second
    per symbol (and two 30m bars per second per 30m symbol). Each file is one stream
    with a fixed identity (``source=recorded:<file name>``), so restarts and chunks
    continue one feature stream. It resumes after the last bar the broker acknowledged
    (positions in PostgreSQL, table ``feed_positions``); on a first start ``--from``
    skips earlier bars and ``--warmup N`` publishes N bars at once before pacing. At
    the end of the data it logs ``feed_exhausted`` and idles until stopped (with ``--until ISO``
    it exits 0 instead once every bar closing at or before ISO is out: a one-shot import of
    history that a rerun completes and never goes past); SIGTERM /
    SIGINT stop it cleanly (exit 0). Exit 3 when the broker or the database is lost
    (a restart resumes), 2 for a bad command line.
    Design: docs/market_data.md#recorded-market-feed
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog

from runtime.errors import BadInput
from runtime.exits import EXIT_INFRA, EXIT_OK, EXIT_USAGE

__all__ = ["add_parsers", "cmd_feed"]

log = structlog.get_logger("ops.cli.feed")


def cmd_feed(a: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from agents.market.recorded_feed import FeedError
    from ops.jobs.feed import FeedOptions, bundled_files, feed_file
    from topics.units import parse_when

    try:
        files = tuple(feed_file(f) for f in a.files) if a.files else bundled_files()
        start = parse_when(a.start) if a.start else None
        until = parse_when(a.until) if a.until else None
        opts = FeedOptions(
            files=files,
            bootstrap=a.bootstrap,
            dsn=a.dsn,
            namespace=a.namespace,
            feed=a.feed,
            pace=a.pace,
            start_open_time=start,
            max_bars=a.max_bars,
            until=until,
            warmup_bars=a.warmup,
        )
        for f in files:
            if not f.path.is_file():
                raise FeedError(f"no such file: {f.path}")
    except (BadInput, ValueError) as exc:
        print(f"tradeflow feed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if a.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(a.metrics_port, addr="127.0.0.1")
    try:
        return asyncio.run(_main(opts))
    except BadInput as exc:  # a file that is not a candle CSV (CsvFormatError names the file and line)
        print(f"tradeflow feed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KafkaError, asyncpg.PostgresError, OSError) as exc:
        log.critical("feed_infrastructure_lost", error=f"{type(exc).__name__}: {exc}")
        print(f"tradeflow feed: broker or database lost ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_INFRA


async def _main(opts: Any) -> int:
    from ops.jobs.feed import run_feed

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rep = await run_feed(opts, stop)
    print(
        f"feed {opts.feed}: {rep.published} bars published in {rep.wall_s:.1f} s "
        f"({rep.stopped_by}{', data exhausted' if rep.exhausted else ''}; max lag {rep.max_lag_s:.3f} s)"
    )
    return EXIT_OK


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    """Add ``feed`` to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "feed",
        help="play the bundled candles as a live market into market.bars.raw (resumes where it stopped)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infra(sp, dsn=True)
    sp.add_argument(
        "--file",
        dest="files",
        action="append",
        metavar="NAME",
        help="a bundled file (ops/sample_data) or PATH,VENUE,SYMBOL,TIMEFRAME; repeatable (default: all bundled)",
    )
    sp.add_argument(
        "--pace",
        "--speed",
        type=float,
        default=1.0,
        metavar="PACE",
        help="bars per second of the longest timeframe fed (default 1.0: one 1h bar per second per symbol)",
    )
    sp.add_argument(
        "--from", dest="start", metavar="ISO", help="ISO date/time (UTC): skip bars opening earlier on a first start"
    )
    sp.add_argument(
        "--until",
        metavar="ISO",
        help="ISO date/time (UTC): exit 0 once every bar closing at or before it is published (one-shot history)",
    )
    sp.add_argument("--max-bars", type=int, metavar="N", help="stop after publishing N bars in this run (exit 0)")
    sp.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="on a fresh feed, publish the first N bars (longest timeframe) at once, then pace (features need 73)",
    )
    sp.add_argument(
        "--feed", default="recorded", help="the feed's name: positions are kept per feed (default recorded)"
    )
    sp.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:N (0: off)")
    sp.set_defaults(fn=cmd_feed)
