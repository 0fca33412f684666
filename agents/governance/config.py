"""Governance configuration: rollout ladder, window counts, required gates,
capital per stage, as versioned, hashable data.

Every :class:`~topics.records.RolloutDecision` carries ``config_hash()`` and
the two window thresholds it was compared with, so an auditor can tell which
rules promoted or rolled back a model; a threshold can only change through a
new configuration (a new hash), never silently.

Required gates are ``gate:metric`` pairs (a :class:`~topics.records.GateResult`
is identified by its ``gate`` and ``metric``). A window counts as *passing*
only when every required pair has a ``passed`` result for that window; see
:mod:`agents.governance.engine` for the full window rules.

Capital per stage: ``shadow`` 0 (signals never trade), ``canary_10`` 0.1,
``canary_30`` 0.3, ``active`` 1.0 of the capital the strategy would give the
symbol; every other stage 0. :func:`capital_fraction` is what the inference
agent / strategy multiplies target positions by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.confighash import stable_config_hash
from agents.control.signing import VerifierConfig
from runtime.env import env_int, env_str
from topics.records import ModelStage

__all__ = [
    "DEFAULT_REQUIRED_GATES",
    "PROMOTION_LADDER",
    "GovernanceConfig",
    "capital_fraction",
    "next_stage",
]

#: The order a candidate climbs; each step needs ``windows_to_promote`` passing windows.
PROMOTION_LADDER: tuple[ModelStage, ...] = (
    ModelStage.SHADOW,
    ModelStage.CANARY_10,
    ModelStage.CANARY_30,
    ModelStage.ACTIVE,
)

#: The gates of :mod:`agents.gates.engine`, as ``tradeflow gates evaluate``
#: publishes them for a track in one evaluation (same ``window_end``): the two
#: hard metrics of agents.gates.config, the real-execution reject rate and readiness
#: (every gate incl. parity, plus the minimum number of valid runs). Override per deployment with
#: ``TRADEFLOW_GOVERNANCE_REQUIRED_GATES``. A metric may itself contain ``:``
#: (parity's ``relative_deviation_30d:BTC/USDT``): the gate is before the first.
DEFAULT_REQUIRED_GATES: tuple[str, ...] = (
    "hard_metrics:sharpe_daily",
    "hard_metrics:max_drawdown",
    "execution:reject_rate",
    "readiness:valid_runs",
)


def next_stage(stage: ModelStage) -> ModelStage | None:
    """The stage after ``stage`` on the ladder (``registered`` -> ``shadow``); None at the top or off it."""
    if stage is ModelStage.REGISTERED:
        return ModelStage.SHADOW
    if stage in PROMOTION_LADDER[:-1]:
        return PROMOTION_LADDER[PROMOTION_LADDER.index(stage) + 1]
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernanceConfig:
    """One version of the rollout rules; ``config_hash()`` covers every field."""

    version: str = "1"
    component: str = "governance"
    #: Consecutive passing windows needed for one step up the ladder.
    windows_to_promote: int = 3
    #: Consecutive failing windows that roll the model back.
    windows_to_rollback: int = 2
    #: ``gate:metric`` pairs that must all pass for a window to pass.
    required_gates: tuple[str, ...] = DEFAULT_REQUIRED_GATES
    shadow_fraction: float = 0.0
    canary_10_fraction: float = 0.1
    canary_30_fraction: float = 0.3
    active_fraction: float = 1.0
    #: Incomplete windows kept per rollout (older ones are dropped, never decided).
    max_pending_windows: int = 32
    verifier: VerifierConfig = field(default_factory=VerifierConfig)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid governance config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.windows_to_promote < 1:
            out.append("windows_to_promote must be >= 1")
        if self.windows_to_rollback < 1:
            out.append("windows_to_rollback must be >= 1")
        if not self.required_gates:
            out.append("required_gates must name at least one gate:metric")
        for req in self.required_gates:
            gate, sep, metric = req.partition(":")
            if not sep or not gate or not metric:
                out.append(f"required gate {req!r} is not 'gate:metric'")
        if len(set(self.required_gates)) != len(self.required_gates):
            out.append("required_gates has duplicates")
        fractions = (self.shadow_fraction, self.canary_10_fraction, self.canary_30_fraction, self.active_fraction)
        if self.shadow_fraction != 0.0:
            out.append("shadow_fraction must be 0: shadow signals never trade")
        if any(not 0.0 <= f <= 1.0 for f in fractions):
            out.append("stage fractions must be within [0, 1]")
        if list(fractions) != sorted(fractions):
            out.append("stage fractions must not decrease up the ladder")
        if self.max_pending_windows < 1:
            out.append("max_pending_windows must be >= 1")
        return out

    def config_hash(self) -> str:
        return stable_config_hash(self)

    def requirement_keys(self) -> frozenset[tuple[str, str]]:
        """Required gates as (gate, metric) pairs."""
        return frozenset(_pair(r) for r in self.required_gates)

    def capital_fraction(self, stage: ModelStage) -> float:
        """Share of the symbol's capital a version at ``stage`` may trade (0 off the ladder)."""
        return {
            ModelStage.SHADOW: self.shadow_fraction,
            ModelStage.CANARY_10: self.canary_10_fraction,
            ModelStage.CANARY_30: self.canary_30_fraction,
            ModelStage.ACTIVE: self.active_fraction,
        }.get(stage, 0.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GovernanceConfig:
        """``TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE``, ``..._WINDOWS_TO_ROLLBACK``,
        ``..._REQUIRED_GATES`` (comma list of gate:metric); unset means default.
        Raises ValueError (:class:`~runtime.env.ConfigError` for a malformed
        variable) naming the variable."""
        default = cls()
        promote = env_int("TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE", default.windows_to_promote, env)
        rollback = env_int("TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK", default.windows_to_rollback, env)
        # Not env_list: a value of only commas must be refused (no gate), not read as unset.
        gates = env_str("TRADEFLOW_GOVERNANCE_REQUIRED_GATES", "", env)
        required = tuple(g.strip() for g in gates.split(",") if g.strip()) if gates else default.required_gates
        return cls(windows_to_promote=promote, windows_to_rollback=rollback, required_gates=required)


def _pair(requirement: str) -> tuple[str, str]:
    gate, _, metric = requirement.partition(":")
    return gate, metric


_DEFAULT = GovernanceConfig()


def capital_fraction(stage: ModelStage, config: GovernanceConfig | None = None) -> float:
    """Share of capital for ``stage`` under ``config`` (default rules when None).

    The inference agent stamps signals of canary versions; the strategy scales
    its target position by this (see docs/governance.md).
    """
    return (config or _DEFAULT).capital_fraction(stage)
