"""The recorded history an audit replays (:mod:`backtest.audit`): the input journal and stored records.

Records are read from their topic's event table (named by the catalogue), as
the exact payload text the sink stored; decoding and ordering are the
audit's. ``trading_input_journal`` (migration 012) is the trading agent's
record of the order it applied its inputs in; ``trading_checkpoints.output_offsets``
(migration 015) is where its outputs stood when the journal was last written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from storage.connection import Conn
from topics.catalogue import spec

__all__ = [
    "JournalEntry",
    "StoredInput",
    "StoredOutput",
    "inputs_in_range",
    "intent_tracks",
    "journal",
    "output_horizon",
    "outputs_in_range",
    "payloads",
    "stored_through",
]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One applied input: its place, topic (catalogue name), record and the arrival bound of the core's clock."""

    seq: int
    topic: str
    event_id: str
    arrival_ns: int | None


@dataclass(frozen=True, slots=True)
class StoredInput:
    """A stored record with where the sink read it from; ``payload`` as stored."""

    event_id: str
    ts_event: int
    kafka_partition: int
    kafka_offset: int
    payload: str


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """A stored output record as stored, with where the sink read it from."""

    kafka_partition: int
    kafka_offset: int
    payload: str


async def journal(conn: Conn, account: str) -> list[JournalEntry]:
    """The account's input journal in order; empty when there is none (or no journal table)."""
    exists = await conn.fetchval("SELECT to_regclass('trading_input_journal') IS NOT NULL")
    if not exists:
        return []
    # the rows the checkpoint covers: the ones after it were written ahead of outputs that may not be
    # delivered yet, and the output horizon (:func:`output_horizon`) is the checkpoint's
    rows = await conn.fetch(
        "SELECT seq, topic, event_id, arrival_ns FROM trading_input_journal WHERE account = $1 AND seq < "
        "coalesce((SELECT events_applied FROM trading_checkpoints WHERE account = $1), 0) ORDER BY seq",
        account,
    )
    return [
        JournalEntry(seq=r["seq"], topic=r["topic"], event_id=r["event_id"], arrival_ns=r["arrival_ns"]) for r in rows
    ]


async def payloads(conn: Conn, topic: str, event_ids: Sequence[str]) -> dict[str, str]:
    """event_id -> stored payload of the stored ones of these records of a topic."""
    sql = f"SELECT event_id, payload::text AS p FROM {spec(topic).table} WHERE event_id = ANY($1::text[])"  # noqa: S608
    return {r["event_id"]: r["p"] for r in await conn.fetch(sql, event_ids)}


async def inputs_in_range(
    conn: Conn, topic: str, start_ns: int, end_ns: int, timeframes: Sequence[str] | None = None
) -> list[StoredInput]:
    """Records of a topic with ``start_ns <= ts_event < end_ns`` (bars: of these timeframes only), unordered."""
    extra = " AND payload->>'timeframe' = ANY($3::text[])" if timeframes is not None else ""
    args: list[object] = [start_ns, end_ns] + ([list(timeframes)] if timeframes is not None else [])
    sql = (
        f"SELECT event_id, ts_event, kafka_partition, kafka_offset, payload::text AS p "  # noqa: S608
        f"FROM {spec(topic).table} WHERE ts_event >= $1 AND ts_event < $2{extra}"
    )  # table names from the catalogue
    return [
        StoredInput(
            event_id=r["event_id"],
            ts_event=r["ts_event"],
            kafka_partition=r["kafka_partition"],
            kafka_offset=r["kafka_offset"],
            payload=r["p"],
        )
        for r in await conn.fetch(sql, *args)
    ]


async def outputs_in_range(conn: Conn, topic: str, start_ns: int, end_ns: int) -> list[StoredOutput]:
    """A topic's stored records with ``start_ns <= ts_init < end_ns``, unordered."""
    sql = (
        f"SELECT kafka_partition, kafka_offset, payload::text AS p FROM {spec(topic).table} "  # noqa: S608
        "WHERE ts_init >= $1 AND ts_init < $2"
    )
    return [
        StoredOutput(r["kafka_partition"], r["kafka_offset"], r["p"]) for r in await conn.fetch(sql, start_ns, end_ns)
    ]


async def intent_tracks(conn: Conn, strategy_ids: Sequence[str], end_ns: int) -> dict[str, tuple[str, str]]:
    """event_id -> (strategy_id, track) of the stored intents of these strategies with ``ts_init < end_ns``
    (the whole history: an order in a range can be for an intent made before it)."""
    sql = (
        "SELECT event_id, payload->>'strategy_id' AS s, payload->>'track' AS t FROM "  # noqa: S608
        f"{spec('orders.intents').table} WHERE ts_init < $1 AND payload->>'strategy_id' = ANY($2::text[])"
    )
    return {r["event_id"]: (r["s"], r["t"]) for r in await conn.fetch(sql, end_ns, list(strategy_ids))}


async def output_horizon(conn: Conn, account: str) -> dict[str, dict[int, int]]:
    """topic -> partition -> the last offset the account's agent had delivered at its last checkpoint;
    empty when unknown (no checkpoint, or one saved before migration 015)."""
    has_column = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'trading_checkpoints' AND column_name = 'output_offsets'"
    )
    if not has_column:
        return {}
    raw = await conn.fetchval("SELECT output_offsets FROM trading_checkpoints WHERE account = $1", account)
    data = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return {str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in data.items()}


async def stored_through(conn: Conn, topic: str) -> dict[int, int]:
    """partition -> the highest offset the sink stored of a topic (the sink commits in offset order)."""
    sql = f"SELECT kafka_partition, max(kafka_offset) AS o FROM {spec(topic).table} GROUP BY kafka_partition"  # noqa: S608
    return {r["kafka_partition"]: r["o"] for r in await conn.fetch(sql)}
