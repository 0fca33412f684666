"""Operator overviews: what ``tradeflow status`` shows and the run job's summary counts.

Read-only. A view or column that is missing (database not migrated) raises
``asyncpg.UndefinedTableError`` / ``UndefinedColumnError``; the caller says what to do about it.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict, cast

from storage.connection import Conn
from topics.catalogue import TOPICS

__all__ = [
    "DataQualityCount",
    "DeadLetterCount",
    "GateRow",
    "KillSwitchRow",
    "OpeningBlocker",
    "OpeningRow",
    "PortfolioRow",
    "ReasonCount",
    "RolloutRow",
    "TradingFlowRow",
    "current_gates",
    "data_quality_counts",
    "dead_letter_counts",
    "kill_switch_commands",
    "migration_version",
    "opening",
    "portfolios",
    "rollout",
    "table_counts",
    "top_dead_letters",
    "trading_flow",
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


class OpeningBlocker(TypedDict):
    """One rule blocking new exposure (``risk.opening``): ``until_ns`` on the ``domain``'s clock
    (None: until released or until the limit is back), ``remaining_ns`` as of the status."""

    code: str
    scope: str
    target: str
    detail: str
    until_ns: int | None
    domain: str
    remaining_ns: int | None


class OpeningRow(TypedDict):
    """An account's latest opening status: allowed, or every blocker."""

    account: str
    allowed: bool
    market_ns: int
    wall_ns: int
    blockers: list[OpeningBlocker]


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


class ReasonCount(TypedDict):
    reason: str
    n: int


class TradingFlowRow(TypedDict):
    """What became of an account's signals, from its input journal and the risk decisions.

    ``intents_out``: signals the strategy turned into an order intent; ``held``: signals
    waiting for their bar; ``verdicts``: the risk decisions on those intents;
    ``skipped``: the sizing reasons of the signals that made no intent (``unrecorded``:
    journaled before migration 014); ``denied``: the reasons of the decisions that
    rejected or reduced them; both most frequent first.
    """

    account: str
    signals_in: int
    intents_out: int
    held: int
    verdicts: dict[str, int]
    skipped: list[ReasonCount]
    denied: list[ReasonCount]


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


async def opening(conn: Conn) -> list[OpeningRow]:
    """Each account's latest ``risk.opening`` record (one partition: the highest offset is the latest)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (msg_key) payload::text AS p FROM ev_risk_opening ORDER BY msg_key, kafka_offset DESC"
    )
    out: list[OpeningRow] = []
    for r in rows:
        p: dict[str, Any] = json.loads(r["p"])
        names = ("codes", "scopes", "targets", "details", "until_ns", "domains", "remaining_ns")
        keys = ("code", "scope", "target", "detail", "until_ns", "domain", "remaining_ns")
        columns = [p[f"blocker_{n}"] for n in names]
        blockers = [cast(OpeningBlocker, dict(zip(keys, values, strict=True))) for values in zip(*columns, strict=True)]
        out.append(
            OpeningRow(
                account=p["account"],
                allowed=p["allowed"],
                market_ns=p["market_ns"],
                wall_ns=p["wall_ns"],
                blockers=blockers,
            )
        )
    return sorted(out, key=lambda o: o["account"])


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


_FLOW = """
SELECT account,
       count(*) AS signals_in,
       count(*) FILTER (WHERE outcome = 'order') AS intents_out,
       count(*) FILTER (WHERE outcome = 'held') AS held
FROM trading_input_journal WHERE topic = 'signals' GROUP BY account ORDER BY account
"""

_SKIPPED = """
SELECT account, reason, n FROM (
    SELECT account, coalesce(outcome, 'unrecorded') AS reason, count(*) AS n,
           row_number() OVER (PARTITION BY account ORDER BY count(*) DESC, coalesce(outcome, 'unrecorded')) AS k
    FROM trading_input_journal
    WHERE topic = 'signals' AND outcome IS DISTINCT FROM 'order' AND outcome IS DISTINCT FROM 'held'
    GROUP BY account, coalesce(outcome, 'unrecorded')
) ranked WHERE k <= $1 ORDER BY account, n DESC, reason
"""

#: The decisions on the intents of an account's signals (a signal journaled twice counts once).
_VERDICTS = """
WITH signals AS (SELECT DISTINCT account, event_id FROM trading_input_journal WHERE topic = 'signals')
SELECT s.account, d.payload->>'verdict' AS verdict, count(*) AS n
FROM ev_risk_decisions d
JOIN ev_order_intents i ON i.event_id = d.payload->>'intent_event_id'
JOIN signals s ON s.event_id = i.payload->>'signal_event_id'
GROUP BY 1, 2 ORDER BY 1, 2
"""

#: The reasons of the decisions that rejected or reduced them, most frequent first.
_DENIED = """
WITH signals AS (SELECT DISTINCT account, event_id FROM trading_input_journal WHERE topic = 'signals')
SELECT account, reason, n FROM (
    SELECT s.account, r.reason, count(*) AS n,
           row_number() OVER (PARTITION BY s.account ORDER BY count(*) DESC, r.reason) AS k
    FROM ev_risk_decisions d
    JOIN ev_order_intents i ON i.event_id = d.payload->>'intent_event_id'
    JOIN signals s ON s.event_id = i.payload->>'signal_event_id'
    CROSS JOIN LATERAL json_array_elements_text(d.payload->'reasons') AS r(reason)
    WHERE d.payload->>'verdict' <> 'approved'
    GROUP BY s.account, r.reason
) ranked WHERE k <= $1 ORDER BY account, n DESC, reason
"""


async def trading_flow(conn: Conn, top: int = 5) -> list[TradingFlowRow]:
    """Per account: signals in, intents out, held, the verdicts on its intents, the ``top`` skip reasons
    and denial reasons (see :class:`TradingFlowRow`). Needs migration 014."""
    flows: dict[str, TradingFlowRow] = {
        r["account"]: TradingFlowRow(
            account=r["account"],
            signals_in=r["signals_in"],
            intents_out=r["intents_out"],
            held=r["held"],
            verdicts={},
            skipped=[],
            denied=[],
        )
        for r in await conn.fetch(_FLOW)
    }
    for r in await conn.fetch(_SKIPPED, top):
        flows[r["account"]]["skipped"].append(ReasonCount(reason=r["reason"], n=r["n"]))
    for r in await conn.fetch(_VERDICTS):
        if r["account"] in flows:
            flows[r["account"]]["verdicts"][r["verdict"]] = r["n"]
    for r in await conn.fetch(_DENIED, top):
        if r["account"] in flows:
            flows[r["account"]]["denied"].append(ReasonCount(reason=r["reason"], n=r["n"]))
    return list(flows.values())
