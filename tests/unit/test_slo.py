"""``ops.observability.slo`` on a fixed metrics text: quantiles, ratios, verdicts; Prometheus itself (promtool) is the
oracle for the quantile interpolation."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops.cli import slo as slo_cli
from ops.observability import slo

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# Two workers' /metrics as prometheus_client writes them (trimmed to the families the SLOs read).
WORKER_A = """\
# HELP tradeflow_processing_seconds Time to process one record or batch
# TYPE tradeflow_processing_seconds histogram
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.001"} 10.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.005"} 70.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.025"} 95.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.1"} 99.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="1.0"} 100.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="+Inf"} 100.0
tradeflow_processing_seconds_count{consumer="bars-checker"} 100.0
tradeflow_processing_seconds_sum{consumer="bars-checker"} 0.9
# HELP tradeflow_order_updates_total Order lifecycle transitions
# TYPE tradeflow_order_updates_total counter
tradeflow_order_updates_total{account="paper",adapter="paper",reason="",status="new"} 200.0
tradeflow_order_updates_total{account="paper",adapter="paper",reason="",status="filled"} 195.0
tradeflow_order_updates_total{account="paper",adapter="paper",reason="venue_error",status="rejected"} 3.0
tradeflow_order_updates_total{account="paper",adapter="paper",reason="risk_blocked",status="rejected"} 40.0
tradeflow_order_updates_total{account="paper",adapter="paper",reason="",status="expired"} 2.0
# HELP tradeflow_records_in_total Records consumed
# TYPE tradeflow_records_in_total counter
tradeflow_records_in_total{consumer="bars-checker",topic="market.bars.raw"} 1000.0
# HELP tradeflow_dead_letters_total Messages dead-lettered
# TYPE tradeflow_dead_letters_total counter
tradeflow_dead_letters_total{consumer="bars-checker",reason="invalid_json",topic="market.bars.raw"} 5.0
"""
WORKER_B = """\
# TYPE tradeflow_processing_seconds histogram
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.001"} 0.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.005"} 0.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.025"} 0.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="0.1"} 0.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="1.0"} 100.0
tradeflow_processing_seconds_bucket{consumer="bars-checker",le="+Inf"} 100.0
# TYPE market_ingest_latency_seconds histogram
market_ingest_latency_seconds_bucket{exchange="binance",stream="ohlcv",transport="rest",le="60.0"} 0.0
market_ingest_latency_seconds_bucket{exchange="binance",stream="ohlcv",transport="rest",le="120.0"} 1.0
market_ingest_latency_seconds_bucket{exchange="binance",stream="ohlcv",transport="rest",le="180.0"} 10.0
market_ingest_latency_seconds_bucket{exchange="binance",stream="ohlcv",transport="rest",le="+Inf"} 10.0
# TYPE market_collector_calls_total counter
market_collector_calls_total{exchange="binance",outcome="success",reason="none",stream="ohlcv",transport="rest"} 97.0
market_collector_calls_total{exchange="binance",outcome="failure",reason="network",stream="ohlcv",transport="rest"} 3.0
"""


def samples() -> list[slo.Sample]:
    return slo.parse_metrics(WORKER_A, {"instance": "a"}) + slo.parse_metrics(WORKER_B, {"instance": "b"})


# ---------------------------------------------------------------------------
# histogram_quantile
# ---------------------------------------------------------------------------


def test_quantiles_interpolate_like_prometheus_by_hand() -> None:
    b = [(0.001, 10.0), (0.005, 70.0), (0.025, 95.0), (0.1, 99.0), (1.0, 100.0), (math.inf, 100.0)]
    assert slo.histogram_quantile(0.5, b) == pytest.approx(0.001 + 0.004 * (50 - 10) / 60)
    assert slo.histogram_quantile(0.95, b) == pytest.approx(0.025)
    assert slo.histogram_quantile(0.99, b) == pytest.approx(0.1)
    assert slo.histogram_quantile(0.05, b) == pytest.approx(0.001 * 5 / 10)  # first bucket starts at 0
    assert slo.histogram_quantile(0.99, [(1.0, 0.0), (math.inf, 5.0)]) == 1.0  # in +Inf: highest finite bound


def test_quantile_edge_cases_are_missing_not_zero() -> None:
    assert slo.histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None  # no observations
    assert slo.histogram_quantile(0.5, [(1.0, 3.0), (2.0, 3.0)]) is None  # no +Inf bucket
    assert slo.histogram_quantile(0.5, [(math.inf, 3.0)]) is None  # a single bucket
    assert slo.histogram_quantile(0.5, []) is None
    assert slo.histogram_quantile(-0.1, [(1.0, 1.0), (math.inf, 1.0)]) == -math.inf
    assert slo.histogram_quantile(1.1, [(1.0, 1.0), (math.inf, 1.0)]) == math.inf
    # non-monotonic cumulative counts (scrape artefact) are made monotonic, as Prometheus does
    assert slo.histogram_quantile(0.5, [(1.0, 4.0), (2.0, 3.0), (math.inf, 4.0)]) == pytest.approx(0.5)


def test_quantiles_match_promtool(tmp_path: Path) -> None:
    """Prometheus' own histogram_quantile over the same buckets (promtool expression tests) agrees."""
    rows = slo.latency_rows(samples(), "tradeflow_processing_seconds")
    assert len(rows) == 1 and rows[0].count == 200  # both instances summed
    series = [
        {
            "series": f'tradeflow_processing_seconds_bucket{{instance="{s.label_map["instance"]}",'
            f'consumer="bars-checker",le="{s.label_map["le"]}"}}',
            "values": f"{s.value:g}",
        }
        for s in samples()
        if s.name == "tradeflow_processing_seconds_bucket"
    ]
    expr = "histogram_quantile({q}, sum by (le) (tradeflow_processing_seconds_bucket))"
    tests: list[dict[str, Any]] = [
        {"expr": expr.format(q=q), "eval_time": "0m", "exp_samples": [{"labels": "{}", "value": rows[0].quantile(q)}]}
        for q in slo.QUANTILES
    ]
    doc = {"rule_files": [], "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}
    path = tmp_path / "quantiles_test.yml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # and the check is not vacuous: a wrong value is refused
    tests[0]["exp_samples"][0]["value"] = (rows[0].quantile(0.5) or 0) * 1.5
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def by_name(report: slo.SloReport) -> dict[str, slo.SloResult]:
    return {r.name: r for r in report.results}


def test_report_on_the_fixed_sample() -> None:
    report = slo.evaluate(samples(), {"a": 1.0, "b": 1.0}, source="test", window="lifetime")
    res = by_name(report)
    assert res["availability"].value == 1.0 and res["availability"].status is slo.Status.OK
    # 3 venue rejects of 200 terminal orders (195 filled + 3 rejected + 2 expired); 40 risk blocks excluded
    assert res["execution_reject_rate"].value == pytest.approx(3 / 200)
    assert res["execution_reject_rate"].status is slo.Status.BREACHED  # 1.5 % > 1 %
    assert res["collector_success"].value == pytest.approx(0.97)
    assert res["collector_success"].status is slo.Status.OK
    assert res["dead_letter_ratio"].value == pytest.approx(0.005)
    assert res["dead_letter_ratio"].status is slo.Status.INFO
    assert res["risk_reject_rate"].value is None and res["risk_reject_rate"].status is slo.Status.INFO
    # ingest p95: rank 9.5 of 10 in (120, 180] -> 120 + 60 * 8.5 / 9 = 176.67 s > 120 s
    ingest = res["market_ingest_latency_seconds p95 [exchange=binance,stream=ohlcv,transport=rest]"]
    assert ingest.value == pytest.approx(120 + 60 * 8.5 / 9)
    assert ingest.status is slo.Status.BREACHED
    # processing p99 over both workers: 200 observations, rank 198 in (0.1, 1.0] -> 0.1 + 0.9 * 99/101
    proc = res["tradeflow_processing_seconds p99 [consumer=bars-checker]"]
    assert proc.value == pytest.approx(0.1 + 0.9 * 99 / 101)
    assert proc.status is slo.Status.BREACHED
    # nothing measured: no data, not "0 seconds"
    assert res["tradeflow_signal_latency_seconds p99"].status is slo.Status.NO_DATA
    assert res["tradeflow_signal_latency_seconds p99"].value is None
    assert {r.name for r in report.breached} == {"execution_reject_rate", ingest.name, proc.name}
    text = slo.render(report)
    assert "verdict: BREACHED" in text and "n/a" in text


def test_a_down_target_breaches_availability() -> None:
    report = slo.evaluate([], {"a": 1.0, "b": 0.0}, source="test", window="lifetime")
    res = by_name(report)
    assert res["availability"].value == 0.5 and res["availability"].status is slo.Status.BREACHED
    assert slo.evaluate([], {}, source="t", window="w").results[0].status is slo.Status.NO_DATA


def test_from_targets_scrapes_parses_and_counts_failures() -> None:
    pages = {"http://a:1/metrics": WORKER_A, "http://b:2/metrics": WORKER_B}

    def fetch(url: str, timeout_s: float) -> str:
        if url == "http://c:3/metrics":
            raise OSError("connection refused")
        return pages[url]

    report = slo_cli.from_targets(["a:1", "http://b:2", "http://c:3/metrics"], fetch=fetch)
    assert report.up == {"http://a:1/metrics": 1.0, "http://b:2/metrics": 1.0, "http://c:3/metrics": 0.0}
    assert by_name(report)["availability"].value == pytest.approx(2 / 3)
    assert by_name(report)["collector_success"].value == pytest.approx(0.97)


def test_from_prometheus_uses_increase_over_the_window() -> None:
    queries: list[str] = []

    def fetch(url: str, timeout_s: float) -> str:
        queries.append(url)
        if url.endswith("/api/v1/label/__name__/values"):
            return json.dumps(
                {
                    "status": "success",
                    "data": ["up", "tradeflow_processing_seconds_bucket", "market_collector_calls_total"],
                }
            )
        if "avg_over_time" in url:
            return json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {"job": "tradeflow", "instance": "w:1"}, "value": [0, "0.9995"]}],
                    },
                }
            )
        if "processing_seconds" in url:
            return json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [
                            {"metric": {"consumer": "x", "le": le, "instance": "w:1"}, "value": [0, v]}
                            for le, v in (("0.1", "50"), ("1", "100"), ("+Inf", "100"))
                        ],
                    },
                }
            )
        return json.dumps(
            {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {"exchange": "okx", "outcome": "failure"}, "value": [0, "NaN"]}],
                },
            }
        )

    report = slo_cli.from_prometheus("http://prom:9090", window="30m", fetch=fetch)
    assert any("increase" in q and "%5B30m%5D" in q for q in queries)
    res = by_name(report)
    assert res["availability"].value == pytest.approx(0.9995) and res["availability"].status is slo.Status.OK
    assert res["tradeflow_processing_seconds p99 [consumer=x]"].value == pytest.approx(0.1 + 0.9 * 49 / 50)
    assert res["collector_success"].value is None  # NaN increase: no data, not 0


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    ns = argparse.Namespace(
        prometheus="http://127.0.0.1:1", window="1h", job_regex="tradeflow.*", timeout_s=0.5, targets=None, json=False
    )
    assert slo_cli.cmd_slo(ns) == slo_cli.EXIT_INFRA  # nothing listens on port 1
    ns.window = "an hour"
    assert slo_cli.cmd_slo(ns) == 2
    assert "--window" in capsys.readouterr().err
