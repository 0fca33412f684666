"""Dashboard agent: the dashboard topics in, a read-only web page out.

``tradeflow worker --agents dashboard [--web-host 127.0.0.1] [--web-port N]`` serves, on the
worker's own web server (the one with ``/metrics`` and ``/health``), ``GET /dashboard`` (the
page, CSS and JS inlined), ``GET /dashboard/state`` (the snapshot as JSON) and
``GET /dashboard/events`` (server-sent events, one full snapshot per update, at most one
every ``TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS``).

Thin: decode (or dead-letter), fold into :class:`~ops.dashboard.state.DashboardState`,
mark dirty. A separate task serializes the snapshot once and hands the bytes to
:class:`~ops.dashboard.hub.SseHub`, which never blocks (a slow client is dropped and
counted). Another probes the database every ``DB_PROBE_S`` and reads what became of the
signals from the trading agent's journal (:func:`storage.status.trading_flow`, the rows of
``tradeflow status``). Read-only: operators use the signed ``tradeflow control`` commands.

The operator's path has a consumer of its own: ``control.audit``, ``ops.alerts`` and ``risk.opening`` (kill switches,
rejected commands, breaker alerts: a few records a day) are read by a plain aiokafka consumer, not by
the faust agent, because one faust fetch covers every subscribed partition and on the s3-backed broker
a pass over the busy market partitions took over a second on a loaded machine (the kill switch then
showed 1.2 s after the command; docs/dashboard.md#dashboard-agent).
With ``TRADEFLOW_DASHBOARD_TOKEN`` (or ``TRADEFLOW_DASHBOARD_TOKEN_FILE``) every route needs
the token (constant-time compare, 401 otherwise); it is never logged. The view is in memory
and commits no offsets: every start rebuilds it from the beginning of the retained topics.

Design: docs/dashboard.md#dashboard-agent
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from ops.dashboard.hub import SseHub, sse_frame
from ops.dashboard.state import TOPICS, DashboardState
from runtime import faust_adapter
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.broker import client_security
from runtime.env import ConfigError, env_float, env_int, read_secret
from runtime.exits import EXIT_CONFIG
from runtime.metrics import CONSUMER_LAG, PROCESS_LATENCY
from topics.catalogue import spec

__all__ = ["NAME", "DashboardSettings", "authorized", "load_token", "register", "render_page"]

log = structlog.get_logger("ops.dashboard")

NAME = "dashboard"
BATCH_MAX = 500
BATCH_WAIT_S = 0.005
#: the database probe, and the read of what became of the signals (``tradeflow status``'s rows)
DB_PROBE_S = 2.0
DB_TIMEOUT_S = 1.0
FLOW_TIMEOUT_S = 10.0
FLOW_MAX_SHARE = 0.2
FLOW_TOP = 5
KEEPALIVE_S = 15.0
#: read by their own consumer (see above): few records, and the one an operator waits for
FAST_TOPICS: tuple[str, ...] = ("control.audit", "ops.alerts", "risk.opening")
FAST_FETCH_WAIT_MS = 50
TOKEN_ENV = "TRADEFLOW_DASHBOARD_TOKEN"  # noqa: S105 - the variable's name, not a secret
STATIC = Path(__file__).resolve().parent / "static"
UNAUTHORIZED_PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>tradeflow: token needed</title></head>"
    "<body><h1>401: this dashboard needs its token</h1><p>Open this address with <code>?token=</code> and the "
    "contents of the token file (<code>tradeflow up</code> prints its path; by default "
    "<code>var/secrets/dashboard.token</code>).</p></body></html>"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class DashboardSettings:
    """The agent's environment, parsed once at start-up (token never in repr)."""

    __slots__ = ("_token", "min_interval_s", "queue_size")

    def __init__(self, token: bytes | None, min_interval_s: float = 0.05, queue_size: int = 8) -> None:
        self._token = token
        self.min_interval_s = min_interval_s
        self.queue_size = queue_size

    @property
    def token(self) -> bytes | None:
        return self._token

    def __repr__(self) -> str:
        return (
            f"DashboardSettings(token={'set' if self._token else 'none'}, "
            f"min_interval_s={self.min_interval_s}, queue_size={self.queue_size})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DashboardSettings:
        """Raises :class:`~runtime.env.ConfigError` (a ``ValueError``) naming the variable."""
        interval_ms = env_float("TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS", 50.0, env)
        queue = env_int("TRADEFLOW_DASHBOARD_QUEUE", 8, env)
        if not 0 <= interval_ms <= 10_000 or queue < 1:
            raise ConfigError(
                "TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS must be in [0, 10000], TRADEFLOW_DASHBOARD_QUEUE >= 1"
            )
        return cls(load_token(env), interval_ms / 1000, queue)


class _Event:
    """An aiokafka record as :func:`runtime.agent.decode_or_dead_letter` reads a faust event
    (``event.message`` with partition, offset, key, value and a timestamp in seconds)."""

    __slots__ = ("message",)

    def __init__(self, record: Any) -> None:
        self.message = _Message(record)


class _Message:
    __slots__ = ("key", "offset", "partition", "timestamp", "value")

    def __init__(self, record: Any) -> None:
        self.partition, self.offset = record.partition, record.offset
        self.key, self.value = record.key, record.value
        self.timestamp = record.timestamp / 1000 if record.timestamp is not None else None


def load_token(env: Mapping[str, str]) -> bytes | None:
    """``TRADEFLOW_DASHBOARD_TOKEN`` or ``..._FILE`` (not both, :func:`~runtime.env.read_secret`);
    None: no token required. A token variable that is set but empty is refused, not read as "no
    token": a blank secret must not open the dashboard."""
    value = read_secret(TOKEN_ENV, env)
    if value is None and TOKEN_ENV not in env and TOKEN_ENV + "_FILE" not in env:
        return None
    token = (value or "").encode()
    if len(token) < 16:
        raise ConfigError("the dashboard token must be at least 16 characters")
    return token


def authorized(token: bytes | None, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """Bearer header or ``?token=``; constant-time compare; everything allowed without a token."""
    if token is None:
        return True
    auth = headers.get("Authorization", "")
    offered = auth[7:].strip() if auth[:7].lower() == "bearer " else query.get("token", "")
    return hmac.compare_digest(offered.encode(), token)


def render_page() -> str:
    """index.html with app.css and app.js inlined (read once at registration)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    css = (STATIC / "app.css").read_text(encoding="utf-8")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    return html.replace("/*__APP_CSS__*/", css).replace("//__APP_JS__", js)


def _broker_up() -> bool | None:
    value = REGISTRY.get_sample_value("tradeflow_broker_up")
    return None if value is None else value >= 1


def register(app: Any, ctx: AgentContext, environ: Mapping[str, str] | None = None) -> Any:
    env = os.environ if environ is None else environ
    try:
        settings = DashboardSettings.from_env(env)
    except ValueError as exc:  # messages name variables, never the token
        log.critical("dashboard_refused_to_start", reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    log.info(
        "dashboard_configured",
        token_required=settings.token is not None,
        min_interval_ms=settings.min_interval_s * 1000,
        queue=settings.queue_size,
    )

    state = DashboardState()
    hub = SseHub(queue_size=settings.queue_size)
    dirty = asyncio.Event()
    page = render_page()
    fast = FAST_TOPICS if ctx.bootstrap else ()  # no bootstrap (a test app): one path for all
    topics = {ctx.topic(name): (name, spec(name).record) for name in TOPICS if name not in fast}
    fast_topics = {ctx.topic(name): (name, spec(name).record) for name in fast}
    next_offset: dict[Any, int] = {}
    latency = PROCESS_LATENCY.labels(NAME)

    def wall() -> int:
        return int(ctx.wall_clock())

    def refuse() -> web.Response:
        return web.json_response(
            {"error": "unauthorized"},
            status=401,
            headers={**SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="tradeflow"'},
        )

    def refuse_page() -> web.Response:
        # a person opened the URL without its token: say where the token is, in a page
        return web.Response(
            text=UNAUTHORIZED_PAGE,
            status=401,
            content_type="text/html",
            charset="utf-8",
            headers={**SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="tradeflow"'},
        )

    def allowed(request: Any) -> bool:
        return authorized(settings.token, request.headers, request.query)

    def update_lag() -> None:
        lag: dict[str, int] = {}
        for tp, nxt in next_offset.items():
            try:
                hw = app.consumer.highwater(tp)
            except Exception:  # no fetch yet for this partition: unknown, not zero
                hw = None
            if hw is not None:
                name = topics[tp.topic][0]
                behind = max(int(hw) - nxt, 0)
                lag[name] = lag.get(name, 0) + behind
                CONSUMER_LAG.labels(NAME, name, str(tp.partition)).set(behind)
        for name, n in lag.items():
            state.set_lag(name, n)

    async def resume_where_the_view_is(consumer: Any) -> None:
        # after each of faust's seeks: a partition this process has read goes on from the view's own
        # position (never twice into the counters); one it has not read starts at the beginning, as
        # nothing is committed (acks off below). A topic another agent of this worker commits (the
        # trading agent's inputs, in a shared worker) follows that agent's position, never ours.
        for tp in consumer.assignment():
            if tp in next_offset and not app.topics.acks_enabled_for(tp.topic):
                await faust_adapter.seek(consumer, tp, next_offset[tp])

    async def on_assigned(sender: Any, assigned: Any = None, **_: Any) -> None:
        faust_adapter.after_every_seek(app.consumer, resume_where_the_view_is)

    app.on_partitions_assigned.connect(on_assigned)

    # acks off: the group commits no offset, so every start reads the topics from the beginning and
    # the view (latest states, kill switches, counters) is rebuilt from what the broker retains
    @app.agent(app.topic(*topics, acks=False), name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def fold(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            for event in events:
                msg = event.message
                name, cls = topics[msg.topic]
                state.consumed(name)
                next_offset[msg.tp] = msg.offset + 1
                rec = await decode_or_dead_letter(ctx, NAME, name, cls, event)
                if rec is not None:
                    state.apply(rec)
            update_lag()
            dirty.set()
            latency.observe(time.perf_counter() - t0)

    if fast_topics:

        @app.task  # type: ignore[untyped-decorator]
        async def fold_operator_path() -> None:
            from aiokafka import AIOKafkaConsumer

            # no group, no commits: every start reads them from the beginning, like the agent
            consumer = AIOKafkaConsumer(
                *fast_topics,
                bootstrap_servers=ctx.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=FAST_FETCH_WAIT_MS,
                **client_security(),
            )
            try:
                await consumer.start()
                while True:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH_MAX)
                    if not batches:
                        continue
                    t0 = time.perf_counter()
                    for tp, records in batches.items():
                        name, cls = fast_topics[tp.topic]
                        for msg in records:
                            state.consumed(name)
                            rec = await decode_or_dead_letter(ctx, NAME, name, cls, _Event(msg))
                            if rec is not None:
                                state.apply(rec)
                        hw = consumer.highwater(tp)
                        if hw is not None:
                            behind = max(int(hw) - (records[-1].offset + 1), 0)
                            state.set_lag(name, behind)
                            CONSUMER_LAG.labels(NAME, name, str(tp.partition)).set(behind)
                    dirty.set()
                    latency.observe(time.perf_counter() - t0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # as crash_worker_on_bug: loud, and the supervisor restarts the worker
                log.critical("agent_crashed", agent=f"{NAME}.operator_path", error=f"{type(exc).__name__}: {exc}")
                await app.crash(exc)
                raise
            finally:
                await consumer.stop()

    @app.task  # type: ignore[untyped-decorator]
    async def broadcast() -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dirty.wait(), timeout=1.0)
                dirty.clear()
                now = wall()
                state.sample(now)
                state.set_broker(_broker_up(), now)
                snapshot = state.view(now, clients={"connected": hub.client_count, "dropped": hub.dropped_total})
                hub.publish(sse_frame(orjson.dumps(snapshot), event_id=state.version))
                await asyncio.sleep(settings.min_interval_s)
        finally:
            hub.close_all()

    @app.task  # type: ignore[untyped-decorator]
    async def probe_database() -> None:
        if not ctx.dsn:
            return
        import asyncpg

        from storage.databases import ping
        from storage.status import trading_flow

        while True:
            cost = 0.0
            try:
                conn = await asyncio.wait_for(asyncpg.connect(ctx.dsn, timeout=DB_TIMEOUT_S), DB_TIMEOUT_S)
                try:
                    await asyncio.wait_for(ping(conn), DB_TIMEOUT_S)
                    state.set_database(True, "", wall())
                    t0 = time.perf_counter()
                    try:
                        flow = await asyncio.wait_for(trading_flow(conn, FLOW_TOP), FLOW_TIMEOUT_S)
                    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
                        state.set_trading_flow(None, wall(), "database not migrated (tradeflow migrate)")
                    except (TimeoutError, asyncpg.PostgresError) as exc:
                        state.set_trading_flow(None, wall(), type(exc).__name__)
                    else:
                        state.set_trading_flow(list(flow), wall())
                    cost = time.perf_counter() - t0
                finally:
                    await conn.close(timeout=DB_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the class only: an error text may carry the DSN
                state.set_database(False, type(exc).__name__, wall())
            dirty.set()
            # the journal query grows with the journal: it may take at most FLOW_MAX_SHARE of the time
            await asyncio.sleep(max(DB_PROBE_S, cost / FLOW_MAX_SHARE))

    async def end_streams(_: web.Application) -> None:
        # aiohttp runs on_shutdown before it waits for open handlers: without this an
        # open event stream would hold the worker's stop for the handler timeout (60 s).
        hub.close_all()

    app.web.web_app.on_shutdown.append(end_streams)

    @app.page("/dashboard")  # type: ignore[untyped-decorator]
    async def dashboard_page(self: Any, request: Any) -> Any:
        if not allowed(request):
            return refuse_page()
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)

    @app.page("/dashboard/state")  # type: ignore[untyped-decorator]
    async def dashboard_state(self: Any, request: Any) -> Any:
        if not allowed(request):
            return refuse()
        now = wall()
        snapshot = state.view(now, clients={"connected": hub.client_count, "dropped": hub.dropped_total})
        return web.Response(body=orjson.dumps(snapshot), content_type="application/json", headers=SECURITY_HEADERS)

    @app.page("/dashboard/events")  # type: ignore[untyped-decorator]
    async def dashboard_events(self: Any, request: Any) -> Any:
        if not allowed(request):
            return refuse()
        client = hub.connect()
        if client is None:
            return web.json_response({"error": "too many dashboard clients"}, status=503, headers=SECURITY_HEADERS)
        resp = web.StreamResponse(
            headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            while True:
                try:
                    frame = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if hub.is_close(frame):
                    break
                await resp.write(frame)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            hub.disconnect(client)
        return resp

    return fold
