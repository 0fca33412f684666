"""SLO evaluation from Prometheus metrics: latency quantiles, availability, ratios.

Pure: it works on :class:`Sample` lists, wherever they came from. ``ops.cli.slo`` feeds it either a
scrape of the workers' ``/metrics`` endpoints (counters and histograms since each process started) or
a Prometheus server's ``increase(...[window])`` of the same series (the last ``window``); the same
code then computes the same numbers, so the two modes cannot disagree on definitions.

Quantiles interpolate inside histogram buckets exactly like Prometheus' ``histogram_quantile``
(linear within the bucket, the first bucket starting at 0, a rank in the ``+Inf`` bucket reported as
the highest finite bound), so ``tradeflow slo`` and the alert rules read the same value.

Missing is a state: a histogram without observations has quantile ``None`` and an SLO without data
is ``no_data``, never a 0 that would read as "fast" or "never failed".

The objectives (the alert thresholds of ``deploy/prometheus/alerts.yml``):

- availability (Prometheus ``up`` / a successful scrape) >= 99.9 %;
- execution reject rate (terminal order updates ``rejected``, risk blocks excluded) <= 1 %;
- exchange collector call success >= 95 %;
- ingest latency p95 <= 120 s, signal latency p99 <= 1 s, agent batch processing p99 <= 0.5 s.

The risk reject rate and the dead-letter ratio are reported without an objective (informational).
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "HISTOGRAM_OBJECTIVES",
    "QUANTILES",
    "RATIOS",
    "LatencyRow",
    "Ratio",
    "Sample",
    "SloReport",
    "SloResult",
    "Status",
    "availability",
    "evaluate",
    "histogram_quantile",
    "latency_rows",
    "parse_metrics",
    "ratio_value",
]

QUANTILES = (0.5, 0.95, 0.99)
#: Labels that identify where a series came from, not what it measures: summed over.
ORIGIN_LABELS = frozenset({"instance", "job"})

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Sample:
    """One series value: metric name (with ``_total``/``_bucket`` suffix as exposed), labels, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    @classmethod
    def of(cls, name: str, labels: Labels, value: float) -> Sample:
        return cls(name, tuple(sorted(labels.items())), value)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


class Status(enum.StrEnum):
    OK = "ok"
    BREACHED = "breached"
    NO_DATA = "no_data"
    INFO = "info"


def parse_metrics(text: str, extra_labels: Labels | None = None) -> list[Sample]:
    """Samples of a Prometheus text exposition, with ``extra_labels`` (e.g. the instance) added.

    Raises ValueError on text that is not the exposition format.
    """
    extra = dict(extra_labels or {})
    return [
        Sample.of(s.name, {**s.labels, **extra}, float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


# ---------------------------------------------------------------------------
# Histograms
# ---------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper_bound, count)`` buckets, as Prometheus computes it.

    Mirrors ``bucketQuantile`` of Prometheus 2.x: buckets sorted by bound, duplicates merged, counts
    made monotonic, a ``+Inf`` bucket required; the rank ``q * total`` is located and interpolated
    linearly inside its bucket (the first bucket starts at 0 unless its bound is <= 0); a rank in the
    ``+Inf`` bucket returns the highest finite bound. Returns None where Prometheus returns NaN
    (no ``+Inf`` bucket, fewer than two buckets, no observations); q < 0 -> -inf, q > 1 -> +inf.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = defaultdict(float)
    for bound, count in buckets:
        merged[bound] += count
    ordered = sorted(merged.items())
    if not ordered or not math.isinf(ordered[-1][0]) or len(ordered) < 2:
        return None
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, c in ordered:  # ensureMonotonic: a lower cumulative count after a higher one is an artefact
        counts.append(max(c, counts[-1]) if counts else c)
    total = counts[-1]
    if total == 0:
        return None
    rank = q * total
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """Quantiles of one histogram family for one label set (summed over instances)."""

    family: str
    group: tuple[tuple[str, str], ...]
    count: float
    quantiles: tuple[tuple[float, float | None], ...]

    def quantile(self, q: float) -> float | None:
        return dict(self.quantiles)[q]

    @property
    def group_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.group) or "all"


def histogram_families(samples: Iterable[Sample]) -> list[str]:
    """Names (without ``_bucket``) of the histograms measured in seconds among ``samples``."""
    return sorted(
        {s.name[: -len("_bucket")] for s in samples if s.name.endswith("_seconds_bucket") and "le" in s.label_map}
    )


def latency_rows(samples: Sequence[Sample], family: str, quantiles: Sequence[float] = QUANTILES) -> list[LatencyRow]:
    """One row per label set of ``family`` (origin labels summed away), in label order."""
    groups: dict[tuple[tuple[str, str], ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for s in samples:
        if s.name != family + "_bucket":
            continue
        labels = s.label_map
        le = labels.pop("le", None)
        if le is None:
            continue
        key = tuple(sorted((k, v) for k, v in labels.items() if k not in ORIGIN_LABELS))
        groups[key][float(le)] += s.value
    rows = []
    for key in sorted(groups):
        buckets = sorted(groups[key].items())
        total = buckets[-1][1] if buckets and math.isinf(buckets[-1][0]) else 0.0
        rows.append(LatencyRow(family, key, total, tuple((q, histogram_quantile(q, buckets)) for q in quantiles)))
    return rows


# ---------------------------------------------------------------------------
# Ratios and availability
# ---------------------------------------------------------------------------

Predicate = Callable[[Labels], bool]


def _any(_: Labels) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Ratio:
    """``sum(numerator series) / sum(denominator series)``; an objective bounds it from one side."""

    name: str
    numerator: str
    denominator: str
    numerator_where: Predicate = _any
    denominator_where: Predicate = _any
    #: (``"min"`` or ``"max"``, bound); None: reported only.
    objective: tuple[str, float] | None = None
    doc: str = ""


def _terminal_not_risk(labels: Labels) -> bool:
    return labels.get("status") in {"filled", "cancelled", "rejected", "expired"} and (
        labels.get("reason") != "risk_blocked"
    )


def _rejected_not_risk(labels: Labels) -> bool:
    return labels.get("status") == "rejected" and labels.get("reason") != "risk_blocked"


RATIOS: tuple[Ratio, ...] = (
    Ratio(
        "execution_reject_rate",
        "tradeflow_order_updates_total",
        "tradeflow_order_updates_total",
        _rejected_not_risk,
        _terminal_not_risk,
        ("max", 0.01),
        "orders ending rejected / orders ending (risk blocks excluded)",
    ),
    Ratio(
        "collector_success",
        "market_collector_calls_total",
        "market_collector_calls_total",
        lambda lab: lab.get("outcome") == "success",
        _any,
        ("min", 0.95),
        "successful exchange calls / all exchange calls",
    ),
    Ratio(
        "risk_reject_rate",
        "tradeflow_risk_decisions_total",
        "tradeflow_risk_decisions_total",
        lambda lab: lab.get("verdict") == "rejected",
        _any,
        None,
        "risk decisions rejected / all",
    ),
    Ratio(
        "dead_letter_ratio",
        "tradeflow_dead_letters_total",
        "tradeflow_records_in_total",
        _any,
        _any,
        None,
        "messages dead-lettered / messages consumed",
    ),
)

#: family -> (quantile, max seconds): every label set of the family must meet it.
HISTOGRAM_OBJECTIVES: Mapping[str, tuple[float, float]] = {
    "market_ingest_latency_seconds": (0.95, 120.0),
    "tradeflow_signal_latency_seconds": (0.99, 1.0),
    "tradeflow_processing_seconds": (0.99, 0.5),
}

AVAILABILITY_OBJECTIVE = 0.999


def ratio_value(samples: Iterable[Sample], ratio: Ratio) -> float | None:
    """The ratio, or None when the denominator has no data or is 0 (nothing happened yet)."""
    num = den = 0.0
    seen = False
    for s in samples:
        labels = s.label_map
        if s.name == ratio.denominator and ratio.denominator_where(labels):
            den += s.value
            seen = True
        if s.name == ratio.numerator and ratio.numerator_where(labels):
            num += s.value
    return num / den if seen and den > 0 else None


def availability(up: Mapping[str, float]) -> float | None:
    """Mean of per-target availabilities in [0, 1] (None without targets)."""
    return sum(up.values()) / len(up) if up else None


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SloResult:
    name: str
    value: float | None
    objective: str
    status: Status
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SloReport:
    source: str
    window: str
    up: Mapping[str, float]
    latencies: tuple[LatencyRow, ...]
    results: tuple[SloResult, ...] = field(default=())

    @property
    def breached(self) -> tuple[SloResult, ...]:
        return tuple(r for r in self.results if r.status is Status.BREACHED)


def _judge(value: float | None, objective: tuple[str, float] | None) -> Status:
    if objective is None:
        return Status.INFO
    if value is None:
        return Status.NO_DATA
    kind, bound = objective
    ok = value >= bound if kind == "min" else value <= bound
    return Status.OK if ok else Status.BREACHED


def _objective_text(objective: tuple[str, float] | None) -> str:
    if objective is None:
        return "-"
    kind, bound = objective
    return f"{'>=' if kind == 'min' else '<='} {bound:g}"


def evaluate(
    samples: Sequence[Sample],
    up: Mapping[str, float],
    *,
    source: str,
    window: str,
    families: Sequence[str] | None = None,
) -> SloReport:
    """Every latency histogram's quantiles and every SLO's status.

    ``up`` maps each target (or Prometheus instance) to its availability in [0, 1]. ``families``
    defaults to every ``*_seconds`` histogram in ``samples`` plus the ones with an objective.
    """
    names = sorted(set(families if families is not None else histogram_families(samples)) | set(HISTOGRAM_OBJECTIVES))
    rows = tuple(row for fam in names for row in latency_rows(samples, fam))
    results = [
        SloResult(
            "availability",
            availability(up),
            _objective_text(("min", AVAILABILITY_OBJECTIVE)),
            _judge(availability(up), ("min", AVAILABILITY_OBJECTIVE)),
            f"{sum(1 for v in up.values() if v >= 1.0)}/{len(up)} targets fully up",
        )
    ]
    for ratio in RATIOS:
        value = ratio_value(samples, ratio)
        results.append(
            SloResult(ratio.name, value, _objective_text(ratio.objective), _judge(value, ratio.objective), ratio.doc)
        )
    for fam, (q, bound) in sorted(HISTOGRAM_OBJECTIVES.items()):
        fam_rows = [r for r in rows if r.family == fam]
        if not fam_rows or all(r.quantile(q) is None for r in fam_rows):
            results.append(SloResult(f"{fam} p{q * 100:g}", None, f"<= {bound:g}", Status.NO_DATA, "no observations"))
            continue
        for r in fam_rows:
            value = r.quantile(q)
            results.append(
                SloResult(
                    f"{fam} p{q * 100:g} [{r.group_text}]",
                    value,
                    f"<= {bound:g}",
                    _judge(value, ("max", bound)),
                    f"{r.count:g} observations",
                )
            )
    return SloReport(source=source, window=window, up=dict(up), latencies=rows, results=tuple(results))


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.6g}"


def render(report: SloReport) -> str:
    """Human-readable report: targets, latency quantiles, SLO table, verdict."""
    lines = [f"source: {report.source}  window: {report.window}", "", "targets:"]
    lines += [f"  {t}  availability {_fmt(v)}" for t, v in sorted(report.up.items())] or ["  (none)"]
    lines += [
        "",
        "latency (seconds):",
        f"  {'histogram':<38} {'labels':<44} {'count':>9} "
        + " ".join(f"{'p' + format(q * 100, 'g'):>10}" for q in QUANTILES),
    ]
    for r in report.latencies:
        lines.append(
            f"  {r.family:<38} {r.group_text:<44} {r.count:>9g} " + " ".join(f"{_fmt(v):>10}" for _, v in r.quantiles)
        )
    if not report.latencies:
        lines.append("  (no histogram observations)")
    lines += ["", "SLOs:"]
    for res in report.results:
        lines.append(f"  {res.status.value:<9} {res.name:<60} {_fmt(res.value):>10} {res.objective:<10} {res.detail}")
    lines += ["", f"verdict: {'BREACHED: ' + ', '.join(r.name for r in report.breached) if report.breached else 'ok'}"]
    return "\n".join(lines)


def as_json(report: SloReport) -> dict[str, object]:
    """The report as JSON-ready data (None stays null: missing is not 0)."""
    return {
        "source": report.source,
        "window": report.window,
        "up": dict(report.up),
        "latency": [
            {
                "histogram": r.family,
                "labels": dict(r.group),
                "count": r.count,
                **{f"p{q * 100:g}": v for q, v in r.quantiles},
            }
            for r in report.latencies
        ],
        "slos": [
            {"name": r.name, "value": r.value, "objective": r.objective, "status": r.status.value, "detail": r.detail}
            for r in report.results
        ],
        "breached": [r.name for r in report.breached],
    }
