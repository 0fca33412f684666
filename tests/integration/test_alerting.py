"""Alerting end to end: a real Prometheus server scrapes a real worker and fires a rule from its metrics;
``tradeflow slo`` reads the same worker (directly and through Prometheus) and agrees with Prometheus.

The worker is the ``bars-checker`` agent on the real broker, fed good bars and then a burst of
malformed messages, which it dead-letters (``tradeflow_dead_letters_total``): ``DeadLetterSpike``
must go from inactive to firing.

Test overrides: Prometheus loads a *copy* of ``deploy/prometheus/alerts.yml`` in which every ``for:``
duration is replaced by ``1s`` (evaluation every second), so a rule that waits minutes in production
fires within seconds here. Expressions, thresholds and windows are unchanged. Prometheus re-sends firing
alerts every second (``--rules.alert.resend-delay``; an alert that fires before Prometheus has discovered
its Alertmanager waits for the next re-send).

The notification path: Prometheus (the real rules plus one ``vector(1)`` test alert) -> Debian's real
Alertmanager on ``deploy/alertmanager/alertmanager.yml`` -> ``tradeflow alerts receive`` -> PostgreSQL.
Alertmanager's overrides: the webhook URLs (Debian's 0.25 has no webhook ``url_file``: the operators'
webhook becomes a closed local port, the record's URL our receiver) and group_wait / group_interval /
repeat_interval shortened to seconds, so a repeat arrives within the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml

from ops.embedded.broker import EmbeddedBroker, free_port
from ops.embedded.workers import ChildProcess
from runtime.publish import RecordPublisher
from storage import alert_notifications
from tests import builders
from tests.conftest import ROOT, Procs, wait_until
from topics.records import Bar, Timeframe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
#: Debian's binary name (the upstream one is ``alertmanager``); ops/bootstrap.sh installs the package
ALERTMANAGER = (
    shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "/usr/bin/prometheus-alertmanager"
)
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

    def __init__(
        self,
        tmp: Path,
        targets: list[str],
        *,
        job: str = JOB,
        extra_rules: Sequence[Path] = (),
        alertmanager: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = rules_for_test(tmp / "alerts.yml")
        config = tmp / "prometheus.yml"
        doc: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(rules), *map(str, extra_rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        if alertmanager is not None:
            doc["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        config.write_text(json.dumps(doc))  # JSON is YAML
        self.log = tmp / "prometheus.log"
        self.proc = ChildProcess(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # an alert that fires before the Alertmanager is discovered (up to 5 s) is sent again after
                # this delay (default 1m)
                "--rules.alert.resend-delay=1s",
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


# ---------------------------------------------------------------------------------------------------------
# the notification record: Alertmanager -> tradeflow alerts receive -> PostgreSQL
# ---------------------------------------------------------------------------------------------------------

TEST_ALERT = "AlertPipelineTest"


async def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request; the status and body of an HTTP error too; (0, b"") when nothing answers."""

    def call() -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    return await asyncio.to_thread(call)


def start_receiver(procs: Procs, dsn: str) -> str:
    port = free_port()
    procs.cli("alert-receiver", "alerts", "receive", "--listen", f"127.0.0.1:{port}", "--dsn", dsn)
    return f"127.0.0.1:{port}"


async def wait_healthy(procs: Procs, receiver: str) -> None:
    async def healthy() -> bool:
        return (await http("GET", f"http://{receiver}/health"))[0] == 200

    await wait_until(healthy, 30, "the alert receiver's /health", watch=procs)


def alertmanager_config_for_test(dest: Path, receiver: str) -> Path:
    """deploy/alertmanager/alertmanager.yml with local webhook URLs and intervals of seconds (nothing else)."""
    cfg = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    record_urls = 0
    for r in cfg["receivers"]:
        for c in r["webhook_configs"]:
            if "url_file" in c:  # the operators' webhook: nothing listens there (it must not hold the record up)
                c["url"] = f"http://127.0.0.1:{free_port()}/hook"
                del c["url_file"]
            else:
                assert c["url"].startswith("http://alert-receiver:"), c
                c["url"] = f"http://{receiver}/alerts"
                record_urls += 1
    assert record_urls == len(cfg["receivers"]) >= 2, "every receiver posts to the record"
    for route in [cfg["route"], *cfg["route"]["routes"]]:
        route.update(group_wait="0s", group_interval="1s", repeat_interval="2s")
    dest.write_text(json.dumps(cfg))
    return dest


class Alertmanager:
    """Debian's real Alertmanager in a temp dir (no cluster port), stopped by PID."""

    def __init__(self, tmp: Path, config: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "alertmanager.log"
        self.proc = ChildProcess(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            self.log,
            cwd=tmp,
            append=False,
        ).start()

    def stop(self) -> None:
        self.proc.stop(timeout=15)


async def test_alert_fires_alertmanager_delivers_and_postgres_records_it_once(
    dsn: str, procs: Procs, tmp_path: Path
) -> None:
    receiver = start_receiver(procs, dsn)
    await wait_healthy(procs, receiver)
    am = Alertmanager(tmp_path, alertmanager_config_for_test(tmp_path / "alertmanager.yml", receiver))
    test_rules = tmp_path / "pipeline_test.yml"
    test_rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "pipeline-test",
                        "rules": [
                            {
                                "alert": TEST_ALERT,
                                "expr": "vector(1)",
                                "labels": {"severity": "P1", "condition": "pipeline_test"},
                                "annotations": {"summary": "the alert path works", "runbook": "none"},
                            }
                        ],
                    }
                ]
            }
        )
    )
    prom = Prometheus(
        tmp_path,
        [receiver],
        job="tradeflow-alert-receiver",
        extra_rules=[test_rules],
        alertmanager=f"127.0.0.1:{am.port}",
    )
    conn = await asyncpg.connect(dsn)
    t0 = time.monotonic()
    try:
        # the project's rules are loaded beside the test alert, RejectReasonSkew among them
        async def rules_loaded() -> bool:
            body = await prom.get("/api/v1/rules")
            names = {r["name"] for g in (body or {"data": {"groups": []}})["data"]["groups"] for r in g["rules"]}
            return {"RejectReasonSkew", "WorkerDown", TEST_ALERT} <= names

        await wait_until(rules_loaded, 30, "Prometheus loading the project's rules and the test rule")

        async def recorded() -> bool:
            return await alert_notifications.count(conn, TEST_ALERT) > 0

        await wait_until(recorded, 40, f"{TEST_ALERT} in alert_notifications", watch=procs)
        print(f"{TEST_ALERT} recorded {time.monotonic() - t0:.1f}s after Prometheus started")
        assert any(a["state"] == "firing" for a in await prom.alerts(TEST_ALERT))
        (row,) = await alert_notifications.fetch(conn, TEST_ALERT)
        assert row["receiver"] == "ops-page"  # the P1 route of the real config
        assert row["status"] == "firing" and row["ends_at"] is None
        assert row["severity"] == "P1"
        assert row["labels"] == {"alertname": TEST_ALERT, "severity": "P1", "condition": "pipeline_test"}
        assert row["annotations"] == {"summary": "the alert path works", "runbook": "none"}
        assert TEST_ALERT in str(row["group_key"])
        assert str(row["generator_url"]).startswith("http://") and "vector" in str(row["generator_url"])
        assert len(str(row["fingerprint"])) == 16

        # Alertmanager repeats the notification (repeat_interval 2s here): more deliveries, never a second row
        async def redelivered() -> bool:
            got = await alert_notifications.fetch(conn, TEST_ALERT)
            return bool(got) and int(str(got[0]["deliveries"])) >= 2

        await wait_until(redelivered, 30, "Alertmanager re-sending the notification", watch=procs)
        assert await alert_notifications.count(conn, TEST_ALERT) == 1
        assert await conn.fetchval("SELECT count(*) FROM alert_notifications WHERE alertname <> $1", TEST_ALERT) == 0

        # the receiver's own counters, scraped by the same Prometheus
        async def scraped() -> bool:
            got = await prom.query('sum(tradeflow_alert_rows_total{result="repeated"})')
            return bool(got) and float(got[0]["value"][1]) >= 1

        await wait_until(scraped, 30, "tradeflow_alert_rows_total scraped from the receiver")
        assert await prom.alerts("WorkerDown") == []
        print(f"redelivered and scraped {time.monotonic() - t0:.1f}s after Prometheus started")
    finally:
        await conn.close()
        prom.stop()
        am.stop()
        am_log = am.log.read_text(errors="replace")[-2000:]
        assert am.proc.returncode is not None, am_log
        assert prom.proc.returncode is not None


def notification(status: str = "firing", **alert: Any) -> dict[str, Any]:
    base = {
        "status": status,
        "labels": {"alertname": "RejectReasonSkew", "severity": "P2", "account": "paper", "reason": "venue_error"},
        "annotations": {"summary": "Reason venue_error on 90% of the orders rejects of account paper in 15m"},
        "startsAt": "2026-12-05T04:40:01.5Z",
        "endsAt": "2026-12-05T05:00:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "a1b2c3d4e5f60718",
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="RejectReasonSkew"}',
        "status": status,
        "receiver": "ops-webhook",
        "alerts": [{**base, **alert}],
    }


async def test_receiver_when_notifications_resent_or_bad_then_one_row_per_state_and_400_with_reason(
    dsn: str, procs: Procs
) -> None:
    receiver = start_receiver(procs, dsn)
    await wait_healthy(procs, receiver)
    url = f"http://{receiver}/alerts"
    conn = await asyncpg.connect(dsn)
    try:
        firing = orjson.dumps(notification())
        assert await http("POST", url, firing) == (200, b'{"alerts":1,"inserted":1,"repeated":0}')
        assert await http("POST", url, firing) == (200, b'{"alerts":1,"inserted":0,"repeated":1}')
        changed = notification(annotations={"summary": "Reason venue_error on 95% ..."})  # same state, new text
        assert (await http("POST", url, orjson.dumps(changed)))[0] == 200
        (row,) = await alert_notifications.fetch(conn)
        assert row["deliveries"] == 3 and row["status"] == "firing"
        assert row["annotations"] == {"summary": "Reason venue_error on 95% ..."}

        resolved = orjson.dumps(notification("resolved"))
        for _ in range(2):
            assert (await http("POST", url, resolved))[0] == 200
        rows = {r["status"]: r for r in await alert_notifications.fetch(conn)}
        assert set(rows) == {"firing", "resolved"}
        assert rows["resolved"]["deliveries"] == 2
        assert str(rows["resolved"]["ends_at"]) == "2026-12-05 05:00:00+00:00"

        # a new firing of the same alert (new startsAt) is a new state: a new row
        again = orjson.dumps(notification(startsAt="2026-12-05T06:00:00Z"))
        assert await http("POST", url, again) == (200, b'{"alerts":1,"inserted":1,"repeated":0}')
        assert await alert_notifications.count(conn) == 3

        bad = {
            b"not json": "not_json",
            orjson.dumps({**notification(), "version": "3"}): "unsupported_version",
            orjson.dumps({**notification(), "alerts": []}): "no_alerts",
            orjson.dumps(notification(fingerprint="")): "bad_field",
        }
        for body, reason in bad.items():
            code, answer = await http("POST", url, body)
            assert code == 400, (body, answer)
            assert orjson.loads(answer)["error"] == reason
        assert (await http("GET", f"http://{receiver}/health"))[0] == 200  # still serving
        assert await alert_notifications.count(conn) == 3  # nothing recorded from them
        metrics = (await http("GET", f"http://{receiver}/metrics"))[1].decode()
        assert metric_value(metrics, "tradeflow_alert_notifications_total", outcome="rejected") == len(bad)
        assert metric_value(metrics, "tradeflow_alert_notifications_total", outcome="recorded") == 6
        log = procs.all[0].output()
        assert log.count("alert_notification_rejected") == len(bad), log[-3000:]
        assert "unsupported_version" in log

        listed = subprocess.run(
            [sys.executable, "-m", "ops.cli", "alerts", "list", "--dsn", dsn, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        states = [(r["status"], r["starts_at"], r["deliveries"]) for r in json.loads(listed.stdout)]
        assert sorted(states) == [
            ("firing", "2026-12-05 04:40:01.500000+00:00", 3),
            ("firing", "2026-12-05 06:00:00+00:00", 1),
            ("resolved", "2026-12-05 04:40:01.500000+00:00", 2),
        ]
    finally:
        await conn.close()


async def test_receiver_when_the_database_is_down_then_503_for_a_retry_and_it_keeps_serving(procs: Procs) -> None:
    receiver = start_receiver(procs, f"postgresql://tradeflow@127.0.0.1:{free_port()}/tradeflow")  # nothing there
    await wait_healthy(procs, receiver)
    for _ in range(2):
        code, answer = await http("POST", f"http://{receiver}/alerts", orjson.dumps(notification()))
        assert code == 503, answer  # a 5xx: Alertmanager retries the notification
        assert orjson.loads(answer)["error"] == "database"
    too_large = b" " * (5 * 1024 * 1024)
    code, answer = await http("POST", f"http://{receiver}/alerts", too_large)
    assert code == 413 and orjson.loads(answer)["error"] == "too_large"
    assert (await http("GET", f"http://{receiver}/health"))[0] == 200
    metrics = (await http("GET", f"http://{receiver}/metrics"))[1].decode()
    assert metric_value(metrics, "tradeflow_alert_notifications_total", outcome="failed", reason="database") == 2
    assert procs.all[0].alive
    assert procs.all[0].output().count("alert_notification_not_recorded") == 2
