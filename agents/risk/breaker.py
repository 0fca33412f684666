"""Abnormal-volatility circuit breaker: whether a bar shows an abnormal move.

Pure and deterministic, in market time only (the bars' own times, never a clock). Per bar series
(symbol, timeframe) it keeps the recent bars' ``(open_time, open, close)``; each closed bar is
measured under the config in force (:class:`~agents.risk.config.BreakerMode`):

- ``return``: ``|close / open of the window's first bar - 1|``, the window being the last
  ``vol_window_bars`` bars or, when that is 0, the bars that opened within ``vol_window_ns``
  before this bar's close (at least this bar);
- ``range``: this bar's ``(high - low) / open``, the threshold scaled by
  ``sqrt(timeframe / vol_reference_timeframe_ns)``.

A measure above ``vol_threshold_for(symbol, UTC hour of this bar's open)`` is a :class:`Trip`;
the risk engine turns it into the global kill switch. A bar older than its series' last is
neither kept nor measured; one with the same open time replaces it (a revision).

Design: docs/risk.md#volatility-breaker
"""

from __future__ import annotations

import marshal
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from agents.risk.config import BreakerMode, RiskConfig
from topics.records import Bar
from topics.schema import keyword_constructor
from topics.units import NS_PER_DAY, NS_PER_HOUR

__all__ = ["Trip", "VolatilityBreaker"]


@dataclass(frozen=True, slots=True)
class Trip:
    """One abnormal move: what was measured against which threshold."""

    symbol: str
    timeframe: str
    mode: BreakerMode
    #: The absolute return (``return``) or the range (``range``).
    measure: float
    threshold: float
    hour_utc: int
    #: Bars the measure spans (1 in range mode).
    bars: int

    def describe(self) -> str:
        what = "range" if self.mode is BreakerMode.RANGE else f"|return| over {self.bars} bar(s)"
        return (
            f"{self.symbol} {self.timeframe} {what} {self.measure:.4f} > {self.threshold:.4f} "
            f"at hour {self.hour_utc:02d} UTC"
        )


@dataclass(frozen=True, slots=True)
class _Point:
    open_time: int
    open: float
    close: float


#: ``_Point(...)`` without the frozen ``__init__``'s per-field cost (one per bar).
_make_point = keyword_constructor(_Point)


class VolatilityBreaker:
    """The breaker's state: each bar series' bars still inside the window."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], deque[_Point]] = {}

    def on_bar(self, bar: Bar, config: RiskConfig) -> Trip | None:
        """Keep ``bar`` and measure it (see the module docstring); a :class:`Trip` when abnormal."""
        key = (bar.symbol, bar.timeframe.value)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = deque()
        if series and bar.open_time <= series[-1].open_time:
            if bar.open_time < series[-1].open_time:
                return None
            series.pop()
        series.append(_make_point(open_time=bar.open_time, open=bar.open, close=bar.close))
        _prune(series, bar.ts_event, config)
        hour = (bar.open_time % NS_PER_DAY) // NS_PER_HOUR
        threshold = config.vol_threshold_for(bar.symbol, hour)
        if config.vol_breaker_mode is BreakerMode.RANGE:
            tf = bar.timeframe.nanos
            threshold *= math.sqrt(tf / config.vol_reference_timeframe_ns) if tf > 0 else 1.0
            measure, bars = (bar.high - bar.low) / bar.open, 1
        else:
            measure, bars = abs(bar.close / series[0].open - 1.0), len(series)
        if not measure > threshold:
            return None
        return Trip(
            symbol=bar.symbol,
            timeframe=bar.timeframe.value,
            mode=config.vol_breaker_mode,
            measure=measure,
            threshold=threshold,
            hour_utc=hour,
            bars=bars,
        )

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        """Pickled as one marshalled blob of ``(open_time, open, close)`` rows per series: the window
        grows with the bars it covers and is part of every trading checkpoint, where a dataclass per
        bar cost microseconds each."""
        rows = {key: [(p.open_time, p.open, p.close) for p in series] for key, series in self._series.items()}
        return _breaker_from_rows, (marshal.dumps(rows),)

    def window(self, symbol: str, timeframe: str) -> tuple[tuple[int, float, float], ...]:
        """The ``(open_time, open, close)`` of the bars kept for one series, oldest first."""
        return tuple((p.open_time, p.open, p.close) for p in self._series.get((symbol, timeframe), ()))


def _breaker_from_rows(blob: bytes) -> VolatilityBreaker:
    """Unpickling helper of :meth:`VolatilityBreaker.__reduce__` (inside an authenticated checkpoint)."""
    breaker = VolatilityBreaker()
    rows: dict[tuple[str, str], list[tuple[int, float, float]]] = marshal.loads(blob)  # noqa: S302
    for key, series in rows.items():
        breaker._series[key] = deque(_make_point(open_time=t, open=o, close=c) for t, o, c in series)
    return breaker


def _prune(series: deque[_Point], close_ns: int, config: RiskConfig) -> None:
    """Drop the bars the window no longer covers; the newest bar always stays."""
    if config.vol_window_bars > 0:
        while len(series) > config.vol_window_bars:
            series.popleft()
        return
    start = close_ns - config.vol_window_ns
    while len(series) > 1 and series[0].open_time < start:
        series.popleft()
