"""Model rollout governance engine: state per rollout (model_id, symbol) ->
decisions. Pure and synchronous: no I/O, no wall clock, no randomness.

Inputs (one ordered stream, like the trading core): ``models.registry``
events, ``gates.results`` and signed ``control`` commands. Outputs: one
:class:`~topics.records.RolloutDecision` per decision (topic
``governance.audit``), the :class:`~topics.records.ModelRegistryEvent` stage
changes it implies (``models.registry``), and for control commands a
``ControlAudit`` (plus an ``Alert`` when a command failed verification).

Rules: the registry is the source of truth for stages; a rollout has at most one candidate
and one active version, and the subject (candidate, else active) is what gate results judge.
A gate window is decided once, when every required ``gate:metric`` has a result: ``passed``,
``failed``, or ``insufficient_observation`` (breaks a passing streak, keeps the failing
count). ``windows_to_promote`` passing windows move the candidate one step up
(shadow -> canary_10 -> canary_30 -> active); ``windows_to_rollback`` failing windows roll
the subject back and reactivate the previous version. Signed manual commands act only when
verified; a promote may name its target stage (param ``to``): one decision per stage passed, so
the audit trail still has every stage. One clock, moved by every input (registry, gates, control).

Design: docs/rollout.md#governance-engine
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field

from agents.clock import StreamClock
from agents.control.audit import audit_record, rejected_alert
from agents.control.signing import (
    AuditOutcome,
    ControlVerifier,
    Keyring,
    Verdict,
    VerifyReason,
    audit_for,
    compute_signature,
)
from agents.control.signing import ControlAudit as EngineAudit
from agents.governance.config import PROMOTION_LADDER, GovernanceConfig, next_stage
from topics.records import (
    Alert,
    ControlCommand,
    ControlEvent,
    GateResult,
    GateStatus,
    ModelRegistryEvent,
    ModelStage,
    RolloutAction,
    RolloutDecision,
    RolloutTrigger,
)
from topics.schema import Record, event_id_for

__all__ = ["GovernanceEngine", "Reason", "RolloutView", "Step", "track_for"]

CANDIDATE_STAGES = frozenset(PROMOTION_LADDER[:-1])
ROLLOUT_COMMANDS = frozenset({ControlCommand.ROLLOUT_PROMOTE, ControlCommand.ROLLOUT_ROLLBACK})
SYSTEM_ACTOR = "governance"


class Reason:
    """Stable reason codes (audit ``reason`` prefixes, metric labels)."""

    PROMOTED = "windows_passed"
    ROLLED_BACK = "windows_failed"
    PASSING = "passing_window"
    FAILING = "failing_window"
    INSUFFICIENT = "insufficient_observation"
    MONITORING = "active_monitoring"
    APPLIED = "applied"
    NOT_FOR_GOVERNANCE = "not_for_governance"
    INVALID_PARAMS = "invalid_params"
    UNKNOWN_VERSION = "unknown_version"
    NO_NEXT_STAGE = "no_next_stage"
    TARGET_NOT_ABOVE = "target_not_above"
    CANDIDATE_IN_ROLLOUT = "candidate_in_rollout"
    NOT_IN_ROLLOUT = "not_in_rollout"


def track_for(model_id: str, symbol: str | None = None) -> str:
    """The gate ``track`` addressing a model (every symbol) or one symbol's rollout."""
    return model_id if symbol is None else f"{model_id}@{symbol}"


# ---------------------------------------------------------------------------
# State and output
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Rollout:
    model_id: str
    symbol: str
    active: str | None = None
    #: The version a rollback restores when the subject is the active version.
    previous_active: str | None = None
    candidate: str | None = None
    candidate_stage: ModelStage | None = None
    passing: int = 0
    failing: int = 0
    #: Windows ending at or before this are not evidence (decided, or before the stage began).
    floor_ns: int = 0
    pending: dict[int, dict[tuple[str, str], GateResult]] = field(default_factory=dict)

    def subject(self) -> tuple[str, ModelStage] | None:
        if self.candidate is not None and self.candidate_stage is not None:
            return self.candidate, self.candidate_stage
        if self.active is not None:
            return self.active, ModelStage.ACTIVE
        return None

    def restart(self, floor_ns: int) -> None:
        """A new subject or stage: evidence starts afresh."""
        self.passing = self.failing = 0
        self.floor_ns = max(self.floor_ns, floor_ns)
        self.pending.clear()


@dataclass(frozen=True, slots=True)
class RolloutView:
    """Read-only view of one rollout (status, tests)."""

    model_id: str
    symbol: str
    active: str | None
    previous_active: str | None
    candidate: str | None
    candidate_stage: ModelStage | None
    passing: int
    failing: int
    floor_ns: int


@dataclass(frozen=True, slots=True)
class Step:
    """What one input produced, in publish order."""

    records: tuple[Record, ...] = ()
    decisions: tuple[RolloutDecision, ...] = ()
    audit: EngineAudit | None = None
    #: Why an input could not be governed (for the agent's log), e.g. a registry event without a symbol.
    note: str | None = None


@dataclass(frozen=True, slots=True)
class _Window:
    """A decided gate window."""

    start: int
    end: int
    status: GateStatus
    gates: dict[str, str]
    ids: tuple[str, ...]


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class GovernanceEngine:
    """Rollout state for every (model_id, symbol) and the decisions it takes."""

    def __init__(self, config: GovernanceConfig, keyring: Keyring) -> None:
        self.config = config
        self.clock = StreamClock()
        self._keyring = keyring
        self._verifier = ControlVerifier(keyring, config.verifier)
        self._required = config.requirement_keys()
        self._config_hash = config.config_hash()
        #: Latest registry event per (model_id, version).
        self._versions: dict[tuple[str, str], ModelRegistryEvent] = {}
        self._rollouts: dict[tuple[str, str], _Rollout] = {}
        #: Control event ids handled by an earlier run (see :meth:`restore`).
        self._handled_controls: set[str] = set()

    # -- queries ------------------------------------------------------------------

    def rollout(self, model_id: str, symbol: str) -> RolloutView | None:
        r = self._rollouts.get((model_id, symbol))
        if r is None:
            return None
        return RolloutView(
            r.model_id,
            r.symbol,
            r.active,
            r.previous_active,
            r.candidate,
            r.candidate_stage,
            r.passing,
            r.failing,
            r.floor_ns,
        )

    def rollouts(self) -> Iterator[RolloutView]:
        for model_id, symbol in sorted(self._rollouts):
            view = self.rollout(model_id, symbol)
            if view is not None:
                yield view

    def stage_of(self, model_id: str, version: str) -> ModelStage | None:
        ev = self._versions.get((model_id, version))
        return None if ev is None else ev.stage

    # -- restart ------------------------------------------------------------------

    def restore(self, decision: RolloutDecision) -> None:
        """Take back what an earlier run of this engine decided (its ``governance.audit``).

        Called at start-up after the registry was folded, for every decision in
        topic order: each rollout gets back its window floor and counters, and
        every control command that was handled is remembered, so a gate result
        or a command redelivered after a restart is not counted or applied
        twice (the verifier's nonce cache does not survive a restart).
        """
        self._handled_controls.add(decision.cause_event_id)
        if decision.symbol is None:
            return
        r = self._rollouts.get((decision.model_id, decision.symbol))
        if r is None:
            return
        if decision.window_end is not None:
            r.floor_ns = max(r.floor_ns, decision.window_end)
        elif decision.action is not RolloutAction.REJECTED:
            r.floor_ns = max(r.floor_ns, decision.ts_event)
        subject = r.subject()
        if decision.action is RolloutAction.HOLD and subject is not None and subject[0] == decision.version:
            r.passing, r.failing = decision.passing_windows, decision.failing_windows
        elif decision.action is not RolloutAction.REJECTED and decision.action is not RolloutAction.HOLD:
            r.passing = r.failing = 0
        r.pending.clear()

    # -- registry -----------------------------------------------------------------

    def on_registry(self, ev: ModelRegistryEvent, arrival_ns: int | None = None) -> Step:
        """Fold one registry event (latest per version wins); no output."""
        self.clock.advance(ev.ts_event, arrival_ns)
        key = (ev.model_id, ev.version)
        cur = self._versions.get(key)
        if cur is not None and (cur.ts_event, cur.event_id) >= (ev.ts_event, ev.event_id):
            return Step()
        self._versions[key] = ev
        symbol = _symbol_of(ev)
        if symbol is None:
            return Step(note="registry event without config.symbol: not governed")
        self._sync(self._rollout(ev.model_id, symbol), ev.version, ev.stage, ev.ts_event)
        return Step()

    def _sync(self, r: _Rollout, version: str, stage: ModelStage, ts: int) -> None:
        """Bring the rollout in line with a version's stage as the registry says."""
        if stage in CANDIDATE_STAGES:
            if r.candidate == version and r.candidate_stage is stage:
                return  # our own change coming back, or a duplicate
            if r.active == version:
                r.active, r.previous_active = r.previous_active, None
            r.candidate, r.candidate_stage = version, stage
            r.restart(ts)
        elif stage is ModelStage.ACTIVE:
            if r.active == version:
                return
            if r.active is not None:
                r.previous_active = r.active
            r.active = version
            if r.candidate == version:
                r.candidate = r.candidate_stage = None
            r.restart(ts)
        else:
            if r.candidate == version:
                r.candidate = r.candidate_stage = None
                r.restart(ts)
            if r.active == version:
                r.active = None
                r.restart(ts)

    def _rollout(self, model_id: str, symbol: str) -> _Rollout:
        r = self._rollouts.get((model_id, symbol))
        if r is None:
            r = self._rollouts[(model_id, symbol)] = _Rollout(model_id, symbol)
        return r

    # -- gates --------------------------------------------------------------------

    def on_gate(self, result: GateResult, arrival_ns: int | None = None) -> Step:
        """Add one gate result to its window; decide every window it completes."""
        self.clock.advance(result.ts_event, arrival_ns)
        req = (result.gate, result.metric)
        if req not in self._required:
            return Step()
        out: list[Record] = []
        decisions: list[RolloutDecision] = []
        for r in self._addressed(result.track):
            window = self._collect(r, req, result)
            if window is not None:
                decision, registry = self._decide_window(r, window, result)
                decisions.append(decision)
                out.append(decision)
                out.extend(registry)
        return Step(records=tuple(out), decisions=tuple(decisions))

    def _addressed(self, track: str) -> list[_Rollout]:
        model_id, at, symbol = track.partition("@")
        if at:
            r = self._rollouts.get((model_id, symbol))
            return [] if r is None else [r]
        return [self._rollouts[k] for k in sorted(self._rollouts) if k[0] == model_id]

    def _collect(self, r: _Rollout, req: tuple[str, str], result: GateResult) -> _Window | None:
        if r.subject() is None or result.window_end <= r.floor_ns:
            return None  # nothing to judge, or a window already counted / from before this stage
        pending = r.pending.setdefault(result.window_end, {})
        pending[req] = result
        while len(r.pending) > self.config.max_pending_windows:
            del r.pending[min(r.pending)]
        if result.window_end not in r.pending or set(pending) != self._required:
            return None
        results = [pending[k] for k in sorted(self._required)]
        r.floor_ns = result.window_end
        for end in [e for e in r.pending if e <= result.window_end]:
            del r.pending[end]
        statuses = {x.status for x in results}
        if GateStatus.FAILED in statuses:
            status = GateStatus.FAILED
        elif GateStatus.INSUFFICIENT_OBSERVATION in statuses:
            status = GateStatus.INSUFFICIENT_OBSERVATION
        else:
            status = GateStatus.PASSED
        return _Window(
            start=min(x.window_start for x in results),
            end=result.window_end,
            status=status,
            gates={f"{x.gate}:{x.metric}": x.status.value for x in results},
            ids=tuple(x.event_id for x in results),
        )

    def _decide_window(
        self, r: _Rollout, w: _Window, cause: GateResult
    ) -> tuple[RolloutDecision, list[ModelRegistryEvent]]:
        subject = r.subject()
        assert subject is not None  # _collect checked it
        version, stage = subject
        cfg = self.config
        to_stage, action = stage, RolloutAction.HOLD
        if w.status is GateStatus.PASSED:
            r.passing += 1
            r.failing = 0
            reason = f"{Reason.PASSING}: {r.passing}/{cfg.windows_to_promote} consecutive passing windows"
        elif w.status is GateStatus.FAILED:
            r.failing += 1
            r.passing = 0
            failed = sorted(k for k, v in w.gates.items() if v == GateStatus.FAILED.value)
            reason = (
                f"{Reason.FAILING}: {r.failing}/{cfg.windows_to_rollback} consecutive failing windows "
                f"(failed: {', '.join(failed)})"
            )
        else:
            r.passing = 0
            insufficient = sorted(k for k, v in w.gates.items() if v == GateStatus.INSUFFICIENT_OBSERVATION.value)
            reason = (
                f"{Reason.INSUFFICIENT}: {', '.join(insufficient)}; neither advances nor counts as a failure "
                f"(failing windows stay {r.failing}/{cfg.windows_to_rollback})"
            )
        passing, failing = r.passing, r.failing
        if r.failing >= cfg.windows_to_rollback:
            action, to_stage = RolloutAction.ROLLBACK, ModelStage.ROLLED_BACK
            reason = f"{Reason.ROLLED_BACK}: {r.failing} consecutive failing windows >= {cfg.windows_to_rollback}"
        elif r.passing >= cfg.windows_to_promote and version == r.candidate:
            nxt = next_stage(stage)
            assert nxt is not None  # a candidate is below active
            action, to_stage = RolloutAction.PROMOTE, nxt
            reason = f"{Reason.PROMOTED}: {r.passing} consecutive passing windows >= {cfg.windows_to_promote}"
        elif version != r.candidate and w.status is GateStatus.PASSED:
            reason = f"{Reason.MONITORING}: {reason}"
        now = self.clock.now_ns()
        decision_id = event_id_for(
            RolloutDecision.KIND, r.model_id, r.symbol, version, RolloutTrigger.GATES.value, cause.event_id
        )
        registry, restored = self._transition(r, version, stage, to_stage, decision_id, now)
        decision = RolloutDecision.new(
            event_id=decision_id,
            ts_init=now,
            ts_event=now,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            model_id=r.model_id,
            version=version,
            symbol=r.symbol,
            from_stage=stage,
            to_stage=to_stage,
            action=action,
            trigger=RolloutTrigger.GATES,
            window_start=w.start,
            window_end=w.end,
            window_status=w.status,
            gates=w.gates,
            gate_result_ids=w.ids,
            passing_windows=passing,
            failing_windows=failing,
            windows_to_promote=cfg.windows_to_promote,
            windows_to_rollback=cfg.windows_to_rollback,
            config_hash=self._config_hash,
            actor=SYSTEM_ACTOR,
            reason=reason,
            restored_version=restored,
            cause_event_id=cause.event_id,
        )
        return decision, registry

    # -- transitions --------------------------------------------------------------

    def _transition(
        self, r: _Rollout, version: str, stage: ModelStage, to_stage: ModelStage, decision_id: str, now: int
    ) -> tuple[list[ModelRegistryEvent], str | None]:
        """Apply a stage change to the state; the registry events announcing it and the restored version."""
        if to_stage is stage:
            return [], None
        out = [self._registry_event(r.model_id, version, to_stage, decision_id, now)]
        restored: str | None = None
        if to_stage is ModelStage.ROLLED_BACK:
            if version == r.candidate:
                r.candidate = r.candidate_stage = None
                restored = r.active
            else:  # the active version itself degraded
                restored, r.active, r.previous_active = r.previous_active, r.previous_active, None
            if restored is not None:
                out.append(self._registry_event(r.model_id, restored, ModelStage.ACTIVE, decision_id, now))
        elif to_stage is ModelStage.ACTIVE:
            if r.active is not None and r.active != version:
                out.append(self._registry_event(r.model_id, r.active, ModelStage.RETIRED, decision_id, now))
                r.previous_active = r.active
            r.active = version
            r.candidate = r.candidate_stage = None
        else:
            r.candidate, r.candidate_stage = version, to_stage
        r.restart(r.floor_ns)
        return out, restored

    def _registry_event(
        self, model_id: str, version: str, stage: ModelStage, decision_id: str, now: int
    ) -> ModelRegistryEvent:
        """``version``'s latest registry record at ``stage``, stamped after it; folded in at once."""
        last = self._versions[(model_id, version)]
        fields = {
            f.name: getattr(last, f.name) for f in dataclasses.fields(ModelRegistryEvent) if f.name not in _ENVELOPE
        }
        fields["stage"] = stage
        ev = ModelRegistryEvent.new(
            event_id=event_id_for(ModelRegistryEvent.KIND, model_id, version, stage.value, decision_id),
            ts_init=now,
            correlation_id=decision_id,
            causation_id=decision_id,
            ts_event=max(now, last.ts_event + 1),
            **fields,
        )
        self._versions[(model_id, version)] = ev
        return ev

    # -- control ------------------------------------------------------------------

    def on_control(self, event: ControlEvent, arrival_ns: int | None = None) -> Step:
        """Verify one command; apply it if it is a valid rollout command. Always audited."""
        authentic = self._signature_authentic(event)
        before = self.clock.now_ns()
        self.clock.advance(event.ts_event, arrival_ns)
        now = self.clock.now_ns()
        verdict = self._verifier.verify(event, now)
        if verdict.ok and event.event_id in self._handled_controls:
            verdict = Verdict(False, VerifyReason.REPLAYED, "handled before a restart")
        if not authentic:
            self.clock.restore(before)
        is_rollout = event.command in ROLLOUT_COMMANDS
        if not verdict.ok:
            audit = self._audit(event, AuditOutcome.REJECTED, verdict.reason.value, verdict.detail, (), now, alert=True)
            records: list[Record] = [audit_record(audit, event), self._alert(audit)]
            decisions: tuple[RolloutDecision, ...] = ()
            if is_rollout:
                decisions = (self._rejected(event, verdict.reason.value, verdict.detail, now),)
            return Step(records=(*decisions, *records), decisions=decisions, audit=audit)
        if not is_rollout:
            audit = self._audit(
                event, AuditOutcome.IGNORED, Reason.NOT_FOR_GOVERNANCE, "handled by risk", (), now, alert=False
            )
            return Step(records=(audit_record(audit, event),), audit=audit)
        return self._apply_manual(event, now)

    def _apply_manual(self, event: ControlEvent, now: int) -> Step:
        model_id, version = event.params.get("model_id"), event.params.get("version")
        if not isinstance(model_id, str) or not isinstance(version, str) or not model_id or not version:
            return self._refuse(event, Reason.INVALID_PARAMS, "params need string model_id and version", now)
        if event.target != model_id:
            return self._refuse(event, Reason.INVALID_PARAMS, f"target {event.target!r} != model_id {model_id!r}", now)
        to = event.params.get("to")
        if to is not None and (event.command is not ControlCommand.ROLLOUT_PROMOTE or to not in _LADDER_NAMES):
            return self._refuse(
                event, Reason.INVALID_PARAMS, f"'to' names a promote's target stage, one of {list(_LADDER_NAMES)}", now
            )
        known = self._versions.get((model_id, version))
        symbol = None if known is None else _symbol_of(known)
        if known is None or symbol is None:
            return self._refuse(event, Reason.UNKNOWN_VERSION, f"{model_id}@{version} is not in the registry", now)
        r = self._rollout(model_id, symbol)
        stage = known.stage
        if event.command is ControlCommand.ROLLOUT_PROMOTE:
            steps = _promotion_path(stage, None if to is None else ModelStage(to))
            if not steps:
                if next_stage(stage) is None:
                    return self._refuse(
                        event, Reason.NO_NEXT_STAGE, f"{version} is {stage.value}: nothing to promote to", now, r, stage
                    )
                return self._refuse(
                    event, Reason.TARGET_NOT_ABOVE, f"{version} is {stage.value}: {to} is not above it", now, r, stage
                )
            if r.candidate is not None and r.candidate != version:
                return self._refuse(
                    event,
                    Reason.CANDIDATE_IN_ROLLOUT,
                    f"{r.candidate} is in rollout ({r.candidate_stage}); roll it back first",
                    now,
                    r,
                    stage,
                )
            action = RolloutAction.MANUAL_PROMOTE
        else:
            if version not in (r.candidate, r.active):
                return self._refuse(
                    event, Reason.NOT_IN_ROLLOUT, f"{version} is {stage.value}: not in rollout", now, r, stage
                )
            steps, action = [ModelStage.ROLLED_BACK], RolloutAction.MANUAL_ROLLBACK
        # one decision per stage passed, each with its registry events: the trail names every stage
        out: list[Record] = []
        decisions: list[RolloutDecision] = []
        changes: list[str] = []
        reason = f"{Reason.APPLIED}: {event.reason}".rstrip(": ")
        from_stage = stage
        for i, to_stage in enumerate(steps):
            decision_id = event_id_for(
                RolloutDecision.KIND,
                model_id,
                symbol,
                version,
                RolloutTrigger.CONTROL.value,
                event.event_id,
                *(() if i == 0 else (to_stage.value,)),
            )
            registry, restored = self._transition(r, version, from_stage, to_stage, decision_id, now)
            step_reason = reason if len(steps) == 1 else f"{reason} (step {i + 1}/{len(steps)} to {steps[-1].value})"
            decision = self._manual_decision(
                event,
                decision_id,
                model_id,
                version,
                symbol,
                from_stage,
                to_stage,
                action,
                step_reason,
                restored,
                r,
                now,
            )
            decisions.append(decision)
            out += [decision, *registry]
            changes += [f"{ev.version}: -> {ev.stage.value}" for ev in registry]
            from_stage = to_stage
        r.restart(now)  # evidence gathered before an operator's intervention does not carry over
        audit = self._audit(event, AuditOutcome.ACCEPTED, Reason.APPLIED, "", tuple(changes), now, alert=False)
        return Step(records=(*out, audit_record(audit, event)), decisions=tuple(decisions), audit=audit)

    def _refuse(
        self,
        event: ControlEvent,
        reason: str,
        detail: str,
        now: int,
        r: _Rollout | None = None,
        stage: ModelStage | None = None,
    ) -> Step:
        """An authentic command that cannot be applied: audited, nothing changes."""
        audit = self._audit(event, AuditOutcome.REJECTED, reason, detail, (), now, alert=False)
        decision = self._rejected(event, reason, detail, now, r, stage)
        return Step(records=(decision, audit_record(audit, event)), decisions=(decision,), audit=audit)

    def _rejected(
        self,
        event: ControlEvent,
        reason: str,
        detail: str,
        now: int,
        r: _Rollout | None = None,
        stage: ModelStage | None = None,
    ) -> RolloutDecision:
        model_id, version = _claimed(event, "model_id"), _claimed(event, "version")
        symbol = None if r is None else r.symbol
        decision_id = event_id_for(
            RolloutDecision.KIND, model_id, symbol, version, RolloutTrigger.CONTROL.value, _text(event.event_id)
        )
        return self._manual_decision(
            event,
            decision_id,
            model_id,
            version,
            symbol,
            stage,
            stage,
            RolloutAction.REJECTED,
            f"{reason}: {detail}" if detail else reason,
            None,
            r,
            now,
        )

    def _manual_decision(
        self,
        event: ControlEvent,
        decision_id: str,
        model_id: str,
        version: str,
        symbol: str | None,
        from_stage: ModelStage | None,
        to_stage: ModelStage | None,
        action: RolloutAction,
        reason: str,
        restored: str | None,
        r: _Rollout | None,
        now: int,
    ) -> RolloutDecision:
        cfg = self.config
        return RolloutDecision.new(
            event_id=decision_id,
            ts_init=now,
            ts_event=now,
            correlation_id=_text(event.correlation_id),
            causation_id=_text(event.event_id),
            model_id=model_id,
            version=version,
            symbol=symbol,
            from_stage=from_stage,
            to_stage=to_stage,
            action=action,
            trigger=RolloutTrigger.CONTROL,
            window_start=None,
            window_end=None,
            window_status=None,
            gates={},
            gate_result_ids=(),
            passing_windows=0 if r is None else r.passing,
            failing_windows=0 if r is None else r.failing,
            windows_to_promote=cfg.windows_to_promote,
            windows_to_rollback=cfg.windows_to_rollback,
            config_hash=self._config_hash,
            actor=f"operator:{_text(event.operator)}",
            reason=reason[:1000],
            restored_version=restored,
            cause_event_id=_text(event.event_id),
        )

    def _audit(
        self,
        event: ControlEvent,
        outcome: AuditOutcome,
        reason: str,
        detail: str,
        changes: tuple[str, ...],
        now: int,
        *,
        alert: bool,
    ) -> EngineAudit:
        return audit_for(
            event,
            component=self.config.component,
            outcome=outcome,
            reason=reason,
            detail=detail,
            alert=alert,
            changes=changes,
            config_hash_before=self._config_hash,
            config_hash_after=self._config_hash,
            ts_init=now,
        )

    def _alert(self, audit: EngineAudit) -> Alert:
        return rejected_alert(audit, source=self.config.component, ts_event=audit.ts_init)

    def _signature_authentic(self, event: ControlEvent) -> bool:
        secret = self._keyring.secret(event.key_id) if isinstance(event.key_id, str) else None
        if secret is None or not isinstance(event.signature, str) or not event.signature:
            return False
        try:
            return hmac.compare_digest(compute_signature(event, secret), event.signature)
        except Exception:  # a malformed event is simply not authentic
            return False


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

_ENVELOPE = frozenset(f.name for f in dataclasses.fields(Record))


_LADDER_NAMES = tuple(s.value for s in PROMOTION_LADDER)


def _promotion_path(stage: ModelStage, to: ModelStage | None) -> list[ModelStage]:
    """The stages a promote passes, in order: the next one, or every one up to ``to`` (empty: none)."""
    path: list[ModelStage] = []
    current: ModelStage | None = stage
    while current is not None and current is not to:
        current = next_stage(current)
        if current is not None:
            path.append(current)
        if to is None:
            break
    return path if to is None or (path and path[-1] is to) else []


def _symbol_of(ev: ModelRegistryEvent) -> str | None:
    symbol = ev.config.get("symbol")
    return symbol if isinstance(symbol, str) and symbol else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _claimed(event: ControlEvent, name: str) -> str:
    params = event.params if isinstance(event.params, dict) else {}
    value = params.get(name, "")
    return _text(value)
