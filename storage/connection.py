"""What every repository function in ``storage`` takes: a connection of its own or one lent by a pool."""

from __future__ import annotations

import asyncpg

__all__ = ["Conn"]

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
