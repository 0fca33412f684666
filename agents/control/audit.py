"""The ``control.audit`` record of an engine's answer to a control event."""

from __future__ import annotations

from agents.control.signing import ControlAudit as EngineAudit
from topics.records import ControlAudit, ControlEvent, ControlOutcome

__all__ = ["audit_record"]


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
