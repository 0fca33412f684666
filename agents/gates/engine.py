"""Gate engine: hard metrics, backtest-vs-paper parity and readiness.

Pure and deterministic: plain inputs (backtest runs with their metrics,
backtest fills, paper fills) and an explicit evaluation time ``now_ns`` in,
:class:`~topics.records.GateResult` records out (``ts_event = ts_init =
now_ns``; ids from :meth:`Record.new`, so the same evaluation gives the same
ids and a redelivered result is the same event). No I/O, no clock.

Rules: only valid runs count (``succeeded``, a configured source, not superseded). Missing is
``insufficient_observation`` with ``value = None``, never a pass; 0.0 is a value. Hard
metrics read the latest valid run's total. Parity matches backtest and paper orders by
client order id per 7/30-day window and symbol: ``|C_paper - C_backtest| /
max(|C_backtest|, parity_floor) <= parity_tolerance``, the gap split exactly into quantity,
price, slippage, impact and fee (:class:`ParityOutcome`). Readiness passes only with every
required gate passed, enough valid runs and a prod-only config; blockers name what is missing.

Design: docs/gates.md#gate-engine
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from agents.gates.config import GateConfig
from topics.records import Comparator, GateResult, GateStatus
from topics.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE, NS_PER_SECOND

__all__ = [
    "GATE_HARD_METRICS",
    "GATE_PARITY",
    "GATE_READINESS",
    "Attribution",
    "BacktestFill",
    "Evaluation",
    "OrderCash",
    "PaperFill",
    "ParityOutcome",
    "RunInfo",
    "TrackInputs",
    "compare",
    "evaluate_hard_metrics",
    "evaluate_parity",
    "evaluate_readiness",
    "evaluate_track",
    "evidence_runs",
    "exclusion_reason",
    "parity_metric",
    "required_gates",
    "window_label",
]

GATE_HARD_METRICS = "hard_metrics"
GATE_PARITY = "parity"
GATE_READINESS = "readiness"
READINESS_METRIC = "valid_runs"
_BPS = 10_000.0


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
class TrackInputs:
    """Everything the gates of one track read, already loaded."""

    track: str
    runs: tuple[RunInfo, ...]
    backtest_fills: tuple[BacktestFill, ...] = ()
    paper_fills: tuple[PaperFill, ...] = ()


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
    """Why a run does not feed gates (None: it is valid)."""
    if run.status != "succeeded":
        return run.status  # running, failed, superseded
    if run.superseded_by is not None:
        return "superseded"
    if run.source not in cfg.sources:
        return f"source {run.source}"
    return None


def evidence_runs(runs: Iterable[RunInfo], cfg: GateConfig, now_ns: int) -> list[RunInfo]:
    """Valid runs finished in ``[now - lookback, now]``, newest first."""
    start = now_ns - cfg.lookback_ns
    valid = [r for r in runs if exclusion_reason(r, cfg) is None and start <= r.done_ns <= now_ns]
    return sorted(valid, key=RunInfo.rank, reverse=True)


def _excluded_summary(runs: Iterable[RunInfo], cfg: GateConfig, now_ns: int) -> str | None:
    start = now_ns - cfg.lookback_ns
    counts: dict[str, int] = {}
    for r in runs:
        if start <= r.done_ns <= now_ns:
            reason = exclusion_reason(r, cfg)
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return None
    return "excluded runs in lookback: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


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


def evaluate_hard_metrics(track: str, runs: Sequence[RunInfo], cfg: GateConfig, now_ns: int) -> list[GateResult]:
    """One result per configured hard metric from the latest valid run in the lookback."""
    evidence = evidence_runs(runs, cfg, now_ns)
    latest = evidence[0] if evidence else None
    excluded = _excluded_summary(runs, cfg, now_ns)
    out: list[GateResult] = []
    for spec in cfg.hard_metrics:
        blockers: list[str] = []
        value: float | None = None
        if latest is None:
            status = GateStatus.INSUFFICIENT_OBSERVATION
            blockers.append(
                f"{spec.metric}: no valid run (succeeded, source in {list(cfg.sources)}, "
                "not superseded) finished in the lookback"
            )
        else:
            raw = latest.metrics.get(spec.metric)
            value = _observed(raw)
            if value is None:
                status = GateStatus.INSUFFICIENT_OBSERVATION
                what = "absent" if spec.metric not in latest.metrics else ("NULL" if raw is None else f"{raw!r}")
                blockers.append(f"{spec.metric}: missing in run {latest.run_id} ({what})")
            elif compare(value, spec.comparator, spec.threshold):
                status = GateStatus.PASSED
            else:
                status = GateStatus.FAILED
                blockers.append(
                    f"{spec.metric} = {value:.6g} fails {spec.comparator.value} {spec.threshold:g} "
                    f"(run {latest.run_id})"
                )
        if excluded is not None and status is not GateStatus.PASSED:
            blockers.append(excluded)
        out.append(
            _result(
                cfg,
                now_ns,
                gate=GATE_HARD_METRICS,
                track=track,
                metric=spec.metric,
                status=status,
                value=value,
                threshold=spec.threshold,
                comparator=spec.comparator,
                window_start=now_ns - cfg.lookback_ns,
                observations=len(evidence),
                blockers=blockers,
            )
        )
    return out


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
    cfg: GateConfig,
    now_ns: int,
) -> ParityOutcome:
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
    if attribution is not None:
        value = abs(attribution.gap) / max(abs(attribution.backtest_cash), cfg.parity_floor)
    if len(pairs) < cfg.parity_min_matched:
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
            out.append(_parity_symbol(inputs.track, symbol, window_ns, bt, paper, cfg, now_ns))
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
    """(gate, metric) pairs a track must pass to be ready: every hard metric, and
    parity in every window for every symbol its runs trade (``*`` when none)."""
    symbols = sorted(set(parity_symbols)) or ["*"]
    out = [(GATE_HARD_METRICS, m.metric) for m in cfg.hard_metrics]
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
    """Ready only when every required gate passed, runs suffice and the config is prod-only."""
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
    n_valid = len(evidence_runs(runs, cfg, now_ns))
    if n_valid < cfg.min_valid_runs:
        blockers.append(f"insufficient runs: {n_valid} < {cfg.min_valid_runs}")
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
        value=float(n_valid),
        threshold=float(cfg.min_valid_runs),
        comparator=Comparator.GE,
        window_start=now_ns - cfg.lookback_ns,
        observations=n_valid,
        blockers=blockers,
    )


# ---------------------------------------------------------------------------
# All gates of a track
# ---------------------------------------------------------------------------


def evaluate_track(inputs: TrackInputs, cfg: GateConfig, now_ns: int) -> Evaluation:
    """Hard metrics, parity, then readiness over both; deterministic in (inputs, cfg, now)."""
    runs = tuple(r for r in inputs.runs if r.track == inputs.track)
    scoped = TrackInputs(
        track=inputs.track, runs=runs, backtest_fills=inputs.backtest_fills, paper_fills=inputs.paper_fills
    )
    hard = evaluate_hard_metrics(inputs.track, runs, cfg, now_ns)
    parity = evaluate_parity(scoped, cfg, now_ns)
    results = [*hard, *(p.result for p in parity)]
    latest = {(r.gate, r.metric): r for r in results}
    # Every symbol any window saw is required in every window: a symbol the 30-day
    # window trades but the 7-day window has no run for is a missing 7-day gate.
    required = required_gates(cfg, (p.symbol for p in parity if p.symbol != "*"))
    known = set(required)
    required += [(r.gate, r.metric) for r in results if (r.gate, r.metric) not in known]
    readiness = evaluate_readiness(inputs.track, latest, required, runs, cfg, now_ns)
    return Evaluation(track=inputs.track, results=(*results, readiness), parity=tuple(parity), readiness=readiness)
