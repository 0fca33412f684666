"""Pre-trade risk: decisions with reasons, kill switches, verified control.

See :mod:`agents.risk.engine` for the rules, :mod:`agents.risk.config` for
the limits and their defaults and :mod:`agents.risk.killswitch` for scopes.
Design: docs/risk.md
"""

from agents.risk.config import SETTABLE_LIMITS, RiskConfig
from agents.risk.engine import ControlReason, MarkOutcome, ProtectiveExit, RiskEngine, RiskReason
from agents.risk.killswitch import KillScope, KillSwitch, KillSwitchBoard, OpeningStatus

__all__ = [
    "SETTABLE_LIMITS",
    "ControlReason",
    "KillScope",
    "KillSwitch",
    "KillSwitchBoard",
    "MarkOutcome",
    "OpeningStatus",
    "ProtectiveExit",
    "RiskConfig",
    "RiskEngine",
    "RiskReason",
]
