"""Operator-facing time parsing (CLI edge)."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_when(text: str) -> int:
    """ISO date/time (UTC when no offset) -> ns since the epoch."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000
