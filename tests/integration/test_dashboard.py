"""The status dashboard in real headless Chromium, fed by a real worker on the real broker.

One worker hosts the trading agent and the dashboard agent (the dashboard
shares the pipeline's worker, as it would in a small deployment). Real
candles from the bundled Binance file (a calm window, re-stamped to end half
an hour ago because the trading agent runs live) and a signal go through
the trading agent; its portfolio snapshots, risk decisions and the control
audit of a signed kill switch (issued with the real ``tradeflow control``
CLI) reach the dashboard through the broker. Gate results and model
registry events are published as records. Debian's Chromium opens the page
(Chrome DevTools Protocol over a websocket); the test reads the rendered DOM,
then publishes more and checks the page updates *without a reload*.
Screenshots: ``artifacts/tests/dashboard.png`` and ``dashboard-updated.png``.

Access: with ``TRADEFLOW_DASHBOARD_TOKEN`` set, the page, the JSON and the
event stream answer 401 without the token or with a wrong one, and the
token appears in no log.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ops.embedded.broker import EmbeddedBroker, free_port
from ops.jobs.ingest import SAMPLE_DIR
from runtime.publish import RecordPublisher
from tests import builders
from tests.browser import CHROMIUM, chromium, http_get
from tests.conftest import ARTIFACTS, ROOT, Procs, wait_until
from topics.records import (
    Bar,
    GateResult,
    GateStatus,
    ModelRegistryEvent,
    ModelStage,
    Signal,
    Timeframe,
)
from topics.units import NS_PER_MINUTE as MIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "dash-token-NEVER-LOG-5c1e9a7f3b2d4e60"
SECRET = "fake-control-secret-NEVER-LOG-91d3e5a7c2b4"
H = Timeframe.H1.nanos
BTC_FILE, BTC_START = "binance_btcusdt_1h_2017_2022.csv", "2020-10-03 02:00:00+00:00"


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def btc_bars(n: int, last_close: int) -> list[Bar]:
    """``n`` consecutive real hourly candles, re-stamped so the last closes at ``last_close``."""
    with (SAMPLE_DIR / BTC_FILE).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["timestamp"] >= BTC_START][:n]
    out = []
    for j, r in enumerate(rows):
        close = last_close - (n - 1 - j) * H
        o, hi, lo, c = (float(r[k]) for k in ("open", "high", "low", "close"))
        assert (hi - lo) / o < 0.02, "a calm window: no volatility breaker"
        out.append(
            builders.bar(
                open_time=close - H,
                open=o,
                high=hi,
                low=lo,
                close=c,
                volume=float(r["volume"]),
                source=f"csv-restamped:{BTC_FILE}",
            )
        )
    return out


def signal(symbol: str, ts: int, score: float, tag: str) -> Signal:
    return builders.signal(
        symbol=symbol,
        ts=ts,
        score=score,
        model_id="mlp-btc",
        expected_return=0.02 * score,
        feature_event_id=f"features-{tag}",
        lineage_id="dashboard-test",
    )


def gate(ts: int, status: GateStatus, value: float | None, blockers: tuple[str, ...]) -> GateResult:
    return builders.gate_result(
        status=status,
        value=value,
        metric="daily_sharpe",
        window_end=ts,
        blockers=blockers,
        config_hash=f"cfg-{status.value}",
    )


def registry(ts: int, version: str, stage: ModelStage) -> ModelRegistryEvent:
    return builders.registry_event(
        version=version,
        stage=stage,
        ts=ts,
        model_id="mlp-btc",
        feature_set_version="fs-v1",
        config={"hidden": 32},
        data_start=ts - 400 * 24 * H,
        data_end=ts - 30 * 24 * H,
        seed=7,
        metrics={"val_loss": 0.69},
        checkpoint_path=f"var/models/mlp-btc-{version}.pt",
        checkpoint_sha256="c0ffee" * 10 + "abcd",
    )


# ---------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------


class Dash:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/dashboard"
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    async def state(self) -> dict[str, Any] | None:
        try:
            status, body = await asyncio.to_thread(http_get, self.base + "/state", self.auth)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    async def until(self, what: str, check: Any, procs: Procs, timeout: float = 60) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def ok() -> bool:
            s = await self.state()
            if s is not None and check(s):
                seen.update(s)
                return True
            return False

        await wait_until(ok, timeout, what, every=0.1, watch=procs)
        return seen


def control_cli(broker: EmbeddedBroker, namespace: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "control", *args, "--bootstrap", broker.bootstrap, "--namespace", namespace],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def position(s: dict[str, Any], symbol: str) -> float | None:
    for p in s["portfolios"]:
        for x in p["positions"]:
            if x["symbol"] == symbol:
                return float(x["quantity"])
    return None


@pytest.fixture
def dashboard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment the worker and CLI subprocesses inherit."""
    monkeypatch.setenv("TRADEFLOW_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", SECRET)
    monkeypatch.setenv("TRADEFLOW_CONTROL_SIGNING_KEY_ID", "ops1")
    monkeypatch.setenv("TRADEFLOW_OPERATOR", "alice")
    monkeypatch.setenv("TRADEFLOW_TRADING_SYMBOLS", "BTC/USDT")
    monkeypatch.setenv("TRADEFLOW_TRADING_TIMEFRAMES", "1h")


async def test_dashboard_in_chromium_shows_live_state_and_refuses_without_token(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, tmp_path: Path, dashboard_env: None
) -> None:
    assert shutil.which(CHROMIUM), "Debian's chromium is required (ops/bootstrap.sh installs it)"
    t_start = time.monotonic()
    a = time.time_ns() // MIN * MIN - 30 * MIN
    bars = btc_bars(6, a)  # closes a-5h .. a
    port = free_port()
    worker = procs.cli(
        "worker",
        "worker",
        "--bootstrap",
        broker.bootstrap,
        "--namespace",
        namespace,
        "--dsn",
        dsn,
        "--web-port",
        str(port),
        "--agents",
        "trading",
        "dashboard",
    )
    dash = Dash(port)
    await dash.until("the dashboard to serve its state", lambda s: True, procs, timeout=90)

    # --- access control: every route, no token or a wrong one -> 401
    for path in ("", "/state", "/events"):
        assert (await asyncio.to_thread(http_get, dash.base + path))[0] == 401, path
        assert (await asyncio.to_thread(http_get, dash.base + path + "?token=wrong-token-0123456789"))[0] == 401
        assert (
            await asyncio.to_thread(http_get, dash.base + path, {"Authorization": "Bearer wrong-token-0123456789"})
        )[0] == 401
    status, page = await asyncio.to_thread(http_get, dash.base + "?token=" + TOKEN)
    assert status == 200 and b"<title>tradeflow status</title>" in page

    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        # --- bars and a signal through the trading agent: a position, PnL, equity points
        await pub.publish(bars[:3], topic="market.bars")
        await dash.until(
            "portfolio state after the third bar",
            lambda s: any(p["as_of_event_id"] == bars[2].event_id for p in s["portfolios"]),
            procs,
        )
        await pub.publish([signal("BTC/USDT", bars[2].ts_event, 0.9, "s1")])
        await dash.until("an approved risk decision", lambda s: s["risk"]["verdicts"]["approved"] >= 1, procs)
        await pub.publish([bars[3]], topic="market.bars")
        s = await dash.until("a BTC position", lambda s: (position(s, "BTC/USDT") or 0) > 0, procs)
        qty = position(s, "BTC/USDT")
        # --- a signed kill switch through the real CLI, gates, registry, a dead letter
        await asyncio.to_thread(
            control_cli, broker, namespace, "kill-switch", "on", "--reason", "drill: dashboard halt", "--ttl-s", "7200"
        )
        await pub.publish([gate(a, GateStatus.FAILED, 0.456, ("daily_sharpe 0.456 < 1.5",))])
        await pub.publish([registry(a - 2 * H, "1", ModelStage.ACTIVE), registry(a - H, "2", ModelStage.SHADOW)])
        await pub.send_raw("signals", b"{not json", key=b"BTC/USDT")
        await dash.until(
            "kill switch, gate, models and a dead letter",
            lambda s: (
                len(s["risk"]["kill_switches"]) == 1
                and len(s["gates"]) == 1
                and len(s["models"]) == 2
                and s["health"]["dead_letters_total"] >= 1
            ),
            procs,
        )

        async with chromium(tmp_path) as browser:
            await browser.call("Page.navigate", url=f"{dash.base}?token={TOKEN}")
            await browser.wait_text("signals", "BTC/USDT", "0.9000", "mlp-btc v1")
            await browser.wait_text("portfolio", "account paper", "BTC/USDT", f"{qty:,.6f}", "equity curve (4 points)")
            await browser.wait_text(
                "risk", "drill: dashboard halt", "operator:alice", "kill_switch_on", "accepted", "approved"
            )
            await browser.wait_text("gates", "readiness", "failed", "0.4560", "daily_sharpe 0.456 < 1.5")
            await browser.wait_text("models", "active", "shadow", "fs-v1")
            await browser.wait_text("health", "broker", "up", "database", "dead letters", "deadletter")
            assert "not observed" not in await browser.text("gates")
            assert await browser.eval("document.querySelectorAll('svg.equity path').length") == 1
            await browser.screenshot(tmp_path / "dashboard.png")

            # --- more records: the open page updates over SSE, without a reload
            await browser.eval("window.__noReload = 'still-here'")
            frames = await browser.eval("window.__dashboard.frames")
            await pub.publish([signal("BTC/USDT", bars[3].ts_event, -0.35, "s2")])
            await pub.publish([gate(a + MIN, GateStatus.INSUFFICIENT_OBSERVATION, None, ("observations 12 < 30",))])
            await pub.publish([registry(a, "2", ModelStage.CANARY_10)])
            await asyncio.to_thread(control_cli, broker, namespace, "kill-switch", "off", "--reason", "drill over")
            await pub.publish(bars[4:6], topic="market.bars")
            await browser.wait_text("signals", "-0.3500")
            await browser.wait_text("gates", "insufficient_observation", "not observed", "observations 12 < 30")
            await browser.wait_text("models", "canary_10", "active")
            await browser.wait_text("risk", "none engaged", "kill_switch_off")
            await browser.wait_text("portfolio", "equity curve (6 points)")
            assert await browser.eval("window.__noReload") == "still-here"
            assert await browser.eval("window.__dashboard.frames") > frames
            assert await browser.eval("window.__dashboard.errors") == 0
            await browser.screenshot(tmp_path / "dashboard-updated.png")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("dashboard.png", "dashboard-updated.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, name
        shutil.copy(tmp_path / name, ARTIFACTS / name)
    assert worker.alive
    # an open event stream must not hold the worker's shutdown
    async with aiohttp.ClientSession() as session, session.get(dash.base + "/events", headers=dash.auth) as stream:
        assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        assert (await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)).startswith(b"retry:")
        t_stop = time.monotonic()
        assert await asyncio.to_thread(worker.stop) == 0
        assert time.monotonic() - t_stop < 15
    logs = worker.output()
    assert TOKEN not in logs and SECRET not in logs
    assert time.monotonic() - t_start < 120


async def test_slow_client_is_dropped_and_counted_while_others_keep_up(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never reads is disconnected (bounded queue), a reading client gets every update."""
    monkeypatch.delenv("TRADEFLOW_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("TRADEFLOW_DASHBOARD_TOKEN_FILE", raising=False)
    monkeypatch.setenv("TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS", "0")
    monkeypatch.setenv("TRADEFLOW_DASHBOARD_QUEUE", "2")
    port = free_port()
    procs.cli(
        "worker",
        "worker",
        "--bootstrap",
        broker.bootstrap,
        "--namespace",
        namespace,
        "--dsn",
        dsn,
        "--web-port",
        str(port),
        "--agents",
        "dashboard",
    )
    dash = Dash(port)
    dash.auth = {}
    await dash.until("the dashboard to serve its state", lambda s: True, procs, timeout=90)

    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # and never read: the server's writes back up
    slow.connect(("127.0.0.1", port))
    slow.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    n_gates = 120
    seen: list[int] = []

    async def reader(stream: aiohttp.ClientResponse) -> None:
        buf = b""
        async for chunk in stream.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                data = b"".join(line[6:] for line in frame.split(b"\n") if line.startswith(b"data: "))
                if data:
                    seen.append(len(json.loads(data)["gates"]))

    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(dash.base + "/events") as stream,
            RecordPublisher(broker.bootstrap, namespace) as pub,
        ):
            task = asyncio.create_task(reader(stream))
            await dash.until("both streams connected", lambda s: s["clients"]["connected"] == 2, procs)
            a = time.time_ns()
            blockers = tuple(f"blocker {j}: " + "x" * 200 for j in range(20))  # ~4 KB per gate row
            for i in range(n_gates):  # every record its own update: frames of growing size
                g = gate(a + i, GateStatus.FAILED, 0.1, blockers)
                await pub.publish([dataclasses_replace_gate(g, f"g{i:03d}")])
            s = await dash.until("the slow client dropped", lambda s: s["clients"]["dropped"] >= 1, procs, 60)
            assert s["clients"]["connected"] == 1
            await wait_until(lambda: _true(bool(seen) and seen[-1] == n_gates), 30, "the reading client's last frame")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        status, metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert re.search(rb'tradeflow_dashboard_clients_dropped_total\{reason="slow_client"\} [1-9]', metrics)
        final = await dash.state()
        assert final is not None and len(final["gates"]) == n_gates
        gates_topic = next(t for t in final["health"]["topics"] if t["topic"] == "gates.results")
        assert gates_topic["consumed"] == n_gates and gates_topic["lag"] == 0
    finally:
        slow.close()


async def _true(value: bool) -> bool:
    return value


def dataclasses_replace_gate(g: GateResult, name: str) -> GateResult:
    """``g`` as gate ``name`` (its own key and event id)."""
    return GateResult.new(
        ts_init=g.ts_init,
        ts_event=g.ts_event,
        gate=name,
        track=g.track,
        metric=g.metric,
        status=g.status,
        value=g.value,
        threshold=g.threshold,
        comparator=g.comparator,
        window_start=g.window_start,
        window_end=g.window_end,
        observations=g.observations,
        blockers=g.blockers,
        config_hash=g.config_hash,
    )
