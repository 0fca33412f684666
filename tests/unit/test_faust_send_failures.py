"""A failed produce stops the worker and blocks every later commit (runtime/faust_app.py SendFailures).

faust's ``Topic.send_soon`` only logs a failed delivery; its consumer would then commit the input whose
output was lost (seen on ``tradeflow up`` with the object store SIGKILLed under the bars-checker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runtime.faust_app import SendFailures, WorkerSettings, _Consumer, create_app


async def test_a_failed_send_then_the_worker_crashes_and_no_offset_is_committed_after_it(tmp_path: Path) -> None:
    app: Any = create_app(WorkerSettings(app_id="send-failures", bootstrap="127.0.0.1:1", data_dir=str(tmp_path)))
    sensor = next(s for s in app.sensors if isinstance(s, SendFailures))
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app.crash = crash
    assert app.send_failures == []
    sensor.on_send_error(None, RuntimeError("object store down"), None)
    sensor.on_send_error(None, RuntimeError("again"), None)
    await asyncio.sleep(0)
    assert app.send_failures == ["RuntimeError: object store down", "RuntimeError: again"]
    assert [str(e) for e in crashed] == ["object store down"]  # stopped once, on the first failure
    # nothing committed after it: the consumer refuses before it reaches the broker
    assert await _Consumer._commit(SimpleNamespace(app=app), {}) is False  # type: ignore[arg-type]
