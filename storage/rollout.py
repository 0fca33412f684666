"""Model rollout decisions (views ``rollout_audit`` and ``rollout_status`` over ``ev_governance_audit``, migration 009).

Rows come back as dicts of the views' columns (``gates`` and
``gate_result_ids`` as stored JSON), for the operator CLI to print.
"""

from __future__ import annotations

from typing import Any

from storage.connection import Conn

__all__ = ["audit_trail", "latest_decisions"]


async def latest_decisions(conn: Conn, model_id: str | None) -> list[dict[str, Any]]:
    """Governance's latest decision per rollout (model_id, symbol), of one model or all."""
    rows = await conn.fetch(
        """
SELECT * FROM rollout_status WHERE ($1::text IS NULL OR model_id = $1) ORDER BY model_id, symbol
""",
        model_id,
    )
    return [dict(r) for r in rows]


async def audit_trail(conn: Conn, model_id: str | None, symbol: str | None, limit: int) -> list[dict[str, Any]]:
    """Governance decisions, newest first, optionally of one model and symbol."""
    rows = await conn.fetch(
        """
SELECT * FROM rollout_audit
WHERE ($1::text IS NULL OR model_id = $1) AND ($2::text IS NULL OR symbol = $2)
ORDER BY ts_event DESC, kafka_offset DESC LIMIT $3
""",
        model_id,
        symbol,
        limit,
    )
    return [dict(r) for r in rows]
