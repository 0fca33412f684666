"""The dashboard's view model: records in, one JSON-ready snapshot out. Pure.

The page must show what the topics say, not what one worker happened to see in one order,
and the folding rules are worth unit-testing without a broker. Nothing here reads a clock or
does I/O: every method that needs "now" takes it as an argument.

Folding rules: latest per key wins by event time, never by arrival; counters dedupe on
``event_id`` in a bounded window; kill switches are tracked from the ``describe()`` text of
accepted ``control.audit`` changes and breaker alerts (:func:`parse_switch`) and shown until
their expiry in event time; the equity curve keeps at most ``equity_points`` points per
account (thinned by doubling the stride, newest always kept); missing is ``None``, never 0.

Design: docs/dashboard.md#dashboard-state
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from runtime.seen import SeenIds
from topics.records import (
    Alert,
    ControlAudit,
    ControlOutcome,
    DeadLetter,
    GateResult,
    ModelRegistryEvent,
    PortfolioSnapshot,
    RiskDecision,
    RiskVerdict,
    Signal,
)
from topics.schema import Record
from topics.units import NS_PER_SECOND

__all__ = ["TOPICS", "DashboardConfig", "DashboardState", "ParsedSwitch", "parse_switch"]

#: The catalogue topics the dashboard folds (the agent subscribes to exactly these).
TOPICS: tuple[str, ...] = (
    "signals",
    "portfolio.state",
    "risk.decisions",
    "control.audit",
    "ops.alerts",
    "gates.results",
    "models.registry",
    "deadletter",
)

_DESCRIBE = re.compile(
    r"^(?P<scope>[a-z]+):(?P<target>.*?): (?P<reason>.*) "
    r"\(set by (?P<set_by>[^()]*), (?:until released|until (?P<until>-?\d+))\)$",
    re.S,
)
_BREAKER_PREFIX = "kill switch engaged: "


@dataclass(frozen=True, slots=True)
class ParsedSwitch:
    """A kill switch as ``KillSwitch.describe()`` printed it."""

    scope: str
    target: str
    reason: str
    set_by: str
    expires_at_ns: int | None


def parse_switch(text: str) -> ParsedSwitch | None:
    """Parse ``KillSwitch.describe()`` output; None when it does not match."""
    m = _DESCRIBE.match(text)
    if m is None:
        return None
    until = m.group("until")
    return ParsedSwitch(
        scope=m.group("scope"),
        target=m.group("target"),
        reason=m.group("reason"),
        set_by=m.group("set_by"),
        expires_at_ns=None if until is None else int(until),
    )


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """Bounds that keep the snapshot small whatever the traffic."""

    equity_points: int = 512
    recent: int = 20
    max_symbols: int = 500
    dedupe_window: int = 100_000
    rate_window_ns: int = 10 * NS_PER_SECOND
    rate_sample_ns: int = NS_PER_SECOND


@dataclass(slots=True)
class _Curve:
    """Bounded equity curve: thin by two when full, keep the newest point."""

    cap: int
    points: list[tuple[int, float]] = field(default_factory=list)
    stride: int = 1
    seen: int = 0
    last: tuple[int, float] | None = None

    def add(self, t: int, v: float) -> None:
        if self.last is not None and t <= self.last[0]:
            return  # redelivered or late: the curve only moves forward in event time
        self.last = (t, v)
        if self.seen % self.stride == 0:
            self.points.append((t, v))
            if len(self.points) > self.cap:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1

    def view(self) -> list[list[float]]:
        pts = list(self.points)
        if self.last is not None and (not pts or pts[-1] != self.last):
            pts.append(self.last)
        return [[t, v] for t, v in pts]


@dataclass(frozen=True, slots=True)
class _Switch:
    component: str
    scope: str
    target: str
    reason: str
    set_by: str
    set_at_ns: int
    expires_at_ns: int | None

    def view(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "scope": self.scope,
            "target": self.target,
            "reason": self.reason,
            "set_by": self.set_by,
            "set_at_ns": self.set_at_ns,
            "expires_at_ns": self.expires_at_ns,
        }


class DashboardState:
    """Mutable fold of the dashboard topics; ``view()`` is the JSON snapshot."""

    def __init__(self, config: DashboardConfig | None = None) -> None:
        self.config = config or DashboardConfig()
        self.version = 0
        self.event_now_ns: int | None = None
        #: event ids already folded; a repeated id counts as the newest again
        self._seen: SeenIds[str] = SeenIds(self.config.dedupe_window, refresh_on_hit=True)
        self._signals: dict[str, Signal] = {}
        self._portfolios: dict[str, PortfolioSnapshot] = {}
        self._curves: dict[str, _Curve] = {}
        self._verdicts: Counter[str] = Counter()
        self._risk_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._switches: dict[tuple[str, str, str, str], _Switch] = {}
        self._control: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._gates: dict[tuple[str, str, str], GateResult] = {}
        self._models: dict[tuple[str, str], ModelRegistryEvent] = {}
        self._dead: Counter[tuple[str, str, str]] = Counter()
        self._dead_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._consumed: Counter[str] = Counter()
        self._samples: deque[tuple[int, dict[str, int]]] = deque()
        self._lag: dict[str, int | None] = {}
        self._db: dict[str, Any] = {"status": None, "detail": "", "checked_at_ns": None}
        self._broker: dict[str, Any] = {"status": None, "checked_at_ns": None}

    # ------------------------------------------------------------------
    # records
    # ------------------------------------------------------------------

    def apply(self, record: Record) -> bool:
        """Fold one decoded record; returns whether the view changed."""
        if not self._seen.add(record.event_id):
            return False
        changed = self._dispatch(record)
        if changed:
            self.version += 1
        return changed

    def _dispatch(self, r: Record) -> bool:
        if isinstance(r, Signal):
            return self._on_signal(r)
        if isinstance(r, PortfolioSnapshot):
            return self._on_portfolio(r)
        if isinstance(r, RiskDecision):
            return self._on_risk(r)
        if isinstance(r, ControlAudit):
            return self._on_audit(r)
        if isinstance(r, Alert):
            return self._on_alert(r)
        if isinstance(r, GateResult):
            return _latest(self._gates, (r.gate, r.track, r.metric), r)
        if isinstance(r, ModelRegistryEvent):
            return _latest(self._models, (r.model_id, r.version), r)
        if isinstance(r, DeadLetter):
            return self._on_dead_letter(r)
        raise TypeError(f"the dashboard does not fold {type(r).__name__}")

    def _advance(self, ts: int) -> None:
        if self.event_now_ns is None or ts > self.event_now_ns:
            self.event_now_ns = ts

    def _on_signal(self, s: Signal) -> bool:
        self._advance(s.ts_event)
        if s.symbol not in self._signals and len(self._signals) >= self.config.max_symbols:
            return False
        return _latest(self._signals, s.symbol, s)

    def _on_portfolio(self, p: PortfolioSnapshot) -> bool:
        self._advance(p.as_of_ns)
        old = self._portfolios.get(p.account)
        curve = self._curves.setdefault(p.account, _Curve(self.config.equity_points))
        curve.add(p.as_of_ns, p.equity)
        if old is not None and old.as_of_ns > p.as_of_ns:
            return False
        self._portfolios[p.account] = p
        return True

    def _on_risk(self, d: RiskDecision) -> bool:
        self._verdicts[d.verdict.value] += 1
        if d.verdict is not RiskVerdict.APPROVED:
            self._risk_recent.appendleft(
                {
                    "ts_ns": d.ts_event,
                    "symbol": d.symbol,
                    "strategy_id": d.strategy_id,
                    "verdict": d.verdict.value,
                    "requested": d.requested_quantity,
                    "approved": d.approved_quantity,
                    "reasons": list(d.reasons),
                }
            )
        return True

    def _on_audit(self, a: ControlAudit) -> bool:
        self._advance(a.ts_init)
        self._control.appendleft(
            {
                "ts_ns": a.ts_init,
                "component": a.component,
                "command": a.command,
                "scope": a.scope,
                "target": a.target,
                "operator": a.operator,
                "outcome": a.outcome.value,
                "reason": a.reason,
                "detail": a.detail,
                "changes": list(a.changes),
                "alert": a.alert,
            }
        )
        if a.outcome is ControlOutcome.ACCEPTED:
            for change in a.changes:
                verb, _, text = change.partition(" ")
                parsed = parse_switch(text)
                if parsed is None:
                    continue
                if verb == "engaged":
                    self._engage(a.component, parsed, a.ts_init)
                elif verb == "released":
                    self._switches.pop((a.component, parsed.scope, parsed.target, parsed.set_by), None)
        return True

    def _on_alert(self, a: Alert) -> bool:
        self._advance(a.ts_event)
        self._alerts.appendleft(
            {
                "ts_ns": a.ts_event,
                "severity": a.severity.value,
                "source": a.source,
                "code": a.code,
                "message": a.message,
            }
        )
        if a.code == "kill_switch_engaged" and a.message.startswith(_BREAKER_PREFIX):
            parsed = parse_switch(a.message[len(_BREAKER_PREFIX) :])
            if parsed is not None:
                self._engage(a.source, parsed, a.ts_event)
        return True

    def _engage(self, component: str, p: ParsedSwitch, at: int) -> None:
        self._switches[(component, p.scope, p.target, p.set_by)] = _Switch(
            component=component,
            scope=p.scope,
            target=p.target,
            reason=p.reason,
            set_by=p.set_by,
            set_at_ns=at,
            expires_at_ns=p.expires_at_ns,
        )

    def _on_dead_letter(self, d: DeadLetter) -> bool:
        self._dead[(d.consumer, d.source_topic, d.reason)] += 1
        self._dead_recent.appendleft(
            {
                "ts_ns": d.ts_event,
                "consumer": d.consumer,
                "topic": d.source_topic,
                "partition": d.source_partition,
                "offset": d.source_offset,
                "reason": d.reason,
                "detail": d.detail[:300],
            }
        )
        return True

    # ------------------------------------------------------------------
    # health (wall time passed in)
    # ------------------------------------------------------------------

    def consumed(self, topic: str, n: int = 1) -> None:
        """Count raw messages taken from ``topic`` (decodable or not): the throughput figure."""
        self._consumed[topic] += n

    def sample(self, now_ns: int) -> None:
        """Record the counters for the records/s window (at most once per ``rate_sample_ns``)."""
        if self._samples and now_ns - self._samples[-1][0] < self.config.rate_sample_ns:
            return
        self._samples.append((now_ns, dict(self._consumed)))
        while len(self._samples) > 2 and now_ns - self._samples[1][0] >= self.config.rate_window_ns:
            self._samples.popleft()

    def set_lag(self, topic: str, lag: int | None) -> None:
        self._lag[topic] = lag

    def set_database(self, ok: bool, detail: str, now_ns: int) -> None:
        self._db = {"status": "up" if ok else "down", "detail": detail, "checked_at_ns": now_ns}

    def set_broker(self, up: bool | None, now_ns: int) -> None:
        status = None if up is None else ("up" if up else "down")
        self._broker = {"status": status, "checked_at_ns": now_ns}

    def rates(self, now_ns: int) -> dict[str, float | None]:
        """Records/s per topic over the window; None until two samples span time."""
        if not self._samples:
            return dict.fromkeys(TOPICS)
        t0, c0 = self._samples[0]
        dt = (now_ns - t0) / NS_PER_SECOND
        if dt <= 0:
            return dict.fromkeys(TOPICS)
        return {t: (self._consumed[t] - c0.get(t, 0)) / dt for t in TOPICS}

    # ------------------------------------------------------------------
    # view
    # ------------------------------------------------------------------

    def active_switches(self) -> list[_Switch]:
        """Switches whose expiry is after the newest event time seen (expired ones are pruned)."""
        now = self.event_now_ns
        if now is not None:
            for k in [k for k, s in self._switches.items() if s.expires_at_ns is not None and now >= s.expires_at_ns]:
                del self._switches[k]
        return [self._switches[k] for k in sorted(self._switches)]

    def view(self, now_ns: int, **extra: Any) -> dict[str, Any]:
        """The JSON-ready snapshot the page renders (bounded size)."""
        rates = self.rates(now_ns)
        return {
            "version": self.version,
            "generated_at_ns": now_ns,
            "event_now_ns": self.event_now_ns,
            "health": {
                "broker": self._broker,
                "database": self._db,
                "topics": [
                    {"topic": t, "consumed": self._consumed[t], "rate": rates[t], "lag": self._lag.get(t)}
                    for t in TOPICS
                ],
                "dead_letters": [
                    {"consumer": c, "topic": t, "reason": r, "count": n} for (c, t, r), n in sorted(self._dead.items())
                ],
                "dead_letters_total": sum(self._dead.values()),
                "dead_letters_recent": list(self._dead_recent),
            },
            "signals": [_signal_view(self._signals[s]) for s in sorted(self._signals)],
            "portfolios": [_portfolio_view(self._portfolios[a], self._curves[a]) for a in sorted(self._portfolios)],
            "risk": {
                "verdicts": {v.value: self._verdicts[v.value] for v in RiskVerdict},
                "recent": list(self._risk_recent),
                "kill_switches": [s.view() for s in self.active_switches()],
                "control": list(self._control),
                "alerts": list(self._alerts),
            },
            "gates": [_gate_view(self._gates[k]) for k in sorted(self._gates)],
            "models": [_model_view(self._models[k]) for k in sorted(self._models)],
            **extra,
        }


def _latest(table: dict[Any, Any], key: Any, rec: Any) -> bool:
    old = table.get(key)
    if old is not None and old.ts_event > rec.ts_event:
        return False
    table[key] = rec
    return True


def _signal_view(s: Signal) -> dict[str, Any]:
    return {
        "symbol": s.symbol,
        "model_id": s.model_id,
        "model_version": s.model_version,
        "horizon": s.horizon,
        "score": s.score,
        "p_up": s.p_up,
        "p_flat": s.p_flat,
        "p_down": s.p_down,
        "expected_return": s.expected_return,
        "shadow": s.shadow,
        "ts_ns": s.ts_event,
    }


def _portfolio_view(p: PortfolioSnapshot, curve: _Curve) -> dict[str, Any]:
    symbols = sorted(set(p.quantities) | set(p.realized_pnls))
    positions = [
        {
            "symbol": s,
            "quantity": p.quantities.get(s, 0.0),
            "avg_price": p.avg_prices.get(s),
            "mark_price": p.mark_prices.get(s),
            "unrealized_pnl": p.unrealized_pnls.get(s),
            "realized_pnl": p.realized_pnls.get(s),
            "fees": p.fees.get(s),
        }
        for s in symbols
    ]
    return {
        "account": p.account,
        "as_of_ns": p.as_of_ns,
        "as_of_event_id": p.as_of_event_id,
        "quote_currency": p.quote_currency,
        "equity": p.equity,
        "cash": p.cash,
        "peak_equity": p.peak_equity,
        "drawdown": p.drawdown,
        "intraday_drawdown": p.intraday_drawdown,
        "daily_pnl": p.daily_pnl,
        "daily_return": p.daily_return,
        "realized_pnl": p.realized_pnl,
        "unrealized_pnl": p.unrealized_pnl,
        "fees_paid": p.fees_paid,
        "consecutive_losses": p.consecutive_losses,
        "closed_trades": p.closed_trades,
        "positions": positions,
        "equity_curve": curve.view(),
    }


def _gate_view(g: GateResult) -> dict[str, Any]:
    return {
        "gate": g.gate,
        "track": g.track,
        "metric": g.metric,
        "status": g.status.value,
        "value": g.value,
        "threshold": g.threshold,
        "comparator": g.comparator.value,
        "observations": g.observations,
        "blockers": list(g.blockers),
        "window_start_ns": g.window_start,
        "window_end_ns": g.window_end,
        "ts_ns": g.ts_event,
    }


def _model_view(m: ModelRegistryEvent) -> dict[str, Any]:
    return {
        "model_id": m.model_id,
        "version": m.version,
        "stage": m.stage.value,
        "feature_set_version": m.feature_set_version,
        "metrics": dict(sorted(m.metrics.items())[:8]),
        "checkpoint_sha256": m.checkpoint_sha256[:12],
        "ts_ns": m.ts_event,
    }
