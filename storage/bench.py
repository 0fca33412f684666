"""The bare-COPY baseline the sink benchmark measures the sink against (``tradeflow bench``).

``copy_baseline`` is a table like ``ev_market_bars`` created in a throwaway
benchmark database; rows are COPYed into it in the sink's columns, one
transaction per batch, with none of the sink's decoding or deduplication.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.connection import Conn
from storage.sink import EVENT_COLUMNS

__all__ = ["copy_baseline_batch", "create_copy_baseline"]


async def create_copy_baseline(conn: Conn) -> None:
    await conn.execute("CREATE TABLE copy_baseline (LIKE ev_market_bars INCLUDING ALL)")


async def copy_baseline_batch(conn: Conn, records: Sequence[tuple[Any, ...]]) -> None:
    """COPY one batch of event rows (``EVENT_COLUMNS`` order) in a transaction of its own."""
    async with conn.transaction():
        await conn.copy_records_to_table("copy_baseline", records=records, columns=EVENT_COLUMNS)
