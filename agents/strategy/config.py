"""Sizing configuration: versioned parameters of signal -> target position.

Every field feeds :meth:`StrategyConfig.config_hash`, so an intent can be
traced to the exact parameters that sized it. Changing a default here is a
new strategy version: bump ``version`` (changelog below).

Operators may change the whitelisted parameters of :data:`SETTABLE_PARAMS` at start
(``TRADEFLOW_STRATEGY_<NAME>``, read by :mod:`agents.trading.settings`) and at runtime with a
signed ``set_limit`` named ``strategy.<name>`` (applied and audited by the risk engine, like its
own limits: the audit carries this config's hash before and after).

Version changelog
-----------------
- ``sizing-v1``: tanh score curve, entry/exit hysteresis, volatility buckets
  by asset and UTC hour, round-trip cost penalty, notional caps,
  drawdown-aware caps (tiers shared with :mod:`agents.risk.config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from agents.risk.config import (
    DRAWDOWN_NEAR_LIMIT,
    DRAWDOWN_WARN,
    MAX_DRAWDOWN,
    LimitSpec,
    base_asset,
    limit_problems,
    stable_config_hash,
)
from agents.tracks import DEFAULT_VC_SYMBOLS
from topics.units import NS_PER_HOUR

__all__ = ["DEFAULT_HOUR_SCALE", "LIMIT_PREFIX", "SETTABLE_PARAMS", "StrategyConfig"]

#: ``set_limit`` names of the strategy's parameters: ``strategy.entry_threshold`` ...
LIMIT_PREFIX = "strategy."

#: name -> range of the parameters an operator may set at start or by a signed ``set_limit``.
#: The config re-validates as a whole (``exit_threshold < entry_threshold`` ...).
SETTABLE_PARAMS: Mapping[str, LimitSpec] = MappingProxyType(
    {
        "entry_threshold": LimitSpec(float, 0.0, 1.0),
        "exit_threshold": LimitSpec(float, 0.0, 1.0, low_inclusive=True),
        "max_position_fraction": LimitSpec(float, 0.0, 10.0),
        "min_order_notional": LimitSpec(float, 0.0, 1e12, low_inclusive=True),
        "rebalance_band": LimitSpec(float, 0.0, 1.0, low_inclusive=True),
        "cost_multiple": LimitSpec(float, 0.0, 100.0, low_inclusive=True),
        # market time (ns): a recorded feed played faster than real time needs more (see ``tradeflow up``)
        "max_signal_age_ns": LimitSpec(int, 0, 30 * 24 * NS_PER_HOUR),
    }
)

#: Size multiplier per UTC hour. 13:00-16:59 UTC (US open, macro prints) has
#: the widest intraday ranges on BTC/ETH, so positions are 20 % smaller there:
#: sizing for constant risk, not constant notional.
DEFAULT_HOUR_SCALE: tuple[float, ...] = (1.0,) * 13 + (0.8,) * 4 + (1.0,) * 7


_T = TypeVar("_T")


def _frozen(value: Mapping[str, _T]) -> Mapping[str, _T]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyConfig:
    """Parameters of :class:`~agents.strategy.engine.StrategyEngine`.

    Score-to-size curve: for a score ``s`` (clipped to [-1, 1]),
    ``size(s) = sign(s) * tanh(curve_gain * |s|) / tanh(curve_gain)``: 0 at 0,
    +-1 at +-1, concave, so conviction adds size with diminishing returns
    (a score of 0.5 is 76 % of the full size at gain 2, not 50 %).
    """

    version: str = "sizing-v1"
    strategy_id: str = "tanh-sizer"
    track: str = "paper"
    #: Symbols of monitor-only tracks (the vc track, agents/tracks.py): a signal for one is
    #: scored and recorded (``monitor_only_track``), never sized into an order.
    monitor_only_symbols: tuple[str, ...] = DEFAULT_VC_SYMBOLS

    # -- score -> size --------------------------------------------------------
    curve_gain: float = 2.0
    #: |score| needed to open a position from flat (or to flip).
    entry_threshold: float = 0.20
    #: A held position is kept while ``score * sign(position) >= exit_threshold``.
    exit_threshold: float = 0.05

    # -- caps --------------------------------------------------------------------
    #: Full size (|size| = 1) as a fraction of equity.
    max_position_fraction: float = 0.20
    #: Absolute cap per symbol (quote), exact symbol or base asset, else the default.
    position_cap_notional: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    default_position_cap_notional: float = 50_000.0
    #: Smallest order worth sending (quote).
    min_order_notional: float = 10.0
    #: Resizes smaller than this fraction of the symbol's cap are skipped (churn guard);
    #: exits to flat always go through.
    rebalance_band: float = 0.10

    # -- volatility buckets --------------------------------------------------------
    #: Asset (or exact symbol) -> bucket; anything else is ``default_vol_bucket``.
    symbol_vol_bucket: Mapping[str, str] = field(default_factory=lambda: _frozen({"BTC": "low", "ETH": "mid"}))
    default_vol_bucket: str = "high"
    bucket_scale: Mapping[str, float] = field(default_factory=lambda: _frozen({"low": 1.0, "mid": 0.8, "high": 0.5}))
    hour_scale: tuple[float, ...] = DEFAULT_HOUR_SCALE

    # -- costs -------------------------------------------------------------------------
    #: Expected one-way costs in bps. A trade that adds exposure must expect an
    #: edge of at least ``cost_multiple x 2 x (fee + slippage)`` (entry and exit).
    fee_bps: float = 10.0
    slippage_bps: float = 2.0
    cost_multiple: float = 1.0

    # -- drawdown-aware caps (fractions of peak equity) -------------------------------
    drawdown_warn: float = DRAWDOWN_WARN
    drawdown_warn_scale: float = 0.5
    drawdown_reduce_only: float = DRAWDOWN_NEAR_LIMIT
    drawdown_flat: float = MAX_DRAWDOWN

    # -- hygiene ---------------------------------------------------------------------------
    #: Signals older than this (vs the clock) are not traded.
    max_signal_age_ns: int = 2 * NS_PER_HOUR
    #: Order quantities are rounded to this many decimals (exchange precision is
    #: the execution adapter's job; this only removes float dust).
    quantity_decimals: int = 8
    max_seen_signals: int = 100_000
    #: An order of ours no update has ended after this long stops counting as in flight.
    pending_order_ttl_ns: int = 6 * NS_PER_HOUR

    def __post_init__(self) -> None:
        object.__setattr__(self, "position_cap_notional", _frozen(self.position_cap_notional))
        object.__setattr__(self, "symbol_vol_bucket", _frozen(self.symbol_vol_bucket))
        object.__setattr__(self, "bucket_scale", _frozen(self.bucket_scale))
        object.__setattr__(self, "hour_scale", tuple(self.hour_scale))
        object.__setattr__(self, "monitor_only_symbols", tuple(self.monitor_only_symbols))
        problems = limit_problems(self, SETTABLE_PARAMS)
        if not 0 <= self.exit_threshold < self.entry_threshold <= 1:
            problems.append("need 0 <= exit_threshold < entry_threshold <= 1 (hysteresis)")
        if not (math.isfinite(self.curve_gain) and self.curve_gain > 0):
            problems.append("curve_gain must be positive")
        if not 0 < self.max_position_fraction <= 10:
            problems.append("max_position_fraction must be in (0, 10]")
        if len(self.hour_scale) != 24 or not all(0 <= s <= 10 for s in self.hour_scale):
            problems.append("hour_scale needs 24 values in [0, 10]")
        if self.default_vol_bucket not in self.bucket_scale:
            problems.append("default_vol_bucket must be a key of bucket_scale")
        if not set(self.symbol_vol_bucket.values()) <= set(self.bucket_scale):
            problems.append("every symbol_vol_bucket value must be a key of bucket_scale")
        if not self.drawdown_warn < self.drawdown_reduce_only <= self.drawdown_flat:
            problems.append("drawdown tiers must satisfy warn < reduce_only <= flat")
        if not 0 <= self.drawdown_warn_scale <= 1:
            problems.append("drawdown_warn_scale must be in [0, 1]")
        if min(self.fee_bps, self.slippage_bps, self.cost_multiple, self.rebalance_band, self.min_order_notional) < 0:
            problems.append("costs, rebalance_band and min_order_notional must be >= 0")
        if problems:
            raise ValueError("invalid strategy config: " + "; ".join(problems))

    def config_hash(self) -> str:
        return stable_config_hash(self)

    # -- lookups -----------------------------------------------------------------------------
    def size(self, score: float) -> float:
        """Signed size in [-1, 1] for a score (the documented tanh curve)."""
        s = max(-1.0, min(1.0, score))
        return math.copysign(math.tanh(self.curve_gain * abs(s)) / math.tanh(self.curve_gain), s)

    def vol_scale(self, symbol: str, hour_utc: int) -> float:
        bucket = self.symbol_vol_bucket.get(symbol)
        if bucket is None:
            bucket = self.symbol_vol_bucket.get(base_asset(symbol), self.default_vol_bucket)
        return self.bucket_scale[bucket] * self.hour_scale[hour_utc % 24]

    def cap_notional(self, symbol: str) -> float:
        cap = self.position_cap_notional.get(symbol)
        if cap is None:
            cap = self.position_cap_notional.get(base_asset(symbol), self.default_position_cap_notional)
        return cap

    @property
    def round_trip_cost(self) -> float:
        """Required edge as a return fraction: cost_multiple x 2 x (fee + slippage) bps."""
        return self.cost_multiple * 2.0 * (self.fee_bps + self.slippage_bps) / 10_000.0
