"""Opening status: everything that stops an account opening exposure now, each with why and until when.

A :class:`Blocker` is one rule in force: a kill switch (global / track / strategy / symbol), the
volatility breaker's halt, a drawdown tier, the intraday halt, the daily loss limit, a
consecutive-loss pause (account or strategy), the order-rate window, or no portfolio state yet.
``until_ns`` is in the blocker's own time domain (:class:`~agents.clock.TimeDomain`): market time for
everything the market moves (the breaker, pauses, daily limits, the order rate), wall time for an
operator's kill switch; ``None`` means "until released" (a switch) or "until the limit is back" (a
drawdown tier). :class:`OpeningReport` is the whole answer at one (market, wall) instant.

Pure data; :meth:`agents.risk.engine.RiskEngine.opening_report` builds it.
Design: docs/risk.md#opening-status
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.clock import TimeDomain

__all__ = ["ACCOUNT_SCOPE", "Blocker", "OpeningReport"]

#: Scope of the blockers that hold for the whole account (limits, not switches).
ACCOUNT_SCOPE = "account"


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocker:
    """One rule that blocks opening exposure now."""

    #: A :class:`~agents.risk.engine.RiskReason` value (the code decisions carry for it).
    code: str
    #: ``global`` / ``track`` / ``strategy`` / ``symbol`` (kill switches, strategy pauses) or ``account``.
    scope: str
    #: What it blocks within the scope (``*`` for the whole scope).
    target: str
    detail: str
    #: Exclusive end in ``domain``; None: until released, or until the limit is back.
    until_ns: int | None
    domain: TimeDomain = TimeDomain.MARKET

    def remaining_ns(self, market_ns: int, wall_ns: int) -> int | None:
        """Time left at (``market_ns``, ``wall_ns``), on the blocker's own clock; None: no set end."""
        if self.until_ns is None:
            return None
        now = wall_ns if self.domain is TimeDomain.WALL else market_ns
        return max(0, self.until_ns - now)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpeningReport:
    """Every blocker at one instant; opening is allowed when there is none."""

    market_ns: int
    wall_ns: int
    blockers: tuple[Blocker, ...]

    @property
    def allowed(self) -> bool:
        return not self.blockers

    def blocks(self, strategy_id: str, track: str, symbol: str) -> tuple[Blocker, ...]:
        """The blockers that stop ``strategy_id`` on ``track`` opening ``symbol``."""
        targets = {"global": "*", "track": track, "strategy": strategy_id, "symbol": symbol}
        return tuple(b for b in self.blockers if b.scope == ACCOUNT_SCOPE or targets.get(b.scope) in (b.target, None))

    def signature(self) -> tuple[tuple[str, str, str, int | None, str], ...]:
        """What identifies this status apart from the numbers in ``detail`` (for change detection)."""
        return tuple((b.code, b.scope, b.target, b.until_ns, b.domain.value) for b in self.blockers)
