"""Kill switches: who may not open positions, why, and until when.

A switch has a scope (``global`` with target ``*``, ``track``, ``strategy``, ``symbol``) and a
target. Switches are keyed by ``(scope, target, set_by)``: the operator's switch and the
volatility breaker's on the same scope coexist, and releasing an automatic switch never lifts
a human's. Engaging the same key again merges: the later reason wins, the later expiry wins
(``None``, "until released", beats any time). An operator ``release`` of a scope and target
removes every setter's switch there.

Expiry (``expires_at_ns``, exclusive) is in the switch's own time domain: market time for
the volatility breaker, wall/arrival time for an operator's switch
(:class:`~agents.clock.TimeDomain`). Nothing here reads a clock: callers pass ``now_ns``
(market) and ``wall_ns`` (wall; omitted: the same as ``now_ns``) from the engine's clocks.

Design: docs/risk.md#kill-switches
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agents.clock import TimeDomain

__all__ = ["GLOBAL_TARGET", "KillScope", "KillSwitch", "KillSwitchBoard", "OpeningStatus"]

GLOBAL_TARGET = "*"


class KillScope(enum.StrEnum):
    GLOBAL = "global"
    TRACK = "track"
    STRATEGY = "strategy"
    SYMBOL = "symbol"


@dataclass(frozen=True, slots=True, kw_only=True)
class KillSwitch:
    scope: KillScope
    target: str
    reason: str
    set_by: str
    set_at_ns: int
    #: Exclusive end in this switch's time domain; None: until released.
    expires_at_ns: int | None
    #: The clock ``set_at_ns`` and ``expires_at_ns`` are read on.
    domain: TimeDomain = TimeDomain.MARKET

    def active(self, now_ns: int) -> bool:
        """Whether it is in force at ``now_ns`` of its own domain."""
        return self.expires_at_ns is None or now_ns < self.expires_at_ns

    def active_at(self, now_ns: int, wall_ns: int | None = None) -> bool:
        """Whether it is in force, given the market time and the wall time (``None``: ``now_ns``)."""
        wall = now_ns if wall_ns is None else wall_ns
        return self.active(wall if self.domain is TimeDomain.WALL else now_ns)

    def describe(self) -> str:
        until = "until released" if self.expires_at_ns is None else f"until {self.expires_at_ns}"
        return f"{self.scope.value}:{self.target}: {self.reason} (set by {self.set_by}, {until})"


@dataclass(frozen=True, slots=True, kw_only=True)
class OpeningStatus:
    """Answer to "may this strategy open a position here, now?".

    ``until_ns`` is meaningful only when blocked: the time the last blocking
    switch expires, or ``None`` when at least one lasts until released. It is
    informational: switches of both time domains may block at once, each
    expiring on its own clock (``switches``).
    """

    allowed: bool
    reasons: tuple[str, ...]
    until_ns: int | None
    switches: tuple[KillSwitch, ...]


#: The status when no switch is active (immutable, shared).
_OPEN = OpeningStatus(allowed=True, reasons=(), until_ns=None, switches=())


class KillSwitchBoard:
    """The set of engaged kill switches. Deterministic: iteration is sorted."""

    __slots__ = ("_switches",)

    def __init__(self) -> None:
        self._switches: dict[tuple[KillScope, str, str], KillSwitch] = {}

    @staticmethod
    def _target(scope: KillScope, target: str) -> str:
        return GLOBAL_TARGET if scope is KillScope.GLOBAL else target

    def engage(
        self,
        scope: KillScope,
        target: str,
        *,
        reason: str,
        set_by: str,
        now_ns: int,
        expires_at_ns: int | None = None,
        domain: TimeDomain = TimeDomain.MARKET,
    ) -> KillSwitch:
        """Engage (or extend) a switch; effective for every decision from ``now_ns`` (of ``domain``)."""
        scope = KillScope(scope)
        target = self._target(scope, target)
        key = (scope, target, set_by)
        previous = self._switches.get(key)
        if previous is not None and previous.active(now_ns):
            if previous.expires_at_ns is None or expires_at_ns is None:
                expires_at_ns = None
            else:
                expires_at_ns = max(previous.expires_at_ns, expires_at_ns)
        switch = KillSwitch(
            scope=scope,
            target=target,
            reason=reason,
            set_by=set_by,
            set_at_ns=now_ns,
            expires_at_ns=expires_at_ns,
            domain=domain,
        )
        self._switches[key] = switch
        return switch

    def release(self, scope: KillScope, target: str, now_ns: int, wall_ns: int | None = None) -> tuple[KillSwitch, ...]:
        """Remove every setter's switch on ``(scope, target)``; returns the ones that were active."""
        scope = KillScope(scope)
        target = self._target(scope, target)
        keys = sorted(k for k in self._switches if k[0] is scope and k[1] == target)
        released = tuple(self._switches.pop(k) for k in keys)
        return tuple(s for s in released if s.active_at(now_ns, wall_ns))

    def active(self, now_ns: int, wall_ns: int | None = None) -> tuple[KillSwitch, ...]:
        """Active switches (expired ones are pruned), sorted by scope, target, setter."""
        if not self._switches:  # the usual case, asked several times per input
            return ()
        expired = [k for k, s in self._switches.items() if not s.active_at(now_ns, wall_ns)]
        for k in expired:
            del self._switches[k]
        return tuple(self._switches[k] for k in sorted(self._switches))

    def opening_status(
        self, strategy_id: str, track: str, symbol: str, now_ns: int, wall_ns: int | None = None
    ) -> OpeningStatus:
        """Whether ``strategy_id`` on ``track`` may open exposure in ``symbol`` at ``now_ns`` (and ``wall_ns``)."""
        active = self.active(now_ns, wall_ns)
        if not active:
            return _OPEN
        matching = tuple(
            s
            for s in active
            if s.scope is KillScope.GLOBAL
            or (s.scope is KillScope.TRACK and s.target == track)
            or (s.scope is KillScope.STRATEGY and s.target == strategy_id)
            or (s.scope is KillScope.SYMBOL and s.target == symbol)
        )
        if not matching:
            return OpeningStatus(allowed=True, reasons=(), until_ns=None, switches=())
        expiries = [s.expires_at_ns for s in matching]
        until = None if any(e is None for e in expiries) else max(e for e in expiries if e is not None)
        return OpeningStatus(
            allowed=False,
            reasons=tuple(s.describe() for s in matching),
            until_ns=until,
            switches=matching,
        )
