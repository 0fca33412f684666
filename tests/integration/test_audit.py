"""Audit on the real broker and PostgreSQL: a live trading session is recorded
by the sink; ``tradeflow audit`` replays the recorded inputs through the
trading core and proves the recorded decisions come out again (same hash);
one tampered bar gives another hash and the first divergence is named with
both versions; a counterfactual setting is reported, not failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from agents.control.signing import Keyring
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests.conftest import ROOT, Procs
from tests.integration.test_trading_agents import (
    BTC_FILE,
    ETH_FILE,
    HALF,
    Feed,
    H,
    anchor_ns,
    assert_live_equals_replay,
    bars,
    signal,
    start,
    trading_env,  # noqa: F401 - fixture
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def audit_cli(dsn: str, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "audit", "--dsn", dsn, *args, "--json"],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(out[-1]) if out and proc.returncode in (0, 1) else {}), proc.stderr


async def test_recorded_session_replays_to_the_same_hash_and_a_tampered_bar_is_named_as_first_divergence(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 6, a)
    eth = bars(ETH_FILE, 6, a - HALF)
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        # live-like arrival: event-time order (ties: bars before the signals computed from them, by symbol)
        await feed.send(*sorted(btc[:4] + eth[:4], key=lambda b: (b.ts_event, b.symbol)), timeout=90)
        t1 = eth[3].ts_event
        await feed.send(signal("BTC/USDT", t1, 0.9, "a1"), signal("ETH/USD", t1, 0.8, "a2"))
        await feed.send(*sorted([btc[4], eth[4]], key=lambda b: b.symbol))
        await feed.send(signal("BTC/USDT", btc[4].ts_event, -0.9, "a3"))
        await feed.send(eth[5], btc[5])
    recorded = await assert_live_equals_replay(dsn, feed, trading_env)
    assert len(recorded["fills"]) >= 3  # the range holds real decisions, not only snapshots

    window = ("--from", iso(a - 3 * H), "--to", iso(a + H))
    rc, rep, err = audit_cli(dsn, *window)
    assert rc == 0, (rep.get("divergence"), err)
    assert rep["order"] == "journal"  # the agent's own record of its input order
    assert rep["identical"] and rep["recorded_hash"] == rep["replayed_hash"] and rep["divergence"] is None
    assert rep["counts"]["fills"][0] == rep["counts"]["fills"][1] > 0
    assert rep["recorded"] == rep["replayed"] > 0
    rc2, rep2, _ = audit_cli(dsn, *window)  # a second replay: the same hash
    assert rc2 == 0 and rep2["replayed_hash"] == rep["replayed_hash"]

    # one bar changed in the recorded input (the last ETH bar: no signal after it, so its portfolio snapshot is
    # the first decision it changes): another hash, and the first divergence is that bar's snapshot
    victim = eth[5]
    conn = await asyncpg.connect(dsn)
    try:
        payload = json.loads(
            await conn.fetchval("SELECT payload::text FROM ev_market_bars WHERE event_id=$1", victim.event_id)
        )
        payload["close"] = payload["close"] * 1.01
        await conn.execute(
            "UPDATE ev_market_bars SET payload = $2::json WHERE event_id = $1", victim.event_id, json.dumps(payload)
        )
    finally:
        await conn.close()
    rc3, rep3, err3 = audit_cli(dsn, *window)
    assert rc3 == 1, (rep3, err3)
    assert not rep3["identical"] and rep3["replayed_hash"] != rep["replayed_hash"]
    assert rep3["recorded_hash"] == rep["recorded_hash"]  # the outputs were not touched
    div = rep3["divergence"]
    assert div["topic"] == "portfolio.state" and div["ts_init"] == victim.ts_event
    assert {"equity", "mark_prices"} <= set(div["fields"])
    assert div["recorded"]["mark_prices"]["ETH/USD"] == victim.close
    assert div["replayed"]["mark_prices"]["ETH/USD"] == pytest.approx(victim.close * 1.01)

    # text report names it side by side
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "audit", "--dsn", dsn, *window],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "first divergence: portfolio.state" in proc.stdout and "DIVERGENT" in proc.stdout


async def test_counterfactual_setting_is_reported_and_bad_requests_exit_2(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 4, a)
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        # a signed kill switch stamped with the wall time (after every bar's event time) consumed mid-stream:
        # only the agent's journal knows it came before the next signal
        await feed.cli(dsn, "kill-switch", "on", "--reason", "audit drill")
        await feed.send(signal("BTC/USDT", time.time_ns(), 0.95, "c0"))  # live-stamped, like the command
        await feed.cli(dsn, "kill-switch", "off", "--reason", "audit drill over")
        await feed.send(signal("BTC/USDT", time.time_ns(), 0.9, "c1"), btc[2], btc[3])
    out = await assert_live_equals_replay(dsn, feed, trading_env)
    assert [d.verdict.value for d in sorted(out["risk.decisions"], key=lambda d: d.ts_init)] == ["rejected", "approved"]
    window = ("--from", iso(a - 4 * H), "--to", iso(time.time_ns() + H))
    rc, base, err = audit_cli(dsn, *window)
    assert rc == 0 and base["identical"] and base["order"] == "journal", (base.get("divergence"), err)
    assert base["counts"]["control.audit"] == [2, 2]
    # the same inputs with a higher entry threshold: the 0.9 signal no longer opens a position
    rc, cf, err = audit_cli(dsn, *window, "--set", "strategy.entry_threshold=0.97")
    assert rc == 0, err
    assert cf["counterfactual"] and not cf["identical"]
    assert cf["counts"]["risk.decisions"] == [2, 0]
    assert cf["divergence"] is not None
    # bad requests: inverted range, unknown setting
    rc, _, err = audit_cli(dsn, "--from", iso(a), "--to", iso(a - H))
    assert rc == 2 and "inverted" in err
    rc, _, err = audit_cli(dsn, *window, "--set", "risk.no_such_limit=3")
    assert rc == 2 and "no_such_limit" in err
