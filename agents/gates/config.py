"""Gate configuration: every threshold as versioned, hashable data.

Defaults are the ones the replaced system ran with: daily Sharpe >= 1.5, max
drawdown < 0.12 (on every valid run of a 180-day lookback, 20 of them needed),
execution reject rate < 1 % (on real paper/live orders), parity deviation <=
10 % over 7 and 30 days with a 0.02 return floor. Numbers it did not give are
chosen here and explained next to their field (docs/gates.md#gate-configuration).

A threshold can only change through a new config: every
:class:`~topics.records.GateResult` carries the threshold it was judged
against *and* the ``config_hash`` of the whole config, and the CLI stores the
config itself under that hash (table ``gate_configs``), so a result can
never be read against a threshold other than the one that decided it.
Overrides (``tradeflow gates evaluate --set NAME=VALUE``, and the
``TRADEFLOW_GATES_*`` variables read by :meth:`GateConfig.from_env`) go through
:meth:`GateConfig.with_overrides`, which re-validates the whole config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agents.confighash import stable_config_hash
from runtime.env import ConfigError, env_str
from topics.records import Comparator
from topics.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE, NS_PER_SECOND

__all__ = [
    "DEFAULT_HARD_METRICS",
    "ENV_OVERRIDES",
    "EXECUTION_REJECT_METRIC",
    "OVERRIDABLE",
    "VALID_SOURCES",
    "GateConfig",
    "MetricThreshold",
    "parse_duration_ns",
]

#: Every source a backtest run may carry (migration 007); only ``prod`` is prod-like.
VALID_SOURCES: tuple[str, ...] = ("prod", "maintenance", "smoke", "async_test")
_UNITS = {"s": NS_PER_SECOND, "m": NS_PER_MINUTE, "h": NS_PER_HOUR, "d": NS_PER_DAY}


@dataclass(frozen=True, slots=True)
class MetricThreshold:
    """One hard metric: ``value <comparator> threshold`` passes."""

    metric: str
    comparator: Comparator
    threshold: float


#: ``backtest_metrics`` names (symbol ``'*'``, the run total) and their bars. The backtest's
#: simulated ``reject_rate`` is not one: the reject-rate gate reads real execution
#: (``orders.updates``, gate ``execution``); the backtest's stays information in ``backtest_metrics``.
DEFAULT_HARD_METRICS: tuple[MetricThreshold, ...] = (
    MetricThreshold("sharpe_daily", Comparator.GE, 1.5),
    MetricThreshold("max_drawdown", Comparator.LT, 0.12),
)

#: The metric of the execution gate; no hard (backtest) metric may take its name.
EXECUTION_REJECT_METRIC = "reject_rate"

#: Integer fields ``--set`` may change (``*_ns`` also as a duration: ``lookback_ns=90d``).
_INT_FIELDS: tuple[str, ...] = ("parity_min_matched", "min_valid_runs", "lookback_ns", "reject_min_orders")

#: Scalar fields ``--set`` may change, besides the hard-metric thresholds (by metric name).
OVERRIDABLE: tuple[str, ...] = (
    "parity_tolerance",
    "parity_return_floor",
    "parity_min_matched",
    "parity_max_unmatched_fraction",
    "min_valid_runs",
    "lookback_ns",
    "reject_rate_max",
    "reject_min_orders",
)

#: ``TRADEFLOW_GATES_*`` variable -> the field it sets (:meth:`GateConfig.from_env`).
ENV_OVERRIDES: Mapping[str, str] = MappingProxyType(
    {
        "TRADEFLOW_GATES_LOOKBACK": "lookback_ns",
        "TRADEFLOW_GATES_MIN_VALID_RUNS": "min_valid_runs",
        "TRADEFLOW_GATES_REJECT_MIN_ORDERS": "reject_min_orders",
    }
)


def parse_duration_ns(text: str) -> int:
    """``30d`` / ``12h`` / ``90m`` / ``3600s`` -> nanoseconds; ValueError otherwise."""
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError(f"duration must be a positive integer with unit s|m|h|d (e.g. 30d), got {text!r}")
    return int(text[:-1]) * _UNITS[text[-1]]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    """Thresholds and evidence rules of the hard-metric, execution, parity and readiness gates."""

    version: str = "gates-v2"
    #: Runs whose ``finished_at`` lies in ``[now - lookback, now]`` are evidence, and
    #: real orders whose first update lies in ``[now - lookback, now)`` feed the
    #: reject rate: the replaced system's 180 days.
    lookback_ns: int = 180 * NS_PER_DAY
    #: Run sources that feed gates. Only ``prod`` is prod-like; a config that
    #: admits anything else can evaluate but never makes a track ready.
    sources: tuple[str, ...] = ("prod",)
    hard_metrics: tuple[MetricThreshold, ...] = DEFAULT_HARD_METRICS

    # -- parity (backtest vs paper on matched filled orders) ----------------
    parity_windows_ns: tuple[int, ...] = (7 * NS_PER_DAY, 30 * NS_PER_DAY)
    #: Largest relative deviation that passes (the replaced system's 10 %).
    parity_tolerance: float = 0.10
    #: Denominator floor as a *return* (cash / the run's initial capital), the
    #: replaced system's 0.02: a backtest whose matched orders net to ~0 (a flat
    #: round trip) must not turn a few cents of gap into an "infinite" deviation.
    #: A return, not a cash amount, so it means the same for a 1k and a 1M account.
    parity_return_floor: float = 0.02
    #: Fewer matched orders per symbol and window is insufficient observation:
    #: 10 is the smallest sample whose deviation is more than one order's noise.
    parity_min_matched: int = 10
    #: Unmatched orders (either side) above this share of all orders fail parity:
    #: a deviation over matched orders says nothing when most orders never matched.
    parity_max_unmatched_fraction: float = 0.10
    #: ``ev_fills.adapter`` of paper fills (the backtest's own fills are in ``backtest_fills``).
    paper_adapter: str = "paper"
    #: How many unmatched client order ids a blocker list names before summarising.
    max_listed: int = 10

    # -- execution reject rate (real paper/live orders) ------------------------
    #: Rejects / orders sent at or above this fail (the replaced system's 1 %).
    reject_rate_max: float = 0.01
    #: Fewer orders sent in the lookback is insufficient observation. 300 = 3 / 1 %:
    #: zero rejects in n orders bounds the true rate below 3/n at 95 % (rule of
    #: three), so below 300 orders even a clean record cannot show "< 1 %".
    reject_min_orders: int = 300
    #: ``OrderUpdate.adapter`` of real execution: a name matches itself and
    #: ``name:...`` (``ccxt`` matches ``ccxt:binance:spot``).
    execution_adapters: tuple[str, ...] = ("paper", "ccxt")

    # -- readiness ------------------------------------------------------------
    #: Valid runs in the lookback, each passing every hard metric, a track needs
    #: before it can be ready: the replaced system's 20 samples.
    min_valid_runs: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "hard_metrics", tuple(self.hard_metrics))
        object.__setattr__(self, "parity_windows_ns", tuple(self.parity_windows_ns))
        object.__setattr__(self, "execution_adapters", tuple(self.execution_adapters))
        problems = self.problems()
        if problems:
            raise ValueError("invalid gate config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invariant the config breaks (empty when valid)."""
        out: list[str] = []
        if type(self.lookback_ns) is not int or self.lookback_ns <= 0:
            out.append("lookback_ns must be a positive integer")
        if not self.sources or any(s not in VALID_SOURCES for s in self.sources):
            out.append(f"sources must be a non-empty subset of {VALID_SOURCES}")
        names = [m.metric for m in self.hard_metrics]
        if not names:
            out.append("hard_metrics must name at least one metric")
        if len(set(names)) != len(names):
            out.append("hard metric names must be unique")
        if EXECUTION_REJECT_METRIC in names:
            out.append(
                f"{EXECUTION_REJECT_METRIC} is judged on real execution (gate execution, reject_rate_max), "
                "not on a backtest's simulated rejects: remove it from hard_metrics"
            )
        for m in self.hard_metrics:
            if not isinstance(m.comparator, Comparator) or not _finite(m.threshold):
                out.append(f"hard metric {m.metric}: needs a Comparator and a finite threshold")
        if not self.parity_windows_ns or any(type(w) is not int or w <= 0 for w in self.parity_windows_ns):
            out.append("parity_windows_ns must be positive integers")
        if len(set(self.parity_windows_ns)) != len(self.parity_windows_ns):
            out.append("parity windows must be distinct")
        if not (_finite(self.parity_tolerance) and self.parity_tolerance >= 0):
            out.append("parity_tolerance must be >= 0")
        if not (_finite(self.parity_return_floor) and self.parity_return_floor > 0):
            out.append("parity_return_floor must be > 0 (it is a denominator)")
        if not (_finite(self.reject_rate_max) and 0 < self.reject_rate_max <= 1):
            out.append("reject_rate_max must be in (0, 1]")
        if not self.execution_adapters or any(not a or not isinstance(a, str) for a in self.execution_adapters):
            out.append("execution_adapters must name at least one adapter")
        if not (_finite(self.parity_max_unmatched_fraction) and 0 <= self.parity_max_unmatched_fraction <= 1):
            out.append("parity_max_unmatched_fraction must be in [0, 1]")
        for name in ("parity_min_matched", "min_valid_runs", "max_listed", "reject_min_orders"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                out.append(f"{name} must be an integer >= 1")
        return out

    def config_hash(self) -> str:
        return stable_config_hash(self)

    @property
    def prod_only(self) -> bool:
        return self.sources == ("prod",)

    def with_overrides(self, overrides: Mapping[str, float | int | str]) -> GateConfig:
        """A new config with ``overrides`` applied; ValueError names any bad one.

        Keys: a hard metric name (its threshold), a field of :data:`OVERRIDABLE`,
        or ``sources`` (comma separated). The result has a new hash.
        """
        fields: dict[str, object] = {}
        thresholds = {m.metric: m for m in self.hard_metrics}
        for name, raw in overrides.items():
            if name in thresholds:
                thresholds[name] = dataclasses.replace(thresholds[name], threshold=_number(name, raw, float))
            elif name in _INT_FIELDS:
                fields[name] = _integer(name, raw)
            elif name in OVERRIDABLE:
                fields[name] = _number(name, raw, float)
            elif name == "sources":
                fields[name] = tuple(s.strip() for s in str(raw).split(",") if s.strip())
            else:
                known = sorted([*thresholds, *OVERRIDABLE, "sources"])
                raise ValueError(f"{name!r} cannot be overridden; one of {known}")
        fields["hard_metrics"] = tuple(thresholds[m.metric] for m in self.hard_metrics)
        return dataclasses.replace(self, **fields)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GateConfig:
        """The default config with the ``TRADEFLOW_GATES_*`` variables of :data:`ENV_OVERRIDES` applied.

        ConfigError (a ValueError) names the variable; CLI flags apply on top (``with_overrides``).
        """
        out = cls()
        for var, name in ENV_OVERRIDES.items():
            raw = env_str(var, "", environ)
            if not raw:
                continue
            try:
                # a duration variable takes a duration only: a bare "30" is no lookback of 30 ns
                out = out.with_overrides({name: parse_duration_ns(raw) if name.endswith("_ns") else raw})
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r}: {exc}") from None
        return out

    def adapter_counts(self, adapter: str) -> bool:
        """Whether orders of ``adapter`` are real execution for the reject rate."""
        return any(adapter == a or adapter.startswith(a + ":") for a in self.execution_adapters)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(name: str, raw: float | int | str) -> int:
    """An integer field; ``*_ns`` fields also take a duration (``90d``)."""
    if name.endswith("_ns") and isinstance(raw, str) and raw.strip()[-1:].lower() in _UNITS:
        return parse_duration_ns(raw)
    return int(_number(name, raw, int))


def _number(name: str, raw: float | int | str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(raw) if not isinstance(raw, str) else (int(raw) if kind is int else float(raw))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return value
