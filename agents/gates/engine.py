"""Gate engine: hard metrics, execution reject rate, backtest-vs-paper parity and readiness.

Pure and deterministic: plain inputs (backtest runs with their metrics, backtest fills,
paper fills, real order updates) and an explicit evaluation time ``now_ns`` in,
:class:`~topics.records.GateResult` records out (``ts_event = ts_init = now_ns``; ids from
:meth:`Record.new`, so the same evaluation gives the same ids). No I/O, no clock.

Rules: evidence is every valid run in the lookback (``succeeded``, a configured source, not
superseded, the newest attempt of its request); a superseded run with metrics but no valid,
newer replacement keeps the hard metrics from passing. Every hard metric must pass on every
such run. The reject rate is real paper/live execution (``orders.updates``), insufficient
below ``reject_min_orders``. Parity: ``|C_paper - C_backtest| / max(|C_backtest|,
parity_return_floor * capital) <= parity_tolerance`` per 7/30-day window and symbol, the gap
split into quantity, price, slippage, impact and fee. Readiness needs every required gate
passed, ``min_valid_runs`` runs each passing every hard metric and a prod-only config.
Missing is ``insufficient_observation``, never a pass; 0.0 is a value.

Design: docs/gates.md#gate-engine
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from agents.execution.interface import ExecReason
from agents.gates.config import EXECUTION_REJECT_METRIC, GateConfig
from topics.records import Comparator, GateResult, GateStatus
from topics.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE, NS_PER_SECOND

__all__ = [
    "GATE_EXECUTION",
    "GATE_HARD_METRICS",
    "GATE_PARITY",
    "GATE_READINESS",
    "Attribution",
    "BacktestFill",
    "Evaluation",
    "Evidence",
    "ExecutionUpdate",
    "OrderCash",
    "PaperFill",
    "ParityOutcome",
    "RunInfo",
    "TrackInputs",
    "compare",
    "evaluate_execution",
    "evaluate_hard_metrics",
    "evaluate_parity",
    "evaluate_readiness",
    "evaluate_track",
    "evidence",
    "evidence_runs",
    "exclusion_reason",
    "execution_symbols",
    "parity_metric",
    "required_gates",
    "window_label",
]

GATE_HARD_METRICS = "hard_metrics"
GATE_EXECUTION = "execution"
GATE_PARITY = "parity"
GATE_READINESS = "readiness"
READINESS_METRIC = "valid_runs"
_BPS = 10_000.0
#: Order-update reasons of orders that never reached a venue: not "sent", counted in neither side.
_NOT_SENT = frozenset({ExecReason.RISK_BLOCKED.value, ExecReason.DRY_RUN.value})


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One ``backtest_runs`` row with its run-total metrics (``None`` = NULL)."""

    run_id: str
    track: str
    source: str
    status: str
    superseded_by: str | None
    symbols: tuple[str, ...]
    range_start_ns: int | None
    range_end_ns: int | None
    created_at_ns: int
    finished_at_ns: int | None
    metrics: Mapping[str, float | None] = field(default_factory=lambda: MappingProxyType({}))
    #: Groups the attempts of one request (re-runs); None: the run is its own request.
    request_hash: str | None = None
    #: The account's starting capital (``config.request.initial_cash``): the parity return base.
    initial_cash: float | None = None

    @property
    def request_key(self) -> str:
        return self.request_hash if self.request_hash is not None else self.run_id

    @property
    def superseded(self) -> bool:
        return self.status == "superseded" or self.superseded_by is not None

    @property
    def done_ns(self) -> int:
        """When the run's evidence became available (finish, else creation)."""
        return self.finished_at_ns if self.finished_at_ns is not None else self.created_at_ns

    def rank(self) -> tuple[int, int, str]:
        """Newest first when sorted descending; the run id breaks ties deterministically."""
        return (self.done_ns, self.created_at_ns, self.run_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestFill:
    """One ``backtest_fills`` row; costs are quote amounts, ``notional`` includes them in the price."""

    run_id: str
    seq: int
    client_order_id: str
    symbol: str
    side: str
    ts_ns: int
    quantity: float
    price: float
    notional: float
    fee: float
    slippage_cost: float
    impact_cost: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PaperFill:
    """One paper ``Fill`` (``ev_fills``); slippage/impact in bps of the reference price."""

    client_order_id: str
    fill_id: str
    symbol: str
    side: str
    ts_ns: int
    quantity: float
    price: float
    fee: float
    slippage_bps: float
    impact_bps: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionUpdate:
    """One ``orders.updates`` record of a paper or live account (``ev_order_updates``)."""

    client_order_id: str
    adapter: str
    symbol: str
    status: str
    reason: str | None
    ts_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackInputs:
    """Everything the gates of one track read, already loaded."""

    track: str
    runs: tuple[RunInfo, ...]
    backtest_fills: tuple[BacktestFill, ...] = ()
    paper_fills: tuple[PaperFill, ...] = ()
    order_updates: tuple[ExecutionUpdate, ...] = ()


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderCash:
    """One order's fills summed: reference notional and each cost, in quote."""

    client_order_id: str
    symbol: str
    side: str
    first_ts_ns: int
    quantity: float
    ref_notional: float
    slippage: float
    impact: float
    fee: float

    @property
    def sign(self) -> int:
        """Cash direction: a sell brings cash in (+1), a buy pays it out (-1)."""
        return 1 if self.side == "sell" else -1

    @property
    def cash(self) -> float:
        """``s * N - fee`` written with the reference notional: ``s * R - slippage - impact - fee``."""
        return self.sign * self.ref_notional - self.slippage - self.impact - self.fee

    @property
    def ref_price(self) -> float:
        return self.ref_notional / self.quantity if self.quantity > 0 else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """The parity gap of one symbol and window split by cause (sums to ``gap``)."""

    matched_orders: int
    backtest_cash: float
    paper_cash: float
    gap: float
    quantity: float
    price: float
    slippage: float
    impact: float
    fee: float

    def parts(self) -> dict[str, float]:
        return {
            "quantity": self.quantity,
            "price": self.price,
            "slippage": self.slippage,
            "impact": self.impact,
            "fee": self.fee,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ParityOutcome:
    """A parity result with what the record cannot carry: symbol, window, attribution."""

    result: GateResult
    symbol: str
    window_ns: int
    attribution: Attribution | None
    unmatched_backtest: tuple[str, ...]
    unmatched_paper: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """Every gate of one track at one evaluation time; ``readiness`` is last in ``results``."""

    track: str
    results: tuple[GateResult, ...]
    parity: tuple[ParityOutcome, ...]
    readiness: GateResult
    #: Every symbol of the track's runs (valid or not): which market track it is on.
    symbols: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.readiness.status is GateStatus.PASSED

    @property
    def any_failed(self) -> bool:
        return any(r.status is GateStatus.FAILED for r in self.results)


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def compare(value: float, comparator: Comparator, threshold: float) -> bool:
    """``value <comparator> threshold``: the one place a gate decides."""
    if comparator is Comparator.LT:
        return value < threshold
    if comparator is Comparator.LE:
        return value <= threshold
    if comparator is Comparator.GT:
        return value > threshold
    return value >= threshold


def window_label(window_ns: int) -> str:
    """``7d`` / ``12h`` / ``90m`` / ``45s``: the window in a metric name."""
    for unit, size in (("d", NS_PER_DAY), ("h", NS_PER_HOUR), ("m", NS_PER_MINUTE)):
        if window_ns % size == 0:
            return f"{window_ns // size}{unit}"
    return f"{window_ns // NS_PER_SECOND}s"


def parity_metric(window_ns: int, symbol: str) -> str:
    return f"relative_deviation_{window_label(window_ns)}:{symbol}"


def exclusion_reason(run: RunInfo, cfg: GateConfig) -> str | None:
    """Why a run is not valid evidence by itself (None: it is valid)."""
    if run.status != "succeeded":
        return run.status  # running, failed, superseded
    if run.superseded_by is not None:
        return "superseded"
    if run.source not in cfg.sources:
        return f"source {run.source}"
    return None


# ---------------------------------------------------------------------------
# Evidence: which runs the hard metrics and readiness read
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """The runs that are evidence at ``now`` and what keeps others from being it."""

    #: Valid runs finished in the lookback, one per request (its newest attempt), newest first.
    runs: tuple[RunInfo, ...]
    #: One blocker per superseded run in the lookback whose evidence has no valid replacement.
    unresolved: tuple[str, ...]
    #: ``excluded runs in lookback: ...`` (None when none was excluded).
    excluded: str | None


def _replacement_problem(run: RunInfo, by_id: Mapping[str, RunInfo], cfg: GateConfig, now_ns: int) -> str | None:
    """Why a superseded run has no valid replacement (None: it has one).

    A replacement is the end of the ``superseded_by`` chain, a run of the same track that is
    valid evidence itself and finished no earlier than the run it replaces (and by ``now``);
    or, without one, a newer valid attempt of the same request (a re-run).
    """
    problem = "superseded without superseded_by"
    seen = {run.run_id}
    nxt = run.superseded_by
    while nxt is not None:
        if nxt in seen:
            problem = f"superseded_by chain loops at {nxt}"
            break
        seen.add(nxt)
        cand = by_id.get(nxt)
        if cand is None:
            problem = f"replacement {nxt} is not a run of this track"
            break
        if cand.superseded:
            nxt = cand.superseded_by
            problem = f"replacement {cand.run_id} is superseded without superseded_by"
            continue
        problem = _unfit_replacement(run, cand, cfg, now_ns) or ""
        if not problem:
            return None
        break
    rerun = (c for c in by_id.values() if c.run_id not in seen and c.request_key == run.request_key)
    if any(_unfit_replacement(run, c, cfg, now_ns) is None for c in rerun):
        return None
    return problem


def _unfit_replacement(run: RunInfo, cand: RunInfo, cfg: GateConfig, now_ns: int) -> str | None:
    reason = exclusion_reason(cand, cfg)
    if reason is not None:
        return f"replacement {cand.run_id} is {reason}"
    if cand.done_ns < run.done_ns:
        return f"replacement {cand.run_id} finished before the run it replaces"
    if cand.done_ns > now_ns:
        return f"replacement {cand.run_id} had not finished at the evaluation time"
    return None


def evidence(runs: Iterable[RunInfo], cfg: GateConfig, now_ns: int) -> Evidence:
    """The evidence rule (docs/gates.md#evidence), for one track's runs."""
    runs = list(runs)
    start = now_ns - cfg.lookback_ns
    by_id = {r.run_id: r for r in runs}
    in_lookback = sorted((r for r in runs if start <= r.done_ns <= now_ns), key=RunInfo.rank, reverse=True)
    newest: dict[str, RunInfo] = {}
    for r in in_lookback:
        if exclusion_reason(r, cfg) is None:
            newest.setdefault(r.request_key, r)
    counts: dict[str, int] = {}
    unresolved: list[str] = []
    for r in in_lookback:
        reason = exclusion_reason(r, cfg)
        if reason is None and newest[r.request_key] is not r:
            reason = "older attempt"
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
        # a superseded run that had produced evidence (metrics are written with 'succeeded'):
        # withdrawing it without a replacement must not leave the older, better runs to decide
        if r.superseded and r.source in cfg.sources and r.metrics:
            why = _replacement_problem(r, by_id, cfg, now_ns)
            if why is not None:
                unresolved.append(
                    f"superseded run {r.run_id} withdrew its evidence without a valid replacement ({why})"
                )
    excluded = None
    if counts:
        excluded = "excluded runs in lookback: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    valid = tuple(r for r in in_lookback if newest.get(r.request_key) is r)
    return Evidence(runs=valid, unresolved=tuple(unresolved), excluded=excluded)


def evidence_runs(runs: Iterable[RunInfo], cfg: GateConfig, now_ns: int) -> list[RunInfo]:
    """Valid runs finished in ``[now - lookback, now]``, one per request, newest first."""
    return list(evidence(runs, cfg, now_ns).runs)


def _listed_more(lines: Sequence[str], limit: int, what: str) -> list[str]:
    out = list(lines[:limit])
    if len(lines) > limit:
        out.append(f"... and {len(lines) - limit} more {what}")
    return out


def _result(
    cfg: GateConfig,
    now_ns: int,
    *,
    gate: str,
    track: str,
    metric: str,
    status: GateStatus,
    value: float | None,
    threshold: float,
    comparator: Comparator,
    window_start: int,
    observations: int,
    blockers: Sequence[str],
) -> GateResult:
    return GateResult.new(
        ts_init=now_ns,
        ts_event=now_ns,
        gate=gate,
        track=track,
        metric=metric,
        status=status,
        value=value,
        threshold=threshold,
        comparator=comparator,
        window_start=window_start,
        window_end=now_ns,
        observations=observations,
        blockers=tuple(blockers),
        config_hash=cfg.config_hash(),
    )


def _observed(value: float | None) -> float | None:
    """A metric value, or None when it is missing (absent, NULL, NaN or infinite)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# ---------------------------------------------------------------------------
# Hard metrics
# ---------------------------------------------------------------------------


def _worst(values: Sequence[float], comparator: Comparator) -> float:
    """The value nearest to failing: the smallest for ``>=``/``>``, the largest for ``<``/``<=``."""
    return min(values) if comparator in (Comparator.GE, Comparator.GT) else max(values)


def _missing_what(run: RunInfo, metric: str) -> str:
    raw = run.metrics.get(metric)
    return "absent" if metric not in run.metrics else ("NULL" if raw is None else f"{raw!r}")


def evaluate_hard_metrics(track: str, runs: Sequence[RunInfo], cfg: GateConfig, now_ns: int) -> list[GateResult]:
    """One result per configured hard metric over *every* evidence run (docs/gates.md#hard-metrics).

    ``failed`` when any run fails; else ``insufficient_observation`` when any run lacks the
    metric, no run is evidence, or a superseded run has no valid replacement; else ``passed``.
    ``value`` is the worst observed value, ``observations`` the runs that have one.
    """
    ev = evidence(runs, cfg, now_ns)
    out: list[GateResult] = []
    for spec in cfg.hard_metrics:
        observed: list[tuple[RunInfo, float]] = []
        missing: list[str] = []
        for r in ev.runs:
            v = _observed(r.metrics.get(spec.metric))
            if v is None:
                missing.append(f"{spec.metric}: missing in run {r.run_id} ({_missing_what(r, spec.metric)})")
            else:
                observed.append((r, v))
        failing = [
            f"{spec.metric} = {v:.6g} fails {spec.comparator.value} {spec.threshold:g} (run {r.run_id})"
            for r, v in observed
            if not compare(v, spec.comparator, spec.threshold)
        ]
        blockers: list[str] = []
        if not ev.runs:
            status = GateStatus.INSUFFICIENT_OBSERVATION
            blockers.append(
                f"{spec.metric}: no valid run (succeeded, source in {list(cfg.sources)}, "
                "not superseded) finished in the lookback"
            )
        elif failing:
            status = GateStatus.FAILED
            if len(ev.runs) > 1:
                blockers.append(f"{spec.metric}: {len(failing)} of {len(ev.runs)} valid runs fail")
            blockers += _listed_more(failing, cfg.max_listed, "failing runs")
        elif missing or ev.unresolved:
            status = GateStatus.INSUFFICIENT_OBSERVATION
        else:
            status = GateStatus.PASSED
        blockers += _listed_more(missing, cfg.max_listed, "runs missing it")
        blockers += ev.unresolved
        if ev.excluded is not None and status is not GateStatus.PASSED:
            blockers.append(ev.excluded)
        out.append(
            _result(
                cfg,
                now_ns,
                gate=GATE_HARD_METRICS,
                track=track,
                metric=spec.metric,
                status=status,
                value=_worst([v for _, v in observed], spec.comparator) if observed else None,
                threshold=spec.threshold,
                comparator=spec.comparator,
                window_start=now_ns - cfg.lookback_ns,
                observations=len(observed),
                blockers=blockers,
            )
        )
    return out


def _passes_every_hard_metric(run: RunInfo, cfg: GateConfig) -> bool:
    for spec in cfg.hard_metrics:
        v = _observed(run.metrics.get(spec.metric))
        if v is None or not compare(v, spec.comparator, spec.threshold):
            return False
    return True


# ---------------------------------------------------------------------------
# Execution reject rate (real paper/live orders)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Order:
    first_ts_ns: int
    sent: bool
    rejected: bool
    reject_reason: str | None


def _real_orders(updates: Iterable[ExecutionUpdate], symbols: Iterable[str], cfg: GateConfig) -> dict[str, _Order]:
    """Orders of the configured adapters on ``symbols``: one per client order id, from all its updates."""
    wanted = set(symbols)
    by_order: dict[str, list[ExecutionUpdate]] = {}
    for u in updates:
        if u.symbol in wanted and cfg.adapter_counts(u.adapter):
            by_order.setdefault(u.client_order_id, []).append(u)
    out: dict[str, _Order] = {}
    for coid, us in by_order.items():
        rejects = sorted(
            (u for u in us if u.status == "rejected" and u.reason not in _NOT_SENT),
            key=lambda u: (u.ts_ns, u.reason or ""),
        )
        out[coid] = _Order(
            first_ts_ns=min(u.ts_ns for u in us),
            sent=not any(u.reason in _NOT_SENT for u in us),
            rejected=bool(rejects),
            reject_reason=(rejects[0].reason or "no reason") if rejects else None,
        )
    return out


def evaluate_execution(
    track: str, updates: Iterable[ExecutionUpdate], symbols: Sequence[str], cfg: GateConfig, now_ns: int
) -> GateResult:
    """The reject rate of real execution (docs/gates.md#execution-reject-rate).

    Orders of the configured paper/live adapters on the track's symbols whose first update
    lies in ``[now - lookback, now)``; risk-blocked and dry-run orders never reached a venue
    and count in neither side. ``insufficient_observation`` below ``reject_min_orders``.
    """
    start = now_ns - cfg.lookback_ns
    blockers: list[str] = []
    value: float | None = None
    n_sent = 0
    if not symbols:
        status = GateStatus.INSUFFICIENT_OBSERVATION
        blockers.append("no valid run in the lookback names the symbols whose orders count")
    else:
        orders = [o for o in _real_orders(updates, symbols, cfg).values() if start <= o.first_ts_ns < now_ns]
        sent = [o for o in orders if o.sent]
        n_sent = len(sent)
        rejected = [o for o in sent if o.rejected]
        value = len(rejected) / n_sent if n_sent else None
        shown = "missing" if value is None else f"{value:.6g}"
        adapters = ", ".join(cfg.execution_adapters)
        if n_sent < cfg.reject_min_orders:
            status = GateStatus.INSUFFICIENT_OBSERVATION
            blockers.append(
                f"insufficient orders: {n_sent} < {cfg.reject_min_orders} sent by {adapters} on "
                f"{', '.join(symbols)} ({len(rejected)} rejected, rate {shown})"
            )
        elif value is not None and compare(value, Comparator.LT, cfg.reject_rate_max):
            status = GateStatus.PASSED
        else:
            status = GateStatus.FAILED
            blockers.append(
                f"{EXECUTION_REJECT_METRIC} = {shown} ({len(rejected)}/{n_sent} orders rejected) "
                f"fails < {cfg.reject_rate_max:g}"
            )
        if rejected and status is not GateStatus.PASSED:
            reasons: dict[str, int] = {}
            for o in rejected:
                key = o.reject_reason or "no reason"
                reasons[key] = reasons.get(key, 0) + 1
            blockers.append(
                "rejects by reason: "
                + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
            )
        if len(orders) > n_sent and status is not GateStatus.PASSED:
            blockers.append(f"{len(orders) - n_sent} orders never sent (risk blocked or dry run) not counted")
    return _result(
        cfg,
        now_ns,
        gate=GATE_EXECUTION,
        track=track,
        metric=EXECUTION_REJECT_METRIC,
        status=status,
        value=value,
        threshold=cfg.reject_rate_max,
        comparator=Comparator.LT,
        window_start=start,
        observations=n_sent,
        blockers=blockers,
    )


# ---------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------


def _overlaps(run: RunInfo, start: int, end: int) -> bool:
    return (
        run.range_start_ns is not None
        and run.range_end_ns is not None
        and run.range_start_ns < end
        and run.range_end_ns > start
    )


def _backtest_orders(fills: Iterable[BacktestFill], runs: Sequence[RunInfo]) -> dict[str, OrderCash]:
    """Orders of the given runs (newest run wins a shared client order id)."""
    rank = {r.run_id: i for i, r in enumerate(runs)}  # runs are newest first
    by_order: dict[str, list[BacktestFill]] = {}
    owner: dict[str, int] = {}
    for f in sorted((f for f in fills if f.run_id in rank), key=lambda f: (rank[f.run_id], f.seq)):
        r = rank[f.run_id]
        if owner.setdefault(f.client_order_id, r) == r:
            by_order.setdefault(f.client_order_id, []).append(f)
    out: dict[str, OrderCash] = {}
    for coid, fs in by_order.items():
        sign = 1 if fs[0].side == "sell" else -1
        out[coid] = OrderCash(
            client_order_id=coid,
            symbol=fs[0].symbol,
            side=fs[0].side,
            first_ts_ns=min(f.ts_ns for f in fs),
            quantity=sum(f.quantity for f in fs),
            ref_notional=sum(f.notional + sign * (f.slippage_cost + f.impact_cost) for f in fs),
            slippage=sum(f.slippage_cost for f in fs),
            impact=sum(f.impact_cost for f in fs),
            fee=sum(f.fee for f in fs),
        )
    return out


def _paper_orders(fills: Iterable[PaperFill]) -> dict[str, OrderCash]:
    by_order: dict[str, list[PaperFill]] = {}
    for f in sorted(fills, key=lambda f: (f.client_order_id, f.ts_ns, f.fill_id)):
        by_order.setdefault(f.client_order_id, []).append(f)
    out: dict[str, OrderCash] = {}
    for coid, fs in by_order.items():
        direction = 1 if fs[0].side == "buy" else -1  # buys pay above the reference price
        refs = [f.quantity * f.price / (1 + direction * (f.slippage_bps + f.impact_bps) / _BPS) for f in fs]
        out[coid] = OrderCash(
            client_order_id=coid,
            symbol=fs[0].symbol,
            side=fs[0].side,
            first_ts_ns=min(f.ts_ns for f in fs),
            quantity=sum(f.quantity for f in fs),
            ref_notional=sum(refs),
            slippage=sum(r * f.slippage_bps / _BPS for r, f in zip(refs, fs, strict=True)),
            impact=sum(r * f.impact_bps / _BPS for r, f in zip(refs, fs, strict=True)),
            fee=sum(f.fee for f in fs),
        )
    return out


def _attribute(pairs: Sequence[tuple[OrderCash, OrderCash]]) -> Attribution:
    """Split ``sum(C_paper - C_backtest)`` into quantity, price, slippage, impact and fee."""
    quantity = price = slippage = impact = fee = bt_cash = paper_cash = 0.0
    for b, p in pairs:
        s = b.sign
        quantity += s * (p.quantity - b.quantity) * b.ref_price
        price += s * p.quantity * (p.ref_price - b.ref_price)
        slippage -= p.slippage - b.slippage
        impact -= p.impact - b.impact
        fee -= p.fee - b.fee
        bt_cash += b.cash
        paper_cash += p.cash
    return Attribution(
        matched_orders=len(pairs),
        backtest_cash=bt_cash,
        paper_cash=paper_cash,
        gap=paper_cash - bt_cash,
        quantity=quantity,
        price=price,
        slippage=slippage,
        impact=impact,
        fee=fee,
    )


def _listed(kind: str, ids: Sequence[str], limit: int) -> list[str]:
    lines = [f"unmatched {kind} order {coid}" for coid in ids[:limit]]
    if len(ids) > limit:
        lines.append(f"... and {len(ids) - limit} more unmatched {kind} orders")
    return lines


def _parity_symbol(
    track: str,
    symbol: str,
    window_ns: int,
    bt: Mapping[str, OrderCash],
    paper: Mapping[str, OrderCash],
    capital: float | None,
    cfg: GateConfig,
    now_ns: int,
) -> ParityOutcome:
    """``capital``: the return base (the smallest ``initial_cash`` of the runs; None = unknown)."""
    pairs: list[tuple[OrderCash, OrderCash]] = []
    blockers: list[str] = []
    for coid in sorted(set(bt) & set(paper)):
        if bt[coid].side != paper[coid].side or bt[coid].quantity <= 0 or paper[coid].quantity <= 0:
            blockers.append(
                f"order {coid} does not match: backtest {bt[coid].side} {bt[coid].quantity:g}, "
                f"paper {paper[coid].side} {paper[coid].quantity:g}"
            )
            continue
        pairs.append((bt[coid], paper[coid]))
    only_bt = sorted(set(bt) - set(paper))
    only_paper = sorted(set(paper) - set(bt))
    unmatched = len(only_bt) + len(only_paper) + len(blockers)
    total = len(pairs) + unmatched
    attribution = _attribute(pairs) if pairs else None
    value: float | None = None
    if attribution is not None and capital is not None:
        # |R_paper - R_backtest| / max(|R_backtest|, floor) with R = cash / capital
        value = abs(attribution.gap) / max(abs(attribution.backtest_cash), cfg.parity_return_floor * capital)
    if capital is None:
        status = GateStatus.INSUFFICIENT_OBSERVATION
        blockers.insert(0, "capital unknown (a run without config.request.initial_cash): the return floor needs it")
    elif len(pairs) < cfg.parity_min_matched:
        status = GateStatus.INSUFFICIENT_OBSERVATION
        blockers.insert(0, f"insufficient matched orders: {len(pairs)} < {cfg.parity_min_matched}")
    elif total and unmatched / total > cfg.parity_max_unmatched_fraction:
        status = GateStatus.FAILED
        blockers.insert(0, f"unmatched orders {unmatched}/{total} exceed {cfg.parity_max_unmatched_fraction:g}")
    elif value is not None and compare(value, Comparator.LE, cfg.parity_tolerance):
        status = GateStatus.PASSED
    else:
        status = GateStatus.FAILED
        blockers.insert(0, f"relative deviation {value:.6g} > tolerance {cfg.parity_tolerance:g}")
    if attribution is not None and status is not GateStatus.PASSED:
        parts = ", ".join(f"{k} {v:+.2f}" for k, v in attribution.parts().items())
        blockers.append(f"gap {attribution.gap:+.2f} (paper - backtest cash): {parts}")
    blockers += _listed("backtest", only_bt, cfg.max_listed) + _listed("paper", only_paper, cfg.max_listed)
    result = _result(
        cfg,
        now_ns,
        gate=GATE_PARITY,
        track=track,
        metric=parity_metric(window_ns, symbol),
        status=status,
        value=value,
        threshold=cfg.parity_tolerance,
        comparator=Comparator.LE,
        window_start=now_ns - window_ns,
        observations=len(pairs),
        blockers=blockers,
    )
    return ParityOutcome(
        result=result,
        symbol=symbol,
        window_ns=window_ns,
        attribution=attribution,
        unmatched_backtest=tuple(only_bt),
        unmatched_paper=tuple(only_paper),
    )


def evaluate_parity(inputs: TrackInputs, cfg: GateConfig, now_ns: int) -> list[ParityOutcome]:
    """One outcome per parity window and symbol of the valid runs overlapping it."""
    valid = sorted((r for r in inputs.runs if exclusion_reason(r, cfg) is None), key=RunInfo.rank, reverse=True)
    out: list[ParityOutcome] = []
    for window_ns in cfg.parity_windows_ns:
        start = now_ns - window_ns
        runs = [r for r in valid if _overlaps(r, start, now_ns)]
        symbols = sorted({s for r in runs for s in r.symbols})
        if not symbols:
            out.append(_no_parity_runs(inputs.track, window_ns, cfg, now_ns))
            continue
        bt_all = {
            k: o for k, o in _backtest_orders(inputs.backtest_fills, runs).items() if start <= o.first_ts_ns < now_ns
        }
        for symbol in symbols:
            spans = [
                (max(r.range_start_ns or 0, start), min(r.range_end_ns or 0, now_ns))
                for r in runs
                if symbol in r.symbols
            ]
            paper_fills = [f for f in inputs.paper_fills if f.symbol == symbol]
            paper = {
                k: o for k, o in _paper_orders(paper_fills).items() if any(lo <= o.first_ts_ns < hi for lo, hi in spans)
            }
            bt = {k: o for k, o in bt_all.items() if o.symbol == symbol}
            cash = [r.initial_cash for r in runs if symbol in r.symbols]
            known = [c for c in cash if c is not None and math.isfinite(c) and c > 0]
            capital = min(known) if known and len(known) == len(cash) else None
            out.append(_parity_symbol(inputs.track, symbol, window_ns, bt, paper, capital, cfg, now_ns))
    return out


def _no_parity_runs(track: str, window_ns: int, cfg: GateConfig, now_ns: int) -> ParityOutcome:
    blocker = (
        f"no valid backtest run (succeeded, source in {list(cfg.sources)}, not superseded) "
        f"covers the last {window_label(window_ns)}"
    )
    result = _result(
        cfg,
        now_ns,
        gate=GATE_PARITY,
        track=track,
        metric=parity_metric(window_ns, "*"),
        status=GateStatus.INSUFFICIENT_OBSERVATION,
        value=None,
        threshold=cfg.parity_tolerance,
        comparator=Comparator.LE,
        window_start=now_ns - window_ns,
        observations=0,
        blockers=(blocker,),
    )
    return ParityOutcome(
        result=result, symbol="*", window_ns=window_ns, attribution=None, unmatched_backtest=(), unmatched_paper=()
    )


# ---------------------------------------------------------------------------
# Readiness
# ---------------------------------------------------------------------------


def required_gates(cfg: GateConfig, parity_symbols: Iterable[str]) -> list[tuple[str, str]]:
    """(gate, metric) pairs a track must pass to be ready: every hard metric, the execution
    reject rate, and parity in every window for every symbol its runs trade (``*`` when none)."""
    symbols = sorted(set(parity_symbols)) or ["*"]
    out = [(GATE_HARD_METRICS, m.metric) for m in cfg.hard_metrics]
    out.append((GATE_EXECUTION, EXECUTION_REJECT_METRIC))
    out += [(GATE_PARITY, parity_metric(w, s)) for w in cfg.parity_windows_ns for s in symbols]
    return out


def _describe(r: GateResult) -> str:
    shown = "missing" if r.value is None else f"{r.value:.6g}"
    return f"{r.gate}/{r.metric} = {shown} (needs {r.comparator.value} {r.threshold:g})"


def evaluate_readiness(
    track: str,
    latest: Mapping[tuple[str, str], GateResult],
    required: Sequence[tuple[str, str]],
    runs: Sequence[RunInfo],
    cfg: GateConfig,
    now_ns: int,
) -> GateResult:
    """Ready only when every required gate passed, ``min_valid_runs`` evidence runs each pass
    every hard metric and the config is prod-only. ``value``: the runs that pass them all."""
    blockers: list[str] = []
    failed = False
    for key in required:
        r = latest.get(key)
        if r is None:
            blockers.append(f"missing gate: {key[0]}/{key[1]}")
        elif r.status is GateStatus.FAILED:
            failed = True
            blockers.append(f"failed gate: {_describe(r)}")
        elif r.status is GateStatus.INSUFFICIENT_OBSERVATION:
            blockers.append(f"insufficient observation: {_describe(r)}")
    valid = evidence_runs(runs, cfg, now_ns)
    n_passing = sum(_passes_every_hard_metric(r, cfg) for r in valid)
    if n_passing < cfg.min_valid_runs:
        blockers.append(
            f"insufficient runs: {n_passing} < {cfg.min_valid_runs} "
            f"(valid runs in the lookback passing every hard metric, of {len(valid)} valid)"
        )
    if not cfg.prod_only:
        failed = True
        blockers.append(f"sources {list(cfg.sources)} are not prod-like: only prod runs can make a track ready")
    status = GateStatus.PASSED if not blockers else GateStatus.FAILED if failed else GateStatus.INSUFFICIENT_OBSERVATION
    return _result(
        cfg,
        now_ns,
        gate=GATE_READINESS,
        track=track,
        metric=READINESS_METRIC,
        status=status,
        value=float(n_passing),
        threshold=float(cfg.min_valid_runs),
        comparator=Comparator.GE,
        window_start=now_ns - cfg.lookback_ns,
        observations=len(valid),
        blockers=blockers,
    )


# ---------------------------------------------------------------------------
# All gates of a track
# ---------------------------------------------------------------------------


def execution_symbols(runs: Iterable[RunInfo], cfg: GateConfig, now_ns: int) -> list[str]:
    """The symbols whose real orders feed a track's reject rate: those of its evidence runs."""
    return sorted({s for r in evidence_runs(runs, cfg, now_ns) for s in r.symbols})


def evaluate_track(inputs: TrackInputs, cfg: GateConfig, now_ns: int) -> Evaluation:
    """Hard metrics, execution, parity, then readiness over them; deterministic in (inputs, cfg, now)."""
    runs = tuple(r for r in inputs.runs if r.track == inputs.track)
    scoped = dataclasses.replace(inputs, runs=runs)
    hard = evaluate_hard_metrics(inputs.track, runs, cfg, now_ns)
    symbols = execution_symbols(runs, cfg, now_ns)
    execution = evaluate_execution(inputs.track, inputs.order_updates, symbols, cfg, now_ns)
    parity = evaluate_parity(scoped, cfg, now_ns)
    results = [*hard, execution, *(p.result for p in parity)]
    latest = {(r.gate, r.metric): r for r in results}
    # Every symbol any window saw is required in every window: a symbol the 30-day
    # window trades but the 7-day window has no run for is a missing 7-day gate.
    required = required_gates(cfg, (p.symbol for p in parity if p.symbol != "*"))
    known = set(required)
    required += [(r.gate, r.metric) for r in results if (r.gate, r.metric) not in known]
    readiness = evaluate_readiness(inputs.track, latest, required, runs, cfg, now_ns)
    return Evaluation(
        track=inputs.track,
        results=(*results, readiness),
        parity=tuple(parity),
        readiness=readiness,
        symbols=tuple(sorted({s for r in runs for s in r.symbols})),
    )
