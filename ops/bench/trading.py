"""Trading-core benchmarks (``tradeflow bench trading [--quick] [--out artifacts/bench_trading.json]``).

(a) risk decisions per second: the pure risk engine alone with 0 / 500 / 5,000 orders in
    flight (baseline: strict decoding of the same intents);
(d) checkpoint cost: sealing the whole trading core (pickle + HMAC) after the determinism
    scenario;
(b) signal -> order latency on the embedded broker (one ``tradeflow worker --agents trading``
    subprocess, checkpoints on) at 100/s and 1,000/s: signal -> first order update
    (``decision``) and signal -> fill with a fill bar after each signal (``fill``); baseline:
    the broker alone on one topic at the same rate;
(c) kill command -> orders blocked: publish of a signed global ``kill_switch_on`` -> the first
    decision rejected with ``kill_switch_global``, checking per trial that no order got out
    while it was on. Target: p99 under 1 s.

Medians over repeats; the first tenth of each latency run is dropped.

Method: docs/benchmarks.md#trading-benchmark; figures: docs/performance.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.clock import EventClock
from agents.control.signing import ControlVerifier, Keyring, load_keyring, new_control_event
from agents.portfolio.engine import PortfolioState
from agents.risk.config import RiskConfig
from agents.risk.engine import RiskEngine
from ops.bench.stats import percentile
from ops.embedded.workers import ChildProcess, worker_argv
from ops.host import cpu_seconds
from runtime.broker import ensure_topics
from runtime.exits import EXIT_OK
from topics.catalogue import DEFAULT_TOPIC, physical_name
from topics.records import (
    Bar,
    ControlCommand,
    ControlEvent,
    OrderIntent,
    OrderType,
    Side,
    Signal,
    Timeframe,
)
from topics.schema import Record, codec_for
from topics.units import NS_PER_HOUR, NS_PER_MINUTE

NOW = 1_609_459_200_000_000_000 + 2 * NS_PER_HOUR


def _bar(symbol: str, close: float) -> Bar:
    return Bar.new(
        ts_init=NOW,
        ts_event=NOW,
        venue="binance",
        symbol=symbol,
        timeframe=Timeframe.H1,
        open_time=NOW - NS_PER_HOUR,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1_000.0,
        trade_count=None,
        is_closed=True,
        revision=0,
        source="bench",
    )


def _intents(n: int) -> list[OrderIntent]:
    out = []
    for i in range(n):
        out.append(
            OrderIntent.new(
                ts_init=NOW,
                ts_event=NOW,
                strategy_id="s1",
                track="paper",
                symbol=("BTC/USDT", "ETH/USDT")[i % 2],
                side=(Side.BUY, Side.SELL)[(i // 2) % 2],
                quantity=0.01 if i % 2 == 0 else 0.1,
                order_type=OrderType.MARKET,
                limit_price=None,
                reduce_only=False,
                target_position=0.0,
                signal_event_id=f"sig-{i}",
            )
        )
    return out


def _risk_rate(in_flight: int, measured: int) -> tuple[float, float, dict[str, int]]:
    """Decisions/s over ``measured`` intents after ``in_flight`` approved ones; decode/s of the same."""
    intents = _intents(in_flight + measured)
    codec = codec_for(OrderIntent)
    encoded = [codec.encode(i) for i in intents[in_flight:]]
    cfg = dataclasses.replace(RiskConfig(), max_orders_per_window=1_000_000)
    clock = EventClock(NOW)
    engine = RiskEngine(cfg, clock, ControlVerifier(Keyring({"k": b"k" * 40})))
    engine.on_mark(_bar("BTC/USDT", 30_000.0))
    engine.on_mark(_bar("ETH/USDT", 1_000.0))
    engine.on_portfolio(PortfolioState.initial(100_000.0, NOW))
    for it in intents[:in_flight]:
        engine.on_intent(it)
    verdicts: dict[str, int] = {}
    t = time.perf_counter()
    for it in intents[in_flight:]:
        d = engine.on_intent(it)
        verdicts[d.verdict.value] = verdicts.get(d.verdict.value, 0) + 1
    rate = measured / (time.perf_counter() - t)
    t = time.perf_counter()
    for e in encoded:
        codec.decode(e)
    return rate, measured / (time.perf_counter() - t), verdicts


def _checkpoint_cost(n_bars: int) -> dict[str, float]:
    from agents.trading.checkpoint import open_checkpoint, seal
    from agents.trading.core import TradingConfig, TradingCore
    from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal

    bars = load_bars()[:n_bars]
    core = TradingCore(TradingConfig(), KEYRING)
    for i, bar in enumerate(bars):
        core.on_bar(bar)
        core.on_signal(stub_signal(bars, i))
    seal_ms, open_ms, size = [], [], 0
    for _ in range(5):
        t = time.perf_counter()
        cp = seal(core, config_hash="bench", offsets={"signals": {0: 1}}, events_applied=2 * n_bars, keyring=KEYRING)
        seal_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        open_checkpoint(cp, KEYRING, account=core.config.account, config_hash="bench")
        open_ms.append((time.perf_counter() - t) * 1e3)
        size = len(cp.state)
    return {
        "inputs": 2 * n_bars,
        "state_bytes": size,
        "seal_ms_median": round(statistics.median(seal_ms), 3),
        "restore_ms_median": round(statistics.median(open_ms), 3),
    }


def _signal_cost(n: int) -> dict[str, float]:
    """The trading core's signal path: ``n`` signals after 10 bars, unverified (no signal key) and verified
    (signed signals, :class:`~agents.signals.signing.SignalVerifier`), plus ``verify`` alone and the decode."""
    from agents.signals.signing import SignalSigner, SignalVerifier
    from agents.trading.core import TradingConfig, TradingCore
    from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal

    bars = load_bars()[:10]
    keys = Keyring({"bench": b"bench-signal-key-0123456789abcdef"})
    signer, verifier = SignalSigner(keys, "bench"), SignalVerifier(keys)
    base = stub_signal(bars, 9)
    plain = [dataclasses.replace(base, feature_event_id=f"f{i}", event_id=f"bench-{i}") for i in range(n)]
    signed = [signer.sign(sg) for sg in plain]
    codec = codec_for(Signal)
    wire = [codec.encode(sg) for sg in signed]

    def core_us(verify: bool) -> float:
        core = TradingCore(TradingConfig(), KEYRING, verifier if verify else None)
        for bar in bars:
            core.on_bar(bar)
        inputs = signed if verify else plain
        t = time.perf_counter()
        for sg in inputs:
            core.on_signal(sg)
        return (time.perf_counter() - t) / n * 1e6

    def loop_us(fn: Any, items: list[Any]) -> float:
        t = time.perf_counter()
        for x in items:
            fn(x)
        return (time.perf_counter() - t) / n * 1e6

    assert all(verifier.verify(sg).ok for sg in signed)
    runs = [
        (core_us(False), core_us(True), loop_us(verifier.verify, signed), loop_us(codec.decode, wire)) for _ in range(5)
    ]
    return {
        "signals": n,
        "on_signal_us_unverified_median": round(statistics.median(r[0] for r in runs), 2),
        "on_signal_us_verified_median": round(statistics.median(r[1] for r in runs), 2),
        "verify_us_median": round(statistics.median(r[2] for r in runs), 2),
        "signal_decode_us_median": round(statistics.median(r[3] for r in runs), 2),
    }


# ---------------------------------------------------------------------------
# (b), (c): the trading agent on the embedded broker -- pure helpers first
# ---------------------------------------------------------------------------

BENCH_KEY_ID = "bench"
#: Symbols the worker may trade; each phase gets its own, so one phase's orders in flight never meet another's.
PHASE_SYMBOLS = {
    "decision_100": "BTC/USDT",
    "decision_1000": "ETH/USDT",
    "paired_100": "SOL/USDT",
    "paired_1000": "BNB/USDT",
    "paired_3000": "LTC/USDT",
    "drain": "ADA/USDT",
    "kill": "XRP/USDT",
}
BASE_PRICE = {
    "BTC/USDT": 30_000.0,
    "ETH/USDT": 2_000.0,
    "SOL/USDT": 100.0,
    "BNB/USDT": 300.0,
    "XRP/USDT": 0.5,
    "LTC/USDT": 80.0,
    "ADA/USDT": 0.4,
}
#: Half the swing between consecutive fill bars: buys fill 0.3 % below the base, sells 0.3 % above, so every
#: round trip earns more than its costs (24 bps) and the consecutive-loss / daily-loss halts never trip, while
#: a fill stays within paper execution's 100 bps slippage guard of the arrival price (the last close).
SWING = 0.003
#: rates of the paired runs (signals/s, each with its fill bar); the signals-only runs are at 100 and 1,000/s
PAIRED_RATES = (100, 1000, 3000)
SCORE = 0.3
#: Limits lifted for the benchmark account by signed ``set_limit`` commands, as an operator would for a latency
#: test: the order rate limit (30 per window by default), and the loss halts. At 1,000 signals/s the agent decides
#: a signal before the previous one's fill bar is back, so two opposite orders can fill on one bar at one price:
#: a round trip that only pays costs, and five of them in a row halted trading (``consecutive_loss_limit``),
#: after which every later phase measured rejections instead of orders.
BENCH_LIMITS: dict[str, float] = {
    "max_orders_per_window": 1_000_000,
    "consecutive_loss_limit": 1000,
    "daily_loss_limit": 0.5,
    "intraday_drawdown_halt": 0.5,
}
#: ... and the drawdown tiers, set at start: in the backlog run a fetch that runs ahead on one topic fills orders on
#: the losing side of the swing, and at the default tiers (flat at 12 %) the account went flat part-way, after
#: which the run measured held signals, not orders. For the same reason the account's loss-streak cool-down is
#: one nanosecond: the streak limit (1,000 at most) was reached in the backlog run and the rest were rejections.
BENCH_DRAWDOWN_TIERS: dict[str, str] = {
    "TRADEFLOW_RISK_CONSECUTIVE_LOSS_COOLDOWN_NS": "1",
    "TRADEFLOW_STRATEGY_DRAWDOWN_WARN": "0.9",
    "TRADEFLOW_STRATEGY_DRAWDOWN_REDUCE_ONLY": "0.95",
    "TRADEFLOW_STRATEGY_DRAWDOWN_FLAT": "0.99",
    "TRADEFLOW_RISK_DRAWDOWN_WARN": "0.9",
    "TRADEFLOW_RISK_DRAWDOWN_NEAR_LIMIT": "0.95",
    "TRADEFLOW_RISK_MAX_DRAWDOWN": "0.99",
}
KILL_REASON = "kill_switch_global"
KILL_SIGNAL_RATE = 100


def percentiles(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max (nearest rank) and the sample count; ``None`` when there are no samples."""

    def q(p: float) -> float | None:
        v = percentile(latencies_ms, p)
        return None if v is None else round(v, 2)

    return {"samples": len(latencies_ms), "p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": q(1.0)}


def bench_signal(symbol: str, i: int, ts_ns: int) -> Signal:
    """The ``i``-th signal of a run: score +0.3 on even, -0.3 on odd ``i`` (every signal flips the position).

    ``expected_return`` (0.006) clears the strategy's round-trip cost (0.0024), so a flip is never
    only a close; ``ts_init`` = ``ts_event`` = publish time, the latency's start.
    """
    score = SCORE if i % 2 == 0 else -SCORE
    up = 0.5 + score / 2
    return Signal.new(
        ts_init=ts_ns,
        ts_event=ts_ns,
        symbol=symbol,
        model_id="bench",
        model_version="1",
        horizon="1h",
        p_up=up,
        p_flat=0.0,
        p_down=1.0 - up,
        expected_return=0.02 * score,
        score=score,
        shadow=False,
        feature_event_id=f"bench-{symbol}-{i}-{ts_ns}",
        lineage_id="bench-trading",
    )


def bench_bar(symbol: str, open_time: int, price: float) -> Bar:
    """A closed 1m bar with no range (no volatility breaker) and ample volume (one bar fills every order).

    Its close (``ts_event``) may lie up to a minute ahead of the wall clock: the agent bounds its clock by
    the message's arrival time, so a bar from the future cannot move time forward.
    """
    return Bar.new(
        ts_init=open_time,
        ts_event=open_time + NS_PER_MINUTE,
        venue="bench",
        symbol=symbol,
        timeframe=Timeframe.M1,
        open_time=open_time,
        open=price,
        high=price,
        low=price,
        close=price,
        volume=1e9,
        trade_count=None,
        is_closed=True,
        revision=0,
        source="bench",
    )


def fill_bar(symbol: str, i: int, after_ns: int) -> Bar:
    """The bar right after signal ``i``: opens 1 ns after it, low after a buy (even), high after a sell."""
    base = BASE_PRICE[symbol]
    return bench_bar(symbol, after_ns + 1, base * (1 - SWING) if i % 2 == 0 else base * (1 + SWING))


def first_latencies(sent_ns: dict[str, int], received: list[tuple[int, str]], drop_first: float = 0.1) -> list[float]:
    """Latency (ms) from each signal's publish to the first received record carrying its id.

    ``received`` is (receive time, correlation id) in arrival order; records of other runs are ignored.
    Signals in the first ``drop_first`` of the run (by publish time) are dropped as warm-up.
    """
    first: dict[str, int] = {}
    for recv, corr in received:
        if corr in sent_ns and corr not in first:
            first[corr] = recv
    order = sorted(sent_ns, key=sent_ns.__getitem__)
    kept = order[int(len(order) * drop_first) :]
    return [(first[s] - sent_ns[s]) / 1e6 for s in kept if s in first]


@dataclass(frozen=True, slots=True)
class Decision:
    """A risk decision as consumed: partition offset (the agent's order), receive time, verdict, reasons."""

    offset: int
    recv_ns: int
    verdict: str
    reasons: tuple[str, ...]

    @property
    def killed(self) -> bool:
        return KILL_REASON in self.reasons

    @property
    def passed(self) -> bool:
        """An order went out (approved or reduced): what a kill switch must stop."""
        return self.verdict != "rejected"


@dataclass(frozen=True, slots=True)
class KillTrial:
    """One kill-switch trial judged from the decision stream."""

    latency_ms: float | None  # None: no kill-rejected decision was seen (a state, not a zero)
    approved_in_window: int  # passed after the publish (by receive time), before the block (by offset)
    approved_while_on: int  # passed after the block, received before the off was published: a violation
    rejected_after_release: int  # kill-rejected after a pass that followed the block: a violation


def judge_kill_trial(decisions: list[Decision], on_ns: int, off_ns: int, end_ns: int) -> KillTrial:
    """Judge one trial: kill published at ``on_ns``, released at ``off_ns``; the next trial starts at ``end_ns``.

    Only decisions received in [on_ns, end_ns) belong to the trial, in offset order (the agent's order).
    A decision received before ``off_ns`` was produced before the release was even published, so after
    the block it must be kill-rejected.
    """
    seg = sorted((d for d in decisions if on_ns <= d.recv_ns < end_ns), key=lambda d: d.offset)
    block = next((k for k, d in enumerate(seg) if d.killed), None)
    if block is None:
        return KillTrial(None, sum(d.passed for d in seg), 0, 0)
    after = seg[block:]
    released = next((k for k, d in enumerate(after) if not d.killed), None)
    return KillTrial(
        latency_ms=(seg[block].recv_ns - on_ns) / 1e6,
        approved_in_window=sum(d.passed for d in seg[:block]),
        approved_while_on=sum(d.passed and d.recv_ns < off_ns for d in after),
        rejected_after_release=0 if released is None else sum(d.killed for d in after[released:]),
    )


def paced_times(n: int, rate: float) -> list[float]:
    """Send offsets (s) of a steady ``rate``/s run of ``n`` messages."""
    return [i / rate for i in range(n)]


# ---------------------------------------------------------------------------
# (b), (c): broker plumbing
# ---------------------------------------------------------------------------


class Collector:
    """One consumer for the whole benchmark: (receive ns, partition, offset, JSON) per watched topic.

    Decoded with ``json.loads`` only: the worker's strict codec already checked what it produced, and the
    lighter parse keeps this process (which also paces the publishing) off the critical path.
    """

    def __init__(self, bootstrap: str, namespace: str, topics: tuple[str, ...]) -> None:
        self.names = {physical_name(t, namespace): t for t in topics}
        self.records: dict[str, list[tuple[int, int, int, dict[str, Any]]]] = {t: [] for t in topics}
        #: correlation id -> receive time of its first ``new``/``rejected`` order update (the decision is out)
        self.decided: dict[str, int] = {}
        #: correlation id -> receive time of its first fill
        self.filled: dict[str, int] = {}
        #: symbol -> its decisions in arrival order, and the latest receive time of a pass / a kill rejection
        #: (kept incrementally: scanning every record on each poll would eat the CPU the worker needs)
        self.by_symbol: dict[str, list[Decision]] = {}
        self.last_pass: dict[str, int] = {}
        self.last_kill: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.changed = asyncio.Event()
        self._bootstrap = bootstrap
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *self.names,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.time_ns()
            for tp, msgs in batch.items():
                out = self.records[self.names[tp.topic]]
                for m in msgs:
                    d = json.loads(m.value)
                    out.append((now, m.partition, m.offset, d))
                    name = self.names[tp.topic]
                    if name == "orders.updates" and d["status"] in ("new", "rejected"):
                        self.decided.setdefault(d["correlation_id"], now)
                    elif name == "fills":
                        self.filled.setdefault(d["correlation_id"], now)
                    elif name == "risk.decisions":
                        self._decision(now, m.offset, d)
            if batch:
                self.changed.set()

    def _decision(self, now: int, offset: int, d: dict[str, Any]) -> None:
        dec = Decision(offset, now, d["verdict"], tuple(d["reasons"]))
        self.by_symbol.setdefault(d["symbol"], []).append(dec)
        if dec.passed:
            self.last_pass[d["symbol"]] = now
        if dec.killed:
            self.last_kill[d["symbol"]] = now
        for r in dec.reasons:
            self.reasons[r] = self.reasons.get(r, 0) + 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def correlations(self, topic: str, status: frozenset[str] | None = None) -> list[tuple[int, str]]:
        return [
            (r, d["correlation_id"])
            for r, _, _, d in self.records[topic]
            if status is None or d.get("status") in status
        ]

    def decisions(self, symbol: str) -> list[Decision]:
        return list(self.by_symbol.get(symbol, ()))

    async def wait(self, pred: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if self._task is not None and self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(0.02)


class Pacer:
    """Publishes at a steady rate with ``linger_ms=0`` (no batching delay), acks awaited at the end."""

    def __init__(self, producer: Any, namespace: str) -> None:
        self.producer = producer
        self.namespace = namespace

    async def send(self, rec: Record, topic: str | None = None, timestamp_ms: int | None = None) -> Any:
        name = topic or DEFAULT_TOPIC[type(rec)]
        return await self.producer.send(
            physical_name(name, self.namespace),
            codec_for(type(rec)).encode(rec),
            key=rec.key(),
            timestamp_ms=timestamp_ms,
        )

    async def run(self, n: int, rate: float, make: Any) -> tuple[dict[str, int], float]:
        """Call ``make(i, ts_ns)`` (returns the records to send) ``n`` times at ``rate``/s; achieved rate."""
        sent: dict[str, int] = {}
        futs = []
        start = time.perf_counter()
        for i, offset in enumerate(paced_times(n, rate)):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ts = time.time_ns()
            recs, topic_of = make(i, ts)
            for rec in recs:
                futs.append(await self.send(rec, topic_of(rec)))
            sent[recs[0].event_id] = ts
        elapsed = time.perf_counter() - start
        await asyncio.gather(*futs)
        return sent, (n - 1) / elapsed if n > 1 and elapsed > 0 else float("nan")


class BarFeeder:
    """Publishes signal ``i``'s fill bar as soon as its decision is seen on ``orders.updates``.

    Why not right after the signal: the bar travels on another topic and can overtake the signal, so the
    order would fill one bar late at the other side of the swing (a loss; five in a row halt trading).
    Publishing it after the decision makes the fill deterministic; the time in between is reported
    separately (signal -> decision, bar -> fill). A signal that gave no order (no update) is skipped once a
    later signal's decision is seen.
    """

    def __init__(self, pacer: Pacer, col: Collector, symbol: str) -> None:
        self.pacer, self.col, self.symbol = pacer, col, symbol
        self.signals: list[tuple[int, str, int]] = []  # (i, signal id, publish ns), in publish order
        self.bar_sent: dict[str, int] = {}
        self.done = False
        self._futs: list[Any] = []

    async def run(self) -> None:
        j = 0
        while not (self.done and j >= len(self.signals)):
            self.col.changed.clear()
            while j < len(self.signals):
                i, sid, ts = self.signals[j]
                if sid in self.col.decided:
                    bar = fill_bar(self.symbol, i, ts)
                    self.bar_sent[sid] = time.time_ns()
                    self._futs.append(await self.pacer.send(bar, "market.bars"))
                elif not any(s in self.col.decided for _, s, _ in self.signals[j + 1 : j + 50]):
                    break
                j += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.col.changed.wait(), 0.05)
        await asyncio.gather(*self._futs)


def _topic_of(rec: Record) -> str | None:
    return "market.bars" if isinstance(rec, Bar) else None  # checked bars: what the trading agent reads


async def _control(
    pacer: Pacer, keyring: Keyring, command: ControlCommand, params: dict[str, Any], reason: str
) -> tuple[ControlEvent, int]:
    """Sign and publish one control command; its publish time (taken before the send)."""
    now = time.time_ns()
    ev = new_control_event(
        command=command,
        scope="global",
        target="*",
        params=params,
        reason=reason,
        operator="bench",
        key_id=BENCH_KEY_ID,
        nonce=secrets.token_hex(16),
        ts_event=now,
        ts_init=now,
        expires_at=None,
        keyring=keyring,
    )
    await (await pacer.send(ev))
    return ev, now


async def _broker_baseline(bootstrap: str, rate: int, n: int) -> dict[str, Any]:
    """Signals published -> consumed on one topic nobody else reads, same rate, same pacing."""
    from aiokafka import AIOKafkaProducer

    ns = f"btb{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, namespace=ns)
    col = Collector(bootstrap, ns, ("signals",))
    await col.start()
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await prod.start()
    try:
        sent, achieved = await Pacer(prod, ns).run(
            n, rate, lambda i, ts: ((bench_signal("BTC/USDT", i, ts),), _topic_of)
        )
        await col.wait(lambda: len(col.records["signals"]) >= n, 60, "the baseline consumer")
        ids = [(r, d["event_id"]) for r, _, _, d in col.records["signals"]]
        lat = first_latencies(sent, ids)
    finally:
        await prod.stop()
        await col.stop()
    return {"achieved_rate_per_s": round(achieved, 1), **percentiles(lat)}


async def _order_latency(pacer: Pacer, col: Collector, mode: str, rate: int, n: int) -> dict[str, Any]:
    """One (b) run at ``rate`` signals/s.

    ``paired``: each signal's fill bar follows its decision at once (:class:`BarFeeder`; the order fills,
    the book stays small): signal -> first order update, signal -> fill, bar -> fill. ``decision``:
    signals only: signal -> first order update; its orders stay in flight, so these runs go last.
    """
    symbol = PHASE_SYMBOLS[f"{mode}_{rate}"]
    feeder = BarFeeder(pacer, col, symbol) if mode == "paired" else None
    feeding = asyncio.create_task(feeder.run()) if feeder is not None else None

    def make(i: int, ts: int) -> tuple[tuple[Record, ...], Any]:
        sig = bench_signal(symbol, i, ts)
        if feeder is not None:
            feeder.signals.append((i, sig.event_id, ts))
        return (sig,), _topic_of

    try:
        sent, achieved = await pacer.run(n, rate, make)
    finally:
        if feeder is not None and feeding is not None:
            feeder.done = True
            await asyncio.wait_for(feeding, 180)
    first_send = min(sent.values())
    t_sent = time.perf_counter()
    out: dict[str, Any] = {"symbol": symbol, "signals": n, "achieved_rate_per_s": round(achieved, 1)}
    kinds: dict[str, tuple[str, frozenset[str] | None]] = {
        "first_update": ("orders.updates", frozenset({"new", "rejected"}))
    }
    if mode == "paired":
        kinds["fill"] = ("fills", None)
    for name, (topic, status) in kinds.items():

        def got(topic: str = topic, status: frozenset[str] | None = status) -> list[tuple[int, str]]:
            return col.correlations(topic, status)

        index = col.decided if name == "first_update" else col.filled
        matched = await _wait_matched(lambda ix=index: sum(1 for sid in sent if sid in ix), n, stall_s=15.0)
        recs = [(r, c) for r, c in got() if c in sent]
        last = max((r for r, _ in recs), default=first_send)
        out[f"signal_to_{name}"] = {
            **percentiles(first_latencies(sent, got())),
            "signals_without_record": n - matched,
            # signals whose record arrived, per second from the first publish to the last record
            "agent_throughput_per_s": round(matched / ((last - first_send) / 1e9), 1) if last > first_send else None,
        }
    if feeder is not None:
        out["bar_to_fill"] = percentiles(first_latencies(feeder.bar_sent, col.correlations("fills")))
    out["drain_after_last_send_s"] = round(time.perf_counter() - t_sent, 2)
    verdicts: dict[str, int] = {}
    for _, _, _, d in col.records["risk.decisions"]:
        if d["correlation_id"] in sent:
            verdicts[d["verdict"]] = verdicts.get(d["verdict"], 0) + 1
    out["verdicts"] = verdicts
    return out


async def _drain(pacer: Pacer, col: Collector, n: int, worker_pid: int) -> dict[str, Any]:
    """Capacity: ``n`` signals, each followed by its fill bar, published at once (as a backlog), then the
    time until the agent has applied every one of them (the last bar's ``portfolio.state`` is out).

    Broker timestamps 1 ms apart, signal before its bar, so the agent's arrival-order merge applies them
    alternately; a fetch that runs ahead on one topic shifts pairs by a bar, the order then fills on the
    other side of the swing (a loss), and once the account's drawdown reaches the strategy's flat tier
    the rest of the signals are held flat (``hold``): fills and verdicts are reported beside the rate,
    which counts inputs applied, not orders. Also the worker's CPU seconds over the run: signals per CPU
    second is the agent's capacity on one core, whatever the rest of the machine does. Runs last: a
    drawdown reached here would make later phases measure held signals.
    """
    symbol = PHASE_SYMBOLS["drain"]
    t0_ms = time.time_ns() // 1_000_000
    sent: set[str] = set()
    bar_ids: set[str] = set()
    futs = []
    cpu0, start = cpu_seconds(worker_pid), time.perf_counter()
    first_send = time.time_ns()
    for i in range(n):
        ts_ms = t0_ms + 2 * i
        sig = bench_signal(symbol, i, ts_ms * 1_000_000)
        bar = fill_bar(symbol, i, ts_ms * 1_000_000)
        futs.append(await pacer.send(sig, timestamp_ms=ts_ms))
        futs.append(await pacer.send(bar, "market.bars", timestamp_ms=ts_ms + 1))
        sent.add(sig.event_id)
        bar_ids.add(bar.event_id)
    await asyncio.gather(*futs)
    published_s = time.perf_counter() - start
    applied_at: dict[str, int] = {}
    seen = 0

    def bars_applied() -> int:
        nonlocal seen
        snaps = col.records["portfolio.state"]
        for r, _, _, d in snaps[seen:]:
            if d["as_of_event_id"] in bar_ids:
                applied_at.setdefault(d["as_of_event_id"], r)
        seen = len(snaps)
        return len(applied_at)

    applied = await _wait_matched(bars_applied, n, stall_s=15.0)
    cpu = cpu_seconds(worker_pid) - cpu0
    last = max(applied_at.values(), default=first_send)
    elapsed = (last - first_send) / 1e9
    verdicts: dict[str, int] = {}
    for _, _, _, d in col.records["risk.decisions"]:
        if d["correlation_id"] in sent:
            verdicts[d["verdict"]] = verdicts.get(d["verdict"], 0) + 1
    return {
        "symbol": symbol,
        "signals": n,
        "published_in_s": round(published_s, 2),
        "bars_applied": applied,
        "seconds_to_last_input": round(elapsed, 2),
        "signals_per_s": round(n / elapsed, 1) if elapsed > 0 and applied == n else None,
        "worker_cpu_s": round(cpu, 2),
        "signals_per_worker_cpu_s": round(n / cpu, 1) if cpu > 0 and applied == n else None,
        "filled": sum(1 for sid in sent if sid in col.filled),
        "verdicts": verdicts,
    }


async def _wait_matched(count: Any, n: int, stall_s: float) -> int:
    """Wait until ``count()`` reaches ``n`` or stops growing for ``stall_s``; the last count.

    A signal whose record never comes is reported (``signals_without_record``), not waited for forever.
    """
    last, since = -1, time.monotonic()
    while True:
        c = count()
        if c >= n:
            return int(c)
        if c != last:
            last, since = c, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return int(c)
        await asyncio.sleep(0.1)


async def _kill_trials(pacer: Pacer, col: Collector, keyring: Keyring, trials: int, rate: int) -> dict[str, Any]:
    """(c): signals stream at ``rate``/s in the background while kill on/off alternates ``trials`` times."""
    symbol = PHASE_SYMBOLS["kill"]
    stop = asyncio.Event()

    async def stream() -> None:
        i = 0
        start = time.perf_counter()
        while not stop.is_set():
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ts = time.time_ns()
            sig = bench_signal(symbol, i, ts)
            feeder.signals.append((i, sig.event_id, ts))
            await pacer.send(sig)
            i += 1

    def approved_since(t: int) -> bool:
        return col.last_pass.get(symbol, 0) >= t

    def killed_since(t: int) -> bool:
        return col.last_kill.get(symbol, 0) >= t

    feeder = BarFeeder(pacer, col, symbol)  # orders fill: the checkpointed book stays small
    feeding = asyncio.create_task(feeder.run())
    streamer = asyncio.create_task(stream())
    marks: list[tuple[int, int]] = []
    aborted: str | None = None
    try:
        t0 = time.time_ns()
        await col.wait(lambda: approved_since(t0), 60, "approved decisions before the first kill")
        for k in range(trials):
            _, on_ns = await _control(pacer, keyring, ControlCommand.KILL_SWITCH_ON, {}, f"bench trial {k}")
            try:
                await col.wait(lambda t=on_ns: killed_since(t), 30, f"the kill switch of trial {k} to block")
                await asyncio.sleep(0.3)  # keep blocking a while: the no-approval check needs decisions here
            finally:  # never leave the switch on, even when the trial is abandoned
                _, off_ns = await _control(pacer, keyring, ControlCommand.KILL_SWITCH_OFF, {}, f"bench trial {k}")
                marks.append((on_ns, off_ns))
            await col.wait(lambda t=off_ns: approved_since(t), 30, f"approvals after trial {k}'s release")
            await asyncio.sleep(0.2)
    except RuntimeError as exc:  # a backlogged agent: report what was measured, and why it stopped
        aborted = str(exc)
    finally:
        stop.set()
        await streamer
        feeder.done = True
        await asyncio.wait_for(feeding, 180)
    decisions = col.decisions(symbol)
    ends = [m[0] for m in marks[1:]] + [time.time_ns() + 1]
    judged = [judge_kill_trial(decisions, on, off, end) for (on, off), end in zip(marks, ends, strict=True)]
    lat = [j.latency_ms for j in judged if j.latency_ms is not None]
    stats = percentiles(lat)
    p99 = stats["p99_ms"]
    return {
        "symbol": symbol,
        "signal_rate_per_s": rate,
        "trials_planned": trials,
        "aborted": aborted,
        "trials": len(judged),
        "blocked_trials": len(lat),
        **stats,
        "target_p99_ms": 1000.0,
        "target_met": None if p99 is None else p99 < 1000.0,
        "approved_in_window_total": sum(j.approved_in_window for j in judged),
        "approved_while_on_total": sum(j.approved_while_on for j in judged),
        "rejected_after_release_total": sum(j.rejected_after_release for j in judged),
        "latencies_ms": [round(x, 2) for x in lat],
    }


async def _agent_benchmarks(bootstrap: str, dsn: str, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Start one trading worker, warm it up, run (b) at 100/s and 1,000/s and (c); stop it."""
    from aiokafka import AIOKafkaProducer

    ns = f"btr{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, namespace=ns)
    env = {
        **os.environ,
        "TRADEFLOW_DSN": dsn,
        f"TRADEFLOW_CONTROL_KEY_{BENCH_KEY_ID.upper()}": secrets.token_hex(32),
        "TRADEFLOW_CONTROL_SIGNING_KEY_ID": BENCH_KEY_ID,
        "TRADEFLOW_TRADING_TIMEFRAMES": "1m",
        "TRADEFLOW_TRADING_SYMBOLS": ",".join(PHASE_SYMBOLS.values()),
        "TRADEFLOW_TRADING_ACCOUNT": "bench",
        **BENCH_DRAWDOWN_TIERS,
    }
    keyring = load_keyring(env)
    n = {100: 300, 1000: 1000, 3000: 3000} if quick else {100: 600, 1000: 3000, 3000: 9000}
    n_drain = 5_000 if quick else 20_000
    worker = ChildProcess(
        "bench-trading-worker",
        worker_argv(bootstrap, "trading", namespace=ns, dsn=dsn),
        log_dir / "bench-trading-worker.log",
        env=env,
        append=False,
    ).start()
    col = Collector(bootstrap, ns, ("orders.updates", "fills", "risk.decisions", "portfolio.state", "control.audit"))
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    out: dict[str, Any] = {}
    try:
        await col.start()
        await prod.start()
        pacer = Pacer(prod, ns)
        t_start = time.perf_counter()
        for name, value in BENCH_LIMITS.items():
            await _control(
                pacer, keyring, ControlCommand.SET_LIMIT, {"name": name, "value": value}, f"benchmark: {name} lifted"
            )
        warm = time.time_ns() // NS_PER_MINUTE * NS_PER_MINUTE - 2 * NS_PER_MINUTE
        for symbol in PHASE_SYMBOLS.values():
            await pacer.send(bench_bar(symbol, warm, BASE_PRICE[symbol]), "market.bars")
        await col.wait(
            lambda: len(col.records["portfolio.state"]) >= len(PHASE_SYMBOLS),
            120,
            "the trading worker to mark every symbol (start-up)",
        )
        await col.wait(lambda: len(col.records["control.audit"]) >= len(BENCH_LIMITS), 30, "the limits' audits")
        for *_, audit in col.records["control.audit"]:
            if audit["outcome"] != "accepted":
                raise RuntimeError(f"set_limit refused by the worker: {audit['reason']}")
        out["worker_ready_s"] = round(time.perf_counter() - t_start, 1)
        print(f"  trading worker ready after {out['worker_ready_s']} s", flush=True)
        # (c) first, on an idle agent: a backlog left by the 1,000/s runs would be measured instead.
        # 100 signals/s (+100 bars/s): below the agent's capacity (~800 signals/s paired on 2 cores), so
        # the latency is the command's, not a backlog's that grows with the run's length
        out["kill"] = await _kill_trials(pacer, col, keyring, 5 if quick else 20, KILL_SIGNAL_RATE)
        print(f"  kill: {json.dumps({k: v for k, v in out['kill'].items() if k != 'latencies_ms'})}", flush=True)
        for rate in PAIRED_RATES:
            out[f"{rate}_per_s"] = {
                "paired": await _order_latency(pacer, col, "paired", rate, n[rate]),
                "baseline_broker_only": await _broker_baseline(bootstrap, rate, n[rate]),
            }
            print(f"  @{rate}/s: {json.dumps(out[f'{rate}_per_s'])}", flush=True)
        for rate in (100, 1000):  # last: their orders never fill and stay in the checkpointed state
            out[f"{rate}_per_s"]["signals_only"] = await _order_latency(pacer, col, "decision", rate, n[rate])
            print(f"  @{rate}/s signals only: {json.dumps(out[f'{rate}_per_s']['signals_only'])}", flush=True)
        assert worker.popen is not None
        out["drain"] = await _drain(pacer, col, n_drain, worker.popen.pid)
        print(f"  drain: {json.dumps(out['drain'])}", flush=True)
        out["risk_reasons_total"] = dict(sorted(col.reasons.items()))  # why decisions were cut or rejected
    finally:
        await prod.stop()
        await col.stop()
        exit_code = worker.stop(timeout=30)
    out["worker_exit_code"] = exit_code
    return out


def _broker_part(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Embedded broker + PostgreSQL (fresh, migrated) around :func:`_agent_benchmarks`."""
    from ops.embedded.broker import EmbeddedBroker
    from ops.embedded.postgres import EmbeddedPostgres
    from storage.migrate import migrate_dsn

    # persistent=True: fsync on, so the per-batch checkpoint costs what it costs in production (temp dir)
    with (
        EmbeddedBroker(log_path=out_dir / "bench-trading-tansu.log") as b,
        EmbeddedPostgres(persistent=True, data_dir=None) as pg,
    ):
        asyncio.run(migrate_dsn(pg.dsn))
        return asyncio.run(_agent_benchmarks(b.bootstrap, pg.dsn, quick, out_dir))


def _ms(v: object) -> str:
    return "-" if v is None else f"{v}"


def broker_table(broker: dict[str, Any]) -> list[str]:
    """Human-readable lines for (b) and (c)."""
    lines = [
        f"{'rate/s':>6} {'measure':<34} {'achieved/s':>10} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'no rec':>6} {'agent/s':>8}"
    ]
    for rate in PAIRED_RATES:
        row = broker.get(f"{rate}_per_s")
        if not isinstance(row, dict):
            continue
        cells = [
            (f"{run}: signal->{what}", row[run]["achieved_rate_per_s"], row[run][f"signal_to_{what}"])
            for run, what in (("paired", "first_update"), ("paired", "fill"), ("signals_only", "first_update"))
            if run in row
        ]
        if "paired" in row:
            cells.insert(2, ("paired: bar->fill", row["paired"]["achieved_rate_per_s"], row["paired"]["bar_to_fill"]))
        base = row["baseline_broker_only"]
        cells.append(("broker only (baseline)", base["achieved_rate_per_s"], base))
        for name, achieved, r in cells:
            lines.append(
                f"{rate:>6} {name:<34} {achieved:>10} {r['samples']:>5} "
                f"{_ms(r['p50_ms']):>8} {_ms(r['p95_ms']):>8} {_ms(r['p99_ms']):>8} "
                f"{r.get('signals_without_record', '-'):>6} {r.get('agent_throughput_per_s') or '-':>8}"
            )
    d = broker.get("drain")
    if isinstance(d, dict):
        lines.append(
            f"backlog of {d['signals']} signals + fill bars: all applied in {d['seconds_to_last_input']} s = "
            f"{d['signals_per_s']} signals/s ({d['bars_applied']} bars applied); worker {d['worker_cpu_s']} CPU-s = "
            f"{d['signals_per_worker_cpu_s']} signals per CPU-s; {d['filled']} filled, verdicts {d['verdicts']}"
        )
    k = broker.get("kill")
    if isinstance(k, dict):
        met = {True: "met", False: "NOT met", None: "unknown"}[k["target_met"]]
        lines.append(
            f"kill -> blocked @{k['signal_rate_per_s']}/s signals, {k['blocked_trials']}/{k['trials']} "
            f"trials: p50 {_ms(k['p50_ms'])} ms, p99 {_ms(k['p99_ms'])} ms, max {_ms(k['max_ms'])} ms "
            f"(target p99 < 1000 ms: {met}); orders out in the window {k['approved_in_window_total']}, "
            f"while on {k['approved_while_on_total']}, kill-rejected after release "
            f"{k['rejected_after_release_total']}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tradeflow bench trading", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer intents, signals and kill trials (under 90 s)")
    ap.add_argument("--out", default="artifacts/bench_trading.json", help="JSON result file")
    ap.add_argument("--engine-only", action="store_true", help="only (a) and (d): no broker, PostgreSQL or worker")
    a = ap.parse_args(argv)
    measured = 1_000 if a.quick else 5_000
    result: dict[str, object] = {"repeats": 5, "measured_intents": measured, "risk": []}
    rows = []
    for in_flight in (0, 500, 5_000):
        runs = [_risk_rate(in_flight, measured) for _ in range(5)]
        m = statistics.median(r[0] for r in runs)
        b = statistics.median(r[1] for r in runs)
        row = {
            "in_flight_at_start": in_flight,
            "risk_decisions_per_s_median": round(m),
            "baseline_intent_decode_per_s_median": round(b),
            "ratio": round(m / b, 3),
            "verdicts_last_run": runs[-1][2],
        }
        rows.append(row)
    result["risk"] = rows
    result["checkpoint"] = _checkpoint_cost(100 if a.quick else 400)
    result["signal_path"] = _signal_cost(2_000 if a.quick else 10_000)
    out_dir = Path(a.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if not a.engine_only:
        print("trading agent on the embedded broker ...", flush=True)
        result["broker"] = _broker_part(out_dir, a.quick)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'in flight':>10} {'decisions/s':>12} {'decode/s':>10} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['in_flight_at_start']:>10} {row['risk_decisions_per_s_median']:>12} "
            f"{row['baseline_intent_decode_per_s_median']:>10} {row['ratio']:>6}"
        )
    cp: dict[str, Any] = result["checkpoint"]  # type: ignore[assignment]
    print(
        f"checkpoint after {cp['inputs']} inputs: {cp['state_bytes']} bytes, "
        f"seal {cp['seal_ms_median']} ms, restore {cp['restore_ms_median']} ms"
    )
    sp: dict[str, Any] = result["signal_path"]  # type: ignore[assignment]
    print(
        f"signal path ({sp['signals']} signals): on_signal {sp['on_signal_us_unverified_median']} us unverified, "
        f"{sp['on_signal_us_verified_median']} us verified; verify {sp['verify_us_median']} us, "
        f"decode {sp['signal_decode_us_median']} us"
    )
    if "broker" in result:
        print("\n".join(broker_table(result["broker"])))  # type: ignore[arg-type]
    print(f"written to {a.out}")
    return EXIT_OK
