"""Pre-trade risk: decisions with reasons, kill switches, verified control.

See :mod:`agents.risk.engine` for the rules, :mod:`agents.risk.config` for
the limits and their defaults, :mod:`agents.risk.breaker` for the volatility
breaker and :mod:`agents.risk.killswitch` for scopes.
Design: docs/risk.md
"""

from agents.risk.breaker import VolatilityBreaker
from agents.risk.config import KEYED_LIMITS, SETTABLE_LIMITS, BreakerMode, RiskConfig
from agents.risk.engine import ControlReason, MarkOutcome, ProtectiveExit, RiskEngine, RiskReason
from agents.risk.killswitch import KillScope, KillSwitch, KillSwitchBoard, OpeningStatus

__all__ = [
    "KEYED_LIMITS",
    "SETTABLE_LIMITS",
    "BreakerMode",
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
    "VolatilityBreaker",
]
