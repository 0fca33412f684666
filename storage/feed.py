"""Where the streams of a recorded-market feed stand (``feed_positions``, migration 013).

A position is the open time of the last bar of a stream the broker acknowledged; the
feed resumes with the bar after it. Saving is monotone (an older open time keeps the
stored one) and one transaction per call, so a batch's positions move together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.connection import Conn

__all__ = ["FeedPosition", "load_feed_positions", "save_feed_positions"]


@dataclass(frozen=True, slots=True)
class FeedPosition:
    venue: str
    symbol: str
    timeframe: str
    source: str
    last_open_time_ns: int


async def load_feed_positions(conn: Conn, feed: str) -> list[FeedPosition]:
    rows = await conn.fetch(
        "SELECT venue, symbol, timeframe, source, last_open_time_ns FROM feed_positions WHERE feed = $1 "
        "ORDER BY venue, symbol, timeframe",
        feed,
    )
    return [
        FeedPosition(r["venue"], r["symbol"], r["timeframe"], r["source"], int(r["last_open_time_ns"])) for r in rows
    ]


async def save_feed_positions(conn: Conn, feed: str, positions: Sequence[FeedPosition]) -> None:
    if not positions:
        return
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO feed_positions (feed, venue, symbol, timeframe, source, last_open_time_ns) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (feed, venue, symbol, timeframe) DO UPDATE SET "
            "last_open_time_ns = GREATEST(feed_positions.last_open_time_ns, EXCLUDED.last_open_time_ns), "
            "source = EXCLUDED.source, updated_at = now()",
            [(feed, p.venue, p.symbol, p.timeframe, p.source, p.last_open_time_ns) for p in positions],
        )
