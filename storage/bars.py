"""The ``bars`` projection (latest revision per key, migration 002): reads for backtests, training, the run job.

The projection keeps no ``ts_init`` or ``correlation_id``; a reconstructed bar
gets ``ts_init = ts_event = close_time`` and ``correlation_id = event_id``
(what the CSV importer and the checker give a bar that starts a chain), so a
replay from Postgres depends only on the projected columns.
"""

from __future__ import annotations

from storage.connection import Conn
from topics.records import Bar, Timeframe

__all__ = ["bars_in_range", "closes_from", "count_bars", "count_checked", "symbol_venues"]

_BAR_SQL = (
    "SELECT venue, symbol, timeframe, open_time, close_time, open, high, low, close, volume, trade_count, "
    "is_closed, revision, source, event_id FROM bars WHERE venue = $1 AND symbol = $2 AND timeframe = $3 "
    "AND open_time >= $4 AND open_time < $5 ORDER BY open_time"
)


async def symbol_venues(conn: Conn, symbol: str, timeframe: Timeframe) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT venue FROM bars WHERE symbol = $1 AND timeframe = $2 ORDER BY venue", symbol, timeframe.value
    )
    return [r["venue"] for r in rows]


async def bars_in_range(
    conn: Conn, venue: str, symbol: str, timeframe: Timeframe, start_ns: int, end_ns: int
) -> list[Bar]:
    """Closed and open bars with ``start_ns <= open_time < end_ns`` in one query."""
    rows = await conn.fetch(_BAR_SQL, venue, symbol, timeframe.value, start_ns, end_ns)
    return [
        Bar(
            event_id=r["event_id"],
            schema_version=Bar.SCHEMA_VERSION,
            ts_event=r["close_time"],
            ts_init=r["close_time"],
            correlation_id=r["event_id"],
            causation_id=None,
            venue=r["venue"],
            symbol=r["symbol"],
            timeframe=Timeframe(r["timeframe"]),
            open_time=r["open_time"],
            open=r["open"],
            high=r["high"],
            low=r["low"],
            close=r["close"],
            volume=r["volume"],
            trade_count=r["trade_count"],
            is_closed=r["is_closed"],
            revision=r["revision"],
            source=r["source"],
        )
        for r in rows
    ]


async def count_bars(conn: Conn, symbol: str, timeframe: Timeframe) -> int:
    """Bars of a symbol and timeframe, any venue."""
    return int(
        await conn.fetchval("SELECT count(*) FROM bars WHERE symbol = $1 AND timeframe = $2", symbol, timeframe.value)
    )


async def closes_from(conn: Conn, venue: str, symbol: str, timeframe: Timeframe, start_ns: int) -> dict[int, float]:
    """open_time -> close of the bars with ``open_time >= start_ns``."""
    rows = await conn.fetch(
        "SELECT open_time, close FROM bars WHERE venue = $1 AND symbol = $2 AND timeframe = $3 "
        "AND open_time >= $4 ORDER BY open_time",
        venue,
        symbol,
        timeframe.value,
        start_ns,
    )
    return {r["open_time"]: r["close"] for r in rows}


async def count_checked(conn: Conn, venue: str, symbol: str, timeframe: Timeframe) -> int:
    """Projected bars of a stream whose checked record is stored too (``ev_market_bars``)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM bars b JOIN ev_market_bars e ON e.event_id = b.event_id "
            "WHERE b.venue=$1 AND b.symbol=$2 AND b.timeframe=$3",
            venue,
            symbol,
            timeframe.value,
        )
    )
