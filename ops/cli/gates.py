"""``tradeflow gates``: evaluate a track's gates and read their current state.

::

    tradeflow gates evaluate [--track T ...] [--lookback 180d] [--source prod] [--as-of ISO] [--set NAME=VALUE ...]
                             [--json] [--every 15m --metrics-port N]
    tradeflow gates status [--track T] [--json]

``evaluate`` loads the track's backtest runs, paper fills and real order updates from PostgreSQL,
runs :mod:`agents.gates.engine`, stores the config under its hash and the parity attribution,
publishes every result on ``gates.results`` and prints it with its blockers; the evaluation
time is the wall clock or ``--as-of`` (same time and config: same event ids). ``--every``
repeats it as a service. Without ``--track``: ``TRADEFLOW_GATES_TRACKS``, else every track
with a run. The config is the default, then ``TRADEFLOW_GATES_LOOKBACK`` /
``_MIN_VALID_RUNS`` / ``_REJECT_MIN_ORDERS``, then ``--lookback`` and ``--set``.
``status`` prints the current result per gate/track/metric (``gate_current``); its exit
code leaves out the track named ``vc`` (rows carry no symbols).

Exit codes: 0 every gate passed and every track is ready; 1 a gate failed or
a readiness is not ``passed`` (insufficient evidence is not ready; no track
at all is not ready either); 2 usage;
3 database or broker unreachable, or the database not migrated. A monitor-only
track (the ``vc`` track of :mod:`agents.tracks`: named ``vc``, or every symbol of its
runs on it) is evaluated, published and printed like any other but never sets exit 1:
it never trades, so its gates report and do not block.

Design: docs/gates.md#tradeflow-gates
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from agents.gates.config import VALID_SOURCES, GateConfig, parse_duration_ns
from agents.gates.engine import Evaluation, TrackInputs, evaluate_track, exclusion_reason, execution_symbols
from agents.tracks import Tracks
from ops.cli.usage import UsageError
from runtime.env import env_list, env_str
from runtime.errors import Retriable
from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE
from runtime.metrics import GATE_STATUS, gate_status_value
from runtime.publish import RecordPublisher
from storage import gates as store
from topics.records import GateResult, GateStatus
from topics.units import parse_when

__all__ = ["add_parsers", "build_config", "evaluate_once", "format_result"]

#: Comma-separated tracks ``evaluate`` takes when no ``--track`` is given (else: every track with runs).
TRACKS_ENV = "TRADEFLOW_GATES_TRACKS"
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class InfraError(Retriable, RuntimeError):
    """Database or broker unreachable or not migrated (exit 3)."""


# ---------------------------------------------------------------------------
# config and evaluation
# ---------------------------------------------------------------------------


def build_config(a: argparse.Namespace, environ: Mapping[str, str] | None = None) -> GateConfig:
    """The config the environment and command line ask for; UsageError names the bad one."""
    overrides: dict[str, float | int | str] = {"sources": a.source}
    try:
        if a.lookback is not None:
            overrides["lookback_ns"] = parse_duration_ns(a.lookback)
        for pair in a.set or []:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
            overrides[name.strip()] = value.strip()
        return GateConfig.from_env(environ).with_overrides(overrides)
    except ValueError as exc:  # ConfigError included
        raise UsageError(str(exc)) from None


async def load_inputs(conn: asyncpg.Connection, track: str, cfg: GateConfig, now_ns: int) -> TrackInputs:
    missing = await store.missing_tables(conn)
    if missing:
        raise InfraError(f"database not migrated (missing {', '.join(missing)}): run `tradeflow migrate`")
    runs = await store.load_runs(conn, track)
    valid = [r for r in runs if exclusion_reason(r, cfg) is None]
    start = now_ns - max(cfg.parity_windows_ns)
    symbols = sorted({s for r in valid for s in r.symbols})
    bt = await store.load_backtest_fills(conn, [r.run_id for r in valid], start, now_ns)
    paper = await store.load_paper_fills(conn, symbols, cfg.paper_adapter, start, now_ns) if symbols else []
    traded = execution_symbols([r for r in runs if r.track == track], cfg, now_ns)
    updates = await store.load_order_updates(conn, traded, now_ns - cfg.lookback_ns, now_ns) if traded else []
    return TrackInputs(
        track=track,
        runs=tuple(runs),
        backtest_fills=tuple(bt),
        paper_fills=tuple(paper),
        order_updates=tuple(updates),
    )


async def evaluate_once(
    track: str, cfg: GateConfig, now_ns: int, *, dsn: str, bootstrap: str, namespace: str, timeout_s: float
) -> Evaluation:
    """Load, decide, record details, publish; raises InfraError when infrastructure fails."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout_s)
        try:
            inputs = await load_inputs(conn, track, cfg, now_ns)
            evaluation = evaluate_track(inputs, cfg, now_ns)
            async with conn.transaction():
                await store.write_config(conn, cfg)
                await store.write_attributions(conn, evaluation.parity)
        finally:
            await conn.close()
    except _DB_ERRORS as exc:
        raise InfraError(f"database unreachable or failing ({type(exc).__name__}: {exc})") from exc
    try:
        await asyncio.wait_for(_publish(evaluation.results, bootstrap, namespace), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise InfraError(f"broker unreachable at {bootstrap} ({type(exc).__name__}); results not published") from exc
    for r in evaluation.results:
        GATE_STATUS.labels(r.gate, r.track, r.metric).set(gate_status_value(r.status.value))
    return evaluation


async def _all_tracks(dsn: str, timeout_s: float) -> list[str]:
    """Every track with a backtest run (``--track`` omitted and no ``TRADEFLOW_GATES_TRACKS``)."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout_s)
        try:
            missing = await store.missing_tables(conn)
            if missing:
                raise InfraError(f"database not migrated (missing {', '.join(missing)}): run `tradeflow migrate`")
            return await store.list_tracks(conn)
        finally:
            await conn.close()
    except _DB_ERRORS as exc:
        raise InfraError(f"database unreachable or failing ({type(exc).__name__}: {exc})") from exc


async def _publish(results: Sequence[GateResult], bootstrap: str, namespace: str) -> None:
    async with RecordPublisher(bootstrap, namespace, name="gates-cli") as pub:
        await pub.publish(results)


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------


def format_result(r: GateResult | dict[str, Any]) -> str:
    """One result as text: status, gate/metric, value vs threshold, evidence, blockers indented."""
    d = _as_dict(r)
    value = "missing" if d["value"] is None else f"{d['value']:.6g}"
    lines = [
        f"{d['status']:<24} {d['track']} {d['gate']}/{d['metric']}  value={value} "
        f"(pass: {d['comparator']} {d['threshold']:g})  observations={d['observations']}  "
        f"config={d['config_hash']}"
    ]
    lines += [f"    - {b}" for b in d["blockers"]]
    return "\n".join(lines)


def _as_dict(r: GateResult | dict[str, Any]) -> dict[str, Any]:
    if isinstance(r, GateResult):
        return {
            "result_id": r.event_id,
            "gate": r.gate,
            "track": r.track,
            "metric": r.metric,
            "status": r.status.value,
            "value": r.value,
            "threshold": r.threshold,
            "comparator": r.comparator.value,
            "window_start_ns": r.window_start,
            "window_end_ns": r.window_end,
            "observations": r.observations,
            "blockers": list(r.blockers),
            "config_hash": r.config_hash,
        }
    return r


def _print_evaluation(ev: Evaluation, as_json: bool, monitor_only: bool = False) -> None:
    attributions = {o.result.event_id: o.attribution for o in ev.parity if o.attribution is not None}
    for r in ev.results:
        d = _as_dict(r)
        att = attributions.get(r.event_id)
        if as_json:
            if att is not None:
                d["attribution"] = {
                    "gap": att.gap,
                    "backtest_cash": att.backtest_cash,
                    "paper_cash": att.paper_cash,
                    **att.parts(),
                }
            d["monitor_only"] = monitor_only
            print(json.dumps(d))
        else:
            print(format_result(d))
    if not as_json:
        note = " [monitor-only track: reported, never trades, exit code unaffected]" if monitor_only else ""
        print(f"track {ev.track}: {'READY' if ev.ready else 'NOT READY'} ({ev.readiness.status.value}){note}")


def _exit_code(statuses: Sequence[tuple[str, str]]) -> int:
    """0 only when nothing failed and every readiness passed; statuses are (gate, status)."""
    if not statuses or any(s == GateStatus.FAILED.value for _, s in statuses):
        return EXIT_FAIL
    readiness = [s for g, s in statuses if g == "readiness"]
    return EXIT_OK if readiness and all(s == GateStatus.PASSED.value for s in readiness) else EXIT_FAIL


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def cmd_evaluate(a: argparse.Namespace) -> int:
    try:
        cfg = build_config(a)
        market_tracks = Tracks.from_env()
        now_ns = parse_when(a.as_of) if a.as_of else None
        every_ns = parse_duration_ns(a.every) if a.every else None
    except ValueError as exc:  # UsageError included
        print(f"tradeflow gates: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tracks = [t.strip() for t in a.track if t.strip()] if a.track else list(env_list(TRACKS_ENV, ()))
    if a.track and len(tracks) != len(a.track):
        print("tradeflow gates: --track must not be empty", file=sys.stderr)
        return EXIT_USAGE
    if every_ns is not None and a.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(a.metrics_port, addr=env_str("TRADEFLOW_METRICS_HOST", "127.0.0.1"))

    async def main() -> int:
        while True:
            when = now_ns if now_ns is not None else time.time_ns()
            statuses: list[tuple[str, str]] = []
            monitored = 0
            for track in tracks or await _all_tracks(a.dsn, a.timeout_s):
                ev = await evaluate_once(
                    track, cfg, when, dsn=a.dsn, bootstrap=a.bootstrap, namespace=a.namespace, timeout_s=a.timeout_s
                )
                monitor_only = market_tracks.gate_track_monitor_only(ev.track, ev.symbols)
                _print_evaluation(ev, a.json, monitor_only)
                if monitor_only:
                    monitored += 1
                else:
                    statuses += [(r.gate, r.status.value) for r in ev.results]
            if not statuses and not monitored:
                print("no track to evaluate (no backtest runs): nothing is ready")
            sys.stdout.flush()
            # monitor-only tracks alone: reported, nothing gated failed
            rc = EXIT_OK if monitored and not statuses else _exit_code(statuses)
            if every_ns is None:
                return rc
            await asyncio.sleep(every_ns / 1e9)

    try:
        return asyncio.run(main())
    except InfraError as exc:
        print(f"tradeflow gates: {exc}", file=sys.stderr)
        return EXIT_INFRA


def cmd_status(a: argparse.Namespace) -> int:
    try:
        market_tracks = Tracks.from_env()
    except ValueError as exc:
        print(f"tradeflow gates: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> list[asyncpg.Record]:
        conn = await asyncio.wait_for(asyncpg.connect(a.dsn), a.timeout_s)
        try:
            if await store.current_missing(conn):
                raise InfraError("database not migrated (missing gate_current): run `tradeflow migrate`")
            return await store.load_current(conn, a.track)
        finally:
            await conn.close()

    try:
        rows = asyncio.run(main())
    except InfraError as exc:
        print(f"tradeflow gates: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except _DB_ERRORS as exc:
        print(f"tradeflow gates: database unreachable or failing ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_INFRA
    if not rows:
        print(f"no gate results{' for track ' + a.track if a.track else ''}: not evaluated is not ready")
        return EXIT_FAIL
    for row in rows:
        d = {
            k: row[k]
            for k in (
                "result_id",
                "gate",
                "track",
                "metric",
                "status",
                "value",
                "threshold",
                "comparator",
                "window_start_ns",
                "window_end_ns",
                "observations",
                "blockers",
                "config_hash",
            )
        }
        d["blockers"] = list(d["blockers"])
        if row["gap"] is not None:
            d["attribution"] = {k: row[k] for k in ("gap", "quantity", "price", "slippage", "impact", "fee")}
        if a.json:
            print(json.dumps(d))
            continue
        print(format_result(d))
        if "attribution" in d:
            print("    attribution: " + ", ".join(f"{k} {v:+.2f}" for k, v in d["attribution"].items()))
    # status rows carry no symbols: a monitor-only track is known here by its name (``vc``)
    gated = [(r["gate"], r["status"]) for r in rows if not market_tracks.gate_track_monitor_only(r["track"])]
    return EXIT_OK if not gated else _exit_code(gated)


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    """Add ``gates evaluate`` and ``gates status`` to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "gates",
        help="evaluate gates (hard metrics, parity, readiness) or show their state",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gsub = sp.add_subparsers(dest="gates_command", required=True)

    ev = gsub.add_parser(
        "evaluate",
        help="evaluate a track's gates, publish the results, exit 1 unless ready (monitor-only tracks never exit 1)",
    )
    infra(ev, dsn=True)
    ev.add_argument(
        "--track",
        action="append",
        default=None,
        help=f"backtest_runs.track to evaluate (repeatable; default: env {TRACKS_ENV}, "
        "else every track that has backtest runs)",
    )
    ev.add_argument(
        "--lookback",
        default=None,
        help="runs finished and real orders placed this long before now are evidence (s|m|h|d; "
        "default: env TRADEFLOW_GATES_LOOKBACK, else 180d)",
    )
    ev.add_argument(
        "--source",
        default="prod",
        choices=VALID_SOURCES,
        help="run source that feeds the gates (only prod can make a track ready)",
    )
    ev.add_argument("--as-of", default=None, help="evaluation time, ISO UTC (default: now)")
    ev.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a threshold/rule (recorded in the result's config_hash), e.g. sharpe_daily=2.0",
    )
    ev.add_argument("--json", action="store_true", help="one JSON object per result")
    ev.add_argument("--every", default=None, help="repeat every DURATION (a service; exits only on errors)")
    ev.add_argument("--metrics-port", type=int, default=0, help="with --every: serve /metrics on this port")
    ev.add_argument("--timeout-s", type=float, default=30.0, help="give up on the database/broker after this long")
    ev.set_defaults(fn=cmd_evaluate)

    st = gsub.add_parser("status", help="print the current gate results with blockers; exit 1 unless all ready")
    infra(st, dsn=True)
    st.add_argument("--track", default=None, help="only this track")
    st.add_argument("--json", action="store_true", help="one JSON object per result")
    st.add_argument("--timeout-s", type=float, default=30.0)
    st.set_defaults(fn=cmd_status)
