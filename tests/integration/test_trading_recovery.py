"""Trading agent restart recovery on the real broker and PostgreSQL.

Signals and real (re-stamped) candles for BTC and ETH are fed one at a time
(so the order the agent saw is known); the trading worker is SIGKILLed twice
mid-stream (once right after an input was published, before it could be
consumed or checkpointed, once in the middle of a burst of signals), restarted
each time, and the stream is finished. Then:

- the sink's rows equal the in-process uninterrupted replay of the same
  inputs byte for byte, and there is no other row (nothing re-derived with
  different content);
- on the raw ``fills`` and ``orders.updates`` topics, every client order id has
  one content per fill / per status (re-published copies are byte-identical);
- the last portfolio snapshot's positions equal the signed sum of the fills;
- the checkpoint left in PostgreSQL restores to the replay's final state.

And a restart that re-reads the topics in another interleaving than the one
first applied (the journal rows after the checkpoint were written ahead of
the outputs) re-applies them in the journal's order: every output re-derived
byte for byte.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from agents.control.signing import Keyring
from agents.trading.checkpoint import open_checkpoint
from agents.trading.core import TradingCore
from agents.trading.settings import TradingSettings
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from storage.trading import load_checkpoint
from tests.conftest import Procs, wait_until
from tests.integration.test_trading_agents import (  # noqa: F401 - trading_env is a fixture
    BTC_FILE,
    ETH_FILE,
    HALF,
    OUTPUT_TOPICS,
    Feed,
    anchor_ns,
    assert_live_equals_replay,
    bars,
    signal,
    trading_env,
)
from topics.catalogue import physical_name, spec
from topics.records import Bar, ControlEvent, Fill, OrderUpdate, Side, Signal
from topics.schema import Record, codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def checkpointed(dsn: str) -> int:
    """``events_applied`` of the paper account's checkpoint (0 without one)."""
    conn = await asyncpg.connect(dsn)
    try:
        n = await conn.fetchval("SELECT events_applied FROM trading_checkpoints WHERE account = 'paper'")
    finally:
        await conn.close()
    return int(n or 0)


async def raw_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value on ``topic`` (all partitions), read from the beginning."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        empty = 0
        while empty < 3:
            batch = await consumer.getmany(timeout_ms=400)
            got = [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            empty = 0 if got else empty + 1
            out += got
    finally:
        await consumer.stop()
    return out


def replay_core(inputs: list[Record], keyring: Keyring) -> TradingCore:
    core = TradingCore(TradingSettings.from_env(os.environ).config(), keyring)
    for rec in inputs:
        if isinstance(rec, Bar):
            core.on_bar(rec)
        elif isinstance(rec, Signal):
            core.on_signal(rec)
        else:
            assert isinstance(rec, ControlEvent)
            core.on_control(rec)
    return core


async def test_worker_sigkilled_mid_stream_then_restart_resumes_exactly_and_orders_execute_once(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 8, a)  # closes a-7h .. a
    eth = bars(ETH_FILE, 5, a - HALF)  # closes a-2.5h .. a-30m
    procs.sink(broker.bootstrap, namespace, dsn)
    worker = procs.worker(broker.bootstrap, namespace, "trading")
    inputs: list[Record] = []

    async def restart(after_inputs: int) -> Feed:
        """SIGKILL the worker, start a new one, wait until its state holds ``after_inputs`` inputs."""
        nonlocal worker
        worker.kill()
        worker = procs.worker(broker.bootstrap, namespace, "trading")
        new = Feed(pub, procs, worker.extra["web_port"])

        async def caught_up() -> bool:
            return await checkpointed(dsn) == after_inputs

        await wait_until(caught_up, 90, f"the restarted worker to hold {after_inputs} inputs", watch=procs)
        return new

    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, worker.extra["web_port"])
        warm = sorted(btc[:3] + eth[:2], key=lambda b: (b.ts_event, b.symbol))
        await feed.send(*warm, timeout=90)
        await feed.send(signal("BTC/USDT", btc[2].ts_event, 0.9, "b1"), signal("ETH/USD", eth[1].ts_event, 0.9, "e1"))
        await feed.send(btc[3], eth[2])  # both orders fill
        inputs += feed.inputs

        # -- kill 1: an input published, the worker killed before it could be checkpointed ----------
        s2 = signal("BTC/USDT", btc[3].ts_event, -0.9, "b2")  # flip: sell the long, open a short
        await pub.publish([s2])
        inputs.append(s2)
        await asyncio.sleep(0.02)
        feed = await restart(len(inputs))
        await feed.send(btc[4], eth[3])
        inputs += feed.inputs

        # -- kill 2: in the middle of a burst on one partition (order kept by the partition) -----------
        burst = [signal("BTC/USDT", btc[4].ts_event, s, f"burst{i}") for i, s in enumerate((0.2, 0.95, -0.95, 0.9))]
        await pub.publish(burst)
        inputs += burst

        async def some_consumed() -> bool:
            return await feed.consumed() >= 1

        await wait_until(some_consumed, 30, "the burst to start being consumed", every=0.01, watch=procs)
        feed = await restart(len(inputs))
        await feed.send(btc[5], eth[4], btc[6], signal("BTC/USDT", btc[6].ts_event, 0.0, "flat"), btc[7])
        inputs += feed.inputs

    assert "trading_checkpoint_restored" in worker.output()
    feed.inputs = inputs  # the whole sequence, in the order the agent saw it
    out = await assert_live_equals_replay(dsn, feed, trading_env)

    # every client order id executed at most once: one content per (coid, status) and per fill id
    fills_raw = await raw_topic(broker.bootstrap, physical_name("fills", namespace))
    updates_raw = await raw_topic(broker.bootstrap, physical_name("orders.updates", namespace))
    by_fill: dict[str, set[bytes]] = defaultdict(set)
    for v in fills_raw:
        f = codec_for(Fill).decode(v)
        by_fill[f.client_order_id].add(v)
    by_status: dict[tuple[str, str, float], set[bytes]] = defaultdict(set)
    for v in updates_raw:
        u = codec_for(OrderUpdate).decode(v)
        by_status[(u.client_order_id, u.status.value, u.filled_quantity)].add(v)
    assert by_fill and all(len(v) == 1 for v in by_fill.values()), "a client order id filled twice"
    assert all(len(v) == 1 for v in by_status.values()), "an order update re-derived with other content"
    fills = out["fills"]
    assert len(fills) == len(by_fill) >= 3  # the opening fills, the flip, the burst's orders

    # positions = signed sum of fills
    last = max(out["portfolio.state"], key=lambda s: (s.as_of_ns, s.fills_applied))
    sums: dict[str, float] = defaultdict(float)
    for f in fills:
        sums[f.symbol] += f.quantity if f.side is Side.BUY else -f.quantity
    assert last.fills_applied == len(fills)
    for sym, qty in sums.items():
        assert last.quantities.get(sym, 0.0) == pytest.approx(qty, abs=1e-12)

    # the checkpoint left behind is the uninterrupted run's final state
    expected = replay_core(inputs, trading_env)
    conn = await asyncpg.connect(dsn)
    try:
        cp = await load_checkpoint(conn, "paper")
    finally:
        await conn.close()
    assert cp is not None and cp.events_applied == len(inputs)
    got = open_checkpoint(cp, trading_env, account="paper", config_hash=cp.config_hash)
    assert got.portfolio_state() == expected.portfolio_state()
    assert got.paper.open_orders() == expected.paper.open_orders()
    assert got.clock.now_ns() == expected.clock.now_ns()
    assert got.risk.verifier.nonce_count == expected.risk.verifier.nonce_count
    positions: Any = {k: v for k, v in got.portfolio_state().positions.items() if v.quantity}
    assert set(positions) <= {"BTC/USDT", "ETH/USD"}


async def test_checkpoint_behind_the_journal_then_the_reread_inputs_are_applied_in_the_journal_order(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,  # noqa: F811
) -> None:
    """Inputs fed one at a time, alternating topics; then the worker is killed and its checkpoint row
    deleted, so every input is after the checkpoint (a crash before it was saved, at its widest).
    The new worker re-reads the three topics from offset 0, delivered in fetch order (a topic's
    backlog at a time), not the order first applied: it must apply them in the journal's order."""
    a = anchor_ns()
    btc = bars(BTC_FILE, 8, a)
    eth = bars(ETH_FILE, 5, a - HALF)
    procs.sink(broker.bootstrap, namespace, dsn)
    worker = procs.worker(broker.bootstrap, namespace, "trading")
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, worker.extra["web_port"])
        await feed.send(*sorted(btc[:3] + eth[:2], key=lambda b: (b.ts_event, b.symbol)), timeout=90)
        for i in range(3, 8):  # each bar's signal, then the next bar: a signal applied after its bar
            ticks = [signal("BTC/USDT", btc[i - 1].ts_event, (0.9, -0.9, 0.6, -0.95, 0.3)[i - 3], f"s{i}"), btc[i]]
            if i - 1 < len(eth):
                ticks += [signal("ETH/USD", eth[i - 2].ts_event, (-0.8, 0.85, -0.7)[(i - 3) % 3], f"e{i}"), eth[i - 1]]
            await feed.send(*ticks)

    async def caught_up() -> bool:
        return await checkpointed(dsn) == len(feed.inputs)

    await wait_until(caught_up, 60, "the worker to checkpoint every input", watch=procs)
    first = {t: await raw_topic(broker.bootstrap, physical_name(t, namespace)) for t in OUTPUT_TOPICS}
    worker.kill()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM trading_checkpoints WHERE account = 'paper'")
    finally:
        await conn.close()

    worker = procs.worker(broker.bootstrap, namespace, "trading")
    await wait_until(caught_up, 90, "the restarted worker to re-apply every input", watch=procs)
    assert "trading_journal_ahead" in worker.output() and "trading_journal_replayed" in worker.output()
    for t in OUTPUT_TOPICS:  # every output re-derived: twice on the raw topic, one content per event id
        raw = await raw_topic(broker.bootstrap, physical_name(t, namespace))
        contents: dict[str, set[bytes]] = defaultdict(set)
        for v in raw:
            contents[codec_for(spec(t).record).decode(v).event_id].add(v)
        assert sorted(raw) == sorted(first[t] * 2), f"{t}: the re-read inputs derived other outputs"
        assert all(len(c) == 1 for c in contents.values()), f"{t}: an event id with two contents"
    await assert_live_equals_replay(dsn, feed, trading_env)
