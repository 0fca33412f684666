"""Sizing: model signals -> target positions -> order intents (pure engine).

See :mod:`agents.strategy.engine` for the rules and
:mod:`agents.strategy.config` for the versioned parameters.
"""

from agents.strategy.config import StrategyConfig
from agents.strategy.engine import SizingAdjustment, SizingDecision, SizingReason, StrategyEngine

__all__ = ["SizingAdjustment", "SizingDecision", "SizingReason", "StrategyConfig", "StrategyEngine"]
