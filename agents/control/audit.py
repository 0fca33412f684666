"""What an engine's answer to a control event becomes: the ``control.audit`` record, and the
alert when the command was rejected."""

from __future__ import annotations

from agents.control.signing import ControlAudit as EngineAudit
from topics.records import Alert, ControlAudit, ControlEvent, ControlOutcome, Severity

__all__ = ["audit_record", "rejected_alert"]


def audit_record(audit: EngineAudit, event: ControlEvent) -> ControlAudit:
    """The engine's audit outcome as a ``control.audit`` record (event id = audit id)."""
    return ControlAudit.new(
        event_id=audit.audit_id,
        ts_init=audit.ts_init,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        ts_event=audit.ts_event,
        component=audit.component,
        control_event_id=audit.control_event_id,
        command=audit.command,
        scope=audit.scope,
        target=audit.target,
        operator=audit.operator,
        key_id=audit.key_id,
        nonce=audit.nonce,
        outcome=ControlOutcome(audit.outcome.value),
        reason=audit.reason,
        detail=audit.detail,
        alert=audit.alert,
        changes=audit.changes,
        config_hash_before=audit.config_hash_before,
        config_hash_after=audit.config_hash_after,
    )


def rejected_alert(audit: EngineAudit, *, source: str, ts_event: int, labels: dict[str, str] | None = None) -> Alert:
    """A control command that failed verification: an operator must see it.

    The labels repeat what the message *claimed* (key id, operator): useful to find the sender,
    never a proof of identity. ``labels`` adds the engine's own (e.g. the account).
    """
    return Alert.new(
        ts_init=audit.ts_init,
        causation_id=audit.audit_id,
        ts_event=ts_event,
        severity=Severity.ERROR,
        source=source,
        code="control_rejected",
        message=f"control command {audit.command} {audit.scope}:{audit.target} rejected by {audit.component}: "
        f"{audit.reason}" + (f" ({audit.detail})" if audit.detail else ""),
        dedupe_key=audit.audit_id,
        labels={
            **(labels or {}),
            "component": audit.component,
            "reason": audit.reason,
            "command": audit.command,
            "claimed_key_id": audit.key_id,
            "claimed_operator": audit.operator,
            "control_event_id": audit.control_event_id,
        },
    )
