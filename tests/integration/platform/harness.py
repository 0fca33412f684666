"""One platform started by ``tradeflow up`` for every test of this package (starting it trains a model:
about a minute on 2 cores), torn down when the package's tests are done.

The tests act on it as its users would, from "a second shell": subprocesses of ``tradeflow`` (no flags:
``<data>/run/platform.json`` supplies them), plain Kafka and PostgreSQL clients, a real browser.

The contract between the tests: **every test leaves the platform running and healthy** (a test that kills
or stops it brings it back with ``platform.start()``), so the tests do not depend on their order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[3]
READY_TIMEOUT_S = 240


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mark = 0

    def start(self, *extra: str) -> Up:
        self.mark = len(self.output())  # a restart appends to the same log: look only at what follows
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(self.data_dir), "--pace", "4", *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while "tradeflow is up" not in self.output()[self.mark :]:
                assert self.proc.poll() is None, f"tradeflow up exited {self.proc.returncode}:\n{self.output()[-4000:]}"
                assert time.monotonic() < deadline, f"not up within {READY_TIMEOUT_S} s:\n{self.output()[-4000:]}"
                time.sleep(0.5)
        except BaseException:
            self.stop()  # a platform that did not come up is not left running behind the failed test
            raise
        return self

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_")}
        return {**env, "TRADEFLOW_DATA_DIR": str(self.data_dir)}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.data_dir / "run" / "platform.json").read_text())
        return data

    def cli(
        self, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A ``tradeflow`` command from a second shell: no flags, the running platform supplies them
        (``env`` adds variables, e.g. another operator's key)."""
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            cwd=ROOT,
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, timeout_s: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def supervisorctl(platform: Up, *args: str) -> subprocess.CompletedProcess[str]:
    conf = platform.data_dir / "run" / "supervisord.conf"
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def rows(up: Up, sql: str) -> int:
    """``SELECT count(*) ...`` against the running platform's database."""
    return asyncio.run(count(up.info["dsn"], sql))


def wait(predicate: Any, timeout_s: float, what: str, up: Up) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{up.output()[-3000:]}"
        time.sleep(0.5)
