"""Candle files given to the commands that take them (``tune --file``, ``feed --file``,
``ingest csv``), run as a new user would: the real command in a subprocess on crafted
files. A malformed file is exit 2 with the file, the line and what is wrong, never a
traceback; no row wins over another by coming first; the data-quality policy is applied
or its findings said out loud."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer

from ops.embedded.broker import EmbeddedBroker, free_port
from tests.conftest import ROOT
from topics.catalogue import physical_name
from topics.records import DataQualityEvent, DeadLetter, Record
from topics.schema import codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

R = TypeVar("R", bound=Record)

HEADER = "timestamp,open,high,low,close,volume\n"


def _hours(n: int, start: int = 0) -> list[str]:
    """``n`` consistent hourly rows on 2021-01-01 from hour ``start``."""
    out = []
    for h in range(start, start + n):
        p = 100.0 + h
        out.append(f"2021-01-{1 + h // 24:02d} {h % 24:02d}:00:00+00:00,{p},{p + 2},{p - 2},{p + 1},{10 + h}\n")
    return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _tune(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(
        "tune", "grid", "--fast", "2", "--slow", "4", "--no-persist", "--workers", "1", "--file", str(path), *extra
    )


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _source(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode in (0, 1), r.stderr  # 1: no feasible winner on a few bars, an honest outcome
    assert "Traceback" not in r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("2021-01-01 05:00:00+00:00,105,103,107,106,15\n", "ohlc_inconsistent"),  # high below low
        ("2021-01-01 05:00:00,105,107,103,106,15\n", "naive_timestamp"),  # no UTC offset
    ],
)
def test_tune_invalid_row_before_the_real_one_then_the_real_row_is_used_and_the_bad_line_named(
    tmp_path: Path, bad: str, reason: str
) -> None:
    rows = _hours(10)
    clean = _source(_tune(_write(tmp_path, "clean.csv", HEADER + "".join(rows))))
    r = _tune(_write(tmp_path, "dirty.csv", HEADER + "".join(rows[:5]) + bad + "".join(rows[5:])))
    dirty = _source(r)

    assert f"dirty.csv line 7: row not used: {reason}" in r.stderr
    assert dirty["data_source"]["sha256"] == clean["data_source"]["sha256"], "the real row, not the invalid one"
    assert dirty["data_source"]["bars"] == 10 and dirty["data_source"]["rejected_rows"] == 1


def test_tune_conflicting_rows_then_neither_is_used_and_both_lines_are_named(tmp_path: Path) -> None:
    rows = _hours(10)
    other = rows[5].replace(",15\n", ",99\n")  # same hour, another volume and so another candle
    assert other != rows[5]
    r = _tune(_write(tmp_path, "twice.csv", HEADER + "".join(rows) + other))
    out = _source(r)

    assert "twice.csv: lines 7, 12 give 2021-01-01T05:00:00Z different values" in r.stderr
    assert out["data_source"]["bars"] == 9
    assert out["data_quality"]["conflicting_rows"] == [
        "lines 7, 12 give 2021-01-01T05:00:00Z different values; that bar is not imported"
    ]
    identical = _source(_tune(_write(tmp_path, "same.csv", HEADER + "".join(rows) + rows[5])))
    assert identical["data_source"]["bars"] == 10 and identical["data_source"]["duplicate_rows"] == 1


def test_tune_file_with_a_byte_order_mark_then_read_like_the_same_file_without(tmp_path: Path) -> None:
    body = HEADER + "".join(_hours(10))
    plain = _source(_tune(_write(tmp_path, "plain.csv", body)))
    bom = _source(_tune(_write(tmp_path, "excel.csv", b"\xef\xbb\xbf" + body.encode())))
    assert bom["data_source"]["sha256"] == plain["data_source"]["sha256"]


GOOD = HEADER + "".join(_hours(3))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GOOD.encode() + b'"' + b"x" * 140_000 + b'",1,1,1,1,1\n', "bad.csv line 5: unreadable CSV: field larger"),
        (GOOD.encode() + b"2021-01-01 03:00:00+00:00,1\xe90,110,90,105,5\n", "bad.csv line 5: not UTF-8 text"),
        (b"", "bad.csv: empty input, no header line"),
        (b"time,o,h,l,c,v\n2021-01-01,1,1,1,1,1\n", "bad.csv line 1: unrecognised candle CSV header"),
        (GOOD.encode().replace(b"volume", b"volume usdt"), "bad.csv line 1: no base volume column"),
    ],
)
def test_tune_malformed_file_then_exit_2_naming_file_line_and_problem(
    tmp_path: Path, content: bytes, message: str
) -> None:
    r = _tune(_write(tmp_path, "bad.csv", content))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert message in r.stderr


def test_tune_file_with_blocking_quality_findings_then_said_loudly_and_refused_when_clean_is_required(
    tmp_path: Path,
) -> None:
    # A 4-hour hole: a gap error under the pipeline's default policy.
    path = _write(tmp_path, "holes.csv", HEADER + "".join(_hours(6)) + "".join(_hours(6, start=10)))
    r = _tune(path)
    out = _source(r)
    assert "WARNING: the pipeline's data-quality policy blocks" in r.stderr and "holes.csv" in r.stderr
    assert out["data_quality"]["findings"]["gap"] == 1 and out["data_quality"]["blocking_findings"] >= 1
    assert out["data_quality"]["applied_to_search"] is False

    refused = _tune(path, "--require-clean")
    assert refused.returncode == 2 and "--require-clean" in refused.stderr and "Traceback" not in refused.stderr
    clean = _tune(_write(tmp_path, "clean.csv", HEADER + "".join(_hours(12))), "--require-clean")
    assert clean.returncode in (0, 1) and "WARNING" not in clean.stderr, clean.stderr


def test_feed_malformed_file_then_exit_2_before_any_connection(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.csv", GOOD.encode() + b"9" * 140_000 + b"\n")
    r = _cli(
        "feed",
        "--file",
        f"{path},binance,BTC/USDT,1h",
        "--bootstrap",
        f"127.0.0.1:{free_port()}",
        "--dsn",
        f"postgresql://postgres@127.0.0.1:{free_port()}/nope",
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "bad.csv line 5: unreadable CSV" in r.stderr


async def test_ingest_csv_malformed_file_then_exit_2_and_conflicting_rows_withheld(
    broker: EmbeddedBroker, namespace: str, tmp_path: Path
) -> None:
    infra = ("--bootstrap", broker.bootstrap, "--namespace", namespace)
    market = ("--venue", "binance", "--symbol", "BTC/USDT", "--timeframe", "1h")
    bad = _write(tmp_path, "bad.csv", GOOD.encode() + b"2021-01-01 03:00:00+00:00,1\xe90,110,90,105,5\n")
    r = await asyncio.to_thread(_cli, "ingest", "csv", str(bad), *infra, *market)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "bad.csv line 5: not UTF-8 text" in r.stderr

    rows = _hours(4)
    twice = _write(tmp_path, "twice.csv", HEADER + "".join(rows) + rows[1].replace(",11\n", ",12\n"))
    r = await asyncio.to_thread(_cli, "ingest", "csv", str(twice), *infra, *market)
    assert r.returncode == 0, r.stderr
    assert "twice.csv: 3 bars -> market.bars.raw" in r.stdout and "2 conflicting rows withheld" in r.stdout
    assert "not imported" in r.stderr

    dead = [d for d in await _read(broker, namespace, "deadletter", DeadLetter) if d.source_topic == "file:twice.csv"]
    assert sorted((d.source_offset, d.reason) for d in dead) == [
        (3, "conflicting_duplicate"),
        (6, "conflicting_duplicate"),
    ]
    assert {base64.b64decode(d.original_b64).decode() for d in dead} == {rows[1], rows[1].replace(",11\n", ",12\n")}
    findings = await _read(broker, namespace, "market.data_quality", DataQualityEvent)
    (conflict,) = [f for f in findings if f.check == "duplicate"]
    assert conflict.blocking and conflict.severity == "error" and "lines 3, 6" in conflict.detail


async def _read(broker: EmbeddedBroker, namespace: str, topic: str, kind: type[R]) -> list[R]:
    cons = AIOKafkaConsumer(
        physical_name(topic, namespace), bootstrap_servers=broker.bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await cons.start()
    try:
        batch = await cons.getmany(timeout_ms=5000)
    finally:
        await cons.stop()
    return [codec_for(kind).decode(m.value or b"") for msgs in batch.values() for m in msgs]


def test_backfill_malformed_copy_of_a_bundled_file_then_exit_2_before_anything_starts(tmp_path: Path) -> None:
    path = _write(tmp_path, "binance_btcusdt_1h_2017_2022.csv", b"\xef\xbb\xbf" + GOOD.encode() + b"\xff\n")
    r = _cli("backfill", "--data-dir", str(tmp_path / "var"), "--file", str(path))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "binance_btcusdt_1h_2017_2022.csv line 5: not UTF-8 text" in r.stderr
    assert not (tmp_path / "var" / "pg").exists(), "nothing started for a file that cannot be imported"
