"""Postgres I/O of backtests: bars in (one query per symbol), runs out (migration 007).

Everything that touches the database lives here, so :mod:`backtest.replay`
stays pure and :mod:`backtest.runs` reads as the run's life cycle.

Bars come from the ``bars`` projection (the latest revision per key). The
projection keeps no ``ts_init`` or ``correlation_id``; a reconstructed bar
gets ``ts_init = ts_event = close_time`` and ``correlation_id = event_id``
(what the CSV importer and the checker give a bar that starts a chain), so a
replay from Postgres depends only on the projected columns.

Run rows are never deleted: :func:`supersede` marks a run ``superseded``
with a reason and, optionally, the run that replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from topics.records import Bar, Timeframe
from topics.units import NS_PER_US

__all__ = [
    "RunRow",
    "bars_in_range",
    "fetch_run",
    "insert_run",
    "latest_attempt",
    "list_runs",
    "mark_failed",
    "ns_to_dt",
    "registry_entry",
    "supersede",
    "symbol_venues",
    "write_success",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_BAR_SQL = (
    "SELECT venue, symbol, timeframe, open_time, close_time, open, high, low, close, volume, trade_count, "
    "is_closed, revision, source, event_id FROM bars WHERE venue = $1 AND symbol = $2 AND timeframe = $3 "
    "AND open_time >= $4 AND open_time < $5 ORDER BY open_time"
)


def ns_to_dt(ns: int) -> datetime:
    """ns since the epoch -> aware UTC datetime (microsecond precision, what timestamptz holds)."""
    return _EPOCH + timedelta(microseconds=ns // NS_PER_US)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------
# Bars and models in
# ---------------------------------------------------------------------------


async def symbol_venues(conn: Conn, symbol: str, timeframe: Timeframe) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT venue FROM bars WHERE symbol = $1 AND timeframe = $2 ORDER BY venue",
                            symbol, timeframe.value)
    return [r["venue"] for r in rows]


async def bars_in_range(conn: Conn, venue: str, symbol: str, timeframe: Timeframe, start_ns: int,
                        end_ns: int) -> list[Bar]:
    """Closed and open bars with ``start_ns <= open_time < end_ns`` in one query."""
    rows = await conn.fetch(_BAR_SQL, venue, symbol, timeframe.value, start_ns, end_ns)
    return [
        Bar(event_id=r["event_id"], schema_version=Bar.SCHEMA_VERSION, ts_event=r["close_time"],
            ts_init=r["close_time"], correlation_id=r["event_id"], causation_id=None, venue=r["venue"],
            symbol=r["symbol"], timeframe=Timeframe(r["timeframe"]), open_time=r["open_time"], open=r["open"],
            high=r["high"], low=r["low"], close=r["close"], volume=r["volume"], trade_count=r["trade_count"],
            is_closed=r["is_closed"], revision=r["revision"], source=r["source"])
        for r in rows
    ]


async def registry_entry(conn: Conn, model_id: str, version: str) -> Mapping[str, Any] | None:
    """The latest registry event of one model version (checkpoint path + sha256, config)."""
    row = await conn.fetchrow(
        "SELECT model_id, version, stage, feature_set_version, checkpoint_path, checkpoint_sha256, config::text "
        "AS config FROM model_registry WHERE model_id = $1 AND version = $2 ORDER BY ts_event DESC LIMIT 1",
        model_id, version,
    )
    if row is None:
        return None
    out = dict(row)
    out["config"] = json.loads(out["config"])
    return out


# ---------------------------------------------------------------------------
# Runs out
# ---------------------------------------------------------------------------


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
        run.run_id, run.source, status, error, run.track, list(run.symbols), ns_to_dt(run.range_start_ns),
        ns_to_dt(run.range_end_ns), _json(dict(run.config)), run.config_hash, _json(dict(run.lineage)),
        run.request_hash, run.attempt,
    )
    return status_line.endswith(" 1")


async def mark_failed(conn: Conn, run_id: str, error: str, lineage: Mapping[str, Any] | None = None) -> None:
    await conn.execute(
        "UPDATE backtest_runs SET status = 'failed', error = $2, finished_at = now(), "
        "lineage = COALESCE($3::jsonb, lineage) WHERE run_id = $1 AND status = 'running'",
        run_id, error[:4000], None if lineage is None else _json(dict(lineage)),
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
                columns=("run_id", "seq", "symbol", "side", "ts", "quantity", "price", "notional", "fee",
                         "slippage_cost", "impact_cost", "client_order_id", "ts_ns", "fill_event_id"),
            )
        if equity:
            await conn.copy_records_to_table(
                "backtest_equity", records=[(run_id, ns_to_dt(t), e, d) for t, e, d in equity],
                columns=("run_id", "ts", "equity", "drawdown"),
            )
        await conn.copy_records_to_table(
            "backtest_metrics", records=[(run_id, s, m, v) for (s, m), v in sorted(metrics.items())],
            columns=("run_id", "symbol", "metric", "value"),
        )
        done = await conn.execute(
            "UPDATE backtest_runs SET status = 'succeeded', lineage = $2::jsonb, decision_hash = $3, "
            "n_records = $4, n_bars = $5, finished_at = now() WHERE run_id = $1 AND status = 'running'",
            run_id, _json(dict(lineage)), decision_hash, n_records, n_bars,
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
            run_id, by, reason.strip(),
        )


async def list_runs(conn: Conn, *, limit: int = 50, track: str | None = None,
                    source: str | None = None) -> list[Mapping[str, Any]]:
    rows = await conn.fetch(
        "SELECT run_id, created_at, source, status, track, symbols, range_start, range_end, decision_hash, "
        "error, superseded_by FROM backtest_runs WHERE ($1::text IS NULL OR track = $1) "
        "AND ($2::text IS NULL OR source = $2) ORDER BY created_at DESC, run_id LIMIT $3",
        track, source, limit,
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
    metrics = await conn.fetch("SELECT symbol, metric, value FROM backtest_metrics WHERE run_id = $1 "
                               "ORDER BY symbol, metric", run_id)
    out["metrics"] = {f"{m['symbol']}:{m['metric']}": m["value"] for m in metrics}
    out["fills"] = await conn.fetchval("SELECT count(*) FROM backtest_fills WHERE run_id = $1", run_id)
    out["equity_points"] = await conn.fetchval("SELECT count(*) FROM backtest_equity WHERE run_id = $1", run_id)
    return out
