"""``tradeflow slo`` (alias ``tradeflow health``): latency quantiles, availability and SLO verdicts.

::

    tradeflow slo --targets http://127.0.0.1:6066/metrics http://127.0.0.1:9100 [--json]
    tradeflow slo --prometheus http://127.0.0.1:9090 [--window 1h] [--job-regex 'tradeflow.*'] [--json]

``--targets`` scrapes the workers' ``/metrics`` directly (a bare ``host:port`` URL gets ``/metrics``):
counters and histograms cover each process's lifetime, and availability is whether each target
answered this scrape. ``--prometheus`` asks a Prometheus server for ``increase(...[window])`` of the
same series and ``avg_over_time(up[window])`` of the tradeflow jobs, so the numbers cover the last
``window``. Both feed the same computation (:mod:`ops.observability.slo`): p50/p95/p99 per latency histogram and
label set, availability, reject/success/dead-letter ratios, each judged against its objective.

Exit codes: 0 every SLO met (or without data yet), 1 an SLO is breached, 2 usage, 3 the Prometheus
server is unreachable or answers errors (a worker that does not answer is not infrastructure: it is
an availability breach, exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ops.observability.slo import RATIOS, Sample, SloReport, as_json, evaluate, parse_metrics, render
from runtime.errors import Retriable
from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_FAIL", "EXIT_INFRA", "EXIT_OK", "add_parsers", "from_prometheus", "from_targets"]

_WINDOW = re.compile(r"^\d+[smhdw]$")


class PrometheusError(Retriable, RuntimeError):
    """The Prometheus server could not be queried (exit 3)."""


def metrics_url(target: str) -> str:
    """``target`` as a /metrics URL: a scheme-less ``host:port`` gets ``http://``, an empty path ``/metrics``."""
    url = target if "://" in target else f"http://{target}"
    parts = urllib.parse.urlsplit(url)
    return url if parts.path not in ("", "/") else urllib.parse.urlunsplit(parts._replace(path="/metrics"))


def _get(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (operator-given http URL)
        body: bytes = resp.read()
    return body.decode("utf-8")


def from_targets(
    targets: Sequence[str], timeout_s: float = 5.0, fetch: Callable[[str, float], str] = _get
) -> SloReport:
    """Scrape every target concurrently; a target that fails or serves garbage counts as down."""
    urls = [metrics_url(t) for t in targets]

    def scrape(url: str) -> tuple[str, list[Sample] | None, str]:
        try:
            return url, parse_metrics(fetch(url, timeout_s), {"instance": url}), ""
        except (OSError, ValueError) as exc:
            return url, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, max(len(urls), 1))) as pool:
        scraped = list(pool.map(scrape, urls))
    samples = [s for _, got, _ in scraped if got for s in got]
    up = {url: 0.0 if got is None else 1.0 for url, got, _ in scraped}
    for url, got, err in scraped:
        if got is None:
            print(f"tradeflow slo: {url} unreachable: {err}", file=sys.stderr)
    return evaluate(samples, up, source="targets", window="process lifetime")


def _query(base: str, expr: str, timeout_s: float, fetch: Callable[[str, float], str]) -> list[dict[str, Any]]:
    url = f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(fetch(url, timeout_s))
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"{base}: {type(exc).__name__}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{base}: query {expr!r} failed: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _names(base: str, timeout_s: float, fetch: Callable[[str, float], str]) -> list[str]:
    try:
        body = json.loads(fetch(f"{base.rstrip('/')}/api/v1/label/__name__/values", timeout_s))
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"{base}: {type(exc).__name__}: {exc}") from None
    names: list[str] = body.get("data", [])
    return names


def from_prometheus(
    base: str,
    window: str = "1h",
    job_regex: str = "tradeflow.*",
    timeout_s: float = 10.0,
    fetch: Callable[[str, float], str] = _get,
) -> SloReport:
    """The same report over the last ``window`` from a Prometheus server (raises PrometheusError)."""
    names = _names(base, timeout_s, fetch)
    wanted = sorted(
        {n for n in names if n.endswith("_seconds_bucket")}
        | {n for r in RATIOS for n in (r.numerator, r.denominator) if n in names}
    )
    samples: list[Sample] = []
    for name in wanted:
        expr = f'increase({{__name__="{name}",job=~"{job_regex}"}}[{window}])'
        for series in _query(base, expr, timeout_s, fetch):
            value = float(series["value"][1])
            if not math.isnan(value):  # NaN: not enough points in the window yet; missing, not 0
                samples.append(Sample.of(name, series["metric"], value))
    up = {
        f"{s['metric'].get('job', '')}/{s['metric'].get('instance', '')}": float(s["value"][1])
        for s in _query(base, f'avg_over_time(up{{job=~"{job_regex}"}}[{window}])', timeout_s, fetch)
    }
    return evaluate(samples, up, source=f"prometheus {base}", window=window)


def cmd_slo(a: argparse.Namespace) -> int:
    if a.prometheus and not _WINDOW.match(a.window):
        print(f"--window must look like 30m, 1h, 7d; got {a.window!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = (
            from_prometheus(a.prometheus, a.window, a.job_regex, a.timeout_s)
            if a.prometheus
            else from_targets(a.targets, a.timeout_s)
        )
    except PrometheusError as exc:
        print(f"tradeflow slo: Prometheus unreachable: {exc}", file=sys.stderr)
        return EXIT_INFRA
    print(json.dumps(as_json(report), indent=2) if a.json else render(report))
    return EXIT_FAIL if report.breached else EXIT_OK


def add_parsers(sub: Any, infra: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``slo`` (alias ``health``) to the ``tradeflow`` parser. ``infra`` is unused: no broker/DB."""
    sp = sub.add_parser(
        "slo",
        aliases=["health"],
        help="p50/p95/p99 latencies, availability and SLO verdicts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--targets", nargs="+", metavar="URL", help="worker /metrics URLs (or host:port)")
    src.add_argument("--prometheus", metavar="URL", help="Prometheus server base URL")
    sp.add_argument("--window", default="1h", help="--prometheus: the look-back window (default 1h)")
    sp.add_argument("--job-regex", default="tradeflow.*", help="--prometheus: scrape jobs that are tradeflow's")
    sp.add_argument("--timeout-s", type=float, default=5.0, help="per HTTP request")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(fn=cmd_slo)
