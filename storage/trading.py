"""The trading agent's tables: its checkpoint row (``trading_checkpoints``,
migration 010; 015: the output horizon) and its input journal (``trading_input_journal``,
migrations 012 and 014: each signal's outcome).

Journal rows are written ahead: a batch's rows (:func:`insert_journal`) before
its outputs are sent, so after a crash the inputs applied since the checkpoint
are re-applied in the order that made the outputs already on the broker
(:func:`journal_after`). A checkpoint covers the rows below its
``events_applied``; any rows still unwritten go in its transaction
(:func:`save_checkpoint`), so a saved state always has the input order that
built it. What a checkpoint *means* (its pickle, its MAC) is
:mod:`agents.trading.checkpoint`; this module only moves rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
import orjson

__all__ = [
    "Checkpoint",
    "HeldOutcome",
    "JournalRow",
    "Offsets",
    "insert_journal",
    "journal_after",
    "load_checkpoint",
    "load_output_offsets",
    "save_checkpoint",
    "set_held_outcomes",
    "upsert_checkpoint",
]

#: physical topic -> partition -> next offset to read.
Offsets = Mapping[str, Mapping[int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """One ``trading_checkpoints`` row."""

    account: str
    format: int
    config_hash: str
    key_id: str
    offsets: Offsets
    events_applied: int
    state: bytes
    mac: str

    @property
    def state_sha256(self) -> str:
        return hashlib.sha256(self.state).hexdigest()


class JournalRow(NamedTuple):
    """One ``trading_input_journal`` row: an input in the order it was applied.

    An execution answer (from the venue, not the broker) has partition and
    offset ``-1`` and no arrival. ``outcome`` (signals only, migration 014): the
    strategy's sizing reason, or ``held`` while the signal waits for its bar.
    """

    account: str
    seq: int
    topic: str
    kafka_partition: int
    kafka_offset: int
    event_id: str
    arrival_ns: int | None
    outcome: str | None = None


#: A held signal's outcome once applied: (event id, sizing reason).
HeldOutcome = tuple[str, str]

#: One statement for a whole batch of rows (one array per column): a round trip and a parse per batch,
#: where ``executemany`` sends a bind + execute per row.
_JOURNAL_INSERT = (
    "INSERT INTO trading_input_journal "
    "(account, seq, topic, kafka_partition, kafka_offset, event_id, arrival_ns, outcome) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::bigint[], $6::text[], "
    "$7::bigint[], $8::text[]) ON CONFLICT (account, seq) DO NOTHING"
)

#: The earliest row of the signal still ``held`` gets its outcome (a signal delivered twice is two rows).
_HELD_OUTCOME = """
UPDATE trading_input_journal SET outcome = $3
WHERE account = $1 AND seq = (
    SELECT min(seq) FROM trading_input_journal
    WHERE account = $1 AND event_id = $2 AND topic = 'signals' AND outcome = 'held'
)
"""

_UPSERT = """
INSERT INTO trading_checkpoints
    (account, format, config_hash, key_id, offsets, events_applied, state, mac, state_sha256, updated_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, now())
ON CONFLICT (account) DO UPDATE SET
    format = EXCLUDED.format, config_hash = EXCLUDED.config_hash, key_id = EXCLUDED.key_id,
    offsets = EXCLUDED.offsets, events_applied = EXCLUDED.events_applied, state = EXCLUDED.state,
    mac = EXCLUDED.mac, state_sha256 = EXCLUDED.state_sha256, updated_at = now()
"""

_SET_OUTPUTS = "UPDATE trading_checkpoints SET output_offsets = $2::jsonb WHERE account = $1"
_SELECT = (
    "SELECT account, format, config_hash, key_id, offsets::text AS offsets, events_applied, state, mac "
    "FROM trading_checkpoints WHERE account = $1"
)


async def insert_journal(conn: asyncpg.Connection, rows: Sequence[JournalRow]) -> None:
    """Append journal rows (a row already there, same account and seq, is kept)."""
    if rows:
        await conn.execute(_JOURNAL_INSERT, *(list(column) for column in zip(*rows, strict=True)))


async def journal_after(conn: asyncpg.Connection, account: str, seq: int) -> list[JournalRow]:
    """The account's journal rows from ``seq`` on, in order: inputs applied (and outputs sent) after the
    checkpoint whose ``events_applied`` is ``seq``."""
    rows = await conn.fetch(
        "SELECT account, seq, topic, kafka_partition, kafka_offset, event_id, arrival_ns, outcome "
        "FROM trading_input_journal WHERE account = $1 AND seq >= $2 ORDER BY seq",
        account,
        seq,
    )
    return [JournalRow(*r.values()) for r in rows]


async def upsert_checkpoint(conn: asyncpg.Connection, cp: Checkpoint) -> None:
    """Upsert the account's row (one statement: it is either the old row or the new one)."""
    await conn.execute(
        _UPSERT,
        cp.account,
        cp.format,
        cp.config_hash,
        cp.key_id,
        _offsets_json(cp.offsets),
        cp.events_applied,
        cp.state,
        cp.mac,
        cp.state_sha256,
    )


async def set_held_outcomes(conn: asyncpg.Connection, account: str, outcomes: Sequence[HeldOutcome]) -> None:
    """Record, in order, what became of signals journaled as ``held`` (each: its earliest held row)."""
    if outcomes:
        await conn.executemany(_HELD_OUTCOME, [(account, event_id, reason) for event_id, reason in outcomes])


async def save_checkpoint(
    conn: asyncpg.Connection,
    cp: Checkpoint,
    journal: Sequence[JournalRow] = (),
    held_outcomes: Sequence[HeldOutcome] = (),
    output_offsets: Offsets | None = None,
) -> None:
    """The journal rows of the inputs since the last checkpoint (then the outcomes of the held signals
    applied since) and the new row, in one transaction; with ``output_offsets`` (topic -> partition ->
    last offset delivered), the row's output horizon too."""
    async with conn.transaction():
        await insert_journal(conn, journal)
        await set_held_outcomes(conn, cp.account, held_outcomes)
        await upsert_checkpoint(conn, cp)
        if output_offsets is not None:
            await conn.execute(_SET_OUTPUTS, cp.account, _offsets_json(output_offsets))


async def load_output_offsets(conn: asyncpg.Connection, account: str) -> dict[str, dict[int, int]]:
    """The account's output horizon (migration 015): empty before its first checkpoint."""
    raw = await conn.fetchval("SELECT output_offsets::text FROM trading_checkpoints WHERE account = $1", account)
    return _offsets_of(orjson.loads(raw)) if raw else {}


def _offsets_json(offsets: Offsets) -> str:
    data = {t: {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()}
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def _offsets_of(raw: Mapping[str, Mapping[str, int]]) -> dict[str, dict[int, int]]:
    return {str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


async def load_checkpoint(conn: asyncpg.Connection, account: str) -> Checkpoint | None:
    """The account's row, or None when it has none (a first start)."""
    row = await conn.fetchrow(_SELECT, account)
    if row is None:
        return None
    offsets = _offsets_of(orjson.loads(row["offsets"]))
    return Checkpoint(
        account=row["account"],
        format=row["format"],
        config_hash=row["config_hash"],
        key_id=row["key_id"],
        offsets=offsets,
        events_applied=row["events_applied"],
        state=bytes(row["state"]),
        mac=row["mac"],
    )
