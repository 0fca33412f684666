"""Real headless Chromium for the tests: Debian's ``chromium`` driven over the Chrome DevTools Protocol
(a websocket, no Selenium, no driver binary). One page per :func:`chromium` context.

The tests read the page as a person sees it (the rendered DOM's text, after the page's own script
ran), and take screenshots into ``artifacts/tests/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from ops.embedded.broker import free_port
from ops.embedded.workers import ChildProcess
from tests.conftest import wait_until

__all__ = ["CHROMIUM", "Browser", "chromium", "http_get"]

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status is an answer, not an exception."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Browser:
    """One headless Chromium page driven over CDP."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        mid = self.n
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 30)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"CDP connection closed: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == mid:
                if "error" in data:
                    raise AssertionError(f"CDP {method}: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result

    async def eval(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def text(self, element_id: str) -> str:
        return str(await self.eval(f"(document.getElementById({element_id!r}) || {{textContent: ''}}).textContent"))

    async def wait_text(self, element_id: str, *needles: str, timeout: float = 30, every: float = 0.2) -> str:
        """The text of ``#element_id`` once it contains every needle (else fail, showing what it shows)."""
        last = ""

        async def shown() -> bool:
            nonlocal last
            last = await self.text(element_id)
            return all(n in last for n in needles)

        try:
            await wait_until(shown, timeout, f"#{element_id} to show {needles}", every=every)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; #{element_id} shows:\n{last}") from None
        return last

    async def screenshot(self, path: Path) -> None:
        r = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))


@contextlib.asynccontextmanager
async def chromium(tmp: Path, window: str = "1400,2000") -> AsyncIterator[Browser]:
    """A headless Chromium (profile and log under ``tmp``) with one blank page; stopped on exit."""
    port = free_port()
    proc = ChildProcess(
        "chromium",
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            f"--window-size={window}",
            "about:blank",
        ],
        tmp / "chromium.log",
        append=False,
    ).start()
    try:

        async def up() -> bool:
            try:
                status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/json/version")
                return status == 200
            except OSError:
                return False

        await wait_until(up, 30, "chromium's DevTools endpoint")
        _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in json.loads(body) if t["type"] == "page")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws,
        ):
            browser = Browser(ws)
            await browser.call("Page.enable")
            await browser.call("Runtime.enable")
            yield browser
    finally:
        proc.stop(timeout=10)
