"""Who may make the trading agent trade, on the real broker and PostgreSQL: a client that reaches the
broker (a plain aiokafka producer, no tradeflow code) publishes signals; only the one signed with the
inference key for its model version becomes an order. The forged ones (an old-style unsigned v1 record,
one signed with another key, a signed one altered afterwards) each get the ``signal_unauthenticated``
decision and an alert, and no order."""

from __future__ import annotations

import dataclasses

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.control.signing import Keyring
from agents.signals.signing import SignalSigner
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests.conftest import Procs, wait_until
from tests.integration.test_trading_agents import (
    BTC_FILE,
    Feed,
    H,
    anchor_ns,
    bars,
    signal,
    start,
    trading_env,
)
from topics.catalogue import physical_name, spec
from topics.records import Alert, OrderIntent, Signal
from topics.schema import codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

__all__ = ["trading_env"]  # the fixture, shared with the trading agent's tests

SIGNAL_SECRET = "fake-signal-secret-inference-0123456789abcdef"
CODEC = codec_for(Signal)


@pytest.fixture
def signal_env(monkeypatch: pytest.MonkeyPatch, trading_env: Keyring) -> SignalSigner:
    """The trading worker gets the inference signal key (signatures then required by default)."""
    monkeypatch.setenv("TRADEFLOW_SIGNAL_KEY_INFERENCE", SIGNAL_SECRET)
    return SignalSigner(Keyring({"inference": SIGNAL_SECRET.encode()}), "inference")


def _v1(sig: Signal) -> bytes:
    """What an old (or any other) client writes: a schema v1 signal, no signature."""
    wire = orjson.loads(CODEC.encode(sig))
    del wire["key_id"], wire["signature"]
    return orjson.dumps({**wire, "schema_version": 1})


async def test_forged_signals_from_a_plain_client_then_no_order_and_alerts_while_the_signed_one_trades(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, signal_env: SignalSigner
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 5, a)
    port = await start(broker, namespace, dsn, procs)
    topic = physical_name("signals", namespace)
    rogue = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")  # no tradeflow client code
    await rogue.start()
    try:
        async with RecordPublisher(broker.bootstrap, namespace) as pub:
            feed = Feed(pub, procs, port)
            await feed.send(*btc[:4], timeout=90)  # the first one waits for the worker to start

            unsigned = signal("BTC/USDT", a - H, 0.9, "forged-unsigned")
            other_key = SignalSigner(Keyring({"inference": b"an-attacker-guessed-this-key-0123456789"}), "inference")
            wrong_key = other_key.sign(signal("BTC/USDT", a - H, 0.9, "forged-key"))
            altered = dataclasses.replace(signal_env.sign(signal("BTC/USDT", a - H, 0.1, "forged-altered")), score=0.9)
            genuine = signal_env.sign(signal("BTC/USDT", a - H, 0.9, "genuine"))
            for value in (_v1(unsigned), CODEC.encode(wrong_key), CODEC.encode(altered), CODEC.encode(genuine)):
                await feed._after(
                    lambda v=value: rogue.send_and_wait(topic, v, key=b"BTC/USDT"), what="a plain client's signal"
                )
            await feed.send(btc[4])  # the next bar: the genuine signal's order fills
            assert await feed.metric("tradeflow_sizing_decisions_total", reason="signal_unauthenticated") == 3
            assert await feed.metric("tradeflow_sizing_decisions_total", reason="order") == 1
    finally:
        await rogue.stop()

    conn = await asyncpg.connect(dsn)
    try:

        async def stored() -> bool:
            alerts = await conn.fetchval(
                f"SELECT count(*) FROM {spec('ops.alerts').table} WHERE payload->>'code' = 'signal_unauthenticated'"
            )
            fills = await conn.fetchval(f"SELECT count(*) FROM {spec('fills').table}")
            return bool(alerts >= 3 and fills >= 1)

        await wait_until(stored, 30, "the sink to store the alerts and the fill", watch=procs)
        intents = [
            codec_for(OrderIntent).decode(r["p"])
            for r in await conn.fetch(f"SELECT payload::text AS p FROM {spec('orders.intents').table}")
        ]
        alerts = [
            codec_for(Alert).decode(r["p"])
            for r in await conn.fetch(
                f"SELECT payload::text AS p FROM {spec('ops.alerts').table} "
                "WHERE payload->>'code' = 'signal_unauthenticated'"
            )
        ]
        outcomes = {
            r["event_id"]: r["outcome"]
            for r in await conn.fetch("SELECT event_id, outcome FROM trading_input_journal WHERE topic = 'signals'")
        }
    finally:
        await conn.close()
    assert [i.signal_event_id for i in intents] == [genuine.event_id]  # one order: the genuine signal's
    forged_ids = {unsigned.event_id, wrong_key.event_id, altered.event_id}
    assert {al.causation_id for al in alerts} == forged_ids
    assert sorted(al.labels["reason"] for al in alerts) == ["bad_signature", "bad_signature", "unsigned"]
    assert {k: outcomes[k] for k in forged_ids} == dict.fromkeys(forged_ids, "signal_unauthenticated")
    assert outcomes[genuine.event_id] == "order"
