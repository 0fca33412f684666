"""Operator overviews: what ``tradeflow status`` shows and the run job's summary counts.

Read-only. A view that is missing (database not migrated) raises
``asyncpg.UndefinedTableError``; the caller says what to do about it.
"""

from __future__ import annotations

from typing import TypedDict, cast

from storage.connection import Conn
from topics.catalogue import TOPICS

__all__ = [
    "DataQualityCount",
    "DeadLetterCount",
    "GateRow",
    "KillSwitchRow",
    "PortfolioRow",
    "RolloutRow",
    "current_gates",
    "data_quality_counts",
    "dead_letter_counts",
    "kill_switch_commands",
    "migration_version",
    "portfolios",
    "rollout",
    "table_counts",
    "top_dead_letters",
]


class PortfolioRow(TypedDict):
    """An account's latest portfolio state; ``q`` = quantities by symbol as JSON text."""

    account: str
    equity: float
    cash: float
    drawdown: float
    realized_pnl: float
    unrealized_pnl: float
    fees_paid: float
    q: str
    as_of_ns: int


class KillSwitchRow(TypedDict):
    """The latest accepted operator kill-switch command per (scope, target)."""

    command: str
    scope: str
    target: str
    operator: str | None
    reason: str | None
    ts_event: int


class GateRow(TypedDict):
    """The current result of a gate/track/metric; ``blockers`` as JSON text."""

    gate: str
    track: str
    metric: str
    status: str
    value: float | None
    threshold: float
    comparator: str
    blockers: str | None


class RolloutRow(TypedDict):
    """Where a rollout (model_id, symbol) stands after governance's latest decision."""

    model_id: str
    symbol: str
    version: str
    stage: str
    action: str
    reason: str


class DeadLetterCount(TypedDict):
    consumer: str
    source_topic: str
    reason: str
    n: int


class DataQualityCount(TypedDict):
    """Findings per stream, check and severity; ``first`` = the earliest ``ref_time``."""

    venue: str
    symbol: str
    timeframe: str
    check_name: str
    severity: str
    n: int
    first: int | None


async def migration_version(conn: Conn) -> int | None:
    """The newest applied migration (None: none applied)."""
    version: int | None = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return version


async def portfolios(conn: Conn) -> list[PortfolioRow]:
    rows = await conn.fetch(
        "SELECT account, equity, cash, drawdown, realized_pnl, unrealized_pnl, fees_paid, quantities::text AS q, "
        "as_of_ns FROM portfolio_latest ORDER BY account"
    )
    return [cast(PortfolioRow, dict(r)) for r in rows]


async def kill_switch_commands(conn: Conn) -> list[KillSwitchRow]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (scope, target) command, scope, target, operator, reason, ts_event "
        "FROM control_audit WHERE outcome = 'accepted' AND component = 'risk' "
        "AND command IN ('kill_switch_on', 'kill_switch_off') ORDER BY scope, target, ts_event DESC"
    )
    return [cast(KillSwitchRow, dict(r)) for r in rows]


async def current_gates(conn: Conn) -> list[GateRow]:
    rows = await conn.fetch(
        "SELECT gate, track, metric, status, value, threshold, comparator, blockers::text AS blockers "
        "FROM gate_current ORDER BY track, gate, metric"
    )
    return [cast(GateRow, dict(r)) for r in rows]


async def rollout(conn: Conn) -> list[RolloutRow]:
    rows = await conn.fetch(
        "SELECT model_id, symbol, version, stage, action, reason FROM rollout_status ORDER BY model_id, symbol"
    )
    return [cast(RolloutRow, dict(r)) for r in rows]


async def top_dead_letters(conn: Conn) -> list[DeadLetterCount]:
    """The ten most frequent (consumer, source topic, reason) of the dead letters."""
    rows = await conn.fetch(
        "SELECT consumer, source_topic, reason, count(*) AS n FROM dead_letters GROUP BY 1, 2, 3 ORDER BY 4 DESC "
        "LIMIT 10"
    )
    return [cast(DeadLetterCount, dict(r)) for r in rows]


async def dead_letter_counts(conn: Conn) -> list[DeadLetterCount]:
    """Every (consumer, source topic, reason) of the dead letters with its count."""
    rows = await conn.fetch(
        "SELECT consumer, source_topic, reason, count(*) AS n FROM dead_letters GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    return [cast(DeadLetterCount, dict(r)) for r in rows]


async def data_quality_counts(conn: Conn) -> list[DataQualityCount]:
    rows = await conn.fetch(
        "SELECT venue, symbol, timeframe, check_name, severity, count(*) AS n, min(ref_time) AS first "
        "FROM data_quality GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    )
    return [cast(DataQualityCount, dict(r)) for r in rows]


async def table_counts(conn: Conn) -> dict[str, int]:
    """Rows per catalogued event table, then of the ``bars`` and ``feature_snapshots`` projections."""
    out = {}
    for t in TOPICS:
        out[t.table] = int(await conn.fetchval(f"SELECT count(*) FROM {t.table}"))  # noqa: S608 - catalogue names
    out["bars"] = int(await conn.fetchval("SELECT count(*) FROM bars"))
    out["feature_snapshots"] = int(await conn.fetchval("SELECT count(*) FROM feature_snapshots"))
    return out


async def pipeline_counts(conn: Conn) -> dict[str, int]:
    """What a running platform has done so far: bars, feature vectors, signals, intents, fills."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM ev_market_bars) AS bars,"
        " (SELECT count(*) FROM feature_snapshots) AS features,"
        " (SELECT count(*) FROM ev_signals) AS signals,"
        " (SELECT count(*) FROM ev_order_intents) AS intents,"
        " (SELECT count(*) FROM ev_risk_decisions) AS risk_decisions,"
        " (SELECT count(*) FROM ev_fills) AS fills"
    )
    assert row is not None  # a SELECT of scalar subqueries always returns one row
    return {k: int(v) for k, v in dict(row).items()}
