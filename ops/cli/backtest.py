"""``tradeflow backtest`` and ``tradeflow replay``: backtest runs in Postgres, decision hashes.

::

    tradeflow backtest run --symbols BTC/USDT --from 2021-01-01 --to 2021-03-01 \\
        (--model MODEL_ID@VERSION ... | --walk-forward N [--hp name=value ...]) \\
        [--polarity normal|auto_train_ic|auto_train_pnl] [--fee-bps 10] [--slippage-bps 2] \\
        [--impact-coef-bps 100] [--source prod|maintenance|smoke|async_test] [--track NAME] [--rerun]
    tradeflow backtest list [--track T] [--source S] [--limit N]
    tradeflow backtest show RUN_ID
    tradeflow backtest supersede RUN_ID --reason "..." [--by NEW_RUN_ID]
    tradeflow replay --symbols BTC/USDT --from ... --to ... (--model ... | --walk-forward N)

``backtest run`` prints one JSON object (run id, status, decision hash,
total metrics); ``replay`` runs the same replay without writing a run and
prints the decision hash (two replays of the same range and model print the
same hash). Bars come from the ``bars`` table (``--dsn``), or with
``--data-source broker`` from the ``market.bars`` topic (``--bootstrap``,
``--namespace``) with Postgres for what the broker no longer holds.

Exit codes: 0 ok; 1 the run failed (bad request: inverted or empty range,
unknown symbol, missing model ...; the failed run record is written and its
id printed) or an unknown run id; 2 usage (unparseable date, unknown source,
empty reason); 3 database unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE
from storage import backtests
from topics.records import Timeframe
from topics.units import parse_when

__all__ = ["add_parsers"]


def _params(pairs: list[str]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for p in pairs:
        name, sep, raw = p.partition("=")
        if not sep or not name:
            raise ValueError(f"--hp expects name=value, got {p!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[name] = value if isinstance(value, (str, int, float, bool)) else raw
    return out


def _request(a: argparse.Namespace) -> Any:
    from backtest.runs import BacktestRequest

    return BacktestRequest(
        symbols=tuple(a.symbols),
        start_ns=parse_when(a.start),
        end_ns=parse_when(a.end),
        timeframe=Timeframe(a.timeframe),
        venue=a.venue,
        source=a.source,
        track=a.track,
        strategy=a.strategy,
        fee_bps=a.fee_bps,
        slippage_bps=a.slippage_bps,
        impact_coefficient_bps=a.impact_coef_bps,
        initial_cash=a.initial_cash,
        models=tuple(a.models or ()),
        walk_forward_windows=a.walk_forward,
        model_params=_params(a.hp or []),
        polarity=a.polarity,
        warmup_bars=a.warmup_bars,
        data_source=a.data_source,
    )


def _db_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A database that answers with an error outside a run (no tables, bad name) is infrastructure: exit 3."""

    @functools.wraps(fn)
    def wrapper(a: argparse.Namespace) -> int:
        try:
            return fn(a)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            print(f"tradeflow: database error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_INFRA

    return wrapper


def _usage(exc: Exception) -> int:
    print(f"tradeflow: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) or value is None or isinstance(value, (int, str, bool)):
        return value
    return str(value)


async def _with_conn(dsn: str, fn: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await fn(conn)
    finally:
        await conn.close()


@_db_errors
def cmd_run(a: argparse.Namespace) -> int:
    from backtest.runs import BacktestFailed, BacktestRequestError, arun_backtest

    try:
        request = _request(a)
    except ValueError as exc:
        return _usage(exc)
    try:
        run_id = asyncio.run(arun_backtest(request, a.dsn, rerun=a.rerun, broker=(a.bootstrap, a.namespace)))
    except (BacktestRequestError, BacktestFailed) as exc:
        print(json.dumps({"run_id": exc.run_id, "status": "failed", "error": str(exc)}))
        print(f"backtest failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    row = asyncio.run(_with_conn(a.dsn, lambda c: backtests.fetch_run(c, run_id)))
    metrics = {k[2:]: v for k, v in row["metrics"].items() if k.startswith("*:")}
    print(
        json.dumps(
            {
                "run_id": run_id,
                "status": row["status"],
                "decision_hash": row["decision_hash"],
                "track": row["track"],
                "source": row["source"],
                "fills": row["fills"],
                "metrics": metrics,
            },
            sort_keys=True,
        )
    )
    return EXIT_OK


@_db_errors
def cmd_list(a: argparse.Namespace) -> int:
    rows = asyncio.run(
        _with_conn(a.dsn, lambda c: backtests.list_runs(c, limit=a.limit, track=a.track, source=a.source))
    )
    if not rows:
        print("no backtest runs")
        return EXIT_OK
    print(f"{'run_id':<20} {'status':<11} {'source':<11} {'track':<36} {'symbols':<20} {'created_at'}")
    for r in rows:
        print(
            f"{r['run_id'][:18]:<20} {r['status']:<11} {r['source']:<11} {r['track'][:35]:<36} "
            f"{','.join(r['symbols'])[:19]:<20} {r['created_at']:%Y-%m-%d %H:%M:%S}"
        )
    return EXIT_OK


@_db_errors
def cmd_show(a: argparse.Namespace) -> int:
    row = asyncio.run(_with_conn(a.dsn, lambda c: backtests.fetch_run(c, a.run_id)))
    if row is None:
        print(f"no backtest run {a.run_id!r}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(_jsonable(dict(row)), indent=2, sort_keys=True))
    return EXIT_OK


@_db_errors
def cmd_supersede(a: argparse.Namespace) -> int:
    if not a.reason.strip():
        return _usage(ValueError("--reason must not be empty"))
    try:
        asyncio.run(_with_conn(a.dsn, lambda c: backtests.supersede(c, a.run_id, a.reason, a.by)))
    except LookupError as exc:
        print(f"tradeflow: {exc.args[0]}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        print(f"tradeflow: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps({"run_id": a.run_id, "status": "superseded", "superseded_by": a.by, "reason": a.reason}))
    return EXIT_OK


@_db_errors
def cmd_replay(a: argparse.Namespace) -> int:
    from backtest.runs import areplay_request

    try:
        request = _request(a)
    except ValueError as exc:
        return _usage(exc)
    try:
        result, lineage = asyncio.run(areplay_request(request, a.dsn, broker=(a.bootstrap, a.namespace)))
    except ValueError as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(
        json.dumps(
            {
                "decision_hash": result.hash,
                "records": len(result.records),
                "bars": result.n_bars,
                "traded_bars": result.n_traded_bars,
                "signals": len(result.signals),
                "fills": len(result.fills),
                "data": lineage.get("data"),
                "broker_read": lineage.get("broker_read"),
            },
            sort_keys=True,
        )
    )
    return EXIT_OK


def _request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", nargs="+", required=True, help="unified symbols, e.g. BTC/USDT ETH/USDT")
    p.add_argument("--from", dest="start", required=True, help="ISO date/time, UTC (inclusive, bar open time)")
    p.add_argument("--to", dest="end", required=True, help="ISO date/time, UTC (exclusive)")
    p.add_argument("--timeframe", default="1h", choices=[t.value for t in Timeframe])
    p.add_argument("--venue", default=None, help="needed when a symbol has bars from several venues")
    p.add_argument("--source", default="prod", help="prod | maintenance | smoke | async_test (gates read prod)")
    p.add_argument("--track", default=None, help="what gates group by (default strategy:model)")
    p.add_argument("--strategy", default="tanh-sizer")
    p.add_argument("--fee-bps", type=float, default=10.0)
    p.add_argument("--slippage-bps", type=float, default=2.0)
    p.add_argument(
        "--impact-coef-bps", type=float, default=100.0, help="impact in bps per unit of bar-volume participation"
    )
    p.add_argument("--initial-cash", type=float, default=100_000.0)
    p.add_argument("--model", dest="models", action="append", help="registry model_id@version (one per symbol)")
    p.add_argument("--walk-forward", type=int, default=0, help="train N walk-forward windows in-process (CPU)")
    p.add_argument("--hp", action="append", help="walk-forward model hyperparameter name=value (repeatable)")
    p.add_argument("--polarity", default="normal", choices=["normal", "auto_train_ic", "auto_train_pnl"])
    p.add_argument("--warmup-bars", type=int, default=None)
    p.add_argument(
        "--data-source",
        default="postgres",
        choices=["postgres", "broker"],
        help="bars table, or the market.bars topic (large fetches; Postgres for what it no longer holds)",
    )


def add_parsers(sub: Any, infra: Any) -> None:
    sp = sub.add_parser("backtest", help="backtest runs: run, list, show, supersede (results in Postgres)")
    bsub = sp.add_subparsers(dest="backtest_cmd", required=True)
    bp = bsub.add_parser("run", help="replay a range through the engines and record the run, fills, metrics")
    infra(bp, dsn=True)
    _request_args(bp)
    bp.add_argument("--rerun", action="store_true", help="run again even if this request already succeeded")
    bp.set_defaults(fn=cmd_run)
    bp = bsub.add_parser("list", help="recent runs, newest first")
    infra(bp, dsn=True)
    bp.add_argument("--track", default=None)
    bp.add_argument("--source", default=None)
    bp.add_argument("--limit", type=int, default=50)
    bp.set_defaults(fn=cmd_list)
    bp = bsub.add_parser("show", help="one run: config, lineage, status, metrics (JSON)")
    infra(bp, dsn=True)
    bp.add_argument("run_id")
    bp.set_defaults(fn=cmd_show)
    bp = bsub.add_parser("supersede", help="mark a stale or failed run superseded (never deleted)")
    infra(bp, dsn=True)
    bp.add_argument("run_id")
    bp.add_argument("--reason", required=True)
    bp.add_argument("--by", default=None, help="the run that replaces it")
    bp.set_defaults(fn=cmd_supersede)

    rp = sub.add_parser("replay", help="replay a range from Postgres through the engines; print the decision hash")
    infra(rp, dsn=True)
    _request_args(rp)
    rp.set_defaults(fn=cmd_replay)
