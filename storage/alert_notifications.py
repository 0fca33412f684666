"""Alertmanager notifications in PostgreSQL (table ``alert_notifications``, migration 016).

One row per alert state: (receiver, fingerprint, status, starts_at). :func:`record` upserts, so a
notification Alertmanager sends again (its repeat interval, a retry after a 5xx) counts one more
delivery on the same row instead of adding one. The payload is parsed elsewhere
(``ops.observability.alert_receiver.parse_notification``); this module takes typed rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from storage.connection import Conn

__all__ = ["NotifiedAlert", "RecordResult", "count", "fetch", "record"]


@dataclass(frozen=True, slots=True)
class NotifiedAlert:
    """One alert of one notification, as Alertmanager's webhook (version 4) describes it."""

    receiver: str
    group_key: str
    fingerprint: str
    status: str  # firing | resolved
    starts_at: datetime
    ends_at: datetime | None  # None while firing
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class RecordResult:
    inserted: int  # alert states seen for the first time
    repeated: int  # resends of a state already recorded


_UPSERT = """
INSERT INTO alert_notifications AS n
    (receiver, fingerprint, status, starts_at, ends_at, alertname, severity, labels, annotations,
     generator_url, group_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11)
ON CONFLICT (receiver, fingerprint, status, starts_at) DO UPDATE
SET deliveries = n.deliveries + 1,
    last_received_at = now(),
    ends_at = EXCLUDED.ends_at,
    annotations = EXCLUDED.annotations,
    group_key = EXCLUDED.group_key
RETURNING (xmax = 0) AS inserted
"""


async def record(conn: Conn, alerts: Sequence[NotifiedAlert]) -> RecordResult:
    """Upsert every alert of one notification in one transaction."""
    inserted = 0
    async with conn.transaction():
        for a in alerts:
            new = await conn.fetchval(
                _UPSERT,
                a.receiver,
                a.fingerprint,
                a.status,
                a.starts_at,
                a.ends_at,
                a.alertname,
                a.labels.get("severity"),
                orjson.dumps(dict(a.labels)).decode(),
                orjson.dumps(dict(a.annotations)).decode(),
                a.generator_url,
                a.group_key,
            )
            inserted += bool(new)
    return RecordResult(inserted=inserted, repeated=len(alerts) - inserted)


async def count(conn: Conn, alertname: str | None = None) -> int:
    """Rows recorded (of one alert name)."""
    n: int = await conn.fetchval(
        "SELECT count(*) FROM alert_notifications WHERE $1::text IS NULL OR alertname = $1", alertname
    )
    return n


async def fetch(conn: Conn, alertname: str | None = None, limit: int = 100) -> list[dict[str, object]]:
    """The latest rows (of one alert name), newest first, labels and annotations as dicts."""
    rows = await conn.fetch(
        """SELECT receiver, fingerprint, status, starts_at, ends_at, alertname, severity, labels::text AS labels,
                  annotations::text AS annotations, generator_url, group_key, first_received_at,
                  last_received_at, deliveries
           FROM alert_notifications WHERE $1::text IS NULL OR alertname = $1
           ORDER BY first_received_at DESC, fingerprint, status LIMIT $2""",
        alertname,
        limit,
    )
    out = []
    for r in rows:
        d = dict(r)
        d["labels"] = orjson.loads(d["labels"])
        d["annotations"] = orjson.loads(d["annotations"])
        out.append(d)
    return out
