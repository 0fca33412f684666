"""Feature snapshots (table ``feature_snapshots``, migration 004): one row per feature vector.

A snapshot keeps no ``ts_event``/``ts_init`` or ``correlation_id``; a
reconstructed vector gets ``ts_event = ts_init = bar_open_time + timeframe``
(the close of its bar), ``correlation_id = event_id`` and
``causation_id = bar_event_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage.connection import Conn
from topics.records import FeatureVector, Timeframe

__all__ = ["count_stored", "feature_vectors", "last_open_time", "values_of"]


async def feature_vectors(
    conn: Conn, symbol: str, timeframe: Timeframe, feature_set_version: str, start_ns: int, end_ns: int
) -> list[FeatureVector]:
    """Vectors of one feature set version with ``start_ns <= bar_open_time < end_ns``, oldest first (any venue)."""
    rows = await conn.fetch(
        "SELECT event_id, venue, symbol, timeframe, bar_open_time, feature_set_version, data_version, lineage_id,"
        " bar_event_id, names, vals FROM feature_snapshots WHERE symbol = $1 AND timeframe = $2"
        " AND feature_set_version = $3 AND bar_open_time >= $4 AND bar_open_time < $5 ORDER BY bar_open_time",
        symbol,
        timeframe.value,
        feature_set_version,
        start_ns,
        end_ns,
    )
    tf_ns = timeframe.nanos
    return [
        FeatureVector(
            event_id=r["event_id"],
            schema_version=FeatureVector.SCHEMA_VERSION,
            ts_event=r["bar_open_time"] + tf_ns,
            ts_init=r["bar_open_time"] + tf_ns,
            correlation_id=r["event_id"],
            causation_id=r["bar_event_id"],
            venue=r["venue"],
            symbol=r["symbol"],
            timeframe=timeframe,
            bar_open_time=r["bar_open_time"],
            feature_set_version=r["feature_set_version"],
            data_version=r["data_version"],
            lineage_id=r["lineage_id"],
            names=tuple(r["names"]),
            values=tuple(r["vals"]),
        )
        for r in rows
    ]


async def count_stored(conn: Conn, event_ids: Sequence[str]) -> int:
    """How many of these vectors are stored."""
    return int(
        await conn.fetchval("SELECT count(*) FROM feature_snapshots WHERE event_id = ANY($1::text[])", event_ids)
    )


async def values_of(conn: Conn, event_ids: Sequence[str]) -> list[tuple[str, tuple[float, ...]]]:
    """(event_id, values) of the stored ones of these vectors, in no particular order."""
    rows = await conn.fetch("SELECT event_id, vals FROM feature_snapshots WHERE event_id = ANY($1::text[])", event_ids)
    return [(r["event_id"], tuple(r["vals"])) for r in rows]


async def last_open_time(conn: Conn, symbol: str, timeframe: Timeframe, feature_set_version: str) -> int | None:
    """The newest stored vector's bar open time for one stream (None when there is none)."""
    value = await conn.fetchval(
        "SELECT max(bar_open_time) FROM feature_snapshots WHERE symbol = $1 AND timeframe = $2"
        " AND feature_set_version = $3",
        symbol,
        timeframe.value,
        feature_set_version,
    )
    return None if value is None else int(value)
