"""The Alertmanager webhook receiver behind ``tradeflow alerts receive``: every notification recorded.

``POST /alerts`` takes Alertmanager's webhook payload (version 4), checks it
(:func:`parse_notification`, pure) and upserts each alert into ``alert_notifications``
(:mod:`storage.alert_notifications`). Answers: 200 with the counts; 400 with a stable reason code
for a payload that cannot be recorded (logged and counted; Alertmanager does not retry a 4xx);
503 when PostgreSQL cannot be written (Alertmanager retries a 5xx). No request stops the server.
``GET /metrics`` (Prometheus) and ``GET /health`` are served on the same port.
Design: docs/operations.md#alert-notifications
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, ProcessCollector, generate_latest

from runtime.errors import BadInput
from storage.alert_notifications import NotifiedAlert, record
from storage.migrate import where

__all__ = [
    "ALERT_ROWS",
    "NOTIFICATIONS",
    "RECEIVER_REGISTRY",
    "BadNotification",
    "make_app",
    "parse_listen",
    "parse_notification",
    "serve",
]

log = structlog.get_logger("ops.alerts")

#: What the receiver's /metrics serves: its own counters and the process, not the default registry, whose
#: modules' gauges (a never-started broker watchdog's tradeflow_broker_up 0) would raise alerts about
#: work this process does not do.
RECEIVER_REGISTRY = CollectorRegistry()
ProcessCollector(registry=RECEIVER_REGISTRY)
#: Payloads by outcome (recorded | rejected | failed) and reason (a BadNotification code, or "database").
NOTIFICATIONS = Counter(
    "tradeflow_alert_notifications_total",
    "Alertmanager notifications received",
    ["outcome", "reason"],
    registry=RECEIVER_REGISTRY,
)
#: Alerts of recorded notifications: a new row (inserted) or one more delivery of a recorded state (repeated).
ALERT_ROWS = Counter(
    "tradeflow_alert_rows_total", "Alerts of recorded notifications", ["result"], registry=RECEIVER_REGISTRY
)

_STATUSES = ("firing", "resolved")
_FINGERPRINT = re.compile(r"^[0-9a-f]{1,64}$")
_GO_ZERO_YEAR = 1  # Alertmanager sends endsAt 0001-01-01T00:00:00Z for a firing alert
MAX_BODY_BYTES = 4 * 1024 * 1024


class BadNotification(BadInput, ValueError):
    """A webhook payload that is not an Alertmanager notification we can record (HTTP 400).

    ``reason`` is a stable code (``not_json``, ``not_an_object``, ``unsupported_version``,
    ``missing_field``, ``bad_field``, ``no_alerts``); the message names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _field(obj: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in obj:
        raise BadNotification("missing_field", f"{where}{name}")
    return obj[name]


def _storable(value: Any) -> bool:
    """A string PostgreSQL can store (text and jsonb refuse NUL)."""
    return isinstance(value, str) and "\x00" not in value


def _text(obj: Mapping[str, Any], name: str, where: str, *, empty: bool = False) -> str:
    value = _field(obj, name, where)
    if not _storable(value) or (not empty and not value):
        raise BadNotification("bad_field", f"{where}{name} must be a{'' if empty else ' non-empty'} string without NUL")
    return str(value)


def _strings(obj: Mapping[str, Any], name: str, where: str) -> dict[str, str]:
    value = _field(obj, name, where)
    if not isinstance(value, dict) or not all(_storable(k) and _storable(v) for k, v in value.items()):
        raise BadNotification("bad_field", f"{where}{name} must be an object of strings without NUL")
    return dict(value)


def _time(obj: Mapping[str, Any], name: str, where: str) -> datetime | None:
    """RFC 3339 (Go's nanoseconds are cut to microseconds); None for Go's zero time."""
    raw = _text(obj, name, where)
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadNotification("bad_field", f"{where}{name} is not an RFC 3339 time: {raw[:40]!r}") from None
    if value.tzinfo is None:
        raise BadNotification("bad_field", f"{where}{name} has no time zone: {raw[:40]!r}")
    return None if value.year == _GO_ZERO_YEAR else value.astimezone(UTC)


def parse_notification(body: bytes) -> list[NotifiedAlert]:
    """Alertmanager's webhook JSON -> one :class:`NotifiedAlert` per alert; :class:`BadNotification` if not."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadNotification("not_json", str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise BadNotification("not_an_object", f"the body is a JSON {type(doc).__name__}")
    version = _field(doc, "version", "")
    if version != "4":
        raise BadNotification("unsupported_version", f"version {str(version)[:20]!r}, expected '4'")
    receiver = _text(doc, "receiver", "")
    group_key = _text(doc, "groupKey", "")
    if _text(doc, "status", "") not in _STATUSES:
        raise BadNotification("bad_field", "status must be firing or resolved")
    alerts = _field(doc, "alerts", "")
    if not isinstance(alerts, list):
        raise BadNotification("bad_field", "alerts must be a list")
    if not alerts:
        raise BadNotification("no_alerts", "the notification holds no alert")
    out: list[NotifiedAlert] = []
    for i, a in enumerate(alerts):
        where = f"alerts[{i}]."
        if not isinstance(a, dict):
            raise BadNotification("bad_field", f"alerts[{i}] must be an object")
        status = _text(a, "status", where)
        if status not in _STATUSES:
            raise BadNotification("bad_field", f"{where}status must be firing or resolved")
        labels = _strings(a, "labels", where)
        if not labels.get("alertname"):
            raise BadNotification("missing_field", f"{where}labels.alertname")
        fingerprint = _text(a, "fingerprint", where)
        if not _FINGERPRINT.match(fingerprint):
            raise BadNotification("bad_field", f"{where}fingerprint must be lower-case hex")
        starts_at = _time(a, "startsAt", where)
        if starts_at is None:
            raise BadNotification("bad_field", f"{where}startsAt is the zero time")
        ends_at = _time(a, "endsAt", where)
        if status == "resolved" and ends_at is None:
            raise BadNotification("bad_field", f"{where}endsAt is the zero time on a resolved alert")
        out.append(
            NotifiedAlert(
                receiver=receiver,
                group_key=group_key,
                fingerprint=fingerprint,
                status=status,
                starts_at=starts_at,
                ends_at=ends_at if status == "resolved" else None,
                labels=labels,
                annotations=_strings(a, "annotations", where),
                generator_url=_text(a, "generatorURL", where, empty=True),
            )
        )
    return out


def _reply(http_status: int, **body: Any) -> web.Response:
    return web.Response(status=http_status, body=orjson.dumps(body), content_type="application/json")


def make_app(pool: asyncpg.Pool) -> web.Application:
    """The receiver's routes over a connection pool."""

    async def receive(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            NOTIFICATIONS.labels("rejected", "too_large").inc()
            log.warning("alert_notification_rejected", reason="too_large", remote=request.remote, limit=MAX_BODY_BYTES)
            return _reply(413, error="too_large", detail=f"the body exceeds {MAX_BODY_BYTES} bytes")
        try:
            alerts = parse_notification(body)
        except BadNotification as exc:
            NOTIFICATIONS.labels("rejected", exc.reason).inc()
            log.warning(
                "alert_notification_rejected",
                reason=exc.reason,
                detail=exc.detail,
                remote=request.remote,
                body_bytes=len(body),
                body_head=body[:200].decode("utf-8", "replace"),
            )
            return _reply(400, error=exc.reason, detail=exc.detail)
        try:
            async with pool.acquire() as conn:
                result = await record(conn, alerts)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            NOTIFICATIONS.labels("failed", "database").inc()
            log.error("alert_notification_not_recorded", error=f"{type(exc).__name__}: {exc}", alerts=len(alerts))
            return _reply(503, error="database", detail="the notification could not be recorded; retry")
        NOTIFICATIONS.labels("recorded", "").inc()
        ALERT_ROWS.labels("inserted").inc(result.inserted)
        ALERT_ROWS.labels("repeated").inc(result.repeated)
        log.info(
            "alert_notification_recorded",
            receiver=alerts[0].receiver,
            alerts=len(alerts),
            inserted=result.inserted,
            repeated=result.repeated,
        )
        return _reply(200, alerts=len(alerts), inserted=result.inserted, repeated=result.repeated)

    async def metrics(_: web.Request) -> web.Response:
        # aiohttp refuses a charset inside content_type; the exposition format is ASCII.
        return web.Response(body=generate_latest(RECEIVER_REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return _reply(200, status="ok")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/alerts", receive)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve(dsn: str, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT. The pool connects lazily: a database that is down at start-up
    or later answers 503 per notification (Alertmanager retries), it does not stop the receiver."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4, command_timeout=10)
    runner = web.AppRunner(make_app(pool), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("alert_receiver_listening", url=f"http://{host}:{port}/alerts", database=where(dsn))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.close()
