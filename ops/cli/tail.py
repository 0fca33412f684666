"""``tradeflow tail`` and ``tradeflow status``: watch the platform from a terminal.

``tradeflow tail TOPIC [--from-beginning] [--limit N] [--symbol S] [--group G]``
    A live consumer of any catalogued topic, printing one JSON record per line
    (the wire format, validated with the project's strict codec). It is also
    the reference for outside consumers of ``signals``: a plain Kafka consumer
    (aiokafka here; any client in any language works the same), reading the
    documented JSON records. Without ``--group`` it joins no consumer group
    (nothing is committed; every run starts at the end, or at the beginning
    with ``--from-beginning``); with ``--group`` it commits what it printed,
    so a restart goes on where it stopped. A record that fails validation is
    reported on stderr with its reason and coordinates, never fatal.

``tradeflow status``
    One screen of state from PostgreSQL and the broker: when a ``tradeflow up``
    runs on the data dir, its supervised programs (how many run, each one down
    with supervisord's state), broker reachable and
    every catalogued topic present, database reachable and its migration
    version, latest portfolio per account, per account the signals in, intents
    out and the top reasons a signal was not traded or an order was denied
    (the trading journal and the risk decisions), kill-switch commands in force
    according to the control audit, current gate results with blockers, model
    rollout stages, dead letters. Exit 0 when broker and database are up (and
    no supervised object store, broker or PostgreSQL is down), 3 otherwise (the
    sections that could be read are still printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from runtime.broker import client_security
from runtime.exits import EXIT_INFRA, EXIT_OK, EXIT_USAGE

#: the supervised programs whose loss makes ``tradeflow status`` exit 3 (as broker and database do)
INFRA = ("objectstore", "broker", "postgres")

__all__ = ["add_parsers"]


# ---------------------------------------------------------------------------
# tail
# ---------------------------------------------------------------------------


def cmd_tail(a: argparse.Namespace) -> int:
    from topics.catalogue import TOPICS

    names = {t.name for t in TOPICS}
    if a.topic not in names:
        print(f"tradeflow tail: unknown topic {a.topic!r}; known: {', '.join(sorted(names))}", file=sys.stderr)
        return EXIT_USAGE
    if a.limit is not None and a.limit < 1:
        print("tradeflow tail: --limit must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_tail(a))
    except KeyboardInterrupt:
        return EXIT_OK


async def _tail(a: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaConsumer

    from topics.catalogue import physical_name, spec
    from topics.schema import RecordError, codec_for

    s = spec(a.topic)
    codec = codec_for(s.record)
    topic = physical_name(a.topic, a.namespace)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=a.bootstrap,
        group_id=a.group or None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if a.from_beginning else "latest",
        **client_security(),
    )
    await consumer.start()
    printed = 0
    idle = 0.0
    try:
        while a.limit is None or printed < a.limit:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        rec = codec.decode(m.value or b"")
                    except RecordError as exc:
                        print(
                            f"invalid record at {tp.topic}[{tp.partition}]@{m.offset}: {exc.reason.value}: {exc}",
                            file=sys.stderr,
                        )
                        continue
                    if a.symbol and getattr(rec, "symbol", None) != a.symbol:
                        continue
                    sys.stdout.write((m.value or b"").decode() + "\n")
                    printed += 1
                    if a.limit is not None and printed >= a.limit:
                        break
                if a.limit is not None and printed >= a.limit:
                    break
            sys.stdout.flush()
            if a.group and batch:
                await consumer.commit()
            idle = 0.0 if batch else idle + 0.5
            if a.idle_exit_s and idle >= a.idle_exit_s:
                break
    finally:
        await consumer.stop()
    return EXIT_OK


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------


def cmd_status(a: argparse.Namespace) -> int:
    report = asyncio.run(_status(a.dsn, a.bootstrap, a.namespace))
    report.update(_programs())
    if a.json:
        print(json.dumps(report, sort_keys=True, default=str))
    else:
        _print_status(report)
    infra_down = [n for n in report.get("programs_down", {}) if n in INFRA]
    return EXIT_OK if report["broker"]["up"] and report["database"]["up"] and not infra_down else EXIT_INFRA


def _programs() -> dict[str, Any]:
    """The supervised programs of a ``tradeflow up`` running on the data dir (none: an empty dict)."""
    from pathlib import Path

    from ops.embedded.platform import Layout, live_platform
    from ops.embedded.supervisor import SupervisorError, program_states
    from runtime.env import env_str

    layout = Layout(Path(env_str("TRADEFLOW_DATA_DIR", "var")))
    info = live_platform(layout.data_dir)
    if info is None:
        return {}
    outages = {"outages": info.get("outages", [])}
    try:
        states = program_states(layout.run)
    except SupervisorError as exc:
        return {"programs": {}, "programs_down": {}, "programs_error": str(exc), **outages}
    return {
        **outages,
        "programs": {n: s["statename"] for n, s in sorted(states.items())},
        "programs_down": {
            n: f"{s['statename']}: {s['description']}" for n, s in sorted(states.items()) if s["statename"] != "RUNNING"
        },
        "supervisor_conf": str(layout.run / "supervisord.conf"),
    }


async def _status(dsn: str, bootstrap: str, namespace: str) -> dict[str, Any]:
    import asyncpg
    from aiokafka import AIOKafkaConsumer

    from storage import status
    from topics.catalogue import TOPICS, physical_name

    out: dict[str, Any] = {}
    try:
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **client_security())
        await asyncio.wait_for(probe.start(), 10)
        try:
            present = await asyncio.wait_for(probe.topics(), 10)
        finally:
            await probe.stop()
        missing = [t.name for t in TOPICS if physical_name(t.name, namespace) not in present]
        out["broker"] = {"up": True, "bootstrap": bootstrap, "missing_topics": missing}
    except Exception as exc:  # KafkaError, OSError, timeout ...: any failure means the broker is not usable
        out["broker"] = {"up": False, "bootstrap": bootstrap, "error": f"{type(exc).__name__}: {exc}"}
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        out["database"] = {"up": False, "error": f"{type(exc).__name__}: {exc}"}
        return out
    try:
        version = await status.migration_version(conn)
        out["database"] = {"up": True, "migration": version}
        out["portfolios"] = await status.portfolios(conn)
        out["trading"] = await status.trading_flow(conn)
        out["kill_switch_commands"] = await status.kill_switch_commands(conn)
        out["opening"] = await status.opening(conn)
        out["gates"] = await status.current_gates(conn)
        out["rollout"] = await status.rollout(conn)
        out["dead_letters"] = await status.top_dead_letters(conn)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        out["database"] = {"up": True, "error": f"not migrated: {exc} (run `tradeflow migrate`)"}
    finally:
        await conn.close()
    return out


def _print_status(r: dict[str, Any]) -> None:
    if "programs" in r:
        running = sum(1 for state in r["programs"].values() if state == "RUNNING")
        down = "".join(f"\n          DOWN {n} ({why})" for n, why in r["programs_down"].items())
        print(
            f"programs  {running} of {len(r['programs'])} RUNNING"
            + (f"  ({r['programs_error']})" if r.get("programs_error") else "")
            + down
        )
        for o in r.get("outages", [])[-5:]:
            back = f"back at {o['back_at']} after {o['down_s']} s" if o["back_at"] else "STILL DOWN"
            print(f"outage    {o['program']} down at {o['down_at']} ({o['state']}), {back}")
    b = r["broker"]
    print(
        f"broker    {'UP' if b['up'] else 'DOWN'} {b['bootstrap']}"
        + (f"  missing topics: {', '.join(b['missing_topics'])}" if b.get("missing_topics") else "")
        + (f"  ({b['error']})" if b.get("error") else "")
    )
    d = r["database"]
    print(
        f"database  {'UP' if d['up'] else 'DOWN'}"
        + (f" migration {d['migration']}" if d.get("migration") else "")
        + (f"  ({d['error']})" if d.get("error") else "")
    )
    for p in r.get("portfolios", []):
        print(
            f"account   {p['account']}: equity {p['equity']:.2f} cash {p['cash']:.2f} drawdown {p['drawdown']:.4f} "
            f"realized {p['realized_pnl']:.2f} unrealized {p['unrealized_pnl']:.2f} fees {p['fees_paid']:.2f} "
            f"positions {p['q']}"
        )
    for t in r.get("trading", []):
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(t["verdicts"].items()))
        print(
            f"signals   {t['account']}: {t['signals_in']} in, {t['intents_out']} intents out"
            + (f" ({verdicts})" if verdicts else "")
            + (f", {t['held']} waiting for their bar" if t["held"] else "")
        )
        for label, reasons in (("not traded", t["skipped"]), ("denied", t["denied"])):
            if reasons:
                print(f"          {label}: " + ", ".join(f"{x['reason']} {x['n']}" for x in reasons))
    for o in r.get("opening", []):
        _print_opening(o)
    on = [k for k in r.get("kill_switch_commands", []) if k["command"] == "kill_switch_on"]
    print(
        f"kill      {len(on)} scope(s) last switched on by an operator"
        + "".join(f"\n          {k['scope']}:{k['target']} by {k['operator']}: {k['reason']}" for k in on)
    )
    for g in r.get("gates", []):
        value = "missing" if g["value"] is None else f"{g['value']:.4f}"
        print(
            f"gate      {g['track']} {g['gate']}:{g['metric']} {g['status']} (value {value} {g['comparator']} "
            f"{g['threshold']})" + (f" blockers {g['blockers']}" if g["blockers"] not in (None, "[]") else "")
        )
    for m in r.get("rollout", []):
        print(f"rollout   {m['model_id']} {m['symbol']} v{m['version']}: {m['stage']} ({m['action']}: {m['reason']})")
    for x in r.get("dead_letters", []):
        print(f"deadltr   {x['consumer']} {x['source_topic']} {x['reason']}: {x['n']}")


def _ns_text(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_opening(o: dict[str, Any]) -> None:
    """One account's opening status: ALLOWED, or BLOCKED with each blocker, its reason and time left."""
    as_of = f"as of market {_ns_text(o['market_ns'])}, wall {_ns_text(o['wall_ns'])}" if o["market_ns"] else ""
    if o["allowed"]:
        print(f"opening   {o['account']}: ALLOWED ({as_of})")
        return
    print(f"opening   {o['account']}: BLOCKED by {len(o['blockers'])} ({as_of})")
    for b in o["blockers"]:
        if b["until_ns"] is None:
            end = "until released" if b["code"].startswith("kill_switch") else "until the limit is back"
        else:
            end = f"{b['remaining_ns'] / 1e9:.0f} s left, until {_ns_text(b['until_ns'])} ({b['domain']} time)"
        print(f"          {b['code']} {b['scope']}:{b['target']} {end}: {b['detail']}")


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    sp = sub.add_parser(
        "tail",
        help="print records of a topic as JSON lines (live consumer; the outside-consumer example)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infra(sp)
    sp.add_argument("topic", help="catalogue name, e.g. signals")
    sp.add_argument("--from-beginning", action="store_true", help="start at the oldest retained record")
    sp.add_argument("--limit", type=int, default=None, help="stop after N records")
    sp.add_argument("--symbol", default="", help="only records of this symbol")
    sp.add_argument("--group", default="", help="consumer group: commit what was printed, resume there")
    sp.add_argument("--idle-exit-s", type=float, default=0.0, help="stop after this long without records (0: never)")
    sp.set_defaults(fn=cmd_tail)

    sp = sub.add_parser(
        "status",
        help="broker, database, portfolios, signals in / intents out and why not traded, opening status (every "
        "blocker, why, time left), kill switches, gates, rollout, dead letters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infra(sp, dsn=True)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)
