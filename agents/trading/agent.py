"""Trading agent: ``signals`` + ``market.bars`` + ``control`` + ``models.registry``
-> intents, risk decisions, order updates, fills, portfolio state, control
audits, alerts, for one account.

Thin: decode (or dead-letter), call :class:`~agents.trading.core.TradingCore`,
send what it returns, count it. The order of operations lives in the core,
not here, so live and replay cannot drift apart. One stream of the four
inputs, handled one message at a time; exactly one worker per account (it
crashes unless it owns every input partition). At-least-once in, idempotent
out. Exact restart recovery: :mod:`agents.trading.checkpointer` (each input
is sought to the restored state's position through
:mod:`runtime.faust_adapter`). External execution: each approved order is
awaited through the ccxt adapter (:mod:`agents.trading.venue`) and its
answers go back through the core and into the input journal. Configuration:
:mod:`agents.trading.settings`. The design in full: ``docs/trading_agent.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from agents.confighash import stable_config_hash
from agents.control.signing import Keyring, load_keyring
from agents.trading import metrics as m
from agents.trading.checkpointer import Checkpointer, JournalOrder, LiveState, restore
from agents.trading.core import Step, TradingCore
from agents.trading.settings import TradingSettings
from agents.trading.venue import start_execution
from runtime import faust_adapter
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.exits import EXIT_CONFIG
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from storage.trading import JournalRow
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import Alert, Bar, ControlEvent, ModelRegistryEvent, OrderUpdate, RiskDecision, Severity, Signal
from topics.schema import Record, codec_for

if TYPE_CHECKING:
    from agents.execution.ccxt_live import CcxtExecutionAdapter

__all__ = ["NAME", "TradingWorker", "register"]

log = structlog.get_logger("agents.trading")

NAME = "trading"
BATCH_MAX = 200
BATCH_WAIT_S = 0.005

INPUTS = ("signals", "market.bars", "control", "models.registry")
OUTPUTS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
)
#: Journal partition/offset of an execution answer: it came from the adapter, not from the broker.
NOT_CONSUMED = -1

_Handler = Callable[[TradingCore, Any, int | None], Step]


def register(app: Any, ctx: AgentContext, environ: Mapping[str, str] | None = None) -> Any:
    """Configure (or exit 2), restore the checkpoint (or exit 2/3), start execution (or exit 2/3), wire."""
    env = os.environ if environ is None else environ
    settings, keyring, core = _configure(env)
    config_hash = stable_config_hash(settings.config())
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
        config_hash=config_hash,
    )
    worker = TradingWorker(app, ctx, live, adapter, keyring=keyring, config_hash=config_hash)
    app.on_partitions_assigned.connect(worker.require_every_partition)
    return app.agent(app.topic(*worker.handlers), name=NAME)(crash_worker_on_bug(app, NAME)(worker.run))


def _configure(env: Mapping[str, str]) -> tuple[TradingSettings, Keyring, TradingCore]:
    """Settings, control keyring and a flat core; a refusal logs why (variables and key ids, never
    secrets) and exits 2."""
    try:
        settings = TradingSettings.from_env(env)
        keyring = load_keyring(env)
        core = TradingCore(settings.config(), keyring)
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


def _arrival_ns(msg: Any) -> int | None:
    """Upper bound of the message's arrival: the end of its broker timestamp's millisecond.

    A property of the message, so a re-processed message meets the same
    clock bound as the first time (the wall clock would not).
    """
    ts = msg.timestamp
    if not ts or ts <= 0:
        return None
    return round(float(ts) * 1000) * 1_000_000 + 999_999


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
        )
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
        self.out_counters = {name: RECORDS_OUT.labels(NAME, name) for name in OUTPUTS}
        self.latency = PROCESS_LATENCY.labels(NAME)
        self.submit_seconds = m.EXECUTION_SUBMIT_SECONDS.labels(
            self.account, adapter.name if adapter is not None else "paper"
        )
        #: inputs applied before the last crash but after the checkpoint: re-applied first, in their order
        self.replay = JournalOrder(
            [(ctx.topic(r.topic), r.kafka_partition, r.kafka_offset) for r in live.ahead if r.kafka_offset >= 0]
        )
        live.ahead = []

    # -- partitions ----------------------------------------------------------------------------

    async def require_every_partition(self, sender: Any, assigned: Any = None, **_: Any) -> None:
        """faust's assignment callback, before the fetcher resumes: crash unless every input partition is
        ours (a second instance would split the account's risk state)."""
        owned: dict[str, int] = dict.fromkeys(self.expected, 0)
        for tp in assigned or ():
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
        faust_adapter.after_every_seek(self.app.consumer, self.seek_inputs)  # faust's recovery seeks next

    async def seek_inputs(self, consumer: Any) -> None:
        """Every owned input partition to the in-memory state's position: the committed offsets never
        decide where this agent resumes."""
        self.replay.reset()  # inputs it held back come again
        for tp in sorted(consumer.assignment()):
            if tp.topic in self.expected:
                await faust_adapter.seek(consumer, tp, self.live.position.get((tp.topic, tp.partition), 0))
        log.info("trading_inputs_sought", account=self.account, offsets=self.live.offsets())

    # -- the stream ----------------------------------------------------------------------------

    async def run(self, stream: Any) -> None:
        """The agent body: batches through the core, then checkpoint (now or when idle) and gauges."""
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            async with self.checkpointer.gate:
                await self.apply_batch(events)
                await self.checkpointer.after_batch()
            self.set_gauges()
            self.latency.observe(time.perf_counter() - t0)

    async def apply_batch(self, events: list[Any]) -> None:
        """Each input through the core in order, its journal row written, then its outputs sent.

        After a restart, the inputs journaled after the checkpoint go first, in the journal's order
        (:class:`~agents.trading.checkpointer.JournalOrder`): the outputs already sent are then re-derived
        byte for byte whatever order the broker delivers the topics in.
        """
        live = self.live
        if self.replay.active:
            events = self.replay.order(events)
            if not self.replay.active:
                log.info("trading_journal_replayed", account=self.account, events_applied=live.events)
        outputs: list[Record] = []
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            name, cls, handle = self.handlers[msg.topic]
            if msg.offset < live.position.get(tp, 0):  # a redelivery the state already holds
                m.INPUTS_SKIPPED.labels(self.account, name).inc()
                continue
            rec = await decode_or_dead_letter(self.ctx, NAME, name, cls, event)
            step = None
            if rec is None:
                if name == "control":  # garbage on the control topic may be an attack
                    outputs.append(self.undecodable_control(event))
            else:
                arrival = _arrival_ns(msg)
                step = handle(live.core, rec, arrival)
                self.journal(name, msg, rec.event_id, arrival, step)
                live.events += 1
                outputs += step.records
                self.observe(step)
            live.position[tp] = msg.offset + 1
            self.checkpointer.applied()
            if step is not None and step.to_submit:
                await self.send(outputs)
                outputs = []
                await self.execute(step)
        await self.send(outputs)

    async def send(self, outputs: Sequence[Record]) -> None:
        """The journal rows of the inputs that made ``outputs`` written, then ``outputs`` sent in order."""
        await self.checkpointer.write_ahead()
        for out in outputs:
            await self.publish(out)

    def journal(self, name: str, msg: Any, event_id: str, arrival: int | None, step: Step) -> None:
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
        live = self.live
        for intent, decision, market in step.to_submit:
            t0 = time.perf_counter()
            answers = await self.adapter.submit(intent, decision, market)
            self.submit_seconds.observe(time.perf_counter() - t0)
            for answer in answers:
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
                await self.send(live.core.on_execution(answer).records)

    async def publish(self, rec: Record) -> None:
        """Hand ``rec`` to the producer (in call order, keyed like every producer of its topic).

        Straight to faust's producer, not through ``Topic.send_soon``'s buffer: that per-message path
        was most of the agent's own CPU (a profile at 1,000 signals/s). Delivery is awaited by the next
        checkpoint, which fails (and crashes the worker before its offsets are saved) on any send error.
        """
        name = DEFAULT_TOPIC[type(rec)]
        self.checkpointer.sent(
            name, await faust_adapter.send(self.app, self.out_names[name], rec.key(), codec_for(type(rec)).encode(rec))
        )
        self.out_counters[name].inc()
        if isinstance(rec, RiskDecision):
            m.RISK_VERDICTS.labels(self.account, rec.verdict.value).inc()
            for reason in rec.reasons:
                m.RISK_REASONS.labels(self.account, reason).inc()
        elif isinstance(rec, OrderUpdate):
            m.ORDER_UPDATES.labels(self.account, rec.adapter, rec.status.value, rec.reason or "").inc()

    def undecodable_control(self, event: Any) -> Alert:
        msg = event.message
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
            m.SIZING.labels(account, sizing.reason.value).inc()
        if step.held:
            m.SIGNALS_ALIGNED.labels(account, "held").inc()
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
        await self.app.producer.flush()

    async def crash(self, exc: Exception) -> None:
        """A checkpoint that cannot be written outside the agent body: crash, as the body would."""
        log.critical("agent_crashed", agent=NAME, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        await self.app.crash(exc)
