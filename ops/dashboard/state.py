"""The dashboard's view model: records in, one JSON-ready snapshot out. Pure.

The page must show what the topics say, not what one worker happened to see in one order,
and the folding rules are worth unit-testing without a broker. Nothing here reads a clock or
does I/O: every method that needs "now" takes it as an argument.

Folding rules: latest per key wins by event time, never by arrival; counters dedupe on
``event_id`` in a bounded window; kill switches are tracked from the ``describe()`` text of
accepted ``control.audit`` changes and breaker alerts (:func:`parse_switch`) and shown until
their expiry on their own clock (market time for the breaker, wall time for an operator's
switch, as in :mod:`agents.risk.killswitch`); the equity curve keeps at most ``equity_points``
points per account (thinned by doubling the stride, newest always kept); missing is ``None``,
never 0. What became of the signals (signals in, intents out, why the others were not traded)
is not on a topic: the agent reads it from the trading agent's input journal, the rows
``tradeflow status`` prints (:func:`storage.status.trading_flow`), and hands them to
:meth:`DashboardState.set_trading_flow`.

Design: docs/dashboard.md#dashboard-state
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.governance.config import GovernanceConfig
from runtime.seen import SeenIds
from topics.records import (
    Alert,
    Bar,
    ControlAudit,
    ControlOutcome,
    DeadLetter,
    Fill,
    GateResult,
    ModelRegistryEvent,
    ModelStage,
    OpeningStatus,
    OrderStatus,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    RiskVerdict,
    RolloutDecision,
    Signal,
)
from topics.schema import Record
from topics.units import NS_PER_SECOND

__all__ = ["SERVING_STAGES", "TOPICS", "DashboardConfig", "DashboardState", "ParsedSwitch", "parse_switch"]

#: The catalogue topics the dashboard folds (the agent subscribes to exactly these).
TOPICS: tuple[str, ...] = (
    "market.bars",
    "signals",
    "portfolio.state",
    "risk.decisions",
    "orders.updates",
    "fills",
    "control.audit",
    "ops.alerts",
    "gates.results",
    "models.registry",
    "governance.audit",
    "deadletter",
    "risk.opening",
)
#: Stages whose signals trade capital: the versions the page calls "serving".
SERVING_STAGES: tuple[ModelStage, ...] = (ModelStage.ACTIVE, ModelStage.CANARY_30, ModelStage.CANARY_10)
_BREAKER_CODE = "kill_switch_engaged"

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
    #: the clock ``expires_at_ns`` is read on: ``market`` (breaker) or ``wall`` (operator)
    clock: str

    def view(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "scope": self.scope,
            "target": self.target,
            "reason": self.reason,
            "set_by": self.set_by,
            "set_at_ns": self.set_at_ns,
            "expires_at_ns": self.expires_at_ns,
            "clock": self.clock,
        }


@dataclass(slots=True)
class _Price:
    """The newest bar of one (venue, symbol, timeframe) and the close of the bar before it."""

    bar: Bar
    prev_close: float | None
    bars: int = 1


class DashboardState:
    """Mutable fold of the dashboard topics; ``view()`` is the JSON snapshot."""

    def __init__(self, config: DashboardConfig | None = None) -> None:
        self.config = config or DashboardConfig()
        self.version = 0
        #: newest market time seen (bars, signals, portfolio, orders, fills, breaker alerts)
        self.event_now_ns: int | None = None
        #: newest wall time seen on a control audit (operator switches expire on the wall clock)
        self.wall_now_ns: int | None = None
        #: event ids already folded; a repeated id counts as the newest again
        self._seen: SeenIds[str] = SeenIds(self.config.dedupe_window, refresh_on_hit=True)
        self._prices: dict[tuple[str, str, str], _Price] = {}
        self._signals: dict[str, Signal] = {}
        self._signals_seen = 0
        self._portfolios: dict[str, PortfolioSnapshot] = {}
        #: latest opening status per account (every blocker of new exposure)
        self._opening: dict[str, OpeningStatus] = {}
        self._curves: dict[str, _Curve] = {}
        self._verdicts: Counter[str] = Counter()
        self._risk_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._order_statuses: Counter[str] = Counter()
        self._orders_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._fills = 0
        self._fill_fees: dict[str, float] = {}
        self._fills_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._switches: dict[tuple[str, str, str, str], _Switch] = {}
        self._control: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._control_rejected = 0
        self._control_rejected_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._gates: dict[tuple[str, str, str], GateResult] = {}
        self._models: dict[tuple[str, str], ModelRegistryEvent] = {}
        self._rollouts: dict[tuple[str, str], RolloutDecision] = {}
        self._rollout_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._dead: Counter[tuple[str, str, str]] = Counter()
        self._dead_recent: deque[dict[str, Any]] = deque(maxlen=self.config.recent)
        self._consumed: Counter[str] = Counter()
        self._samples: deque[tuple[int, dict[str, int]]] = deque()
        self._lag: dict[str, int | None] = {}
        self._db: dict[str, Any] = {"status": None, "detail": "", "checked_at_ns": None}
        self._broker: dict[str, Any] = {"status": None, "checked_at_ns": None}
        self._flow: dict[str, Any] = {"accounts": [], "checked_at_ns": None, "error": None}

    # ------------------------------------------------------------------
    # records
    # ------------------------------------------------------------------

    def apply(self, record: Record) -> bool:
        """Fold one decoded record; returns whether the view changed."""
        if isinstance(record, Bar) and not record.is_closed:
            return False  # a forming bar shares its closed version's event id; not a price acted on
        if not self._seen.add(record.event_id):
            return False
        changed = self._dispatch(record)
        if changed:
            self.version += 1
        return changed

    def _dispatch(self, r: Record) -> bool:
        if isinstance(r, Bar):
            return self._on_bar(r)
        if isinstance(r, Signal):
            return self._on_signal(r)
        if isinstance(r, PortfolioSnapshot):
            return self._on_portfolio(r)
        if isinstance(r, RiskDecision):
            return self._on_risk(r)
        if isinstance(r, OrderUpdate):
            return self._on_order(r)
        if isinstance(r, Fill):
            return self._on_fill(r)
        if isinstance(r, ControlAudit):
            return self._on_audit(r)
        if isinstance(r, Alert):
            return self._on_alert(r)
        if isinstance(r, GateResult):
            return _latest(self._gates, (r.gate, r.track, r.metric), r)
        if isinstance(r, ModelRegistryEvent):
            return _latest(self._models, (r.model_id, r.version), r)
        if isinstance(r, RolloutDecision):
            return self._on_rollout(r)
        if isinstance(r, DeadLetter):
            return self._on_dead_letter(r)
        if isinstance(r, OpeningStatus):
            return _latest(self._opening, r.account, r)
        raise TypeError(f"the dashboard does not fold {type(r).__name__}")

    def _advance(self, ts: int) -> None:
        if self.event_now_ns is None or ts > self.event_now_ns:
            self.event_now_ns = ts

    def _on_bar(self, b: Bar) -> bool:
        self._advance(b.ts_event)
        key = (b.venue, b.symbol, b.timeframe.value)
        cur = self._prices.get(key)
        if cur is None:
            if len(self._prices) >= self.config.max_symbols:
                return False
            self._prices[key] = _Price(b, None)
            return True
        cur.bars += 1
        old = cur.bar
        if (b.open_time, b.revision) <= (old.open_time, old.revision):
            return False  # redelivered, late or an older revision
        if b.open_time > old.open_time:
            cur.prev_close = old.close
        cur.bar = b
        return True

    def _on_signal(self, s: Signal) -> bool:
        self._advance(s.ts_event)
        self._signals_seen += 1
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

    def _on_order(self, o: OrderUpdate) -> bool:
        self._advance(o.ts_event)
        self._order_statuses[o.status.value] += 1
        self._orders_recent.appendleft(
            {
                "ts_ns": o.ts_event,
                "client_order_id": o.client_order_id,
                "adapter": o.adapter,
                "symbol": o.symbol,
                "side": o.side.value,
                "quantity": o.quantity,
                "filled_quantity": o.filled_quantity,
                "avg_fill_price": o.avg_fill_price,
                "status": o.status.value,
                "reason": o.reason,
            }
        )
        return True

    def _on_fill(self, f: Fill) -> bool:
        self._advance(f.ts_event)
        self._fills += 1
        self._fill_fees[f.fee_currency] = self._fill_fees.get(f.fee_currency, 0.0) + f.fee
        self._fills_recent.appendleft(
            {
                "ts_ns": f.ts_event,
                "client_order_id": f.client_order_id,
                "adapter": f.adapter,
                "symbol": f.symbol,
                "side": f.side.value,
                "price": f.price,
                "quantity": f.quantity,
                "fee": f.fee,
                "fee_currency": f.fee_currency,
                "liquidity": f.liquidity.value,
                "slippage_bps": f.slippage_bps,
            }
        )
        return True

    def _on_audit(self, a: ControlAudit) -> bool:
        if self.wall_now_ns is None or a.ts_init > self.wall_now_ns:
            self.wall_now_ns = a.ts_init
        row = {
            "ts_ns": a.ts_init,
            "control_event_id": a.control_event_id,
            "component": a.component,
            "command": a.command,
            "scope": a.scope,
            "target": a.target,
            "operator": a.operator,
            "key_id": a.key_id,
            "outcome": a.outcome.value,
            "reason": a.reason,
            "detail": a.detail,
            "changes": list(a.changes),
            "alert": a.alert,
        }
        self._control.appendleft(row)
        if a.outcome is ControlOutcome.REJECTED:
            self._control_rejected += 1
            self._control_rejected_recent.appendleft(row)
        if a.outcome is ControlOutcome.ACCEPTED:
            for change in a.changes:
                verb, _, text = change.partition(" ")
                parsed = parse_switch(text)
                if parsed is None:
                    continue
                if verb == "engaged":
                    self._engage(a.component, parsed, a.ts_init, "wall")
                elif verb == "released":
                    self._switches.pop((a.component, parsed.scope, parsed.target, parsed.set_by), None)
        return True

    def _on_alert(self, a: Alert) -> bool:
        self._alerts.appendleft(
            {
                "ts_ns": a.ts_event,
                "severity": a.severity.value,
                "source": a.source,
                "code": a.code,
                "message": a.message,
            }
        )
        if a.code == _BREAKER_CODE and a.message.startswith(_BREAKER_PREFIX):
            self._advance(a.ts_event)  # the breaker's alert is stamped with its bar: market time
            parsed = parse_switch(a.message[len(_BREAKER_PREFIX) :])
            if parsed is not None:
                self._engage(a.source, parsed, a.ts_event, "market")
        return True

    def _engage(self, component: str, p: ParsedSwitch, at: int, clock: str) -> None:
        self._switches[(component, p.scope, p.target, p.set_by)] = _Switch(
            component=component,
            scope=p.scope,
            target=p.target,
            reason=p.reason,
            set_by=p.set_by,
            set_at_ns=at,
            expires_at_ns=p.expires_at_ns,
            clock=clock,
        )

    def _on_rollout(self, d: RolloutDecision) -> bool:
        row = _rollout_view(d)
        self._rollout_recent.appendleft(row)
        key = (d.model_id, d.symbol or "*")
        old = self._rollouts.get(key)
        # the steps of one ``--to`` promote share their time: the one published last (the top stage) wins
        if old is None or old.ts_event <= d.ts_event:
            self._rollouts[key] = d
        return True

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
    # what the trading agent's journal says (read by the agent, passed in)
    # ------------------------------------------------------------------

    def set_trading_flow(self, accounts: list[Mapping[str, Any]] | None, now_ns: int, error: str | None = None) -> bool:
        """Per account: signals in, intents out, held, verdicts, top skip and denial reasons
        (:class:`storage.status.TradingFlowRow`). ``accounts`` None: the read failed with ``error``
        (an error class); the last rows read stay, marked stale by ``checked_at_ns``/``error``.
        Returns whether the view changed."""
        if accounts is None:
            changed = bool(self._flow["error"] != error)
            self._flow = {**self._flow, "error": error}
        else:
            rows = [_flow_view(a) for a in sorted(accounts, key=lambda a: str(a["account"]))]
            changed = bool(rows != self._flow["accounts"] or self._flow["error"] is not None)
            self._flow = {"accounts": rows, "checked_at_ns": now_ns, "error": None}
        if changed:
            self.version += 1
        return changed

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

    def active_switches(self, wall_ns: int | None = None) -> list[_Switch]:
        """Switches still in force (expired ones are pruned): a breaker's until the newest market time
        seen, an operator's until the wall time (the newer of ``wall_ns`` and the newest command seen)."""
        walls = [t for t in (wall_ns, self.wall_now_ns) if t is not None]
        clocks = {"market": self.event_now_ns, "wall": max(walls) if walls else None}
        for k, s in list(self._switches.items()):
            now = clocks[s.clock]
            if s.expires_at_ns is not None and now is not None and now >= s.expires_at_ns:
                del self._switches[k]
        return [self._switches[k] for k in sorted(self._switches)]

    def serving(self) -> list[dict[str, Any]]:
        """The versions whose signals trade capital now (active and canary stages), by model."""
        fractions = GovernanceConfig()
        out = []
        for (model_id, version), m in sorted(self._models.items()):
            if m.stage in SERVING_STAGES:
                out.append(
                    {
                        "model_id": model_id,
                        "version": version,
                        "stage": m.stage.value,
                        "capital_fraction": fractions.capital_fraction(m.stage),
                        "since_ns": m.ts_event,
                    }
                )
        return out

    def view(self, now_ns: int, **extra: Any) -> dict[str, Any]:
        """The JSON-ready snapshot the page renders (bounded size). ``now_ns``: wall time."""
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
            "prices": [_price_view(self._prices[k]) for k in sorted(self._prices)],
            "signals": [_signal_view(self._signals[s]) for s in sorted(self._signals)],
            "signals_seen": self._signals_seen,
            "trading": dict(self._flow),
            "portfolios": [_portfolio_view(self._portfolios[a], self._curves[a]) for a in sorted(self._portfolios)],
            "orders": {
                "statuses": {s.value: self._order_statuses[s.value] for s in OrderStatus},
                "recent": list(self._orders_recent),
                "fills": self._fills,
                "fees": dict(sorted(self._fill_fees.items())),
                "fills_recent": list(self._fills_recent),
            },
            "risk": {
                "verdicts": {v.value: self._verdicts[v.value] for v in RiskVerdict},
                "recent": list(self._risk_recent),
                "kill_switches": [s.view() for s in self.active_switches(now_ns)],
                "opening": [_opening_view(self._opening[a]) for a in sorted(self._opening)],
                "control": list(self._control),
                "control_rejected": self._control_rejected,
                "control_rejected_recent": list(self._control_rejected_recent),
                "alerts": list(self._alerts),
            },
            "gates": [_gate_view(self._gates[k]) for k in sorted(self._gates)],
            "models": [_model_view(self._models[k]) for k in sorted(self._models)],
            "serving": self.serving(),
            "rollouts": [_rollout_view(self._rollouts[k]) for k in sorted(self._rollouts)],
            "rollout_recent": list(self._rollout_recent),
            **extra,
        }


def _latest(table: dict[Any, Any], key: Any, rec: Any) -> bool:
    old = table.get(key)
    if old is not None and old.ts_event > rec.ts_event:
        return False
    table[key] = rec
    return True


def _opening_view(o: OpeningStatus) -> dict[str, Any]:
    """An account's opening status: allowed, or each blocker with its end and the time left as published."""
    blockers = zip(
        o.blocker_codes,
        o.blocker_scopes,
        o.blocker_targets,
        o.blocker_details,
        o.blocker_until_ns,
        o.blocker_domains,
        o.blocker_remaining_ns,
        strict=True,
    )
    keys = ("code", "scope", "target", "detail", "until_ns", "domain", "remaining_ns")
    return {
        "account": o.account,
        "allowed": o.allowed,
        "market_ns": o.market_ns,
        "wall_ns": o.wall_ns,
        "blockers": [dict(zip(keys, b, strict=True)) for b in blockers],
    }


def _price_view(p: _Price) -> dict[str, Any]:
    b = p.bar
    change = None if p.prev_close is None or p.prev_close <= 0 else b.close / p.prev_close - 1.0
    return {
        "venue": b.venue,
        "symbol": b.symbol,
        "timeframe": b.timeframe.value,
        "open": b.open,
        "high": b.high,
        "low": b.low,
        "close": b.close,
        "volume": b.volume,
        "change": change,
        "open_time_ns": b.open_time,
        "ts_ns": b.ts_event,
        "bars": p.bars,
    }


def _flow_view(a: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "account": str(a["account"]),
        "signals_in": int(a["signals_in"]),
        "intents_out": int(a["intents_out"]),
        "held": int(a["held"]),
        "verdicts": {str(k): int(v) for k, v in sorted(dict(a["verdicts"]).items())},
        "skipped": [{"reason": str(r["reason"]), "n": int(r["n"])} for r in a["skipped"]],
        "denied": [{"reason": str(r["reason"]), "n": int(r["n"])} for r in a["denied"]],
    }


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


def _rollout_view(d: RolloutDecision) -> dict[str, Any]:
    return {
        "model_id": d.model_id,
        "symbol": d.symbol,
        "version": d.version,
        "from_stage": None if d.from_stage is None else d.from_stage.value,
        "to_stage": None if d.to_stage is None else d.to_stage.value,
        "action": d.action.value,
        "trigger": d.trigger.value,
        "actor": d.actor,
        "reason": d.reason,
        "restored_version": d.restored_version,
        "passing_windows": d.passing_windows,
        "failing_windows": d.failing_windows,
        "windows_to_promote": d.windows_to_promote,
        "windows_to_rollback": d.windows_to_rollback,
        "ts_ns": d.ts_event,
    }
