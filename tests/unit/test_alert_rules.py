"""The alert rules: promtool (Debian's ``prometheus`` package) validates them and runs their unit tests,
and every required alert condition (docs/operations.md#metrics-and-alerts) has a rule with a severity,
a duration and its annotations.

The metric names the rules use must be the ones the code exposes: each is checked against the
registry of a process that imported every instrumented module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

#: required alert conditions -> (alert, metric it must read, threshold text that must appear in the expression)
CONDITIONS = {
    "reject rate > 1% for 5m": ("ExecutionRejectRateHigh", "tradeflow_order_updates_total", "> 0.01"),
    "API availability < 99.9%": ("ApiAvailabilityLow", "up", "< 0.999"),
    "signal latency p99 degraded": (
        "SignalLatencyP99Degraded",
        "tradeflow_signal_latency_seconds_bucket",
        "histogram_quantile(0.99",
    ),
    "dead-letter spike": ("DeadLetterSpike", "tradeflow_dead_letters_total", "> 10"),
    "collector success < 95%": ("CollectorSuccessLow", "market_collector_calls_total", "< 0.95"),
    "ingest p95 > 120 s": ("IngestLatencyP95High", "market_ingest_latency_seconds_bucket", "> 120"),
    "gate failed": ("GateFailed", "tradeflow_gate_status", "== 0"),
    "kill switch engaged": ("KillSwitchEngaged", "tradeflow_kill_switches_active", "> 0"),
    "reject reason skew (order rejects)": ("RejectReasonSkew", "tradeflow_order_updates_total", "> 0.8"),
    "reject reason skew (risk reasons)": ("RejectReasonSkew", "tradeflow_risk_reasons_total", ">= 20"),
}
EXPECTED_FOR = {"ExecutionRejectRateHigh": "5m", "RiskRejectRateHigh": "5m", "RejectReasonSkew": "5m"}


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_promtool_check_rules_passes() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same cases with one expectation flipped must be rejected."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    doc["rule_files"] = [str(RULES)]
    case = next(t for t in doc["tests"] if t["name"].startswith("kill switch"))
    case["alert_rule_test"][0]["exp_alerts"] = case["alert_rule_test"][1]["exp_alerts"]  # "fires at 1m": false
    bad = tmp_path / "bad_test.yml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = promtool("test", "rules", str(bad))
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_every_listed_condition_has_a_rule(condition: str) -> None:
    alert, metric, threshold = CONDITIONS[condition]
    rule = rules().get(alert)
    assert rule is not None, f"no rule for {condition!r}"
    expr = " ".join(rule["expr"].split())
    assert re.search(rf"\b{re.escape(metric)}\b", expr), (alert, expr)
    assert threshold in expr, (alert, expr)
    assert rule.get("for", "0s") == EXPECTED_FOR.get(alert, rule.get("for", "0s"))


def test_every_rule_has_severity_condition_and_annotations() -> None:
    all_rules = rules()
    assert len(all_rules) >= len(CONDITIONS)
    for name, rule in all_rules.items():
        assert rule["labels"]["severity"] in {"P1", "P2"}, name
        assert rule["labels"]["condition"], name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), (name, key)
    severities = {r["labels"]["severity"] for r in all_rules.values()}
    assert severities == {"P1", "P2"}
    assert all_rules["KillSwitchEngaged"]["labels"]["severity"] == "P1"
    assert all_rules["ExecutionRejectRateHigh"]["labels"]["severity"] == "P1"


def test_every_rule_is_exercised_by_the_promtool_tests() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    tested = {c["alertname"] for t in doc["tests"] for c in t.get("alert_rule_test", [])}
    firing = {c["alertname"] for t in doc["tests"] for c in t.get("alert_rule_test", []) if c["exp_alerts"]}
    quiet = {c["alertname"] for t in doc["tests"] for c in t.get("alert_rule_test", []) if not c["exp_alerts"]}
    assert tested == set(rules())
    assert firing == set(rules()), set(rules()) - firing
    assert quiet == set(rules()), set(rules()) - quiet


def test_rule_metrics_are_the_ones_the_code_exposes() -> None:
    """Every tradeflow_/market_ metric a rule reads is registered by the instrumented modules."""
    from prometheus_client import REGISTRY

    import agents.execution.ccxt_live
    import agents.market.history
    import agents.trading.metrics  # noqa: F401
    import gpu_workers.agents  # noqa: F401
    import runtime.faust_app  # noqa: F401
    import storage.sink  # noqa: F401
    from agents.market.live import default_collector_metrics

    default_collector_metrics()
    exposed = {
        s
        for fam in REGISTRY.collect()
        for s in (fam.name, f"{fam.name}_total", f"{fam.name}_bucket", f"{fam.name}_count")
    }
    used = {m for r in rules().values() for m in re.findall(r"\b((?:tradeflow|market)_[a-z_]+)\b", r["expr"])}
    assert used, "the rules read no tradeflow metric"
    assert used <= exposed, sorted(used - exposed)
