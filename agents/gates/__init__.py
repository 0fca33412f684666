"""Gates: hard metrics, backtest-vs-paper parity and readiness of a track.

:mod:`agents.gates.engine` decides (pure), :mod:`agents.gates.config` holds
the thresholds (versioned, hashed into every result), :mod:`storage.gates`
loads evidence from and writes details to PostgreSQL, and ``tradeflow gates``
(:mod:`ops.cli.gates`) runs an evaluation and publishes the results.
"""

from agents.gates.config import GateConfig, MetricThreshold
from agents.gates.engine import Evaluation, TrackInputs, evaluate_track

__all__ = ["Evaluation", "GateConfig", "MetricThreshold", "TrackInputs", "evaluate_track"]
