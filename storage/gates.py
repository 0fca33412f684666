"""Gates in PostgreSQL: load evidence, record configs and attributions, read results.

Reads the backtest tables of migration 007 (contract: run, fills, metrics),
paper fills from ``ev_fills`` and real order updates from ``ev_order_updates``; writes ``gate_configs`` and
``gate_parity_attribution`` (migration 008) idempotently (``ON CONFLICT``),
so re-running an evaluation for the same time adds nothing. Gate results
themselves reach Postgres through the topic and the sink, like every record;
:func:`load_current` and :func:`count_results` read them back.

Timestamps are converted to int nanoseconds exactly (no float epoch math), so
the engine sees the same integers a replay would.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from agents.gates.config import GateConfig
from agents.gates.engine import BacktestFill, ExecutionUpdate, PaperFill, ParityOutcome, RunInfo
from storage.connection import Conn

__all__ = [
    "count_results",
    "current_missing",
    "list_tracks",
    "load_backtest_fills",
    "load_current",
    "load_order_updates",
    "load_paper_fills",
    "load_runs",
    "missing_tables",
    "write_attributions",
    "write_config",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_TABLES = (
    "backtest_runs",
    "backtest_fills",
    "backtest_metrics",
    "ev_fills",
    "ev_order_updates",
    "gate_results",
    "gate_parity_attribution",
    "gate_configs",
)


def to_ns(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _opt_ns(value: datetime | None) -> int | None:
    return None if value is None else to_ns(value)


async def missing_tables(conn: Conn) -> list[str]:
    """Tables/views the gates need that the database lacks (not migrated)."""
    rows = await conn.fetch(
        "SELECT t, to_regclass(t) IS NULL AS missing FROM unnest($1::text[]) AS t", list(_REQUIRED_TABLES)
    )
    return [r["t"] for r in rows if r["missing"]]


async def list_tracks(conn: Conn) -> list[str]:
    return [r["track"] for r in await conn.fetch("SELECT DISTINCT track FROM backtest_runs ORDER BY track")]


async def load_runs(conn: Conn, track: str) -> list[RunInfo]:
    """Every run of the track, any status or source, with its run-total metrics (the engine filters)."""
    rows = await conn.fetch(
        "SELECT run_id, track, source, status, superseded_by, symbols, range_start, range_end, created_at, "
        "finished_at, request_hash, config #>> '{request,initial_cash}' AS initial_cash "
        "FROM backtest_runs WHERE track = $1 ORDER BY run_id",
        track,
    )
    ids = [r["run_id"] for r in rows]
    metrics: dict[str, dict[str, float | None]] = {i: {} for i in ids}
    for m in await conn.fetch(
        "SELECT run_id, metric, value FROM backtest_metrics WHERE symbol = '*' AND run_id = ANY($1::text[])", ids
    ):
        metrics[m["run_id"]][m["metric"]] = m["value"]
    return [
        RunInfo(
            run_id=r["run_id"],
            track=r["track"],
            source=r["source"],
            status=r["status"],
            superseded_by=r["superseded_by"],
            symbols=tuple(r["symbols"]),
            range_start_ns=_opt_ns(r["range_start"]),
            range_end_ns=_opt_ns(r["range_end"]),
            created_at_ns=to_ns(r["created_at"]),
            finished_at_ns=_opt_ns(r["finished_at"]),
            metrics=metrics[r["run_id"]],
            request_hash=r["request_hash"],
            initial_cash=_opt_float(r["initial_cash"]),
        )
        for r in rows
    ]


def _opt_float(text: str | None) -> float | None:
    """A number stored as JSON text; None when absent or not a number (the engine says why)."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


async def load_order_updates(conn: Conn, symbols: Sequence[str], start_ns: int, end_ns: int) -> list[ExecutionUpdate]:
    """Every update (``ev_order_updates``, stored by the sink) before ``end`` of each order on
    ``symbols`` with an update in ``[start, end)``; the engine picks adapters and the window."""
    rows = await conn.fetch(
        "SELECT ts_event, payload FROM ev_order_updates WHERE ts_event < $2 AND payload->>'client_order_id' IN "
        "(SELECT payload->>'client_order_id' FROM ev_order_updates WHERE ts_event >= $1 AND ts_event < $2 "
        "AND payload->>'symbol' = ANY($3::text[])) ORDER BY ts_event, event_id",
        start_ns,
        end_ns,
        list(symbols),
    )
    out: list[ExecutionUpdate] = []
    for r in rows:
        p: dict[str, Any] = json.loads(r["payload"])
        out.append(
            ExecutionUpdate(
                client_order_id=p["client_order_id"],
                adapter=p["adapter"],
                symbol=p["symbol"],
                status=p["status"],
                reason=p.get("reason"),
                ts_ns=r["ts_event"],
            )
        )
    return out


async def load_backtest_fills(conn: Conn, run_ids: Sequence[str], start_ns: int, end_ns: int) -> list[BacktestFill]:
    rows = await conn.fetch(
        "SELECT run_id, seq, client_order_id, symbol, side, ts, quantity, price, notional, fee, slippage_cost, "
        "impact_cost FROM backtest_fills WHERE run_id = ANY($1::text[]) AND ts >= $2 AND ts < $3 "
        "ORDER BY run_id, seq",
        list(run_ids),
        from_ns(start_ns),
        from_ns(end_ns),
    )
    return [
        BacktestFill(
            run_id=r["run_id"],
            seq=r["seq"],
            client_order_id=r["client_order_id"],
            symbol=r["symbol"],
            side=r["side"],
            ts_ns=to_ns(r["ts"]),
            quantity=r["quantity"],
            price=r["price"],
            notional=r["notional"],
            fee=r["fee"],
            slippage_cost=r["slippage_cost"],
            impact_cost=r["impact_cost"],
        )
        for r in rows
    ]


async def load_paper_fills(
    conn: Conn, symbols: Sequence[str], adapter: str, start_ns: int, end_ns: int
) -> list[PaperFill]:
    """Paper fills (``ev_fills``, decoded and validated by the sink) of ``symbols`` in ``[start, end)``."""
    rows = await conn.fetch(
        "SELECT ts_event, payload FROM ev_fills WHERE ts_event >= $1 AND ts_event < $2 "
        "AND payload->>'adapter' = $3 AND payload->>'symbol' = ANY($4::text[]) ORDER BY ts_event, event_id",
        start_ns,
        end_ns,
        adapter,
        list(symbols),
    )
    out: list[PaperFill] = []
    for r in rows:
        p: dict[str, Any] = json.loads(r["payload"])
        out.append(
            PaperFill(
                client_order_id=p["client_order_id"],
                fill_id=p["fill_id"],
                symbol=p["symbol"],
                side=p["side"],
                ts_ns=r["ts_event"],
                quantity=float(p["quantity"]),
                price=float(p["price"]),
                fee=float(p["fee"]),
                slippage_bps=float(p["slippage_bps"]),
                impact_bps=float(p["impact_bps"]),
            )
        )
    return out


async def write_config(conn: Conn, cfg: GateConfig) -> None:
    await conn.execute(
        "INSERT INTO gate_configs (config_hash, version, config) VALUES ($1, $2, $3::jsonb) "
        "ON CONFLICT (config_hash) DO NOTHING",
        cfg.config_hash(),
        cfg.version,
        orjson.dumps(dataclasses.asdict(cfg)).decode(),
    )


async def write_attributions(conn: Conn, outcomes: Sequence[ParityOutcome]) -> int:
    """One row per parity result that matched any order; returns rows written now."""
    rows = [
        (
            o.result.event_id,
            o.result.track,
            o.result.metric,
            o.symbol,
            o.result.window_start,
            o.result.window_end,
            a.matched_orders,
            a.backtest_cash,
            a.paper_cash,
            a.gap,
            a.quantity,
            a.price,
            a.slippage,
            a.impact,
            a.fee,
            list(o.unmatched_backtest),
            list(o.unmatched_paper),
            o.result.config_hash,
        )
        for o in outcomes
        if (a := o.attribution) is not None
    ]
    written = 0
    for row in rows:
        written += (
            await conn.fetchval(
                "INSERT INTO gate_parity_attribution (result_id, track, metric, symbol, window_start_ns, "
                "window_end_ns, matched_orders, backtest_cash, paper_cash, gap, quantity, price, slippage, impact, "
                "fee, unmatched_backtest, unmatched_paper, config_hash) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18) "
                "ON CONFLICT (result_id) DO NOTHING RETURNING 1",
                *row,
            )
            or 0
        )
    return written


async def load_current(conn: Conn, track: str | None) -> list[asyncpg.Record]:
    """The current result per gate/track/metric, with its parity attribution when there is one."""
    return list(
        await conn.fetch(
            "SELECT c.*, a.gap, a.quantity, a.price, a.slippage, a.impact, a.fee, a.matched_orders "
            "FROM gate_current c LEFT JOIN gate_parity_attribution a ON a.result_id = c.result_id "
            "WHERE $1::text IS NULL OR c.track = $1 ORDER BY c.track, c.gate, c.metric",
            track,
        )
    )


async def current_missing(conn: Conn) -> bool:
    """True when the ``gate_current`` view is missing (the database is not migrated)."""
    return bool(await conn.fetchval("SELECT to_regclass('gate_current') IS NULL"))


async def count_results(conn: Conn, result_ids: Sequence[str]) -> int:
    """How many of these gate results the sink has stored (``ev_gate_results``)."""
    return int(await conn.fetchval("SELECT count(*) FROM ev_gate_results WHERE event_id = ANY($1::text[])", result_ids))
