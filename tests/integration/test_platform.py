"""``tradeflow up`` end to end: the platform as its users meet it, started by the command itself.

One platform per module (starting it trains a model: ~a minute on 2 cores); the tests act on it from
"a second shell" (subprocesses of ``tradeflow`` and a plain aiokafka consumer), then stop it with
SIGTERM and bring it up again on the same data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from topics.records import Signal
from topics.schema import codec_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 240


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Up:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(self.data_dir), "--pace", "4", *extra],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "tradeflow is up" not in self.output():
            assert self.proc.poll() is None, f"tradeflow up exited {self.proc.returncode}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"not up within {READY_TIMEOUT_S} s:\n{self.output()[-4000:]}"
            time.sleep(0.5)
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

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``tradeflow`` command from a second shell: no flags, the running platform supplies them."""
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args],
            cwd=ROOT,
            env=self.env(),
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


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("platform") / "data").start()
    try:
        yield up
    finally:
        up.stop()


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def _wait(predicate: Any, timeout_s: float, what: str, up: Up) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{up.output()[-3000:]}"
        time.sleep(0.5)


def test_up_then_platform_file_and_a_second_up_refused(platform: Up) -> None:
    info = platform.info
    assert info["pid"] == platform.proc.pid  # type: ignore[union-attr]
    assert info["bootstrap"].startswith("127.0.0.1:") and info["dashboard_url"].startswith("http://127.0.0.1:")
    token_file = Path(info["dashboard_token_file"])
    assert token_file.stat().st_mode & 0o077 == 0  # the owner's only
    assert token_file.read_text().strip() not in platform.output()  # never printed
    second = subprocess.run(
        [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(platform.data_dir), "--for", "5"],
        cwd=ROOT,
        env=platform.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "already running" in second.stdout + second.stderr


def test_signal_consumer_then_live_signals_from_a_plain_kafka_client(platform: Up) -> None:
    async def read() -> list[Signal]:
        consumer = AIOKafkaConsumer(
            "signals",
            bootstrap_servers=platform.info["bootstrap"],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            got: list[Signal] = []
            deadline = time.monotonic() + 120
            while len(got) < 3 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                got += [codec_for(Signal).decode(m.value) for msgs in batch.values() for m in msgs]
            return got
        finally:
            await consumer.stop()

    signals = asyncio.run(read())
    assert len(signals) >= 3, platform.output()[-3000:]
    assert {s.symbol for s in signals} == {"BTC/USDT"}
    tail = platform.cli("tail", "signals", "--from-beginning", "--limit", "2")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and all(line["symbol"] == "BTC/USDT" for line in lines)


def test_orders_and_fills_then_flow_while_the_feed_runs(platform: Up) -> None:
    dsn = platform.info["dsn"]
    _wait(lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM ev_fills")) > 0, 240, "a paper fill", platform)


def test_sigkill_of_a_worker_then_restarted_without_duplicate_rows(platform: Up) -> None:
    dsn = platform.info["dsn"]
    pid = platform.info["programs"]["market"]
    os.kill(pid, signal.SIGKILL)
    before = asyncio.run(_count(dsn, "SELECT count(*) FROM ev_market_bars"))
    _wait(
        lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM ev_market_bars")) > before + 5,
        180,
        "the pipeline to catch up after the restart",
        platform,
    )
    dupes = asyncio.run(
        _count(
            dsn,
            "SELECT count(*) FROM (SELECT symbol, timeframe, open_time FROM bars "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
        )
    )
    assert dupes == 0
