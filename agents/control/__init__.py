"""Signed operator control events: signing, verification, keyring, audit shape.

See :mod:`agents.control.signing`.
"""

from agents.control.signing import (
    AuditOutcome,
    ControlAudit,
    ControlVerifier,
    Keyring,
    Verdict,
    VerifierConfig,
    VerifyReason,
    load_keyring,
    new_control_event,
    sign_control_event,
)

__all__ = [
    "AuditOutcome",
    "ControlAudit",
    "ControlVerifier",
    "Keyring",
    "Verdict",
    "VerifierConfig",
    "VerifyReason",
    "load_keyring",
    "new_control_event",
    "sign_control_event",
]
