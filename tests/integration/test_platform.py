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
        while "tradeflow is up" not in self.output()[self.mark :]:
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


def test_operator_kill_switch_then_nothing_approved_until_released(platform: Up) -> None:
    dsn = platform.info["dsn"]
    approved = "SELECT count(*) FROM ev_risk_decisions WHERE payload->>'verdict' = 'approved'"
    on = platform.cli("control", "kill-switch", "on", "--scope", "global", "--reason", "drill")
    assert on.returncode == 0, on.stderr
    _wait(lambda: "kill      1 scope" in platform.cli("status").stdout, 30, "the kill switch in status", platform)
    time.sleep(2)  # decisions in flight when it was engaged
    frozen = asyncio.run(_count(dsn, approved))
    decided = asyncio.run(_count(dsn, "SELECT count(*) FROM ev_risk_decisions"))
    _wait(
        lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM ev_risk_decisions")) > decided + 2,
        120,
        "decisions while killed",
        platform,
    )
    assert asyncio.run(_count(dsn, approved)) == frozen  # decided, none approved
    off = platform.cli("control", "kill-switch", "off", "--scope", "global", "--reason", "drill over")
    assert off.returncode == 0, off.stderr
    _wait(lambda: asyncio.run(_count(dsn, approved)) > frozen, 180, "an approval after the release", platform)


def _supervisorctl(platform: Up, *args: str) -> subprocess.CompletedProcess[str]:
    conf = platform.data_dir / "run" / "supervisord.conf"
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sigkill_of_a_worker_then_restarted_and_pipeline_catches_up(platform: Up) -> None:
    dsn = platform.info["dsn"]
    pid = platform.info["programs"]["market"]
    os.kill(pid, signal.SIGKILL)
    before = asyncio.run(_count(dsn, "SELECT count(*) FROM feature_snapshots"))
    _wait(
        lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM feature_snapshots")) > before + 5,
        180,
        "features again after the restart",
        platform,
    )
    ctl = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            str(platform.data_dir / "run" / "supervisord.conf"),
            "pid",
            "market",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert int(ctl.stdout.strip()) not in (0, pid)  # restarted by the supervisor, not by the test


def test_sigkill_of_the_broker_then_restarted_on_its_storage_without_losing_records_or_offsets(platform: Up) -> None:
    """The s3-backed log: what was acknowledged and committed before the kill is there after it."""
    bootstrap, dsn = platform.info["bootstrap"], platform.info["dsn"]
    before = asyncio.run(_log_state(bootstrap))
    assert sum(before["high"].values()) > 0 and sum(before["committed"].values()) > 0
    os.kill(platform.info["programs"]["broker"], signal.SIGKILL)
    time.sleep(3)  # supervisord brings it back on the same port and storage
    after = asyncio.run(_log_state(bootstrap))
    assert all(after["high"][tp] >= n for tp, n in before["high"].items()), (before, after)
    assert all(after["committed"][tp] >= n for tp, n in before["committed"].items()), (before, after)
    signals = asyncio.run(_count(dsn, "SELECT count(*) FROM ev_signals"))
    _wait(
        lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM ev_signals")) > signals,
        240,
        "signals again after the broker's restart",
        platform,
    )


async def _log_state(bootstrap: str) -> dict[str, dict[int, int]]:
    """High-water marks of ``market.bars.raw`` (from a fetch, not end offsets: see DESIGN facts) and the
    sink group's committed offsets on it, per partition."""
    from aiokafka import TopicPartition

    from topics.catalogue import spec

    tps = [TopicPartition("market.bars.raw", p) for p in range(spec("market.bars.raw").partitions)]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="tradeflow-sink", enable_auto_commit=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            await reader.start()
            await group.start()
            break
        except Exception:  # the broker may still be coming back
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        high: dict[int, int] = {}
        while len(high) < len(tps) and time.monotonic() < deadline:
            await reader.getmany(timeout_ms=500, max_records=1)
            high.update({tp.partition: reader.highwater(tp) for tp in tps if reader.highwater(tp) is not None})
        committed = {tp.partition: (await group.committed(tp)) or 0 for tp in tps}
        return {"high": high, "committed": committed}
    finally:
        await reader.stop()
        await group.stop()


def test_sigterm_then_clean_stop_and_up_again_resumes_on_the_same_data(platform: Up) -> None:
    dsn = platform.info["dsn"]
    bars = asyncio.run(_count(dsn, "SELECT count(*) FROM ev_market_bars"))
    signals = asyncio.run(_count(dsn, "SELECT count(*) FROM ev_signals"))
    assert platform.stop() == 0
    assert not (platform.data_dir / "run" / "platform.json").exists()
    platform.start()
    assert platform.info["dsn"] == dsn  # same ports, same database
    _wait(
        lambda: asyncio.run(_count(dsn, "SELECT count(*) FROM ev_signals")) > signals,
        180,
        "new signals after the restart",
        platform,
    )
    assert asyncio.run(_count(dsn, "SELECT count(*) FROM ev_market_bars")) >= bars
    # the feed resumed after its last acknowledged bar: the stored recorded bars since the start of the
    # live part are exactly the file's rows over that span (no hole left by the restart)
    span = asyncio.run(_span(dsn))
    csv_rows = sum(
        1
        for line in (ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv").read_text().splitlines()[1:]
        if span[0] <= _open_ns(line) <= span[1]
    )
    stored = asyncio.run(
        _count(
            dsn,
            (
                "SELECT count(*) FROM bars WHERE symbol = 'BTC/USDT' AND timeframe = '1h' "
                f"AND open_time BETWEEN {span[0]} AND {span[1]}"
            ),
        )
    )
    assert stored == csv_rows


def _open_ns(line: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(line.split(",", 1)[0]).timestamp()) * 1_000_000_000


async def _span(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT min(open_time), max(open_time) FROM bars WHERE symbol = 'BTC/USDT' AND timeframe = '1h' "
            "AND open_time >= 1609459200000000000"
        )
        assert row is not None and row[0] is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()
