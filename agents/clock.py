"""Clocks injected into engines. Engines never read ambient time.

``EventClock`` is advanced by the records being processed (event time); it is
what backtests, replays and audits use, and what makes their output
reproducible. The wall clock lives at the edge: agents pass ``time.time_ns`` in a
:class:`FunctionClock`. A trading stream has two time domains (:class:`TimeDomain`):
market time (:class:`StreamClock`, moved by bars and signals) and wall/arrival time
(:class:`ArrivalClock`, moved by arrivals and operator commands); a command never
moves market time. Design: docs/trading_engines.md#time-domains
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class FunctionClock:
    """A clock read from a function (the agents' edge wall clock, a fixed stamp)."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], int]) -> None:
        self._fn = fn

    def now_ns(self) -> int:
        return self._fn()


class EventClock:
    """Monotone clock driven by event time; never goes backwards."""

    __slots__ = ("_now",)

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def advance(self, ts_ns: int) -> None:
        if ts_ns > self._now:
            self._now = ts_ns

    def now_ns(self) -> int:
        return self._now


class StreamClock:
    """Event time of the input stream: monotone, bounded by the arrival time."""

    __slots__ = ("_now",)

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ts_ns: int, arrival_ns: int | None = None) -> None:
        target = ts_ns if arrival_ns is None else min(ts_ns, arrival_ns)
        if target > self._now:
            self._now = target

    def restore(self, now_ns: int) -> None:
        """Put the clock back to a value it had (only for unauthenticated control)."""
        self._now = now_ns


class TimeDomain(enum.StrEnum):
    """Which clock a time belongs to (docs/trading_engines.md#time-domains)."""

    #: Event time of market data: bars and the signals derived from them.
    MARKET = "market"
    #: Wall/arrival time: when messages arrived and operator commands were given.
    WALL = "wall"


class ArrivalClock:
    """Wall/arrival time of an input stream, next to its market clock.

    Monotone. Moved by the arrival bound of every market input
    (:meth:`arrived`) and by authentic commands (:meth:`advance`: their time,
    bounded by their arrival); never behind the market clock it is given, so a
    replay that passes no arrival times reads recorded time as arrival time.
    """

    __slots__ = ("_market", "_now")

    def __init__(self, market: Clock, start_ns: int = 0) -> None:
        self._market = market
        self._now = start_ns

    def now_ns(self) -> int:
        market = self._market.now_ns()
        return market if market > self._now else self._now

    def arrived(self, arrival_ns: int | None) -> None:
        """An input arrived (``None``: a replay, recorded time stands for arrival)."""
        if arrival_ns is not None and arrival_ns > self._now:
            self._now = arrival_ns

    def advance(self, ts_ns: int, arrival_ns: int | None = None) -> None:
        """A command given at ``ts_ns``: never past its arrival."""
        target = ts_ns if arrival_ns is None else min(ts_ns, arrival_ns)
        if target > self._now:
            self._now = target

    def own_ns(self) -> int:
        """The time this clock was moved to itself (what :meth:`restore` takes back)."""
        return self._now

    def restore(self, own_ns: int) -> None:
        """Put the clock back to a value of :meth:`own_ns` (only for unauthenticated control)."""
        self._now = own_ns
