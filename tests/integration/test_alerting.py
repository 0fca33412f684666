"""Alerting end to end: a real Prometheus server scrapes a real worker and fires a rule from its metrics;
``tradeflow slo`` reads the same worker (directly and through Prometheus) and agrees with Prometheus.

The worker is the ``bars-checker`` agent on the real broker, fed good bars and then a burst of
malformed messages, which it dead-letters (``tradeflow_dead_letters_total``): ``DeadLetterSpike``
must go from inactive to firing.

Test override (the only one): Prometheus loads a *copy* of ``deploy/prometheus/alerts.yml`` in which
every ``for:`` duration is replaced by ``1s`` (evaluation every second), so a rule that waits minutes
in production fires within seconds here. Expressions, thresholds and windows are unchanged.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ops.embedded.broker import EmbeddedBroker, free_port
from ops.embedded.workers import ChildProcess
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import ROOT, Procs, wait_until
from topics.records import Bar, Timeframe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB = "tradeflow-workers"
N_GOOD, N_BAD = 5, 30


def rules_for_test(dest: Path) -> Path:
    """alerts.yml with every ``for:`` shortened to 1s (nothing else changed)."""
    text, n = re.subn(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>1s", RULES.read_text())
    assert n >= 10, "expected the rules to carry for: durations"
    dest.write_text(text)
    return dest


class Prometheus:
    """A real Prometheus server in a temp dir, stopped by PID."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = rules_for_test(tmp / "alerts.yml")
        config = tmp / "prometheus.yml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.log = tmp / "prometheus.log"
        self.proc = ChildProcess(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.log,
            cwd=tmp,
            append=False,
        ).start()

    def stop(self) -> None:
        self.proc.stop(timeout=15)

    async def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            raw = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=3).read())
        except OSError:
            return None
        return json.loads(raw)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        body = await self.get("/api/v1/query", query=expr)
        return [] if body is None else list(body["data"]["result"])

    async def alerts(self, name: str) -> list[dict[str, Any]]:
        body = await self.get("/api/v1/alerts")
        return [] if body is None else [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]


def good_bars(n: int) -> list[Bar]:
    t0 = 1_700_000_000_000_000_000 // Timeframe.H1.nanos * Timeframe.H1.nanos
    return [
        builders.bar(open_time=t0 + i * Timeframe.H1.nanos, open=100.0, high=101.0, low=99.0, close=100.5, volume=10.0)
        for i in range(n)
    ]


def slo_cli(*args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "slo", *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and set(labels.items()) <= set(s.labels.items())
    )


async def test_dead_letter_spike_fires_in_prometheus_and_slo_agrees(
    broker: EmbeddedBroker, namespace: str, procs: Procs, tmp_path: Path
) -> None:
    worker = procs.worker(broker.bootstrap, namespace, "bars-checker")
    target = f"127.0.0.1:{worker.extra['web_port']}"

    async def scrape() -> str:
        try:
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{target}/metrics", timeout=2).read().decode()
            )
        except OSError:
            return ""

    await wait_until(lambda: _truthy(scrape()), 60, "the worker's /metrics", watch=procs)
    prom = Prometheus(tmp_path, [target])
    try:

        async def scraped_up() -> bool:
            return any(r["value"][1] == "1" for r in await prom.query(f'up{{job="{JOB}"}}'))

        await wait_until(scraped_up, 60, "Prometheus scraping the worker (up == 1)")

        async with RecordPublisher(broker.bootstrap, namespace) as pub:
            await pub.publish(good_bars(N_GOOD), topic="market.bars.raw")

            async def consumed(n: int) -> bool:
                return metric_value(await scrape(), "tradeflow_records_in_total", consumer="bars-checker") >= n

            await wait_until(lambda: consumed(N_GOOD), 60, "the good bars consumed", watch=procs)
            await asyncio.sleep(3)  # three evaluations on good traffic only
            assert await prom.alerts("DeadLetterSpike") == [], "no dead letters yet, the rule must be quiet"

            for i in range(N_BAD):
                await pub.send_raw("market.bars.raw", b'{"not": "a bar", "i": %d' % i, key=b"garbage")
            await wait_until(lambda: consumed(N_GOOD + N_BAD), 60, "the malformed messages consumed", watch=procs)

        t0 = time.monotonic()

        async def firing() -> bool:
            return any(a["state"] == "firing" for a in await prom.alerts("DeadLetterSpike"))

        await wait_until(firing, 60, "DeadLetterSpike firing in Prometheus")
        fired = [a for a in await prom.alerts("DeadLetterSpike") if a["state"] == "firing"]
        assert len(fired) == 1, fired
        alert = fired[0]
        assert alert["labels"]["consumer"] == "bars-checker"
        assert alert["labels"]["topic"] == "market.bars.raw"
        assert alert["labels"]["severity"] == "P2"
        # the value is increase()'s extrapolation (or the young series' count): above the threshold, not exact
        assert float(alert["value"]) > 10
        assert "dead letters in 5m from bars-checker on market.bars.raw" in alert["annotations"]["summary"]
        print(f"DeadLetterSpike firing {time.monotonic() - t0:.1f}s after the burst was consumed")
        for quiet in ("KillSwitchEngaged", "WorkerDown", "ApiAvailabilityLow", "ExecutionRejectRateHigh"):
            assert await prom.alerts(quiet) == [], quiet

        # --- consumer lag: high-water - committed, per partition, back to 0 once everything is committed --
        async def caught_up() -> bool:
            text = await scrape()
            return (
                "tradeflow_consumer_lag{" in text
                and 'topic="market.bars.raw"' in text
                and metric_value(text, "tradeflow_consumer_lag", topic="market.bars.raw") == 0
            )

        await wait_until(caught_up, 30, "tradeflow_consumer_lag of market.bars.raw reported and 0")
        lag = await prom.query('sum(tradeflow_consumer_lag{topic="market.bars.raw"})')
        assert lag and float(lag[0]["value"][1]) >= 0

        # --- tradeflow slo straight from the worker ------------------------------------------------
        code, report = slo_cli("--targets", target)
        slos = {s["name"]: s for s in report["slos"]}
        assert slos["availability"]["value"] == 1.0
        assert slos["dead_letter_ratio"]["value"] == pytest.approx(N_BAD / (N_GOOD + N_BAD))
        assert slos["execution_reject_rate"]["status"] == "no_data"  # no trading agent here: missing, not 0
        assert code == (1 if report["breached"] else 0)
        rows = {
            r["labels"].get("consumer"): r
            for r in report["latency"]
            if r["histogram"] == "tradeflow_processing_seconds"
        }
        ours = rows["bars-checker"]
        assert ours["count"] >= 1
        # the same quantiles as Prometheus' histogram_quantile over the same (now static) buckets
        for q in (0.5, 0.95, 0.99):
            sel = 'tradeflow_processing_seconds_bucket{consumer="bars-checker"}'
            theirs = await prom.query(f"histogram_quantile({q}, sum by (le) ({sel}))")
            assert len(theirs) == 1
            assert ours[f"p{q * 100:g}"] == pytest.approx(float(theirs[0]["value"][1]), rel=1e-9), q

        # --- tradeflow slo through Prometheus --------------------------------------------------------
        code, report = slo_cli("--prometheus", prom.url, "--window", "5m")
        slos = {s["name"]: s for s in report["slos"]}
        assert slos["availability"]["value"] == 1.0
        # increase() cannot see what a series held at its first scrape: present, maybe lower than lifetime
        assert slos["dead_letter_ratio"]["value"] is not None
        assert any(
            r["histogram"] == "tradeflow_processing_seconds" and r["labels"].get("consumer") == "bars-checker"
            for r in report["latency"]
        )
        assert code == (1 if report["breached"] else 0)
    finally:
        prom.stop()
        log_tail = prom.log.read_text(errors="replace")[-2000:]
        assert prom.proc.returncode is not None, log_tail


async def _truthy(value: Any) -> bool:
    return bool(await value)
