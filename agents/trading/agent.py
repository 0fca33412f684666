"""Trading agent: ``signals`` + ``market.bars`` + ``control`` + ``models.registry``
-> intents, risk decisions, order updates, fills, portfolio state, control
audits, alerts and the opening status (``risk.opening``), for one account.

Thin: decode (or dead-letter), call :class:`~agents.trading.core.TradingCore`,
send what it returns, count it. The order of operations lives in the core,
not here, so live and replay cannot drift apart. A getmany loop over the four
inputs (micro-batches, merged in broker-timestamp order, each partition in
offset order; outputs sent as one record batch per partition,
:func:`runtime.batch_agent.send_batches`); exactly one worker per account (it
crashes unless it owns every input partition). At-least-once in, idempotent
out. Exact restart recovery: :mod:`agents.trading.checkpointer` (each input
is sought to the restored state's position on assignment; the group's
committed offsets only follow the checkpoints). External execution: each approved order is
awaited through the ccxt adapter (:mod:`agents.trading.venue`) and its
answers go back through the core and into the input journal; the core's open
orders are reconciled with the venue at start (before any input) and followed
every ``follow_interval_s``. Configuration:
:mod:`agents.trading.settings`. The design in full: ``docs/trading_agent.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from aiokafka.structs import ConsumerRecord

from agents.confighash import stable_config_hash
from agents.control.signing import Keyring, load_keyring
from agents.execution.interface import ExecutionRecord
from agents.signals.signing import signal_verifier_from_env
from agents.trading import metrics as m
from agents.trading.arrival import ArrivalMerge
from agents.trading.checkpointer import Checkpointer, JournalOrder, LiveState, restore
from agents.trading.configuration import effective_configuration
from agents.trading.core import Step, TradingCore
from agents.trading.settings import TradingSettings
from agents.trading.venue import start_execution
from runtime.agent import AgentContext, crash_worker_on_bug
from runtime.batch_agent import Output, batch_consumer, batch_producer, decode_record, group_id, send_batches
from runtime.exits import EXIT_CONFIG
from runtime.metrics import PROCESS_LATENCY, RECORDS_IN, RECORDS_OUT, logical_topic, set_consumer_lag
from storage.trading import JournalRow
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import Alert, Bar, ControlEvent, ModelRegistryEvent, OrderUpdate, RiskDecision, Severity, Signal
from topics.schema import Codec, Record, codec_for

if TYPE_CHECKING:
    from agents.execution.ccxt_live import CcxtExecutionAdapter

__all__ = ["NAME", "TradingWorker", "register"]

log = structlog.get_logger("agents.trading")

NAME = "trading"
BATCH_MAX = 2_000
#: getmany's wait when nothing is buffered (it returns as soon as records are)
IDLE_POLL_MS = 1_000

INPUTS = ("signals", "market.bars", "control", "models.registry")
OUTPUTS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
    "risk.opening",
)
#: Journal partition/offset of an execution answer: it came from the adapter, not from the broker.
NOT_CONSUMED = -1

_Handler = Callable[[TradingCore, Any, int | None], Step]


def register(app: Any, ctx: AgentContext, environ: Mapping[str, str] | None = None) -> TradingWorker:
    """Configure (or exit 2), restore the checkpoint (or exit 2/3), start execution (or exit 2/3), wire."""
    env = os.environ if environ is None else environ
    settings, keyring, core = _configure(env)
    config_hash = stable_config_hash(settings.config())
    assert settings.engines is not None  # from_env loads them
    log.info("trading_configuration", **effective_configuration(settings.config(), settings.engines))
    live = LiveState(core)
    restore(live, ctx.dsn, keyring, config_hash)
    adapter = start_execution(settings, env, live)
    log.info(
        "trading_agent_configured",
        account=settings.account,
        adapter=settings.adapter,
        timeframes=[t.value for t in settings.timeframes],
        symbols=list(live.core.config.risk.allowed_symbols),
        control_key_ids=list(keyring.key_ids),
        signal_key_ids=list(verifier.key_ids) if (verifier := live.core.signal_verifier) else [],
        signals_require_signed=verifier.require_signed if verifier else False,
        config_hash=config_hash,
    )
    if verifier is None:
        log.warning(
            "trading_signals_unverified", hint="set TRADEFLOW_SIGNAL_KEY_<ID>(_FILE): any broker client can trade"
        )
    worker = TradingWorker(app, ctx, live, adapter, keyring=keyring, config_hash=config_hash)
    app.task(crash_worker_on_bug(app, NAME)(worker.run))
    return worker


def _configure(env: Mapping[str, str]) -> tuple[TradingSettings, Keyring, TradingCore]:
    """Settings, control keyring and a flat core; a refusal logs why (variables and key ids, never
    secrets) and exits 2."""
    try:
        settings = TradingSettings.from_env(env)
        keyring = load_keyring(env)
        core = TradingCore(settings.config(), keyring, signal_verifier_from_env(env))
    except ValueError as exc:
        hint = (
            "; TRADEFLOW_CONTROL_KEY_ID defines a key named 'id' (the CLI's key id variable is "
            "TRADEFLOW_CONTROL_SIGNING_KEY_ID)"
            if "TRADEFLOW_CONTROL_KEY_ID" in env
            else ""
        )
        log.critical("trading_agent_refused_to_start", reason=str(exc) + hint)
        raise SystemExit(EXIT_CONFIG) from None
    return settings, keyring, core


def _arrival_ns(rec: ConsumerRecord[bytes, bytes]) -> int | None:
    """Upper bound of the message's arrival: the end of its broker timestamp's millisecond.

    A property of the message, so a re-processed message meets the same
    clock bound as the first time (the wall clock would not).
    """
    ts = rec.timestamp
    if not ts or ts <= 0:
        return None
    return int(ts) * 1_000_000 + 999_999


class TradingWorker:
    """One account's agent: the state it carries (``live``, the checkpointer, the adapter) and one
    method per duty. Batches run under the checkpointer's gate, so a snapshot never falls mid-message."""

    def __init__(
        self,
        app: Any,
        ctx: AgentContext,
        live: LiveState,
        adapter: CcxtExecutionAdapter | None,
        *,
        keyring: Keyring,
        config_hash: str,
    ) -> None:
        self.app = app
        self.ctx = ctx
        self.live = live
        self.adapter = adapter
        self.account = live.core.config.account
        self.checkpointer = Checkpointer(
            live,
            keyring=keyring,
            config_hash=config_hash,
            dsn=ctx.dsn,
            every_batch=adapter is not None,
            flush=self.flush_producer,
            crash=self.crash,
            saved=self.commit_positions,
        )
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.group_id = group_id(app, NAME)
        self.partitions: dict[str, list[int]] = {}  # output topic -> its partitions (send_batches' cache)
        #: outputs of the inputs applied so far in this batch, not yet handed to the producer
        self.outbox: list[Output] = []
        #: physical input topic -> (logical name, record class, core method)
        self.handlers: dict[str, tuple[str, type[Record], _Handler]] = {
            ctx.topic("signals"): ("signals", Signal, TradingCore.on_signal),
            ctx.topic("market.bars"): ("market.bars", Bar, TradingCore.on_bar),
            ctx.topic("control"): ("control", ControlEvent, TradingCore.on_control),
            ctx.topic("models.registry"): ("models.registry", ModelRegistryEvent, TradingCore.on_registry),
        }
        #: physical input topic -> its partition count: the agent must own all of them
        self.expected = {ctx.topic(n): spec(n).partitions for n in INPUTS}
        self.out_names = {name: ctx.topic(name) for name in OUTPUTS}
        self.logical = {physical: name for name, physical in self.out_names.items()}
        self.logical[ctx.topic("deadletter")] = "deadletter"
        self.out_counters = {name: RECORDS_OUT.labels(NAME, name) for name in OUTPUTS}
        self.in_counters = {name: RECORDS_IN.labels(NAME, name) for name in INPUTS}
        self.codecs: dict[str, Codec[Any]] = {name: codec_for(cls) for name, cls, _ in self.handlers.values()}
        self.latency = PROCESS_LATENCY.labels(NAME)
        self.children: dict[tuple[Any, tuple[str, ...]], Any] = {}  # :meth:`child`'s cache
        self.submit_seconds = m.EXECUTION_SUBMIT_SECONDS.labels(
            self.account, adapter.name if adapter is not None else "paper"
        )
        #: inputs applied before the last crash but after the checkpoint: re-applied first, in their order
        self.replay = JournalOrder(
            [(ctx.topic(r.topic), r.kafka_partition, r.kafka_offset) for r in live.ahead if r.kafka_offset >= 0]
        )
        live.ahead = []
        #: monotonic time of the last query of the open orders (external execution)
        self.last_follow = 0.0
        #: inputs merged by broker timestamp across fetches (:mod:`agents.trading.arrival`)
        self.arrival = ArrivalMerge()
        #: input partition -> the offset after the last record fetched from it
        self.fetched: dict[TopicPartition, int] = {}

    # -- partitions ----------------------------------------------------------------------------

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        """The group's assignment: every input partition sought to the in-memory state's position (the
        committed offsets never decide where this agent resumes), then a crash unless every input
        partition is ours (a second instance would split the account's risk state)."""
        consumer = self.consumer
        assert consumer is not None
        self.replay.reset()  # inputs it held back come again
        self.arrival.reset()
        self.fetched.clear()
        for tp in sorted(assigned):
            if tp.topic in self.expected:
                consumer.seek(tp, self.live.position.get((tp.topic, tp.partition), 0))
        owned: dict[str, int] = dict.fromkeys(self.expected, 0)
        for tp in assigned:
            if tp.topic in owned:
                owned[tp.topic] += 1
        missing = {t: f"{owned[t]}/{n}" for t, n in self.expected.items() if owned[t] != n}
        if missing:
            log.critical(
                "trading_agent_not_singleton",
                account=self.account,
                owned=missing,
                hint="exactly one worker may run the trading agent of an account",
            )
            await self.app.crash(RuntimeError(f"trading agent must own every input partition, owns {missing}"))
            return
        log.info("trading_inputs_sought", account=self.account, offsets=self.live.offsets())

    async def commit_positions(self, offsets: Mapping[str, Mapping[int, int]]) -> None:
        """After a checkpoint: its input positions as the group's committed offsets, for lag monitors and
        ``kafka-consumer-groups`` (never where this agent resumes: the checkpoint is). A rebalance in
        progress defers it to the next checkpoint."""
        consumer = self.consumer
        if consumer is None:
            return
        positions = {TopicPartition(t, p): o for t, parts in offsets.items() for p, o in parts.items() if o > 0}
        if not positions:
            return
        try:
            await consumer.commit(positions)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            log.warning("trading_offsets_commit_deferred", account=self.account, error=f"{type(exc).__name__}: {exc}")

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """The agent body (a task of the faust worker; an exception crashes the worker): batches through
        the core, then checkpoint (now or when idle) and gauges."""
        ctx = self.ctx
        self.producer = producer = batch_producer(ctx.bootstrap)
        await producer.start()
        try:
            if self.adapter is not None:
                await self.reconcile()
            self.consumer = consumer = batch_consumer(
                ctx.bootstrap, self.group_id, fetch_wait_ms=self.app.fetch_wait_ms, max_records=BATCH_MAX
            )
            consumer.subscribe(list(self.handlers), listener=_Assignment(self))
            await consumer.start()
            try:
                while True:
                    batch = await consumer.getmany(timeout_ms=IDLE_POLL_MS)
                    if self.follow_due():
                        async with self.checkpointer.gate:
                            await self.follow_orders()
                            await self.checkpointer.after_batch()
                    if not batch and not self.arrival.held:
                        continue
                    t0 = time.perf_counter()
                    for tp, recs in batch.items():
                        self.fetched[tp] = recs[-1].offset + 1
                    records = self.arrival.take(batch, consumer.assignment(), self.behind, time.monotonic())
                    async with self.checkpointer.gate:
                        await self.apply_batch(records)
                        await self.checkpointer.after_batch()
                    self.set_gauges()
                    self.latency.observe(time.perf_counter() - t0)
                    for tp in batch:
                        set_consumer_lag(
                            self.group_id,
                            logical_topic(tp.topic, ctx.namespace),
                            tp.partition,
                            consumer.highwater(tp),
                            self.live.position.get((tp.topic, tp.partition), 0),
                        )
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    def behind(self, tp: TopicPartition) -> bool:
        """Whether the broker holds records of input ``tp`` past those fetched (as of the last fetch)."""
        assert self.consumer is not None
        high: int | None = self.consumer.highwater(tp)
        if high is None:
            return False
        fetched = self.fetched.get(tp, self.live.position.get((tp.topic, tp.partition), 0))
        return fetched < high

    async def apply_batch(self, records: list[Any]) -> None:
        """Each input through the core in order, its journal row written, then its outputs sent.

        After a restart, the inputs journaled after the checkpoint go first, in the journal's order
        (:class:`~agents.trading.checkpointer.JournalOrder`): the outputs already sent are then re-derived
        byte for byte whatever order the broker delivers the topics in.
        """
        live = self.live
        if self.replay.active:
            records = self.replay.order(records)
            if not self.replay.active:
                log.info("trading_journal_replayed", account=self.account, events_applied=live.events)
        for r in records:
            tp = (r.topic, r.partition)
            name, _, handle = self.handlers[r.topic]
            if r.offset < live.position.get(tp, 0):  # a redelivery the state already holds
                self.child(m.INPUTS_SKIPPED, self.account, name).inc()
                continue
            self.in_counters[name].inc()
            rec = decode_record(
                self.codecs[name],
                r,
                consumer=NAME,
                topic=name,
                wall_clock=self.ctx.wall_clock,
                deadletter_topic=self.ctx.topic("deadletter"),
                outputs=self.outbox,
            )
            step = None
            if rec is None:
                if name == "control":  # garbage on the control topic may be an attack
                    self.emit([self.undecodable_control(r)])
            else:
                arrival = _arrival_ns(r)
                step = handle(live.core, rec, arrival)
                self.journal(name, r, rec.event_id, arrival, step)
                live.events += 1
                self.emit(step.records)
                self.emit_opening(rec.event_id)
                self.observe(step)
            live.position[tp] = r.offset + 1
            self.checkpointer.applied()
            if step is not None and step.to_submit:
                await self.send()
                await self.execute(step)
        await self.send()

    def emit(self, records: Sequence[Record]) -> None:
        """``records`` into the outbox (encoded, keyed like every producer of their topic), counted."""
        for rec in records:
            name = DEFAULT_TOPIC[type(rec)]
            self.outbox.append(Output(self.out_names[name], rec.key(), codec_for(type(rec)).encode(rec)))
            self.out_counters[name].inc()
            if isinstance(rec, RiskDecision):
                self.child(m.RISK_VERDICTS, self.account, rec.verdict.value).inc()
                for reason in rec.reasons:
                    self.child(m.RISK_REASONS, self.account, reason).inc()
            elif isinstance(rec, OrderUpdate):
                self.child(m.ORDER_UPDATES, self.account, rec.adapter, rec.status.value, rec.reason or "").inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (``labels`` costs microseconds a call, several times
        per input)."""
        key = (metric, labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found

    def emit_opening(self, cause_event_id: str) -> None:
        """The account's opening status (every blocker, why, until when) when the input changed it."""
        status = self.live.core.opening_update(cause_event_id)
        if status is not None:
            self.emit([status])

    async def send(self) -> None:
        """The journal rows of the inputs that made the outbox written, then the outbox handed to the
        producer (one record batch per partition, in order within each). Delivery is awaited by the next
        checkpoint, which fails (and crashes the worker before its offsets are saved) on any send error."""
        await self.checkpointer.write_ahead()
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, []
        assert self.producer is not None
        for delivery in await send_batches(self.producer, outbox, self.partitions):
            self.checkpointer.sent(self.logical[delivery.topic], delivery)

    def journal(
        self, name: str, msg: ConsumerRecord[bytes, bytes], event_id: str, arrival: int | None, step: Step
    ) -> None:
        """The input's journal row, with what became of it when it is a signal: its sizing reason, or
        ``held``; the held signals the step applied get theirs (``tradeflow status`` reads both)."""
        sizings = step.sizings
        outcome = None
        if name == "signals":
            if step.held:
                outcome = "held"
            elif sizings:  # the input's own sizing comes last, after the held signals the step released
                outcome, sizings = sizings[-1].reason.value, sizings[:-1]
        self.checkpointer.journal(
            JournalRow(self.account, self.live.events, name, msg.partition, msg.offset, event_id, arrival, outcome)
        )
        for released in sizings:
            self.checkpointer.held_outcome(released.signal_event_id, released.reason.value)

    async def execute(self, step: Step) -> None:
        """Send the step's orders; each answer is journaled, applied by the core and published, in order."""
        if not step.to_submit:
            return
        if self.adapter is None:  # pragma: no cover - a paper core never returns orders to submit
            raise RuntimeError("the core returned orders to submit but no external adapter is configured")
        for intent, decision, market in step.to_submit:
            t0 = time.perf_counter()
            answers = await self.adapter.submit(intent, decision, market)
            self.submit_seconds.observe(time.perf_counter() - t0)
            await self.apply_answers(answers)

    async def apply_answers(self, answers: Sequence[ExecutionRecord]) -> int:
        """Each venue answer through the core, journaled and published, in order (one the core already
        applied changes nothing and is neither journaled nor sent again); then the adapter's alerts.
        Returns how many the core applied."""
        live = self.live
        applied = 0
        for answer in answers:
            step = live.core.on_execution(answer)
            if not step.records:
                continue
            self.checkpointer.journal(
                JournalRow(
                    self.account,
                    live.events,
                    DEFAULT_TOPIC[type(answer)],
                    NOT_CONSUMED,
                    NOT_CONSUMED,
                    answer.event_id,
                    None,
                )
            )
            live.events += 1
            applied += 1
            self.emit(step.records)
            self.emit_opening(answer.event_id)
            await self.send()
        if self.adapter is not None:
            alerts = self.adapter.drain_alerts()
            if alerts:
                self.emit(alerts)
                await self.send()
        return applied

    def follow_due(self) -> bool:
        adapter = self.adapter
        return (
            adapter is not None
            and bool(self.live.core.open_orders())
            and time.monotonic() - self.last_follow >= adapter.config.follow_interval_s
        )

    async def follow_orders(self) -> int:
        """Ask the venue about every open order (caller holds the checkpointer's gate); what is new goes
        through :meth:`apply_answers` and into the next checkpoint. Returns the answers applied."""
        adapter = self.adapter
        self.last_follow = time.monotonic()
        if adapter is None:
            return 0
        applied = 0
        for order in self.live.core.open_orders():
            n = await self.apply_answers(await adapter.follow(order))
            if n:
                self.checkpointer.applied()
            applied += n
        return applied

    async def reconcile(self) -> None:
        """At start, before any input: the orders the restored state holds open (placed before a crash
        or a stop) get their status and fills fetched back from the venue and applied once."""
        orders = self.live.core.open_orders()
        async with self.checkpointer.gate:
            applied = await self.follow_orders()
            await self.checkpointer.after_batch()
        left = self.live.core.open_orders()
        log.info(
            "trading_orders_reconciled",
            account=self.account,
            open_before=len(orders),
            answers_applied=applied,
            open_after=len(left),
        )

    def undecodable_control(self, msg: ConsumerRecord[bytes, bytes]) -> Alert:
        arrival = _arrival_ns(msg)
        now = self.ctx.wall_clock() if arrival is None else arrival  # the message's time: same on re-processing
        return Alert.new(
            ts_init=now,
            ts_event=now,
            severity=Severity.ERROR,
            source=self.live.core.config.component,
            code="control_undecodable",
            message=f"undecodable message on the control topic (partition {msg.partition}, offset {msg.offset}); "
            "see the dead-letter topic",
            dedupe_key=f"{msg.topic}|{msg.partition}|{msg.offset}",
            labels={"account": self.account, "topic": "control"},
        )

    # -- counting ------------------------------------------------------------------------------

    def observe(self, step: Step) -> None:
        account = self.account
        for sizing in step.sizings:
            self.child(m.SIZING, account, sizing.reason.value).inc()
        if step.held:
            self.child(m.SIGNALS_ALIGNED, account, "held").inc()
        if step.released_unaligned:
            m.SIGNALS_ALIGNED.labels(account, "released_without_bar").inc(step.released_unaligned)
            log.warning("signals_released_without_bar", account=account, count=step.released_unaligned)
        if step.audit is not None:
            m.CONTROL.labels(account, step.audit.outcome.value, step.audit.reason).inc()
            emit = log.error if step.audit.alert else log.info
            emit(
                "control_command",
                account=account,
                outcome=step.audit.outcome.value,
                reason=step.audit.reason,
                command=step.audit.command,
                scope=step.audit.scope,
                target=step.audit.target,
                claimed_key_id=step.audit.key_id,
                control_event_id=step.audit.control_event_id,
                changes=list(step.audit.changes),
            )
        for switch in step.engaged:
            log.warning("kill_switch_engaged", account=account, switch=switch.describe())
        if step.bar_skipped is not None:
            m.BARS_SKIPPED.labels(account, step.bar_skipped).inc()

    def set_gauges(self) -> None:
        core, account = self.live.core, self.account
        state = core.portfolio_state()
        m.EQUITY.labels(account).set(state.equity)
        m.DRAWDOWN.labels(account).set(state.drawdown)
        m.KILL_SWITCHES.labels(account).set(len(core.active_kill_switches()))
        m.SIGNALS_HELD.labels(account).set(len(core.held_signals()))

    # -- for the checkpointer ------------------------------------------------------------------

    async def flush_producer(self) -> None:
        if self.producer is not None:
            await self.producer.flush()

    async def crash(self, exc: Exception) -> None:
        """A checkpoint that cannot be written outside the agent body: crash, as the body would."""
        log.critical("agent_crashed", agent=NAME, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        await self.app.crash(exc)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: TradingWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to commit: the checkpoint, not the group, holds this agent's position."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.assigned(set(assigned))
