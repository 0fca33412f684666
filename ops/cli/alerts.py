"""``tradeflow alerts``: record Alertmanager's notifications in PostgreSQL and read them back.

``tradeflow alerts receive [--listen HOST:PORT] [--dsn DSN]``
    The webhook receiver Alertmanager posts to (``http://HOST:PORT/alerts``; ``/metrics`` and
    ``/health`` on the same port). Every alert of every notification becomes a row of
    ``alert_notifications``; a resent notification of the same alert state adds a delivery, not a
    row. A bad payload is answered 400 with its reason and logged; the receiver carries on.
    Runs until SIGTERM / SIGINT (exit 0); exit 2 for a bad ``--listen``.
``tradeflow alerts list [--alertname NAME] [--limit N] [--json]``
    The latest recorded alert states, newest first. Exit 3 when PostgreSQL is unreachable.
Design: docs/operations.md#alert-notifications
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from runtime.env import env_str
from runtime.exits import EXIT_INFRA, EXIT_OK, EXIT_USAGE

__all__ = ["add_parsers", "cmd_list", "cmd_receive"]

DEFAULT_LISTEN = "127.0.0.1:9095"


def cmd_receive(a: argparse.Namespace) -> int:
    from ops.observability.alert_receiver import parse_listen, serve

    try:
        host, port = parse_listen(a.listen)
    except ValueError as exc:
        print(f"tradeflow alerts receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    asyncio.run(serve(a.dsn, host, port))
    return EXIT_OK


def cmd_list(a: argparse.Namespace) -> int:
    import asyncpg

    from storage.alert_notifications import fetch

    async def main() -> list[dict[str, object]]:
        conn = await asyncpg.connect(a.dsn, timeout=10)
        try:
            return await fetch(conn, a.alertname, a.limit)
        finally:
            await conn.close()

    try:
        rows = asyncio.run(main())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tradeflow alerts list: database unreachable or not migrated: {exc}", file=sys.stderr)
        return EXIT_INFRA
    if a.json:
        print(json.dumps(rows, default=str, indent=1))
        return EXIT_OK
    for r in rows:
        ann = r["annotations"]
        summary = ann.get("summary", "") if isinstance(ann, dict) else ""
        print(
            f"{r['first_received_at']:%Y-%m-%d %H:%M:%S}  {r['status']:<8} {r['alertname']!s:<28} "
            f"{r['severity'] or '-'!s:<3} {r['receiver']!s:<12} x{r['deliveries']!s:<3} {summary}"
        )
    return EXIT_OK


def add_parsers(sub: Any, _infra: Callable[..., None]) -> None:
    """Add ``alerts receive`` and ``alerts list`` to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "alerts",
        help="record Alertmanager notifications in PostgreSQL (webhook receiver) and list them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    asub = sp.add_subparsers(dest="alerts_command", required=True)

    def dsn(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dsn",
            default=env_str("TRADEFLOW_DSN", "postgresql://postgres@127.0.0.1/tradeflow"),
            help="PostgreSQL DSN (env TRADEFLOW_DSN)",
        )

    rp = asub.add_parser("receive", help="serve the Alertmanager webhook on HOST:PORT/alerts and record every alert")
    dsn(rp)
    rp.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"bind address (default {DEFAULT_LISTEN})"
    )
    rp.set_defaults(fn=cmd_receive)

    lp = asub.add_parser("list", help="the latest recorded alert states, newest first")
    dsn(lp)
    lp.add_argument("--alertname", default=None)
    lp.add_argument("--limit", type=int, default=50)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(fn=cmd_list)
