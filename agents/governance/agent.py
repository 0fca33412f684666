"""Governance agent: ``gates.results`` + ``control`` + ``models.registry`` ->
rollout decisions (``governance.audit``), stage changes (``models.registry``),
control audits (``control.audit``) and alerts (``ops.alerts``).

Thin: decode (or dead-letter), call :class:`~agents.governance.engine.GovernanceEngine`,
send what it returns, count it. The three inputs are one faust stream dispatched by topic.
Singleton: the inputs have one partition each; run exactly one group (``--agents
governance``), a second instance is a hot standby. On start it rebuilds the engine from
``models.registry`` and ``governance.audit`` read from the beginning, so a redelivered gate
result or command is neither counted nor applied twice.

Configuration (environment): ``TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE``,
``TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK``, ``TRADEFLOW_GOVERNANCE_REQUIRED_GATES``
(see :mod:`agents.governance.config`) and the control keys
``TRADEFLOW_CONTROL_KEY_<ID>`` / ``_FILE``. Without a control key the agent
refuses to start: manual rollback must always be possible.

Design: docs/rollout.md#governance-agent
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter

from agents.control.signing import load_keyring
from agents.governance.config import GovernanceConfig
from agents.governance.engine import GovernanceEngine, Step
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.broker import client_security
from runtime.exits import EXIT_CONFIG
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.records import (
    Alert,
    ControlEvent,
    GateResult,
    ModelRegistryEvent,
    RolloutDecision,
    Severity,
)
from topics.schema import Record, RecordError, codec_for

__all__ = ["NAME", "register"]

log = structlog.get_logger("agents.governance")

R = TypeVar("R", bound=Record)

NAME = "governance"
BATCH_MAX = 100
BATCH_WAIT_S = 0.005
RESTORE_IDLE_MS = 500

OUTPUTS: dict[type[Record], str] = {
    RolloutDecision: "governance.audit",
    ModelRegistryEvent: "models.registry",
    Alert: "ops.alerts",
}
OUTPUT_TOPICS = ("governance.audit", "models.registry", "control.audit", "ops.alerts")

DECISIONS = Counter(
    "tradeflow_governance_decisions_total", "Rollout decisions by action and trigger", ["action", "trigger"]
)
GOV_CONTROL = Counter(
    "tradeflow_governance_control_total", "Control commands handled by governance", ["outcome", "reason"]
)


def register(app: Any, ctx: AgentContext, environ: Mapping[str, str] | None = None) -> Any:
    env = os.environ if environ is None else environ
    try:
        config = GovernanceConfig.from_env(env)
        keyring = load_keyring(env)
    except ValueError as exc:  # messages name variables and key ids, never secrets
        log.critical("governance_agent_refused_to_start", reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    engine = GovernanceEngine(config, keyring)
    log.info(
        "governance_agent_configured",
        config_hash=config.config_hash(),
        version=config.version,
        windows_to_promote=config.windows_to_promote,
        windows_to_rollback=config.windows_to_rollback,
        required_gates=list(config.required_gates),
        control_key_ids=list(keyring.key_ids),
    )

    handlers: dict[str, tuple[str, type[Record], Callable[[Any, int], Step]]] = {
        ctx.topic("gates.results"): ("gates.results", GateResult, engine.on_gate),
        ctx.topic("control"): ("control", ControlEvent, engine.on_control),
        ctx.topic("models.registry"): ("models.registry", ModelRegistryEvent, engine.on_registry),
    }
    src = app.topic(*handlers)
    outs = {name: app.topic(ctx.topic(name)) for name in OUTPUT_TOPICS}
    out_counters = {name: RECORDS_OUT.labels(NAME, name) for name in OUTPUT_TOPICS}
    latency = PROCESS_LATENCY.labels(NAME)

    def publish(rec: Record) -> None:
        name = OUTPUTS.get(type(rec), "control.audit")
        outs[name].send_soon(key=rec.key(), value=codec_for(type(rec)).encode(rec))
        out_counters[name].inc()

    def observe(step: Step) -> None:
        if step.note is not None:
            log.warning("governance_input_not_governed", note=step.note)
        for d in step.decisions:
            DECISIONS.labels(d.action.value, d.trigger.value).inc()
            emit = log.warning if d.action.value in ("rollback", "manual_rollback", "rejected") else log.info
            emit(
                "rollout_decision",
                model_id=d.model_id,
                version=d.version,
                symbol=d.symbol,
                action=d.action.value,
                from_stage=d.from_stage,
                to_stage=d.to_stage,
                reason=d.reason,
                actor=d.actor,
                window_end=d.window_end,
                decision_id=d.event_id,
            )
        if step.audit is not None:
            GOV_CONTROL.labels(step.audit.outcome.value, step.audit.reason).inc()
            emit = log.error if step.audit.alert else log.info
            emit(
                "control_command",
                component=NAME,
                outcome=step.audit.outcome.value,
                reason=step.audit.reason,
                command=step.audit.command,
                target=step.audit.target,
                claimed_key_id=step.audit.key_id,
                control_event_id=step.audit.control_event_id,
                changes=list(step.audit.changes),
            )

    def undecodable_control(event: Any) -> Alert:
        now = ctx.wall_clock()
        msg = event.message
        return Alert.new(
            ts_init=now,
            ts_event=now,
            severity=Severity.ERROR,
            source=NAME,
            code="control_undecodable",
            message=f"undecodable message on the control topic (partition {msg.partition}, offset {msg.offset}); "
            "see the dead-letter topic",
            dedupe_key=f"{NAME}|{msg.topic}|{msg.partition}|{msg.offset}",
            labels={"component": NAME, "topic": "control"},
        )

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def govern(stream: Any) -> None:
        await _restore(ctx, engine)
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            for event in events:
                name, cls, handle = handlers[event.message.topic]
                rec = await decode_or_dead_letter(ctx, NAME, name, cls, event)
                if rec is None:
                    if name == "control":
                        publish(undecodable_control(event))
                    continue
                step = handle(rec, ctx.wall_clock())
                for out in step.records:
                    publish(out)
                observe(step)
            latency.observe(time.perf_counter() - t0)

    return govern


async def _restore(ctx: AgentContext, engine: GovernanceEngine) -> None:
    """Rebuild the engine from the registry and governance's own audit trail."""
    registry = await _read_all(ctx, "models.registry", ModelRegistryEvent)
    for ev in registry:
        engine.on_registry(ev, ctx.wall_clock())
    decisions = await _read_all(ctx, "governance.audit", RolloutDecision)
    for d in decisions:
        engine.restore(d)
    log.info(
        "governance_state_restored",
        registry_events=len(registry),
        decisions=len(decisions),
        rollouts=sum(1 for _ in engine.rollouts()),
    )


async def _read_all(ctx: AgentContext, topic: str, cls: type[R]) -> list[R]:
    """Every decodable record of ``topic`` from the beginning (invalid ones are the
    stream's to dead-letter; here they are skipped with a warning)."""
    consumer = AIOKafkaConsumer(
        ctx.topic(topic),
        bootstrap_servers=ctx.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        **client_security(),
    )
    await consumer.start()
    codec = codec_for(cls)
    out: list[R] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=RESTORE_IDLE_MS)
            if not batch:
                return out
            for msgs in batch.values():
                for m in msgs:
                    try:
                        out.append(codec.decode(m.value or b""))
                    except RecordError as exc:
                        log.warning("restore_record_invalid", topic=topic, offset=m.offset, reason=exc.reason.value)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
