"""Operator CLI on the real broker and PostgreSQL: ``tradeflow tail`` (the
outside-consumer example) prints the documented JSON records and reports a
bad record without stopping; ``tradeflow status`` reports broker, database
and state, and exits 3 when the broker is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ops.embedded.broker import EmbeddedBroker, free_port
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import ROOT
from topics.records import Signal
from topics.schema import codec_for
from topics.units import NS_PER_HOUR, NS_PER_SECOND

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def signal(symbol: str, i: int) -> Signal:
    ts = time.time_ns() // NS_PER_SECOND * NS_PER_SECOND - NS_PER_HOUR + i * NS_PER_SECOND
    return builders.signal(
        symbol=symbol, ts=ts, p_up=0.6, p_down=0.4, expected_return=0.01, score=0.2, feature_event_id=f"f{i}"
    )


async def test_tail_prints_signals_as_json_lines_filters_by_symbol_and_reports_a_bad_record_then_goes_on(
    broker: EmbeddedBroker, namespace: str
) -> None:
    sigs = [signal("BTC/USDT", 0), signal("ETH/USDT", 1), signal("BTC/USDT", 2)]
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        await pub.publish(sigs[:1])
        await pub.send_raw("signals", b'{"not": "a signal"}', key=b"BTC/USDT")
        await pub.publish(sigs[1:])
    infra = ("--bootstrap", broker.bootstrap, "--namespace", namespace)
    out = cli("tail", "signals", *infra, "--from-beginning", "--limit", "3", "--idle-exit-s", "10")
    assert out.returncode == 0, out.stderr
    got = [codec_for(Signal).decode(line) for line in out.stdout.splitlines()]
    assert sorted(s.event_id for s in got) == sorted(s.event_id for s in sigs)
    assert "invalid record at" in out.stderr
    btc = cli("tail", "signals", *infra, "--from-beginning", "--symbol", "BTC/USDT", "--idle-exit-s", "3")
    assert btc.returncode == 0 and {json.loads(x)["symbol"] for x in btc.stdout.splitlines()} == {"BTC/USDT"}
    assert len(btc.stdout.splitlines()) == 2
    assert cli("tail", "no.such.topic", *infra).returncode == 2


async def test_status_reports_broker_database_and_state_and_exits_3_without_a_broker(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    ok = cli("status", "--bootstrap", broker.bootstrap, "--namespace", namespace, "--dsn", dsn, "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout.strip().splitlines()[-1])
    assert report["broker"]["up"] and report["broker"]["missing_topics"] == []
    assert report["database"]["up"] and report["database"]["migration"] >= 12
    assert report["portfolios"] == [] and report["gates"] == []
    down = cli("status", "--bootstrap", f"127.0.0.1:{free_port()}", "--namespace", namespace, "--dsn", dsn)
    assert down.returncode == 3 and "broker    DOWN" in down.stdout and "database  UP" in down.stdout
