"""Trading agent on the real broker and PostgreSQL: signals and bars in,
intents -> decisions -> orders -> fills -> portfolio state out; signed control
through the CLI; forged control refused, audited and alerted; no secret in
any log or row.

Market data: real candles from the bundled files (Binance BTC/USDT 1h,
gymcrypto ETH/USD 30m), calm windows, *re-stamped* to end half an hour
before now: the agent runs live (event time never ahead of its wall clock,
signed commands carry the wall time), so its inputs must look live.

Inputs are fed one at a time, each after the previous one was consumed
(the worker's ``tradeflow_records_in_total``), so the order the agent saw is
known; the same inputs in the order of the agent's input journal, with the
arrival bounds it journaled, through the in-process
:class:`~agents.trading.core.TradingCore` (a replay, as ``tradeflow audit`` does)
must give the rows the sink stored, byte for byte: live = replay.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.control.signing import Keyring, load_keyring, new_control_event
from agents.execution.interface import client_order_id_for
from agents.trading.core import TradingCore
from agents.trading.settings import TradingSettings
from ops.embedded.broker import EmbeddedBroker
from ops.jobs.ingest import SAMPLE_DIR
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import ROOT, Procs, wait_until
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import Bar, ControlCommand, ControlEvent, OpeningStatus, Signal, Timeframe
from topics.schema import Record, codec_for, event_id_for
from topics.units import NS_PER_MINUTE as MIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

#: A known fake secret: scenario 4 greps every log and row for it.
SECRET = "fake-control-secret-NEVER-LOG-7f3a9c1e5b2d"
FILE_SECRET = "fake-file-secret-NEVER-LOG-0b8e4d2a6c9f1357"
H = Timeframe.H1.nanos
HALF = Timeframe.M30.nanos
BTC_FILE = ("binance_btcusdt_1h_2017_2022.csv", "binance", "BTC/USDT", Timeframe.H1, "2020-10-03 02:00:00+00:00")
ETH_FILE = ("gymcrypto_ethusd_30m_2017_2019.csv", "gymcrypto", "ETH/USD", Timeframe.M30, "2017-11-27 18:30:00+00:00")
OUTPUT_TOPICS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
)


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def anchor_ns() -> int:
    """Close time of the newest bar: half an hour ago, on a minute."""
    return time.time_ns() // MIN * MIN - 30 * MIN


def bars(file: tuple[str, str, str, Timeframe, str], n: int, last_close: int) -> list[Bar]:
    """``n`` consecutive real candles, re-stamped so the last one closes at ``last_close``."""
    name, venue, symbol, tf, start = file
    with (SAMPLE_DIR / name).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["timestamp"] >= start][:n]
    assert len(rows) == n and rows[0]["timestamp"] == start
    assert datetime.fromisoformat(rows[-1]["timestamp"]) == datetime.fromisoformat(start) + (n - 1) * (
        datetime.fromisoformat(rows[1]["timestamp"]) - datetime.fromisoformat(rows[0]["timestamp"])
    )  # no gap
    out = []
    for j, r in enumerate(rows):
        close = last_close - (n - 1 - j) * tf.nanos
        o, hi, lo, c = (float(r[k]) for k in ("open", "high", "low", "close"))
        assert (hi - lo) / o < 0.02, "the chosen window must be calm (no volatility breaker)"
        out.append(
            builders.bar(
                venue=venue,
                symbol=symbol,
                timeframe=tf,
                open_time=close - tf.nanos,
                open=o,
                high=hi,
                low=lo,
                close=c,
                volume=float(r["volume"]),
                source=f"csv-restamped:{name}",
            )
        )
    return out


def signal(symbol: str, ts: int, score: float, tag: str) -> Signal:
    return builders.signal(
        symbol=symbol,
        ts=ts,
        score=score,
        model_id="stub-momentum",
        expected_return=0.02 * score,
        feature_event_id=f"features-{tag}",
        lineage_id="test",
    )


def tamper(event: ControlEvent, **changes: Any) -> ControlEvent:
    """``event`` with fields changed after signing (its id re-derived, the signature kept)."""
    changed = dataclasses.replace(event, **changes)
    eid = event_id_for(ControlEvent.KIND, changed.key_id, changed.nonce)
    return dataclasses.replace(changed, event_id=eid, correlation_id=eid)


@pytest.fixture
def trading_env(monkeypatch: pytest.MonkeyPatch, dsn: str) -> Keyring:
    """Environment the worker and CLI subprocesses inherit (Procs passes os.environ).

    ``TRADEFLOW_DSN``: the trading agent keeps its checkpoint in the test's database.
    """
    monkeypatch.setenv("TRADEFLOW_DSN", dsn)
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", SECRET)
    monkeypatch.setenv("TRADEFLOW_CONTROL_SIGNING_KEY_ID", "ops1")
    monkeypatch.setenv("TRADEFLOW_OPERATOR", "alice")
    monkeypatch.setenv("TRADEFLOW_TRADING_SYMBOLS", "BTC/USDT,ETH/USD")
    monkeypatch.setenv("TRADEFLOW_TRADING_TIMEFRAMES", "1h,30m")
    return load_keyring(os.environ)


# ---------------------------------------------------------------------------
# driving the worker
# ---------------------------------------------------------------------------


class Feed:
    """Publishes inputs one at a time, each after the worker consumed the previous one."""

    def __init__(self, pub: RecordPublisher, procs: Procs, web_port: int) -> None:
        self.pub = pub
        self.procs = procs
        self.url = f"http://127.0.0.1:{web_port}/metrics"
        self.inputs: list[Record] = []  # what the agent consumed, in order (decodable records only)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(self.url, timeout=2).read().decode())
        except OSError:
            return {}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, lab), v in (await self.metrics()).items() if n == name and want <= set(lab))

    async def consumed(self) -> float:
        return await self.metric("tradeflow_records_in_total", consumer="trading")

    async def _after(self, send: Any, n: int = 1, what: str = "input", timeout: float = 60) -> None:
        before = await self.consumed()
        await send()

        async def done() -> bool:
            return await self.consumed() >= before + n

        await wait_until(done, timeout, f"the trading agent to consume {what}", every=0.05, watch=self.procs)

    async def send(self, *records: Record, timeout: float = 30) -> None:
        for rec in records:
            topic = "market.bars" if isinstance(rec, Bar) else None  # checked bars: what the agent reads
            await self._after(
                lambda r=rec, t=topic: self.pub.publish([r], topic=t), what=type(rec).__name__, timeout=timeout
            )
            self.inputs.append(rec)

    async def raw(self, topic: str, value: bytes) -> None:
        await self._after(lambda: self.pub.send_raw(topic, value, key=b"global|*"), what=f"raw bytes on {topic}")

    async def cli(self, dsn: str, *args: str) -> ControlEvent:
        """Run ``tradeflow control ...`` as a subprocess; the command it published, once consumed."""
        result: dict[str, Any] = {}

        async def run() -> None:
            proc = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "ops.cli",
                    "control",
                    *args,
                    "--bootstrap",
                    self.pub.bootstrap,
                    "--namespace",
                    self.pub.namespace,
                ],
                cwd=ROOT,
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=60,
            )
            CLI_OUTPUT.append(proc.stdout + proc.stderr)
            assert proc.returncode == 0, proc.stderr[-2000:]
            result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

        await self._after(run, what=f"control {' '.join(args)}")
        conn = await asyncpg.connect(dsn)
        try:

            async def stored() -> bool:
                return bool(
                    await conn.fetchval("SELECT count(*) FROM ev_control WHERE event_id=$1", result["event_id"])
                )

            await wait_until(stored, 30, "the control command in ev_control")
            payload = await conn.fetchval("SELECT payload::text FROM ev_control WHERE event_id=$1", result["event_id"])
        finally:
            await conn.close()
        event = codec_for(ControlEvent).decode(payload)
        self.inputs.append(event)
        return event


#: Every CLI run's output, for the secret check.
CLI_OUTPUT: list[str] = []


def replay(inputs: Sequence[Record], keyring: Keyring, arrivals: Sequence[int | None] | None = None) -> list[Record]:
    """The same inputs through the in-process core, with the arrival bounds the agent used (its journal's):
    wall/arrival time decides control verification and stamps control audits (docs/trading_engines.md)."""
    core = TradingCore(TradingSettings.from_env(os.environ).config(), keyring)
    out: list[Record] = []
    for rec, arrival in zip(inputs, arrivals or [None] * len(inputs), strict=True):
        if isinstance(rec, Bar):
            out += core.on_bar(rec, arrival).records
        elif isinstance(rec, Signal):
            out += core.on_signal(rec, arrival).records
        else:
            assert isinstance(rec, ControlEvent)
            out += core.on_control(rec, arrival).records
    return out


async def journaled(dsn: str, feed: Feed) -> tuple[list[Record], list[int | None]]:
    """The feed's inputs in the order the agent applied them, with their arrival bounds, from its journal."""
    conn = await asyncpg.connect(dsn)
    try:

        async def complete() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM trading_input_journal") >= len(feed.inputs))

        await wait_until(complete, 30, "the trading agent to journal every input", watch=feed.procs)
        rows = await conn.fetch("SELECT event_id, arrival_ns FROM trading_input_journal ORDER BY seq")
    finally:
        await conn.close()
    by_id = {rec.event_id: rec for rec in feed.inputs}
    assert sorted(r["event_id"] for r in rows) == sorted(rec.event_id for rec in feed.inputs)
    return [by_id[r["event_id"]] for r in rows], [r["arrival_ns"] for r in rows]


async def rows(dsn: str, topic: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            r["event_id"]: r["p"]
            for r in await conn.fetch(f"SELECT event_id, payload::text AS p FROM {spec(topic).table}")
        }
    finally:
        await conn.close()


async def assert_live_equals_replay(
    dsn: str, feed: Feed, keyring: Keyring, extra_alerts: int = 0
) -> dict[str, list[Any]]:
    """Wait until the sink stored what the replay produces; compare byte for byte. Returns decoded rows."""
    expected: dict[str, dict[str, str]] = {t: {} for t in OUTPUT_TOPICS}
    inputs, arrivals = await journaled(dsn, feed)
    for rec in replay(inputs, keyring, arrivals):
        expected[DEFAULT_TOPIC[type(rec)]][rec.event_id] = codec_for(type(rec)).encode(rec).decode()

    async def complete() -> bool:
        for t in OUTPUT_TOPICS:
            want = len(expected[t]) + (extra_alerts if t == "ops.alerts" else 0)
            if len(await rows(dsn, t)) < want:
                return False
        return True

    await wait_until(complete, 30, "the sink to store every output the replay produces", watch=feed.procs)
    decoded: dict[str, list[Any]] = {}
    for t in OUTPUT_TOPICS:
        got = await rows(dsn, t)
        live = {k: v for k, v in got.items() if k in expected[t]}
        assert live == expected[t], f"{t}: live rows differ from the replay"
        assert len(got) == len(expected[t]) + (extra_alerts if t == "ops.alerts" else 0), t
        decoded[t] = [codec_for(spec(t).record).decode(v) for v in got.values()]
    return decoded


async def start(broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs) -> int:
    worker = procs.worker(broker.bootstrap, namespace, "trading")
    procs.sink(broker.bootstrap, namespace, dsn)
    port: int = worker.extra["web_port"]
    return port


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------


async def test_signals_and_bars_for_btc_and_eth_then_orders_fills_and_positions_persisted_once(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 5, a)  # closes a-4h .. a
    eth = bars(ETH_FILE, 5, a - HALF)  # closes a-2.5h .. a-30m
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        warm = sorted(btc[:4] + eth[:4], key=lambda b: (b.ts_event, b.symbol))
        await feed.send(*warm, timeout=90)  # the first one waits for the worker to start
        s_btc = signal("BTC/USDT", a - H, 0.9, "btc")
        s_eth = signal("ETH/USD", a - H, 0.9, "eth")
        await feed.send(s_btc, s_btc, s_eth)  # the BTC signal is delivered twice
        await feed.send(eth[4], btc[4])  # the next bars open at the signals' time: the orders fill
        assert await feed.metric("tradeflow_records_in_total", consumer="trading", topic="signals") == 3
        assert await feed.metric("tradeflow_sizing_decisions_total", reason="duplicate_signal") == 1
        assert await feed.metric("tradeflow_sizing_decisions_total", reason="order") == 2

    out = await assert_live_equals_replay(dsn, feed, trading_env)
    intents = out["orders.intents"]
    assert sorted(i.symbol for i in intents) == ["BTC/USDT", "ETH/USD"]  # one order per signal, not per delivery
    assert all(d.verdict.value == "approved" and d.reasons == () for d in out["risk.decisions"])
    coids = {client_order_id_for(i.event_id): i for i in intents}
    lifecycle = {c: sorted(u.status.value for u in out["orders.updates"] if u.client_order_id == c) for c in coids}
    assert all(v == ["acknowledged", "filled", "new"] for v in lifecycle.values()), lifecycle
    fills = out["fills"]
    assert {f.client_order_id for f in fills} == set(coids)
    for f in fills:
        assert f.quantity == pytest.approx(coids[f.client_order_id].quantity)
        assert f.fee > 0 and f.slippage_bps == 2.0 and f.impact_bps > 0
    # the latest snapshot holds both positions, equal to the sum of their fills
    last = max(out["portfolio.state"], key=lambda s: (s.as_of_ns, s.fills_applied))
    assert last.as_of_ns == a and last.fills_applied == 2
    for sym in ("BTC/USDT", "ETH/USD"):
        assert last.quantities[sym] == pytest.approx(sum(f.quantity for f in fills if f.symbol == sym))
    assert len(out["portfolio.state"]) == 10  # one per bar
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ev_signals") == 2  # the duplicate is one row
        latest = await conn.fetchrow("SELECT account, equity, quantities::text AS q FROM portfolio_latest")
        assert latest is not None and latest["account"] == "paper" and json.loads(latest["q"]) == last.quantities
    finally:
        await conn.close()


async def test_signed_kill_switch_from_the_cli_then_every_intent_rejected_until_released(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 4, a)  # closes a-3h, a-2h, a-1h, a
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        on = await feed.cli(dsn, "kill-switch", "on", "--reason", "drill: halt everything")
        await feed.send(signal("BTC/USDT", a - H, 0.9, "k1"), btc[2], signal("BTC/USDT", a - H, 0.95, "k2"))
        off = await feed.cli(dsn, "kill-switch", "off", "--reason", "drill over")
        await feed.send(signal("BTC/USDT", a - H, 0.9, "k3"), btc[3])

    out = await assert_live_equals_replay(dsn, feed, trading_env)
    audits = {x.control_event_id: x for x in out["control.audit"]}
    assert set(audits) == {on.event_id, off.event_id}
    assert audits[on.event_id].outcome.value == "accepted" and audits[on.event_id].reason == "applied"
    assert audits[on.event_id].operator == "alice" and audits[on.event_id].changes
    assert audits[off.event_id].outcome.value == "accepted" and audits[off.event_id].changes
    decisions = sorted(out["risk.decisions"], key=lambda d: d.ts_init)
    intents = {i.event_id: i for i in out["orders.intents"]}
    assert len(decisions) == 3
    k1, k2, k3 = (
        next(
            d
            for d in decisions
            if intents[d.intent_event_id].signal_event_id == signal("BTC/USDT", a - H, s, t).event_id
        )
        for s, t in ((0.9, "k1"), (0.95, "k2"), (0.9, "k3"))
    )
    for d in (k1, k2):  # while the switch is on: rejected for that reason alone, never filled
        assert d.verdict.value == "rejected" and d.reasons == ("kill_switch_global",)
    assert k3.verdict.value == "approved"
    fills = out["fills"]
    assert {f.client_order_id for f in fills} == {client_order_id_for(k3.intent_event_id)}
    rejected = [u for u in out["orders.updates"] if u.status.value == "rejected"]
    assert {u.client_order_id for u in rejected} == {client_order_id_for(d.intent_event_id) for d in (k1, k2)}
    assert {u.reason for u in rejected} == {"risk_blocked"}
    assert out["ops.alerts"] == []
    assert await feed.metric("tradeflow_kill_switches_active") == 0


async def test_breaker_limits_set_from_the_cli_then_it_trips_halts_60s_of_market_time_and_audits_the_hashes(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    """A signed ``set-limit vol_threshold.BTC`` makes the breaker trip on a calm real bar: the signal stamped
    at that bar's close is refused by the global halt; set back, the next bar's signal trades. Each audit
    carries the risk config's hash before and after; live = replay."""
    a = anchor_ns()
    btc = bars(BTC_FILE, 4, a)  # closes a-3h, a-2h, a-1h, a; btc[2]'s return is +0.055 %
    start_hash = TradingSettings.from_env(os.environ).config().risk.config_hash()
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        tight = await feed.cli(dsn, "set-limit", "vol_threshold.BTC", "0.0001", "--reason", "drill: trip it")
        await feed.send(btc[2], signal("BTC/USDT", a - H, 0.9, "b1"))
        back = await feed.cli(dsn, "set-limit", "vol_threshold.BTC", "0.05", "--reason", "drill over")
        await feed.send(btc[3], signal("BTC/USDT", a, 0.9, "b2"))

    out = await assert_live_equals_replay(dsn, feed, trading_env)
    audits = {x.control_event_id: x for x in out["control.audit"]}
    first, second = audits[tight.event_id], audits[back.event_id]
    assert (first.reason, second.reason) == ("applied", "applied")
    assert first.changes == ("vol_threshold.BTC: 0.05 -> 0.0001",)
    assert first.config_hash_before == start_hash != first.config_hash_after == second.config_hash_before
    assert second.config_hash_after == start_hash  # back to the start-up value: the same config, the same hash
    (alert,) = out["ops.alerts"]
    assert alert.code == "kill_switch_engaged" and "volatility_breaker" in alert.message
    assert f"until {a - H + 60 * 10**9})" in alert.message  # 60 s of market time from btc[2]'s close
    intents = {i.event_id: i for i in out["orders.intents"]}
    verdicts = {intents[d.intent_event_id].signal_event_id: d for d in out["risk.decisions"]}
    b1 = verdicts[signal("BTC/USDT", a - H, 0.9, "b1").event_id]
    assert b1.verdict.value == "rejected" and b1.reasons == ("kill_switch_global",)
    assert verdicts[signal("BTC/USDT", a, 0.9, "b2").event_id].verdict.value == "approved"


async def test_signals_not_traded_then_status_shows_signals_in_intents_out_and_why(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    """``tradeflow status`` says per account what became of the signals: from the agent's input journal
    (each signal's sizing reason; a signal held for its bar gets its reason once applied) and the risk
    decisions on its intents."""
    a = anchor_ns()
    btc = bars(BTC_FILE, 4, a)  # closes a-3h, a-2h, a-1h, a
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        weak = signal("BTC/USDT", a - 2 * H, 0.1, "weak")  # at the last close: |score| below the entry threshold
        await feed.send(weak, weak)  # and delivered twice
        await feed.cli(dsn, "kill-switch", "on", "--reason", "status drill")
        held = signal("BTC/USDT", a - H, 0.9, "held")  # ahead of its bar: held, then an intent the switch denies
        await feed.send(held, btc[2])
        await feed.cli(dsn, "kill-switch", "off", "--reason", "drill over")
        await feed.send(signal("BTC/USDT", a - H, 0.95, "strong"), btc[3])  # an order, approved and filled
    await assert_live_equals_replay(dsn, feed, trading_env)

    conn = await asyncpg.connect(dsn)
    try:

        async def journaled() -> bool:
            outcomes = await conn.fetch("SELECT outcome FROM trading_input_journal WHERE topic = 'signals'")
            return len(outcomes) == 4 and all(r["outcome"] not in (None, "held") for r in outcomes)

        await wait_until(journaled, 30, "every signal journaled with its outcome (held one updated)")
    finally:
        await conn.close()

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = ["--dsn", dsn, "--bootstrap", broker.bootstrap, "--namespace", namespace, *extra]
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "status", *argv],
            cwd=ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = status("--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["trading"] == [
        {
            "account": "paper",
            "signals_in": 4,
            "intents_out": 2,
            "held": 0,
            "verdicts": {"approved": 1, "rejected": 1},
            "skipped": [{"reason": "below_entry_threshold", "n": 1}, {"reason": "duplicate_signal", "n": 1}],
            "denied": [{"reason": "kill_switch_global", "n": 1}],
        }
    ]
    text = status().stdout
    assert "signals   paper: 4 in, 2 intents out (1 approved, 1 rejected)" in text
    assert "not traded: below_entry_threshold 1, duplicate_signal 1" in text
    assert "denied: kill_switch_global 1" in text


async def test_recorded_market_data_as_a_live_stream_when_commands_are_given_now_then_trading_follows_them(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    """History replayed as live data: bars and signals keep their recorded 2020 times, the operator's commands
    carry today's. A command never moves market time (docs/trading_engines.md#time-domains), so the kill switch
    stops trading, its release resumes it, and a strategy threshold lowered by set-limit lets a weaker signal
    trade; no signal is ever stale because of a command."""
    first_open = int(datetime.fromisoformat(BTC_FILE[4]).timestamp()) * 10**9
    btc = bars(BTC_FILE, 4, first_open + 4 * H)  # not re-stamped: the recorded closes
    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        on = await feed.cli(dsn, "kill-switch", "on", "--reason", "history drill")
        halted = signal("BTC/USDT", btc[1].ts_event, 0.9, "halted")
        await feed.send(halted, btc[2])
        await feed.cli(dsn, "kill-switch", "off", "--reason", "history drill over")
        tuned = await feed.cli(dsn, "set-limit", "strategy.entry_threshold", "0.1")
        weak = signal("BTC/USDT", btc[2].ts_event, 0.15, "weak")  # below the default 0.2, above 0.1
        await feed.send(weak, btc[3])
        assert await feed.metric("tradeflow_sizing_decisions_total", reason="stale_signal") == 0
        assert await feed.metric("tradeflow_sizing_decisions_total", reason="order") == 2

    out = await assert_live_equals_replay(dsn, feed, trading_env)
    assert on.ts_event > btc[-1].ts_event + 365 * 24 * H  # the commands are years after the market data
    intents = {i.signal_event_id: i for i in out["orders.intents"]}
    decisions = {d.intent_event_id: d for d in out["risk.decisions"]}
    assert decisions[intents[halted.event_id].event_id].reasons == ("kill_switch_global",)
    approved = decisions[intents[weak.event_id].event_id]
    assert approved.verdict.value == "approved"
    assert [f.client_order_id for f in out["fills"]] == [client_order_id_for(approved.intent_event_id)]
    assert all(d.ts_init < on.ts_event for d in out["risk.decisions"])  # market outputs keep market time
    audit = next(a for a in out["control.audit"] if a.control_event_id == tuned.event_id)
    assert audit.changes == ("strategy.entry_threshold: 0.2 -> 0.1",)
    assert audit.config_hash_before != audit.config_hash_after


async def test_forged_unsigned_and_replayed_control_then_nothing_changes_and_each_is_audited_and_alerted(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    a = anchor_ns()
    btc = bars(BTC_FILE, 3, a)  # closes a-2h, a-1h, a
    now = time.time_ns()

    def cmd(command: ControlCommand, nonce: str, keyring: Keyring, key_id: str = "ops1") -> ControlEvent:
        return new_control_event(
            command=command,
            scope="global",
            target="*",
            params={},
            reason="test",
            operator="mallory",
            key_id=key_id,
            nonce=nonce,
            ts_event=now,
            ts_init=now,
            expires_at=None,
            keyring=keyring,
        )

    wrong = Keyring({"ops1": b"an-attackers-guess-at-the-key-0123456789", "ops9": b"x" * 40})
    forged = cmd(ControlCommand.KILL_SWITCH_ON, "f-1", wrong)  # right key id, wrong secret
    unknown = cmd(ControlCommand.KILL_SWITCH_ON, "f-2", wrong, key_id="ops9")
    unsigned = dataclasses.replace(cmd(ControlCommand.KILL_SWITCH_ON, "f-3", trading_env), signature="")
    genuine_on = cmd(ControlCommand.KILL_SWITCH_ON, "g-1", trading_env)
    altered = tamper(genuine_on, target="BTC/USDT", scope="symbol", nonce="f-4")
    genuine_off = cmd(ControlCommand.KILL_SWITCH_OFF, "g-2", trading_env)

    port = await start(broker, namespace, dsn, procs)
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(btc[0], btc[1], timeout=90)
        await feed.send(forged, unknown, unsigned, altered)
        await feed.raw("control", b'{"command": "kill_switch_on", "scope": "global"')  # not even a record
        await feed.send(genuine_on, genuine_off, genuine_on)  # ... and the genuine halt replayed after release
        await feed.send(signal("BTC/USDT", a - H, 0.9, "after"), btc[2])

    out = await assert_live_equals_replay(dsn, feed, trading_env, extra_alerts=1)
    audits = {(x.control_event_id, x.reason): x for x in out["control.audit"]}
    rejected = {
        (forged.event_id, "bad_signature"),
        (unknown.event_id, "unknown_key"),
        (unsigned.event_id, "unsigned"),
        (altered.event_id, "bad_signature"),
        (genuine_on.event_id, "replayed"),
    }
    assert rejected | {(genuine_on.event_id, "applied"), (genuine_off.event_id, "applied")} == set(audits)
    for key in rejected:
        assert audits[key].outcome.value == "rejected" and audits[key].alert and audits[key].changes == ()
    alerts = out["ops.alerts"]
    by_audit = {al.dedupe_key: al for al in alerts if al.code == "control_rejected"}
    assert set(by_audit) == {audits[k].event_id for k in rejected}
    assert {al.labels["reason"] for al in by_audit.values()} == {"bad_signature", "unknown_key", "unsigned", "replayed"}
    assert [al.code for al in alerts if al.code != "control_rejected"] == ["control_undecodable"]
    # nothing the rejected commands claimed took effect: the order after them went through and filled
    (decision,) = out["risk.decisions"]
    assert decision.verdict.value == "approved" and decision.reasons == ()
    assert len(out["fills"]) == 1
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ev_dead_letters WHERE payload->>'consumer' = 'trading'") == 1
        view = await conn.fetch("SELECT outcome, reason, alert FROM control_audit WHERE outcome = 'rejected'")
        assert len(view) == 5 and all(r["alert"] for r in view)
    finally:
        await conn.close()
    assert await feed.metric("tradeflow_control_commands_total", outcome="rejected") == 5


async def test_control_keys_in_env_and_file_then_no_secret_in_any_log_or_row(
    broker: EmbeddedBroker,
    namespace: str,
    dsn: str,
    procs: Procs,
    trading_env: Keyring,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "ops2.key"
    key_file.write_text(FILE_SECRET + "\n")
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS2_FILE", str(key_file))
    keyring = load_keyring(os.environ)
    a = anchor_ns()
    procs.sink(broker.bootstrap, namespace, dsn)  # never holds a key; its aiokafka DEBUG logs would only cost CPU
    monkeypatch.setenv("TRADEFLOW_LOG_LEVEL", "DEBUG")  # the worker and the CLI: the chattiest logs there are
    port = procs.worker(broker.bootstrap, namespace, "trading").extra["web_port"]
    CLI_OUTPUT.clear()
    async with RecordPublisher(broker.bootstrap, namespace) as pub:
        feed = Feed(pub, procs, port)
        await feed.send(*bars(BTC_FILE, 2, a - H), timeout=90)
        await feed.cli(
            dsn, "kill-switch", "on", "--scope", "symbol", "--target", "ETH/USD", "--reason", "r", "--ttl-s", "600"
        )
        await feed.cli(dsn, "set-limit", "max_order_notional", "20000", "--key-id", "ops2")
        await feed.cli(dsn, "rollout", "promote", "--model-id", "m1", "--version", "3")
        rollout = feed.inputs[-1]
        assert isinstance(rollout, ControlEvent)
        forged = tamper(rollout, nonce="forged", params={"model_id": "m1", "version": "4"})
        await feed.send(forged)
    # refusals print errors: they must not print the key either
    refusals = {
        ("set-limit", "no_such_limit", "1"): 2,
        ("kill-switch", "on", "--reason", "x", "--key-id", "ops7"): 2,
        ("kill-switch", "on", "--reason", "x", "--bootstrap", "127.0.0.1:1", "--timeout-s", "5"): 3,
    }
    results = await asyncio.gather(
        *(
            asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "ops.cli", "control", *args],
                cwd=ROOT,
                env=dict(os.environ),
                capture_output=True,
                text=True,
                timeout=60,
            )
            for args in refusals
        )
    )
    for proc, rc in zip(results, refusals.values(), strict=True):
        CLI_OUTPUT.append(proc.stdout + proc.stderr)
        assert proc.returncode == rc, proc.stderr[-1000:]

    out = await assert_live_equals_replay(dsn, feed, keyring)
    reasons = sorted((x.command, x.outcome.value, x.reason) for x in out["control.audit"])
    assert reasons == [
        ("kill_switch_on", "accepted", "applied"),
        ("rollout_promote", "ignored", "not_for_risk"),
        ("rollout_promote", "rejected", "bad_signature"),
        ("set_limit", "accepted", "applied"),
    ]
    for p in procs.all:
        p.stop()
    logs = "\n".join([p.output() for p in procs.all] + CLI_OUTPUT)
    assert "control_command" in logs and "trading_agent_configured" in logs  # the logs are the real ones
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'ev_%'")
        ]
        payloads = "\n".join([str(v) for t in tables for v in await conn.fetch(f"SELECT payload::text FROM {t}")])
        dead = [
            base64.b64decode(r["b"]).decode(errors="replace")
            for r in await conn.fetch("SELECT payload->>'original_b64' AS b FROM ev_dead_letters")
        ]
    finally:
        await conn.close()
    assert len(payloads) > 1000
    haystack = logs + payloads + "\n".join(dead) + "\n".join(" ".join(p.argv) for p in procs.all)
    for secret in (SECRET, FILE_SECRET):
        for form in (secret, secret.encode().hex(), base64.b64encode(secret.encode()).decode(), secret[:16]):
            assert form not in haystack, "a control secret leaked into a log, a row or a command line"


async def test_kill_switch_then_opening_status_published_with_its_reason_shown_by_status_then_cleared(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, trading_env: Keyring
) -> None:
    """The worker publishes ``risk.opening``: allowed after the first bar; a signed kill switch shows up as
    a blocker with its reason, scope and clock (wall time: an operator's switch), in the sink's table and
    in ``tradeflow status``; released, the status says allowed again. The records are the replay's."""
    a = anchor_ns()
    btc = bars(BTC_FILE, 2, a)
    port = await start(broker, namespace, dsn, procs)
    conn = await asyncpg.connect(dsn)

    async def latest() -> OpeningStatus | None:
        payload = await conn.fetchval(
            "SELECT payload::text FROM ev_risk_opening WHERE msg_key = 'paper' ORDER BY kafka_offset DESC LIMIT 1"
        )
        return None if payload is None else codec_for(OpeningStatus).decode(payload)

    async def until(what: str, ok: Callable[[OpeningStatus], bool]) -> OpeningStatus:
        async def seen() -> bool:
            rec = await latest()
            return rec is not None and ok(rec)

        await wait_until(seen, 30, what, watch=procs)
        rec = await latest()
        assert rec is not None
        return rec

    def status() -> subprocess.CompletedProcess[str]:
        argv = ["--dsn", dsn, "--bootstrap", broker.bootstrap, "--namespace", namespace]
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "status", *argv, "--json"],
            cwd=ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        async with RecordPublisher(broker.bootstrap, namespace) as pub:
            feed = Feed(pub, procs, port)
            await feed.send(btc[0], timeout=90)
            first = await until("an allowed opening status after the first bar", lambda r: r.allowed)
            assert first.account == "paper" and first.market_ns == btc[0].ts_event
            await feed.cli(dsn, "kill-switch", "on", "--reason", "drill: opening status")
            halted = await until("the kill switch in the opening status", lambda r: not r.allowed)
            assert halted.blocker_codes == ("kill_switch_global",) and halted.blocker_scopes == ("global",)
            assert (
                "drill: opening status" in halted.blocker_details[0] and "operator:alice" in halted.blocker_details[0]
            )
            assert halted.blocker_domains == ("wall",) and halted.blocker_until_ns == (None,)
            shown = status()
            assert shown.returncode == 0, shown.stderr[-2000:]
            (row,) = json.loads(shown.stdout)["opening"]
            assert row["account"] == "paper" and row["allowed"] is False
            assert [(b["code"], b["scope"], b["domain"]) for b in row["blockers"]] == [
                ("kill_switch_global", "global", "wall")
            ]
            assert "drill: opening status" in row["blockers"][0]["detail"]
            await feed.cli(dsn, "kill-switch", "off", "--reason", "drill over")
            cleared = await until("the opening status allowed again", lambda r: r.allowed)
            assert cleared.blocker_codes == () and cleared.wall_ns >= halted.wall_ns
            await feed.send(btc[1])
        text = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "status",
                "--dsn",
                dsn,
                "--bootstrap",
                broker.bootstrap,
                "--namespace",
                namespace,
            ],
            cwd=ROOT,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "opening   paper: ALLOWED" in text
    finally:
        await conn.close()
    # the published statuses are the in-process core's, input by input (live = replay)
    inputs, arrivals = await journaled(dsn, feed)
    core = TradingCore(TradingSettings.from_env(os.environ).config(), trading_env)
    expected = []
    for rec, arrival in zip(inputs, arrivals, strict=True):
        if isinstance(rec, Bar):
            core.on_bar(rec, arrival)
        else:
            assert isinstance(rec, ControlEvent)
            core.on_control(rec, arrival)
        update = core.opening_update(rec.event_id)
        if update is not None:
            expected.append(codec_for(OpeningStatus).encode(update).decode())
    got = await rows(dsn, "risk.opening")
    assert sorted(got.values()) == sorted(expected) and len(expected) >= 3
