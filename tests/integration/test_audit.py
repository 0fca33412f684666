"""Audit on the real broker and PostgreSQL: a live trading session is recorded
by the sink; ``tradeflow audit`` replays the recorded inputs through the
trading core and proves the recorded decisions come out again (same hash);
one tampered bar gives another hash and the first divergence is named with
both versions; a counterfactual setting is reported, not failed. A session
with a stop-loss exit audits with every recorded order compared (counts equal
to the rows in Postgres), and a tampered or deleted stop-loss order is named.
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
from agents.execution.interface import client_order_id_for
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests import builders
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
from topics.catalogue import spec
from topics.records import Bar, OrderIntent

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


def next_bar(prev: Bar, close: float) -> Bar:
    """The bar after ``prev``: opens at its close, moves straight to ``close`` (same volume)."""
    return builders.bar(
        venue=prev.venue,
        symbol=prev.symbol,
        timeframe=prev.timeframe,
        open_time=prev.ts_event,
        open=prev.close,
        high=max(prev.close, close),
        low=min(prev.close, close),
        close=close,
        volume=prev.volume,
        source=prev.source,
    )


async def record_stop_loss_session(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, keyring: Keyring
) -> tuple[tuple[str, str], OrderIntent]:
    """A long BTC position, then a 2.5 % drop: the risk engine's stop-loss exit (intent ``risk-protect``,
    its decision, order updates and fill on the next bar), then a new long. The audit window and the
    stop-loss intent."""
    a = anchor_ns()
    btc = bars(BTC_FILE, 5, a - 2 * H)  # closes a-6h .. a-2h
    drop = next_bar(btc[4], btc[4].open * 0.975)  # below the entry (btc[4]'s open) by more than stop_loss 1.8 %
    after = next_bar(drop, drop.close * 1.001)  # the exit fills at its open
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(*btc[:4], timeout=90)
        await feed.send(signal("BTC/USDT", btc[3].ts_event, 0.9, "sl"))  # long: fills at btc[4]'s open
        await feed.send(btc[4], drop, after)
        # a new long after the exit: the stop-loss rows are then not the newest of their partitions (a deleted
        # newest row reads as a sink that has not stored it yet: exit 3, not a divergence)
        await feed.send(signal("BTC/USDT", after.ts_event, 0.9, "re"))
    out = await assert_live_equals_replay(dsn, feed, keyring)
    stops = [i for i in out["orders.intents"] if i.strategy_id == "risk-protect"]
    assert [(i.reason, i.ts_init) for i in stops] == [("stop_loss", drop.ts_event)], out["orders.intents"]
    stop_coid = client_order_id_for(stops[0].event_id)
    assert [f.client_order_id for f in out["fills"]].count(stop_coid) == 1  # the exit filled
    return ("--from", iso(a - 7 * H), "--to", iso(a + H)), stops[0]


async def stored_counts(dsn: str, topics: tuple[str, ...]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {spec(t).table}")) for t in topics}
    finally:
        await conn.close()


ORDER_TOPICS = ("orders.intents", "risk.decisions", "orders.updates", "fills")


async def test_session_with_a_stop_loss_exit_audits_identical_with_every_recorded_order_compared(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    window, _ = await record_stop_loss_session(broker, namespace, dsn, procs, trading_env)
    rc, rep, err = audit_cli(dsn, *window)
    assert rc == 0, (rep.get("divergence"), err)
    stored = await stored_counts(dsn, ORDER_TOPICS)  # every row in Postgres is in the window
    assert {t: rep["counts"][t] for t in ORDER_TOPICS} == {t: [n, n] for t, n in stored.items()}
    assert rep["identical"] and rep["left_out"] == []
    assert rep["counts"]["orders.intents"] == [3, 3] and rep["counts"]["fills"] == [2, 2]
    assert "risk-protect" in rep["scope"]


async def test_tampered_or_deleted_stop_loss_order_is_named_as_the_first_divergence(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    window, stop = await record_stop_loss_session(broker, namespace, dsn, procs, trading_env)
    conn = await asyncpg.connect(dsn)
    try:
        # the exit's fill at another price: the only change in the recording
        row = await conn.fetchrow(
            "SELECT event_id, payload::text AS p FROM ev_fills WHERE payload->>'client_order_id' = $1",
            client_order_id_for(stop.event_id),
        )
        fill = json.loads(row["p"])
        fill["price"] = fill["price"] * 0.99
        await conn.execute(
            "UPDATE ev_fills SET payload = $2::json WHERE event_id = $1", row["event_id"], json.dumps(fill)
        )
        rc, rep, err = audit_cli(dsn, *window)
        assert rc == 1, (rep, err)
        assert not rep["identical"] and rep["recorded_hash"] != rep["replayed_hash"]
        div = rep["divergence"]
        assert (div["topic"], div["event_id"], div["fields"]) == ("fills", row["event_id"], ["price"])
        assert rep["counts"]["fills"] == [2, 2]

        # the stop-loss intent deleted from the recording: the replay still makes it, counts differ
        await conn.execute("DELETE FROM ev_order_intents WHERE event_id = $1", stop.event_id)
    finally:
        await conn.close()
    rc, rep, err = audit_cli(dsn, *window)
    assert rc == 1, (rep, err)
    assert rep["counts"]["orders.intents"] == [2, 3] and rep["counts"]["risk.decisions"] == [3, 3]
    div = rep["divergence"]
    assert (div["topic"], div["event_id"], div["recorded"]) == ("orders.intents", stop.event_id, None)
    assert div["replayed"]["reason"] == "stop_loss"
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "audit", "--dsn", dsn, *window],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "DIVERGENT" in proc.stdout, proc.stdout
    assert f"first divergence: orders.intents event {stop.event_id}" in proc.stdout
    assert "orders.intents   recorded       2  replayed       3  <-" in proc.stdout


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
