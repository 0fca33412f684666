"""Where resumable history downloads stand (``ingest_checkpoints``, migration 003).

A checkpoint is monotone: saving an older open time than the stored one
keeps the stored one.
"""

from __future__ import annotations

from storage.connection import Conn

__all__ = ["load_checkpoint", "save_checkpoint"]


async def load_checkpoint(conn: Conn, key: str) -> int | None:
    """The last open time (ns) downloaded for ``key``; None when it never was."""
    v = await conn.fetchval("SELECT last_open_time_ns FROM ingest_checkpoints WHERE key = $1", key)
    return None if v is None else int(v)


async def save_checkpoint(conn: Conn, key: str, last_open_time_ns: int) -> None:
    await conn.execute(
        "INSERT INTO ingest_checkpoints (key, last_open_time_ns) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET last_open_time_ns = GREATEST(ingest_checkpoints.last_open_time_ns,"
        " EXCLUDED.last_open_time_ns), updated_at = now()",
        key,
        last_open_time_ns,
    )
