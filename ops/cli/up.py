"""``tradeflow up``: start the whole platform on this machine and keep it running (what ``make run`` runs).

The one-shot batch job (import history, backtest, gates) is ``tradeflow backfill``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.env import env_str
from runtime.exits import EXIT_USAGE

__all__ = ["add_parsers"]


def cmd_up(a: argparse.Namespace) -> int:
    from ops.embedded.platform import AlreadyRunning, UpOptions, up

    opts = UpOptions(
        data_dir=Path(a.data_dir),
        run_for_s=a.run_for,
        pace=a.pace,
        broker_storage=a.broker,
        live_from=a.live_from,
        train_from=a.train_from,
        web_host=a.web_host,
    )
    try:
        return up(opts)
    except AlreadyRunning as exc:
        print(f"tradeflow up: {exc}")
        return EXIT_USAGE


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser(
        "up",
        help="start the whole platform and keep it running (durable broker, Postgres, agents, feed, dashboard)",
        description=__doc__,
    )
    sp.add_argument("--data-dir", default=env_str("TRADEFLOW_DATA_DIR", "var"), help="everything lives here")
    sp.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run this long, print a summary and stop (default: until Ctrl-C / SIGTERM)",
    )
    sp.add_argument(
        "--pace",
        "--speed",
        type=float,
        default=1.0,
        help="recorded bars per second per symbol once the feed is live (event time stays recorded)",
    )
    sp.add_argument(
        "--broker",
        choices=("s3", "memory"),
        default="s3",
        help="s3: durable log on the local object store (default); memory: loses everything on restart",
    )
    sp.add_argument(
        "--live-from", default="2021-01-01", help="the feed publishes history before this at full speed, then paces"
    )
    sp.add_argument("--train-from", default="2020-07-01", help="first model's training window start")
    sp.add_argument(
        "--web-host",
        default=env_str("TRADEFLOW_WEB_HOST", "127.0.0.1"),
        help="bind address of the dashboard and worker web servers",
    )
    sp.set_defaults(fn=cmd_up)
