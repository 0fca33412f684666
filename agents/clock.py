"""Clocks injected into engines. Engines never read ambient time.

``EventClock`` is advanced by the records being processed (event time); it is
what backtests, replays and audits use, and what makes their output
reproducible. The wall clock lives at the edge: agents pass ``time.time_ns`` in a
:class:`FunctionClock`.
"""

from __future__ import annotations

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
