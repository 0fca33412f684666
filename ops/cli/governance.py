"""``tradeflow rollout``: where every model rollout stands, and its audit trail.

::

    tradeflow rollout status [--model-id M] [--json]
    tradeflow rollout audit  [--model-id M] [--symbol S] [--limit N] [--json]

``status`` prints, per rollout (model_id, symbol), every version's current
registry stage with its capital fraction, and governance's latest decision
(consecutive passing / failing windows against the thresholds, and why).
``audit`` prints the decisions newest first (``rollout_audit`` view): who or
what acted (``governance`` or ``operator:<name>``), on which gate window,
with which thresholds and config hash, and the result.

Read from PostgreSQL (the sink stores ``governance.audit`` and
``models.registry``). To act, use ``tradeflow control rollout promote|rollback``
(signed). Exit codes: 0 ok, 1 nothing found for ``--model-id``, 3 database
unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from agents.governance.config import GovernanceConfig
from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE
from storage import registry, rollout
from storage.connection import Conn
from topics.records import ModelStage

__all__ = ["add_parsers", "cmd_rollout_audit", "cmd_rollout_status"]

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_Row = TypeVar("_Row")


async def _fetch(dsn: str, timeout_s: float, read: Callable[[Conn], Awaitable[list[_Row]]]) -> list[_Row]:
    conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout_s)
    try:
        return await read(conn)
    finally:
        await conn.close()


def _fraction(stage: str) -> float:
    try:
        return GovernanceConfig().capital_fraction(ModelStage(stage))
    except ValueError:
        return 0.0


def status_rows(stages: list[Any], latest: list[Any]) -> list[dict[str, Any]]:
    """One row per rollout: its versions' stages and the latest governance decision."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for r in stages:
        key = (r["model_id"], r["symbol"] or "?")
        row = by_key.setdefault(key, {"model_id": key[0], "symbol": key[1], "versions": [], "decision": None})
        row["versions"].append(
            {"version": r["version"], "stage": r["stage"], "capital_fraction": _fraction(r["stage"])}
        )
    for d in latest:
        key = (d["model_id"], d["symbol"])
        row = by_key.setdefault(key, {"model_id": key[0], "symbol": key[1], "versions": [], "decision": None})
        row["decision"] = {
            k: d[k]
            for k in (
                "version",
                "stage",
                "action",
                "reason",
                "passing_windows",
                "failing_windows",
                "windows_to_promote",
                "windows_to_rollback",
                "window_end",
                "config_hash",
                "ts_event",
            )
        }
    return [by_key[k] for k in sorted(by_key)]


def cmd_rollout_status(a: argparse.Namespace) -> int:
    try:
        stages = asyncio.run(_fetch(a.dsn, a.timeout_s, lambda c: registry.current_stages(c, a.model_id)))
        latest = asyncio.run(_fetch(a.dsn, a.timeout_s, lambda c: rollout.latest_decisions(c, a.model_id)))
    except _DB_ERRORS as exc:
        print(f"tradeflow rollout: database unreachable ({type(exc).__name__})", file=sys.stderr)
        return EXIT_INFRA
    rows = status_rows(stages, latest)
    if not rows:
        print("no rollouts" + (f" for {a.model_id}" if a.model_id else ""), file=sys.stderr)
        return EXIT_FAIL if a.model_id else EXIT_OK
    if a.json:
        print(json.dumps(rows, default=str))
        return EXIT_OK
    for row in rows:
        print(f"{row['model_id']}  {row['symbol']}")
        for v in sorted(row["versions"], key=lambda v: v["version"]):
            print(f"    {v['version']:<20} {v['stage']:<12} capital {v['capital_fraction']:.0%}")
        d = row["decision"]
        if d is None:
            print("    governance: no decision yet")
        else:
            print(
                f"    governance: {d['action']} {d['version']} -> {d['stage']} | passing "
                f"{d['passing_windows']}/{d['windows_to_promote']} failing {d['failing_windows']}/"
                f"{d['windows_to_rollback']} | config {d['config_hash']} | {d['reason']}"
            )
    return EXIT_OK


def cmd_rollout_audit(a: argparse.Namespace) -> int:
    if a.limit < 1:
        print("tradeflow rollout audit: --limit must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        rows = asyncio.run(_fetch(a.dsn, a.timeout_s, lambda c: rollout.audit_trail(c, a.model_id, a.symbol, a.limit)))
    except _DB_ERRORS as exc:
        print(f"tradeflow rollout: database unreachable ({type(exc).__name__})", file=sys.stderr)
        return EXIT_INFRA
    if not rows:
        print("no rollout decisions" + (f" for {a.model_id}" if a.model_id else ""), file=sys.stderr)
        return EXIT_FAIL if a.model_id else EXIT_OK
    for r in rows:
        d = dict(r)
        for k in ("gates", "gate_result_ids"):
            d[k] = json.loads(d[k]) if isinstance(d[k], str) else d[k]
        if a.json:
            print(json.dumps(d, default=str))
        else:
            window = "" if d["window_end"] is None else f" window_end={d['window_end']} ({d['window_status']})"
            print(
                f"{d['ts_event']} {d['model_id']} {d['symbol'] or '*'} {d['version']}: {d['action']} "
                f"{d['from_stage']} -> {d['to_stage']} by {d['actor']} [{d['trigger']}]{window} "
                f"passing {d['passing_windows']}/{d['windows_to_promote']} failing "
                f"{d['failing_windows']}/{d['windows_to_rollback']} config {d['config_hash']}: {d['reason']}"
            )
    return EXIT_OK


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    """Add ``rollout status`` / ``rollout audit`` to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "rollout",
        help="model rollout status and governance audit trail",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = sp.add_subparsers(dest="rollout_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        infra(p, dsn=True)
        p.add_argument("--model-id", default=None)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout-s", type=float, default=10.0, help="database connect timeout (exit 3)")

    st = rsub.add_parser("status", help="every rollout: versions, stages, capital, latest decision")
    common(st)
    st.set_defaults(fn=cmd_rollout_status)

    au = rsub.add_parser("audit", help="governance decisions, newest first")
    common(au)
    au.add_argument("--symbol", default=None)
    au.add_argument("--limit", type=int, default=50)
    au.set_defaults(fn=cmd_rollout_audit)
