"""The model registry (view ``model_registry`` over ``ev_model_registry``, migration 005).

Every registry event of a model version (registered, shadow, active, rolled
back ...) is a row; the latest per ``(model_id, version)`` by ``ts_event`` is
the version's current stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict, cast

from storage.connection import Conn

__all__ = ["StageRow", "VersionRow", "current_stages", "events", "latest_versions", "registry_entry"]


class VersionRow(TypedDict):
    """A version's latest registry event; ``metrics`` as stored JSON text."""

    model_id: str
    version: str
    stage: str
    feature_set_version: str
    checkpoint_sha256: str
    metrics: str
    ts_event: int


class StageRow(TypedDict):
    """A version's current stage and the symbol it serves (``config.symbol``; None if it names none)."""

    model_id: str
    version: str
    stage: str
    symbol: str | None
    ts_event: int


async def registry_entry(conn: Conn, model_id: str, version: str) -> Mapping[str, Any] | None:
    """The latest registry event of one model version (checkpoint path + sha256, config)."""
    row = await conn.fetchrow(
        "SELECT model_id, version, stage, feature_set_version, checkpoint_path, checkpoint_sha256, config::text "
        "AS config FROM model_registry WHERE model_id = $1 AND version = $2 ORDER BY ts_event DESC LIMIT 1",
        model_id,
        version,
    )
    if row is None:
        return None
    out = dict(row)
    out["config"] = json.loads(out["config"])
    return out


async def latest_versions(conn: Conn) -> list[VersionRow]:
    """Every version with its latest event, by model and version."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (model_id, version) model_id, version, stage, feature_set_version, "
        "checkpoint_sha256, metrics, ts_event FROM model_registry ORDER BY model_id, version, ts_event DESC"
    )
    return [cast(VersionRow, dict(r)) for r in rows]


async def events(conn: Conn, model_id: str, version: str | None = None) -> list[dict[str, Any]]:
    """Every registry event of a model (or of one version), oldest first; JSON columns as stored text."""
    q = "SELECT * FROM model_registry WHERE model_id = $1"
    args: list[Any] = [model_id]
    if version:
        q += " AND version = $2"
        args.append(version)
    return [dict(r) for r in await conn.fetch(q + " ORDER BY ts_event", *args)]


async def current_stages(conn: Conn, model_id: str | None) -> list[StageRow]:
    """The current stage of every version (of one model, or of all when ``model_id`` is None)."""
    rows = await conn.fetch(
        """
SELECT DISTINCT ON (model_id, version) model_id, version, stage, config->>'symbol' AS symbol, ts_event
FROM model_registry WHERE ($1::text IS NULL OR model_id = $1)
ORDER BY model_id, version, ts_event DESC, event_id DESC
""",
        model_id,
    )
    return [cast(StageRow, dict(r)) for r in rows]
