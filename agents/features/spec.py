"""The feature-set contract shared by the incremental engine, the batch
reference and every reader: parameters, stable feature names, the version
string derived from them, numeric floors, and the lineage-id format.

Nothing here computes a feature; it pins down *which* features, with *which* parameters,
under *which* version, so the engine and :mod:`agents.features.batch` can be compared and a
model can refuse vectors of a feature set it was not trained on.
``FeatureSpec.version = "fs1." + sha256(names, parameters, floors, ALGORITHM_REVISION)[:12]``;
a formula change that keeps the parameters must bump :data:`ALGORITHM_REVISION`.

A vector names its window of bars as
``lin1-<first_open_time_ns>-<last_open_time_ns>-<n_bars>-<digest:032x>``, the digest the sum
mod 2**128 of :func:`lineage_element` over the bars' event ids; :func:`lineage_matches`
checks it against the bars in Postgres (guards against accidents, not forgery).

Design: docs/market_data.md#feature-set-and-lineage
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from topics.records import Bar

__all__ = [
    "ALGORITHM_REVISION",
    "DEFAULT_SPEC",
    "FEATURE_SET_VERSION",
    "LINEAGE_PREFIX",
    "FeatureSpec",
    "LineageRef",
    "format_lineage_id",
    "lineage_element",
    "lineage_id_for",
    "lineage_matches",
    "parse_lineage_id",
]

#: Formula revision folded into the version hash. Changelog:
#: 1 - initial feature set (fs1).
ALGORITHM_REVISION = 1

LINEAGE_PREFIX = "lin1"
_DIGEST_MASK = (1 << 128) - 1


# ---------------------------------------------------------------------------
# Parameters, names, version
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Parameters of the feature set; the defaults are tuned for hourly crypto.

    ``lookback`` is the number of bars every feature is computed from; ``None``
    means the minimum the windows need. A longer lookback only changes the
    exponential averages (RSI, ATR, MACD), which are seeded at the start of the
    lookback: more bars bring them closer to a since-inception average.
    """

    return_horizons: tuple[int, ...] = (1, 3, 6, 12, 24, 72)
    vol_windows: tuple[int, ...] = (12, 24, 72)
    zscore_windows: tuple[int, ...] = (24, 72)
    rsi_period: int = 14
    atr_period: int = 14
    volume_window: int = 24
    momentum_window: int = 24
    drawdown_window: int = 72
    macd_fast: int = 12
    macd_slow: int = 26
    lookback: int | None = None
    #: Added to both sides of the volume ratio so zero volume stays finite;
    #: 1e-8 is one satoshi-sized unit of base currency.
    volume_epsilon: float = 1e-8
    #: Lower bound on the 1-bar volatility dividing the momentum; 1e-4 (1 bp
    #: per bar) is far below real hourly crypto volatility, so it only acts on
    #: flat, illiquid stretches where the ratio would otherwise explode.
    vol_floor: float = 1e-4

    def __post_init__(self) -> None:
        windows = (
            *self.return_horizons,
            *self.vol_windows,
            *self.zscore_windows,
            self.rsi_period,
            self.atr_period,
            self.volume_window,
            self.drawdown_window,
            self.macd_fast,
            self.macd_slow,
        )
        if not self.return_horizons or not self.vol_windows:
            raise ValueError("return_horizons and vol_windows must not be empty")
        if any(type(w) is not int or w < 1 for w in windows):
            raise ValueError(f"every window must be an int >= 1, got {windows}")
        if min(self.vol_windows) < 2 or min(self.zscore_windows, default=2) < 2 or self.volume_window < 2:
            raise ValueError("a standard deviation needs a window of at least 2")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate windows give duplicate feature names")
        if self.momentum_window not in self.return_horizons or self.momentum_window not in self.vol_windows:
            raise ValueError("momentum_window must be one of return_horizons and of vol_windows")
        if not self.macd_fast < self.macd_slow:
            raise ValueError("macd_fast must be shorter than macd_slow")
        if self.lookback is not None and self.lookback < self.required_lookback:
            raise ValueError(f"lookback {self.lookback} < {self.required_lookback} bars the windows need")
        if not (self.volume_epsilon > 0 and self.vol_floor > 0):
            raise ValueError("volume_epsilon and vol_floor must be > 0")

    @property
    def required_lookback(self) -> int:
        """Bars the longest window needs (a return needs one bar more than its horizon)."""
        return max(
            max(self.return_horizons) + 1,
            max(self.vol_windows) + 1,
            max(self.zscore_windows, default=1),
            # An exponential average needs its seed plus at least one later
            # input; price changes and true ranges start at the second bar.
            self.rsi_period + 2,
            self.atr_period + 2,
            self.volume_window,
            self.drawdown_window,
            self.macd_slow + 1,
        )

    @property
    def window(self) -> int:
        """The effective lookback: bars per vector, and the warm-up length."""
        return self.required_lookback if self.lookback is None else self.lookback

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in output order; they embed their parameters."""
        return (
            *(f"ret_{h}" for h in self.return_horizons),
            *(f"vol_{n}" for n in self.vol_windows),
            *(f"zclose_{n}" for n in self.zscore_windows),
            f"rsi_{self.rsi_period}",
            f"atr_{self.atr_period}",
            f"volz_{self.volume_window}",
            f"logvolratio_{self.volume_window}",
            "range",
            "clv",
            f"momvol_{self.momentum_window}",
            "hour_sin",
            "hour_cos",
            "dow_sin",
            "dow_cos",
            f"drawdown_{self.drawdown_window}",
            f"macd_{self.macd_fast}_{self.macd_slow}",
        )

    @property
    def version(self) -> str:
        """``fs1.<hash>`` over names, parameters, floors and the algorithm revision."""
        params = asdict(self)
        params["lookback"] = self.window
        canonical = json.dumps(
            {"algorithm": ALGORITHM_REVISION, "names": self.names, "params": params},
            sort_keys=True,
            separators=(",", ":"),
        )
        return "fs1." + hashlib.sha256(canonical.encode()).hexdigest()[:12]


DEFAULT_SPEC = FeatureSpec()
FEATURE_SET_VERSION = DEFAULT_SPEC.version


# ---------------------------------------------------------------------------
# Lineage ids
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineageRef:
    """A parsed lineage id: which bars, and the digest of their event ids."""

    first_open_time: int
    last_open_time: int
    n_bars: int
    digest: int


def lineage_element(event_id: str) -> int:
    """One bar's contribution to the digest.

    Bar event ids are 32 hex digits (:func:`topics.schema.event_id_for`), read
    as an integer as Python's ``int(event_id, 16)`` does; any other id string
    is hashed with BLAKE2b-128 so that every valid record has an element.
    """
    try:
        return int(event_id, 16) & _DIGEST_MASK
    except ValueError:
        return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=16).digest(), "big")


def format_lineage_id(first_open_time: int, last_open_time: int, n_bars: int, digest: int) -> str:
    """The lineage id string; the engine builds it from its running digest."""
    return f"{LINEAGE_PREFIX}-{first_open_time}-{last_open_time}-{n_bars}-{digest & _DIGEST_MASK:032x}"


def lineage_id_for(bars: Sequence[Bar]) -> str:
    """Lineage id of a window, from its bars in ascending open time."""
    digest = sum(lineage_element(b.event_id) for b in bars)
    return format_lineage_id(bars[0].open_time, bars[-1].open_time, len(bars), digest)


def parse_lineage_id(lineage_id: str) -> LineageRef:
    """Split a lineage id into its parts; ``ValueError`` if it is not one."""
    parts = lineage_id.split("-")
    if len(parts) != 5 or parts[0] != LINEAGE_PREFIX:
        raise ValueError(f"not a {LINEAGE_PREFIX} lineage id: {lineage_id!r}")
    return LineageRef(
        first_open_time=int(parts[1]),
        last_open_time=int(parts[2]),
        n_bars=int(parts[3]),
        digest=int(parts[4], 16),
    )


def lineage_matches(lineage_id: str, bars: Sequence[Bar]) -> bool:
    """True when ``bars`` (the stream's bars in the id's time range, ascending) are the window."""
    ref = parse_lineage_id(lineage_id)
    if len(bars) != ref.n_bars or not bars:
        return False
    if bars[0].open_time != ref.first_open_time or bars[-1].open_time != ref.last_open_time:
        return False
    return sum(lineage_element(b.event_id) for b in bars) & _DIGEST_MASK == ref.digest
