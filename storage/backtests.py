"""Backtest runs in PostgreSQL (migration 007): the run record, its results, reads for the CLI.

A run's life cycle (:mod:`backtest.runs`) is a row state in ``backtest_runs``:
inserted ``running`` (``ON CONFLICT DO NOTHING``: a concurrent start loses),
then ``succeeded`` with fills, equity and metrics in one transaction, or
``failed``. Run rows are never deleted: :func:`supersede` marks a run
``superseded`` with a reason and, optionally, the run that replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.connection import Conn
from topics.units import NS_PER_US

__all__ = [
    "RunRow",
    "fetch_run",
    "insert_run",
    "latest_attempt",
    "list_runs",
    "mark_failed",
    "ns_to_dt",
    "supersede",
    "write_success",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_dt(ns: int) -> datetime:
    """ns since the epoch -> aware UTC datetime (microsecond precision, what timestamptz holds)."""
    return _EPOCH + timedelta(microseconds=ns // NS_PER_US)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    run_id: str
    request_hash: str
    attempt: int
    source: str
    track: str
    symbols: tuple[str, ...]
    range_start_ns: int
    range_end_ns: int
    config: Mapping[str, Any]
    config_hash: str
    lineage: Mapping[str, Any]


async def latest_attempt(conn: Conn, request_hash: str) -> tuple[str, str, int] | None:
    """(run_id, status, attempt) of the newest attempt of a request, if any."""
    row = await conn.fetchrow(
        "SELECT run_id, status, attempt FROM backtest_runs WHERE request_hash = $1 ORDER BY attempt DESC LIMIT 1",
        request_hash,
    )
    return None if row is None else (row["run_id"], row["status"], row["attempt"])


async def insert_run(conn: Conn, run: RunRow, *, status: str = "running", error: str | None = None) -> bool:
    """Insert the run record; False when the run id exists already (a concurrent start)."""
    status_line = await conn.execute(
        "INSERT INTO backtest_runs (run_id, source, status, error, track, symbols, range_start, range_end, config, "
        "config_hash, lineage, request_hash, attempt, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
        "$9::jsonb, $10, $11::jsonb, $12, $13, CASE WHEN $3 = 'failed' THEN now() END) "
        "ON CONFLICT (run_id) DO NOTHING",
        run.run_id,
        run.source,
        status,
        error,
        run.track,
        list(run.symbols),
        ns_to_dt(run.range_start_ns),
        ns_to_dt(run.range_end_ns),
        _json(dict(run.config)),
        run.config_hash,
        _json(dict(run.lineage)),
        run.request_hash,
        run.attempt,
    )
    return status_line.endswith(" 1")


async def mark_failed(conn: Conn, run_id: str, error: str, lineage: Mapping[str, Any] | None = None) -> None:
    await conn.execute(
        "UPDATE backtest_runs SET status = 'failed', error = $2, finished_at = now(), "
        "lineage = COALESCE($3::jsonb, lineage) WHERE run_id = $1 AND status = 'running'",
        run_id,
        error[:4000],
        None if lineage is None else _json(dict(lineage)),
    )


async def write_success(
    conn: Conn,
    run_id: str,
    *,
    fills: Sequence[tuple[Any, ...]],
    equity: Sequence[tuple[int, float, float]],
    metrics: Mapping[tuple[str, str], float | None],
    lineage: Mapping[str, Any],
    decision_hash: str,
    n_records: int,
    n_bars: int,
) -> None:
    """Fills, equity, metrics and ``succeeded`` in one transaction.

    ``fills`` rows: (seq, symbol, side, ts_ns, quantity, price, notional, fee,
    slippage_cost, impact_cost, client_order_id, fill_event_id).
    """
    async with conn.transaction():
        if fills:
            await conn.copy_records_to_table(
                "backtest_fills",
                records=[(run_id, f[0], f[1], f[2], ns_to_dt(f[3]), *f[4:11], f[3], f[11]) for f in fills],
                columns=(
                    "run_id",
                    "seq",
                    "symbol",
                    "side",
                    "ts",
                    "quantity",
                    "price",
                    "notional",
                    "fee",
                    "slippage_cost",
                    "impact_cost",
                    "client_order_id",
                    "ts_ns",
                    "fill_event_id",
                ),
            )
        if equity:
            await conn.copy_records_to_table(
                "backtest_equity",
                records=[(run_id, ns_to_dt(t), e, d) for t, e, d in equity],
                columns=("run_id", "ts", "equity", "drawdown"),
            )
        await conn.copy_records_to_table(
            "backtest_metrics",
            records=[(run_id, s, m, v) for (s, m), v in sorted(metrics.items())],
            columns=("run_id", "symbol", "metric", "value"),
        )
        done = await conn.execute(
            "UPDATE backtest_runs SET status = 'succeeded', lineage = $2::jsonb, decision_hash = $3, "
            "n_records = $4, n_bars = $5, finished_at = now() WHERE run_id = $1 AND status = 'running'",
            run_id,
            _json(dict(lineage)),
            decision_hash,
            n_records,
            n_bars,
        )
        if not done.endswith(" 1"):
            raise RuntimeError(f"run {run_id} is no longer 'running' (superseded meanwhile?): results not written")


async def supersede(conn: Conn, run_id: str, reason: str, by: str | None = None) -> None:
    """Mark a run superseded; ``LookupError`` if unknown, ``ValueError`` for a bad request."""
    if not reason.strip():
        raise ValueError("a supersede needs a reason")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT status FROM backtest_runs WHERE run_id = $1 FOR UPDATE", run_id)
        if row is None:
            raise LookupError(f"no backtest run {run_id!r}")
        if row["status"] == "superseded":
            raise ValueError(f"run {run_id} is already superseded")
        if by is not None:
            if by == run_id:
                raise ValueError("a run cannot supersede itself")
            if await conn.fetchval("SELECT 1 FROM backtest_runs WHERE run_id = $1", by) is None:
                raise LookupError(f"no backtest run {by!r} (superseded_by)")
        await conn.execute(
            "UPDATE backtest_runs SET status = 'superseded', superseded_by = $2, supersede_reason = $3, "
            "finished_at = COALESCE(finished_at, now()) WHERE run_id = $1",
            run_id,
            by,
            reason.strip(),
        )


async def list_runs(
    conn: Conn, *, limit: int = 50, track: str | None = None, source: str | None = None
) -> list[Mapping[str, Any]]:
    rows = await conn.fetch(
        "SELECT run_id, created_at, source, status, track, symbols, range_start, range_end, decision_hash, "
        "error, superseded_by FROM backtest_runs WHERE ($1::text IS NULL OR track = $1) "
        "AND ($2::text IS NULL OR source = $2) ORDER BY created_at DESC, run_id LIMIT $3",
        track,
        source,
        limit,
    )
    return [dict(r) for r in rows]


async def fetch_run(conn: Conn, run_id: str) -> Mapping[str, Any] | None:
    """The run row (config and lineage decoded), its metrics and counts; None if unknown."""
    row = await conn.fetchrow(
        "SELECT *, config::text AS config_json, lineage::text AS lineage_json FROM backtest_runs WHERE run_id = $1",
        run_id,
    )
    if row is None:
        return None
    out = {k: v for k, v in dict(row).items() if k not in ("config", "lineage", "config_json", "lineage_json")}
    out["config"] = json.loads(row["config_json"])
    out["lineage"] = json.loads(row["lineage_json"])
    metrics = await conn.fetch(
        "SELECT symbol, metric, value FROM backtest_metrics WHERE run_id = $1 ORDER BY symbol, metric", run_id
    )
    out["metrics"] = {f"{m['symbol']}:{m['metric']}": m["value"] for m in metrics}
    out["fills"] = await conn.fetchval("SELECT count(*) FROM backtest_fills WHERE run_id = $1", run_id)
    out["equity_points"] = await conn.fetchval("SELECT count(*) FROM backtest_equity WHERE run_id = $1", run_id)
    return out
