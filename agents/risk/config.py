"""Risk configuration: every pre-trade limit as versioned, hashable data.

Defaults are the ones the replaced system ran with (max drawdown 0.12, warn 0.08, near-limit
0.10, stop-loss 1.8 %, take-profit 3.6 %, intraday halt 5 %, breaker BTC 5 % / ETH 6 %);
values it did not give are explained next to their field. Every decision the engine makes
can be traced to a ``(version, config_hash())`` pair: the hash covers every field, so two
configs that could decide differently never share a hash.

Operators may change a whitelisted subset at runtime with a signed
``set_limit`` control event (:data:`SETTABLE_LIMITS`); the new config is
re-validated as a whole, so a change that breaks an invariant (warn above
near-limit, say) is refused and audited, never half-applied.

Design: docs/risk.md#risk-configuration (defaults and drawdown tiers)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agents.confighash import stable_config_hash
from topics.units import NS_PER_HOUR, NS_PER_SECOND

__all__ = [
    "DEFAULT_ALLOWED_SYMBOLS",
    "DEFAULT_VOL_HOUR_MULTIPLIERS",
    "DRAWDOWN_NEAR_LIMIT",
    "DRAWDOWN_WARN",
    "MAX_DRAWDOWN",
    "SETTABLE_LIMITS",
    "LimitSpec",
    "RiskConfig",
    "base_asset",
    "limit_problems",
    "stable_config_hash",
]

#: Drawdown tiers (docs/risk.md#drawdown-tiers); the strategy's own drawdown-aware caps reuse them
#: so the two engines cannot drift apart silently.
MAX_DRAWDOWN = 0.12
DRAWDOWN_NEAR_LIMIT = 0.10
DRAWDOWN_WARN = 0.08

DEFAULT_ALLOWED_SYMBOLS: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT")

#: Breaker threshold multiplier per UTC hour (index = hour of the bar's open).
#: 13:00-16:59 UTC (US cash open, macro releases) is naturally more volatile,
#: so the same move is less abnormal there: thresholds are 25 % wider.
DEFAULT_VOL_HOUR_MULTIPLIERS: tuple[float, ...] = (1.0,) * 13 + (1.25,) * 4 + (1.0,) * 7


def base_asset(symbol: str) -> str:
    """``BTC/USDT:USDT`` -> ``BTC``: per-asset tables match spot and perp alike."""
    return symbol.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A limit an operator may set at runtime, with the range it must stay in."""

    kind: type[int] | type[float]
    low: float
    high: float
    low_inclusive: bool = False


#: name -> validation of the limits a signed ``set_limit`` may change.
#: Anything not listed (symbol lists, breaker tables, kill-switch policy) is
#: changed by deploying a new config version, not by a control message.
SETTABLE_LIMITS: Mapping[str, LimitSpec] = MappingProxyType(
    {
        "max_drawdown": LimitSpec(float, 0.0, 1.0),
        "drawdown_warn": LimitSpec(float, 0.0, 1.0),
        "drawdown_near_limit": LimitSpec(float, 0.0, 1.0),
        "warn_size_scale": LimitSpec(float, 0.0, 1.0),
        "daily_loss_limit": LimitSpec(float, 0.0, 1.0),
        "consecutive_loss_limit": LimitSpec(int, 1, 1000, low_inclusive=True),
        "stop_loss": LimitSpec(float, 0.0, 1.0),
        "take_profit": LimitSpec(float, 0.0, 10.0),
        "intraday_drawdown_halt": LimitSpec(float, 0.0, 1.0),
        "max_order_notional": LimitSpec(float, 0.0, 1e12),
        "max_symbol_notional": LimitSpec(float, 0.0, 1e12),
        "max_orders_per_window": LimitSpec(int, 1, 1_000_000, low_inclusive=True),
    }
)


def limit_problems(config: object, specs: Mapping[str, LimitSpec]) -> list[str]:
    """The settable fields of ``config`` outside their :class:`LimitSpec` (empty when all fit)."""
    out: list[str] = []
    for name, spec in specs.items():
        value = getattr(config, name)
        if spec.kind is int and type(value) is not int:
            out.append(f"{name} must be an integer")
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            out.append(f"{name} must be a finite number")
            continue
        low_ok = value >= spec.low if spec.low_inclusive else value > spec.low
        if not low_ok or value > spec.high:
            bracket = "[" if spec.low_inclusive else "("
            out.append(f"{name}={value!r} outside {bracket}{spec.low}, {spec.high}]")
    return out


def _frozen_map(value: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskConfig:
    """Every pre-trade rule's parameters. Fractions are of equity or price."""

    version: str = "risk-v1"
    #: The track (paper, live-bitget, ...) this engine guards; protective exits carry it.
    track: str = "paper"

    # -- drawdown tiers (fraction of peak equity) ---------------------------
    max_drawdown: float = MAX_DRAWDOWN
    drawdown_near_limit: float = DRAWDOWN_NEAR_LIMIT
    drawdown_warn: float = DRAWDOWN_WARN
    #: Opening size multiplier in the warn tier.
    warn_size_scale: float = 0.5

    # -- loss limits -----------------------------------------------------------
    #: Daily loss (UTC day, vs the day's starting equity) that stops opening.
    #: 3 %: below the 5 % intraday halt so it is the first line, not dead code.
    daily_loss_limit: float = 0.03
    #: Closed round trips lost in a row that pause opening for the cool-down.
    consecutive_loss_limit: int = 5
    consecutive_loss_cooldown_ns: int = 24 * NS_PER_HOUR
    #: Intraday (UTC day, peak-to-now) drawdown that halts opening until the next day.
    intraday_drawdown_halt: float = 0.05

    # -- single-trade protective exits (fraction of average entry price) --------
    stop_loss: float = 0.018
    take_profit: float = 0.036

    # -- abnormal-volatility circuit breaker ------------------------------------
    #: Bar range ``(high - low) / open`` that trips the breaker, per base asset
    #: (or exact symbol), for a bar of ``vol_reference_timeframe_ns``.
    vol_thresholds: Mapping[str, float] = field(default_factory=lambda: _frozen_map({"BTC": 0.05, "ETH": 0.06}))
    vol_threshold_default: float = 0.08
    vol_hour_multipliers: tuple[float, ...] = DEFAULT_VOL_HOUR_MULTIPLIERS
    #: Thresholds are for 1h bars; other timeframes scale by sqrt(tf / 1h).
    vol_reference_timeframe_ns: int = NS_PER_HOUR
    #: How long the global kill switch the breaker sets stays on.
    vol_halt_ns: int = NS_PER_HOUR

    # -- notional and rate ----------------------------------------------------------
    #: Largest notional (quote) of one order; larger ones are cut to it.
    max_order_notional: float = 25_000.0
    #: Largest absolute position notional per symbol after the order.
    max_symbol_notional: float = 50_000.0
    #: Per-symbol (exact symbol or base asset) overrides of ``max_symbol_notional``.
    symbol_max_notional: Mapping[str, float] = field(default_factory=lambda: _frozen_map({}))
    #: Orders approved per rolling window of event time (venue and fat-finger guard).
    max_orders_per_window: int = 30
    order_rate_window_ns: int = 60 * NS_PER_SECOND
    #: An approved order that no fill or terminal update has ended after this
    #: long stops counting as in-flight exposure (a lost update must not block forever).
    pending_order_ttl_ns: int = 6 * NS_PER_HOUR

    # -- input sanity ------------------------------------------------------------------
    allowed_symbols: tuple[str, ...] = DEFAULT_ALLOWED_SYMBOLS
    #: A limit price further than this from the last mark is a fat finger.
    max_price_deviation: float = 0.05
    #: A mark older than this (event time) is not a price to size against.
    max_mark_age_ns: int = 3 * NS_PER_HOUR

    # -- kill switch policy --------------------------------------------------------
    #: False (default): an engaged kill switch rejects every order in its scope,
    #: exits included ("not one order is sent"); flattening is a deliberate
    #: operator action after release. True: reduce-only exits pass.
    kill_switch_allows_reduce_only: bool = False
    #: strategy_id of the stop-loss / take-profit exits the engine emits.
    protective_strategy_id: str = "risk-protect"

    def __post_init__(self) -> None:
        object.__setattr__(self, "vol_thresholds", _frozen_map(self.vol_thresholds))
        object.__setattr__(self, "symbol_max_notional", _frozen_map(self.symbol_max_notional))
        object.__setattr__(self, "vol_hour_multipliers", tuple(self.vol_hour_multipliers))
        object.__setattr__(self, "allowed_symbols", tuple(self.allowed_symbols))
        problems = self.problems()
        if problems:
            raise ValueError("invalid risk config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invariant the config breaks (empty when valid)."""
        out = limit_problems(self, SETTABLE_LIMITS)
        if not out and not self.drawdown_warn < self.drawdown_near_limit <= self.max_drawdown:
            out.append("drawdown tiers must satisfy warn < near_limit <= max")
        for name in (
            "consecutive_loss_cooldown_ns",
            "vol_reference_timeframe_ns",
            "vol_halt_ns",
            "order_rate_window_ns",
            "max_mark_age_ns",
            "pending_order_ttl_ns",
        ):
            if type(getattr(self, name)) is not int or getattr(self, name) <= 0:
                out.append(f"{name} must be a positive integer (ns)")
        if len(self.vol_hour_multipliers) != 24 or not all(
            math.isfinite(m) and m > 0 for m in self.vol_hour_multipliers
        ):
            out.append("vol_hour_multipliers needs 24 positive values (UTC hours 0..23)")
        for table in (self.vol_thresholds, self.symbol_max_notional):
            if not all(math.isfinite(v) and v > 0 for v in table.values()):
                out.append("per-symbol thresholds must be positive")
        if not (math.isfinite(self.vol_threshold_default) and self.vol_threshold_default > 0):
            out.append("vol_threshold_default must be positive")
        if not (math.isfinite(self.max_price_deviation) and self.max_price_deviation > 0):
            out.append("max_price_deviation must be positive")
        if not self.allowed_symbols:
            out.append("allowed_symbols must not be empty")
        return out

    def config_hash(self) -> str:
        return stable_config_hash(self)

    # -- lookups ---------------------------------------------------------------------
    def vol_threshold_for(self, symbol: str, hour_utc: int, timeframe_ns: int) -> float:
        """Breaker threshold for one bar: per-asset base x hour multiplier x sqrt(tf / ref)."""
        base = self.vol_thresholds.get(symbol)
        if base is None:
            base = self.vol_thresholds.get(base_asset(symbol), self.vol_threshold_default)
        scale = math.sqrt(timeframe_ns / self.vol_reference_timeframe_ns) if timeframe_ns > 0 else 1.0
        return base * self.vol_hour_multipliers[hour_utc % 24] * scale

    def symbol_notional_cap(self, symbol: str) -> float:
        cap = self.symbol_max_notional.get(symbol)
        if cap is None:
            cap = self.symbol_max_notional.get(base_asset(symbol), self.max_symbol_notional)
        return cap
