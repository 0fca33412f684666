"""``tradeflow up`` end to end: the four users' workflows and the faults the supervisor absorbs, on the
package's one running platform (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from topics.records import Signal
from topics.schema import codec_for

from .harness import ROOT, Up, count, rows, supervisorctl, wait

pytestmark = pytest.mark.integration


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
    wait(lambda: rows(platform, "SELECT count(*) FROM ev_fills") > 0, 240, "a paper fill", platform)


def test_operator_kill_switch_then_nothing_approved_until_released(platform: Up) -> None:
    approved = "SELECT count(*) FROM ev_risk_decisions WHERE payload->>'verdict' = 'approved'"
    on = platform.cli("control", "kill-switch", "on", "--scope", "global", "--reason", "drill")
    assert on.returncode == 0, on.stderr
    wait(lambda: "kill      1 scope" in platform.cli("status").stdout, 30, "the kill switch in status", platform)
    time.sleep(2)  # decisions in flight when it was engaged
    frozen = rows(platform, approved)
    decided = rows(platform, "SELECT count(*) FROM ev_risk_decisions")
    wait(
        lambda: rows(platform, "SELECT count(*) FROM ev_risk_decisions") > decided + 2,
        120,
        "decisions while killed",
        platform,
    )
    assert rows(platform, approved) == frozen  # decided, none approved
    off = platform.cli("control", "kill-switch", "off", "--scope", "global", "--reason", "drill over")
    assert off.returncode == 0, off.stderr
    wait(lambda: rows(platform, approved) > frozen, 180, "an approval after the release", platform)


def test_auditor_then_the_last_minutes_of_the_running_platform_replay_to_the_same_hash(platform: Up) -> None:
    """While the feed runs: outputs run ahead of the agent's journal; the audit cuts at its last checkpoint."""
    wait(lambda: rows(platform, "SELECT count(*) FROM trading_input_journal") > 0, 120, "a journal", platform)
    audit = platform.cli("audit", "--last", "2m", timeout=180)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "IDENTICAL" in audit.stdout, audit.stdout
    report = platform.cli("audit", "--last", "2m", "--json", timeout=180)
    assert report.returncode == 0, report.stdout + report.stderr
    data = json.loads(report.stdout)
    assert data["identical"] and data["order"] == "journal" and data["recorded"] > 0
    assert data["recorded_hash"] == data["replayed_hash"]
    # a counterfactual over the same window says how decisions would differ, and is not a verdict
    what_if = platform.cli("audit", "--last", "2m", "--set", "strategy.entry_threshold=0.03", timeout=180)
    assert what_if.returncode == 0 and "counterfactual" in what_if.stdout, what_if.stdout + what_if.stderr


def test_sigkill_of_a_worker_then_restarted_and_pipeline_catches_up(platform: Up) -> None:
    pid = platform.info["programs"]["market"]
    os.kill(pid, signal.SIGKILL)
    before = rows(platform, "SELECT count(*) FROM feature_snapshots")
    wait(
        lambda: rows(platform, "SELECT count(*) FROM feature_snapshots") > before + 5,
        180,
        "features again after the restart",
        platform,
    )
    ctl = supervisorctl(platform, "pid", "market")
    assert int(ctl.stdout.strip()) not in (0, pid)  # restarted by the supervisor, not by the test


def test_sigkill_of_the_broker_then_restarted_on_its_storage_without_losing_records_or_offsets(platform: Up) -> None:
    """The s3-backed log: what was acknowledged and committed before the kill is there after it."""
    bootstrap = platform.info["bootstrap"]
    before = asyncio.run(_log_state(bootstrap))
    assert sum(before["high"].values()) > 0 and sum(before["committed"].values()) > 0
    os.kill(platform.info["programs"]["broker"], signal.SIGKILL)
    time.sleep(3)  # supervisord brings it back on the same port and storage
    after = asyncio.run(_log_state(bootstrap))
    assert all(after["high"][tp] >= n for tp, n in before["high"].items()), (before, after)
    assert all(after["committed"][tp] >= n for tp, n in before["committed"].items()), (before, after)
    signals = rows(platform, "SELECT count(*) FROM ev_signals")
    wait(
        lambda: rows(platform, "SELECT count(*) FROM ev_signals") > signals,
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
    bars = rows(platform, "SELECT count(*) FROM ev_market_bars")
    signals = rows(platform, "SELECT count(*) FROM ev_signals")
    assert platform.stop() == 0
    assert not (platform.data_dir / "run" / "platform.json").exists()
    platform.start()
    assert platform.info["dsn"] == dsn  # same ports, same database
    wait(
        lambda: rows(platform, "SELECT count(*) FROM ev_signals") > signals,
        180,
        "new signals after the restart",
        platform,
    )
    assert rows(platform, "SELECT count(*) FROM ev_market_bars") >= bars
    # the feed resumed after its last acknowledged bar: the stored recorded bars since the start of the
    # live part are exactly the file's rows over that span (no hole left by the restart)
    span = asyncio.run(_span(dsn))
    csv_rows = sum(
        1
        for line in (ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv").read_text().splitlines()[1:]
        if span[0] <= _open_ns(line) <= span[1]
    )
    stored = asyncio.run(
        count(
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
