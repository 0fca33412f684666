"""Backtest metrics, per symbol and total (``symbol = '*'``). Pure functions.

``None`` means *missing* (not observable from this run), never 0.0; 0.0 is a
value (e.g. no fills: fees 0.0, trade_count 0.0). Amounts are in the quote
currency; ``initial_cash`` is the account's starting equity.

Metrics: ``pnl_after_costs`` (fill prices include slippage and impact), ``fees`` /
``slippage`` / ``impact`` (recovered from the paper engine's bps), ``pnl`` before costs,
``sharpe_daily`` (each UTC day's last equity, ``mean / stdev(ddof=1) x sqrt(365)``, ``None``
below 2 returns or at zero stdev), ``max_drawdown``, ``turnover``, ``trade_count``,
``win_rate`` over closed round trips, ``reject_rate`` (venue rejects / orders sent to
execution, risk blocks in neither), ``observation_days``, ``lineage_coverage``.

Design: docs/replay.md#metric-formulas
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agents.features.spec import parse_lineage_id
from backtest.replay import ReplayResult
from backtest.sharpe import daily_sharpe
from topics.records import (
    Fill,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    Side,
    Signal,
)

__all__ = [
    "METRIC_NAMES",
    "TOTAL",
    "FillCosts",
    "LineageKeys",
    "compute_metrics",
    "daily_sharpe",
    "fill_costs",
    "max_drawdown",
    "round_trip_pnls",
]

TOTAL = "*"
METRIC_NAMES = (
    "pnl",
    "pnl_after_costs",
    "fees",
    "slippage",
    "impact",
    "sharpe_daily",
    "max_drawdown",
    "turnover",
    "trade_count",
    "win_rate",
    "reject_rate",
    "observation_days",
    "lineage_coverage",
    "round_trips",
)
_RISK_BLOCKED = "risk_blocked"
_QTY_EPS = 1e-12

Metrics = dict[tuple[str, str], float | None]


@dataclass(frozen=True, slots=True)
class FillCosts:
    notional: float
    fee: float
    slippage: float
    impact: float


@dataclass(frozen=True, slots=True)
class LineageKeys:
    """What the run knows: (model id, signal model version) -> feature set version."""

    models: Mapping[tuple[str, str], str] = field(default_factory=dict)


def fill_costs(fill: Fill) -> FillCosts:
    sign = 1.0 if fill.side is Side.BUY else -1.0
    ref = fill.price / (1.0 + sign * (fill.slippage_bps + fill.impact_bps) / 10_000)
    return FillCosts(
        notional=fill.quantity * fill.price,
        fee=fill.fee,
        slippage=fill.quantity * ref * fill.slippage_bps / 10_000,
        impact=fill.quantity * ref * fill.impact_bps / 10_000,
    )


def max_drawdown(values: Iterable[float], initial: float) -> float | None:
    peak = initial
    worst: float | None = None
    for v in values:
        peak = max(peak, v)
        dd = (peak - v) / peak if peak > 0 else 0.0
        worst = dd if worst is None else max(worst, dd)
    return worst


def round_trip_pnls(fills: Iterable[Fill]) -> list[float]:
    """PnL of each closed round trip of one symbol's fills (flat -> flat, or flip)."""
    qty = avg = trip = 0.0
    out: list[float] = []
    for f in fills:
        s = f.quantity if f.side is Side.BUY else -f.quantity
        if abs(qty) <= _QTY_EPS or qty * s > 0:
            avg = (avg * abs(qty) + f.price * abs(s)) / (abs(qty) + abs(s))
            qty += s
            trip -= f.fee
            continue
        close = min(abs(s), abs(qty))
        closing_fee = f.fee * close / abs(s)
        trip += close * (f.price - avg) * math.copysign(1.0, qty) - closing_fee
        qty += s
        if abs(qty) <= _QTY_EPS or qty * s > 0:
            out.append(trip)
            trip = 0.0
            if abs(qty) > _QTY_EPS:  # flip: the remainder opens at this price
                avg = f.price
                trip = -(f.fee - closing_fee)
            else:
                qty = avg = 0.0
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def compute_metrics(
    result: ReplayResult, *, symbols: Sequence[str], initial_cash: float, lineage: LineageKeys
) -> Metrics:
    """Every metric of :data:`METRIC_NAMES` for each symbol and the total."""
    out: Metrics = {}
    snaps = [r for r in result.records if isinstance(r, PortfolioSnapshot)]
    last = snaps[-1] if snaps else None
    groups: list[str] = [*symbols, TOTAL]

    # -- PnL, costs ------------------------------------------------------------------
    for sym in groups:
        fills = [f for f in result.fills if sym == TOTAL or f.symbol == sym]
        costs = [fill_costs(f) for f in fills]
        fees = math.fsum(c.fee for c in costs)
        slip = math.fsum(c.slippage for c in costs)
        impact = math.fsum(c.impact for c in costs)
        after: float | None
        if last is None:
            after = None
        elif sym == TOTAL:
            after = last.equity - initial_cash
        else:
            after = last.realized_pnls.get(sym, 0.0) + last.unrealized_pnls.get(sym, 0.0) - last.fees.get(sym, 0.0)
        out[(sym, "pnl_after_costs")] = after
        out[(sym, "pnl")] = None if after is None else after + fees + slip + impact
        out[(sym, "fees")] = fees
        out[(sym, "slippage")] = slip
        out[(sym, "impact")] = impact
        out[(sym, "turnover")] = math.fsum(c.notional for c in costs) / initial_cash
        out[(sym, "trade_count")] = float(len(fills))
        curve = _curve(result, snaps, sym, initial_cash)
        out[(sym, "sharpe_daily")] = daily_sharpe(curve, initial_cash)
        out[(sym, "max_drawdown")] = max_drawdown((e for _, e in curve), initial_cash)
        days = (
            result.traded_days.get(sym, frozenset())
            if sym != TOTAL
            else frozenset().union(*result.traded_days.values())
        )
        out[(sym, "observation_days")] = float(len(days))

    # -- round trips ---------------------------------------------------------------------
    trips_all: list[float] = []
    for sym in symbols:
        trips = round_trip_pnls(f for f in result.fills if f.symbol == sym)
        trips_all.extend(trips)
        out[(sym, "round_trips")] = float(len(trips))
        out[(sym, "win_rate")] = _ratio(sum(p > 0 for p in trips), len(trips))
    out[(TOTAL, "round_trips")] = float(len(trips_all))
    out[(TOTAL, "win_rate")] = _ratio(sum(p > 0 for p in trips_all), len(trips_all))

    # -- execution rejects ------------------------------------------------------------------
    orders: dict[str, tuple[str, bool]] = {}  # coid -> (symbol, rejected by execution)
    blocked: set[str] = set()
    for rec in result.records:
        if isinstance(rec, OrderUpdate):
            if rec.status is OrderStatus.REJECTED and rec.reason == _RISK_BLOCKED:
                blocked.add(rec.client_order_id)
                continue
            prev = orders.get(rec.client_order_id, (rec.symbol, False))
            orders[rec.client_order_id] = (rec.symbol, prev[1] or rec.status is OrderStatus.REJECTED)
    for sym in groups:
        sent = [rej for coid, (s, rej) in orders.items() if coid not in blocked and (sym == TOTAL or s == sym)]
        out[(sym, "reject_rate")] = _ratio(sum(sent), len(sent))

    # -- lineage ------------------------------------------------------------------------------
    signals = {s.event_id: s for s in result.signals}
    intents = {r.event_id: r for r in result.records if isinstance(r, OrderIntent)}
    decisions = [r for r in result.records if isinstance(r, RiskDecision)]
    for sym in groups:
        mine = [d for d in decisions if sym == TOTAL or d.symbol == sym]
        known = sum(_known(intents.get(d.intent_event_id), signals, result.bar_event_ids, lineage) for d in mine)
        out[(sym, "lineage_coverage")] = _ratio(known, len(mine))
    return out


def _known(
    intent: OrderIntent | None, signals: Mapping[str, Signal], bars: frozenset[str], lineage: LineageKeys
) -> bool:
    if intent is None:
        return False
    sig = signals.get(intent.signal_event_id)
    if sig is None:
        return intent.reason is not None and intent.signal_event_id in bars
    fsv = lineage.models.get((sig.model_id, sig.model_version))
    if fsv is None or not sig.feature_event_id:
        return False
    try:
        parse_lineage_id(sig.lineage_id)
    except ValueError:
        return False
    return True


def _curve(
    result: ReplayResult, snaps: Sequence[PortfolioSnapshot], sym: str, initial: float
) -> list[tuple[int, float]]:
    if sym == TOTAL:
        return [(p.ts_ns, p.equity) for p in result.equity]
    by_ts: dict[int, float] = {}
    for s in snaps:
        by_ts[s.as_of_ns] = (
            initial + s.realized_pnls.get(sym, 0.0) + s.unrealized_pnls.get(sym, 0.0) - s.fees.get(sym, 0.0)
        )
    return sorted(by_ts.items())
