"""The trading agent with ccxt execution in dry run, on the real broker and
PostgreSQL: Binance spot market rules pinned by a markets snapshot recorded
from the fixture (offline, reproducible). A valid signal becomes an intent, an
approved decision and ``new`` + ``cancelled(dry_run)`` under
``ccxt:binance:spot``; a symbol the venue does not list is rejected with that
rule; a kill switch still blocks everything before the adapter; nothing is
sent and nothing fills; ``tradeflow audit`` replays the session (inputs and
the venue's answers from the journal) to the identical decision hash.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from agents.execution.ccxt_live import LiveExecutionConfig, VenueMarket, dump_markets_snapshot, make_execution_exchange
from agents.execution.interface import client_order_id_for
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests.conftest import Procs, wait_until
from tests.fixtures.ccxt.replay import ReplayTransport
from tests.integration.test_audit import audit_cli, iso
from tests.integration.test_trading_agents import (
    BTC_FILE,
    ETH_FILE,
    HALF,
    Feed,
    H,
    anchor_ns,
    bars,
    signal,
    start,
    trading_env,  # noqa: F401 - fixture
)
from topics.catalogue import spec
from topics.records import OrderIntent, OrderUpdate, RiskDecision
from topics.schema import codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ADAPTER = "ccxt:binance:spot"


async def recorded_markets(path: Path) -> None:
    """Binance spot markets from the recorded exchangeInfo fixture, as a ccxt ``exchange.markets`` dump."""
    exchange = make_execution_exchange(LiveExecutionConfig(exchange_id="binance", market_type=VenueMarket.SPOT))
    exchange.enableRateLimit = False
    ReplayTransport.install(exchange, "binance_spot_markets.json")
    try:
        await exchange.load_markets()
        path.write_text(dump_markets_snapshot(exchange), encoding="utf-8")
    finally:
        await exchange.close()


async def table(dsn: str, topic: str, cls: type) -> list:  # type: ignore[type-arg]
    conn = await asyncpg.connect(dsn)
    try:
        sql = f"SELECT payload::text AS p FROM {spec(topic).table}"
        return [codec_for(cls).decode(r["p"]) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_ccxt_dry_run_then_validated_not_sent_rule_breaks_rejected_kill_switch_blocks_and_audit_identical(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: object,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    markets = tmp_path / "binance_spot_markets.snapshot.json"
    await recorded_markets(markets)
    monkeypatch.setenv("TRADEFLOW_EXECUTION_ADAPTER", "ccxt")
    monkeypatch.setenv("TRADEFLOW_EXECUTION_VENUE", "binance")
    monkeypatch.setenv("TRADEFLOW_EXECUTION_MARKET", "spot")
    monkeypatch.setenv("TRADEFLOW_EXECUTION_DRY_RUN", "1")
    monkeypatch.setenv("TRADEFLOW_EXECUTION_MARKETS_FILE", str(markets))
    a = anchor_ns()
    btc = bars(BTC_FILE, 5, a)  # closes a-4h .. a
    eth = bars(ETH_FILE, 5, a - HALF)  # ETH/USD: allowed by risk, not listed on Binance spot
    port = await start(broker, namespace, dsn, procs)
    s_ok, s_unlisted, s_killed = (
        signal("BTC/USDT", a - H, 0.9, "ok"),
        signal("ETH/USD", a - H, 0.9, "unlisted"),
        signal("BTC/USDT", a - H, 0.95, "killed"),
    )
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(*sorted(btc[:4] + eth[:4], key=lambda b: (b.ts_event, b.symbol)), timeout=90)
        await feed.send(s_ok, s_unlisted)
        await feed.cli(dsn, "kill-switch", "on", "--reason", "dry-run drill")
        await feed.send(s_killed, eth[4], btc[4])
        assert await feed.metric("tradeflow_execution_submit_seconds_count", adapter=ADAPTER) == 2  # not the killed
        for status, reason, n in (
            ("new", "dry_run", 1),
            ("cancelled", "dry_run", 1),
            ("rejected", "symbol_not_supported", 1),
            ("rejected", "risk_blocked", 1),
        ):
            assert (
                await feed.metric("tradeflow_order_updates_total", adapter=ADAPTER, status=status, reason=reason) == n
            ), (status, reason)

    async def stored() -> bool:
        return (
            len(await table(dsn, "orders.updates", OrderUpdate)) >= 4
            and len(await table(dsn, "risk.decisions", RiskDecision)) >= 3
        )

    await wait_until(stored, 30, "the order updates in Postgres", watch=procs)
    intents = {i.signal_event_id: i for i in await table(dsn, "orders.intents", OrderIntent)}
    decisions = {d.intent_event_id: d for d in await table(dsn, "risk.decisions", RiskDecision)}
    updates = await table(dsn, "orders.updates", OrderUpdate)
    assert set(intents) == {s_ok.event_id, s_unlisted.event_id, s_killed.event_id}

    def lifecycle(sig: str) -> list[tuple[str, str | None, str]]:
        coid = client_order_id_for(intents[sig].event_id)
        return sorted((u.status.value, u.reason, u.adapter) for u in updates if u.client_order_id == coid)

    assert decisions[intents[s_ok.event_id].event_id].verdict.value == "approved"
    assert lifecycle(s_ok.event_id) == [("cancelled", "dry_run", ADAPTER), ("new", "dry_run", ADAPTER)]
    assert decisions[intents[s_unlisted.event_id].event_id].verdict.value == "approved"
    assert lifecycle(s_unlisted.event_id) == [("rejected", "symbol_not_supported", ADAPTER)]
    killed = decisions[intents[s_killed.event_id].event_id]
    assert killed.verdict.value == "rejected" and killed.reasons == ("kill_switch_global",)
    assert lifecycle(s_killed.event_id) == [("rejected", "risk_blocked", ADAPTER)]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ev_fills") == 0  # a dry run never fills
        journaled = await conn.fetch(
            "SELECT topic, kafka_partition, arrival_ns FROM trading_input_journal "
            "WHERE topic IN ('orders.updates', 'fills') ORDER BY seq"
        )
        # the adapter's three answers are journaled as inputs; the in-process risk_blocked refusal is not
        assert [(r["topic"], r["kafka_partition"], r["arrival_ns"]) for r in journaled] == [
            ("orders.updates", -1, None)
        ] * 3
        # nothing was sent: the worker never reached the venue (markets from the file, validation only)
        assert (
            await conn.fetchval("SELECT count(*) FROM ev_order_updates WHERE payload->>'venue_order_id' IS NOT NULL")
            == 0
        )
    finally:
        await conn.close()
    for p in procs.all:
        if "trading" in p.argv:
            p.stop()
    logs = "\n".join(p.output() for p in procs.all)
    assert "trading_execution_ready" in logs and "markets_source" in logs and str(markets) in logs

    rc, rep, err = audit_cli(dsn, "--from", iso(a - 5 * H), "--to", iso(a + H))
    assert rc == 0, (rep.get("divergence"), err)
    assert rep["identical"] and rep["order"] == "journal"
    assert rep["counts"]["orders.updates"] == [4, 4] and rep["counts"]["risk.decisions"] == [3, 3]
