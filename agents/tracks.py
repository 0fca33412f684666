"""Market tracks: which symbols the platform collects, and which of them may trade.

One definition read by every component that names symbols (risk, sizing, the trading
agent's settings, the live collector, the gates CLI):

- ``liquid`` (gated, may trade): BTC, ETH, SOL, spot ``/USDT`` and perpetual ``/USDT:USDT``;
- ``vc`` (monitor-only): collected, featured, scored, gates evaluated and reported, never an
  order. Default SUI, APT, ARB spot ``/USDT`` (see docs/trading.md#tracks for the choice).

Each list is replaced by ``TRADEFLOW_TRACK_LIQUID_SYMBOLS`` / ``TRADEFLOW_TRACK_VC_SYMBOLS``
(:meth:`Tracks.from_env`; ``none``: an empty vc track). A symbol on both tracks is a configuration error: monitor-only
must never be read as "may trade".

Design: docs/trading.md#tracks
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from runtime.env import ConfigError, env_list, env_str

__all__ = [
    "DEFAULT_LIQUID_SYMBOLS",
    "DEFAULT_VC_SYMBOLS",
    "LIQUID",
    "VC",
    "Track",
    "TrackMode",
    "Tracks",
]

LIQUID = "liquid"
VC = "vc"

#: The liquid track: spot then perpetual of BTC, ETH, SOL (the replaced system's gated track).
DEFAULT_LIQUID_SYMBOLS: tuple[str, ...] = (
    *(f"{base}/USDT" for base in ("BTC", "ETH", "SOL")),
    *(f"{base}/USDT:USDT" for base in ("BTC", "ETH", "SOL")),
)

#: The vc track: venture-backed layer-1/layer-2 tokens with years of spot /USDT history on
#: Binance and Bitget (the collector's default exchanges), far smaller caps than the liquid
#: track. Spot only: a monitor-only track has no use for a perpetual's margin rules.
DEFAULT_VC_SYMBOLS: tuple[str, ...] = ("SUI/USDT", "APT/USDT", "ARB/USDT")

_LIQUID_ENV = "TRADEFLOW_TRACK_LIQUID_SYMBOLS"
_VC_ENV = "TRADEFLOW_TRACK_VC_SYMBOLS"


class TrackMode(enum.StrEnum):
    #: Gates decide; orders may be created.
    GATED = "gated"
    #: Everything but orders: gates are evaluated and reported, never block, never trade.
    MONITOR = "monitor"


@dataclass(frozen=True, slots=True)
class Track:
    name: str
    mode: TrackMode
    symbols: tuple[str, ...]

    @property
    def may_trade(self) -> bool:
        return self.mode is TrackMode.GATED


@dataclass(frozen=True, slots=True)
class Tracks:
    """The platform's tracks (``liquid`` gated, ``vc`` monitor-only)."""

    liquid: Track = Track(LIQUID, TrackMode.GATED, DEFAULT_LIQUID_SYMBOLS)
    vc: Track = Track(VC, TrackMode.MONITOR, DEFAULT_VC_SYMBOLS)

    def __post_init__(self) -> None:
        both = sorted(set(self.liquid.symbols) & set(self.vc.symbols))
        if both:
            raise ConfigError(f"symbols on both the liquid and the vc track: {both} (a symbol is on one track)")
        if not self.liquid.symbols:
            raise ConfigError(f"{_LIQUID_ENV}: the liquid track needs at least one symbol")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracks:
        """The default tracks with ``TRADEFLOW_TRACK_*_SYMBOLS`` applied (ConfigError names a bad one)."""
        liquid = _symbols(_LIQUID_ENV, DEFAULT_LIQUID_SYMBOLS, environ)
        vc = _symbols(_VC_ENV, DEFAULT_VC_SYMBOLS, environ)
        return cls(Track(LIQUID, TrackMode.GATED, liquid), Track(VC, TrackMode.MONITOR, vc))

    @property
    def all(self) -> tuple[Track, ...]:
        return (self.liquid, self.vc)

    @property
    def tradeable_symbols(self) -> tuple[str, ...]:
        return tuple(s for t in self.all if t.may_trade for s in t.symbols)

    @property
    def monitor_only_symbols(self) -> tuple[str, ...]:
        return tuple(s for t in self.all if not t.may_trade for s in t.symbols)

    def collected_symbols(self, market_type: str) -> tuple[str, ...]:
        """Every track's symbols of one market type: ``spot`` (no settle currency) or ``swap``."""
        swap = market_type == "swap"
        return tuple(s for t in self.all for s in t.symbols if (":" in s) == swap)

    def track_of(self, symbol: str) -> Track | None:
        return next((t for t in self.all if symbol in t.symbols), None)

    def gate_track_monitor_only(self, gate_track: str, symbols: Collection[str] = ()) -> bool:
        """Whether a gate track (``backtest_runs.track``) only reports: it is named after a
        monitor-only track, or every symbol of its runs is on one (and it has some)."""
        named = next((t for t in self.all if t.name == gate_track), None)
        if named is not None:
            return not named.may_trade
        monitor = set(self.monitor_only_symbols)
        return bool(symbols) and all(s in monitor for s in symbols)


def _symbols(name: str, default: tuple[str, ...], environ: Mapping[str, str] | None) -> tuple[str, ...]:
    """The variable's comma list (``none``: no symbol), else ``default``."""
    if env_str(name, "", environ).lower() == "none":
        return ()
    symbols = env_list(name, default, environ)
    bad = [s for s in symbols if "/" not in s or s.startswith("/") or s.endswith("/")]
    if bad:
        raise ConfigError(f"{name}: not ccxt unified symbols (BASE/QUOTE[:SETTLE]): {bad}")
    return tuple(dict.fromkeys(symbols))
