"""Governance agent on the real broker and PostgreSQL: a rollout end to end.

A shadow model is promoted through canary_10 -> canary_30 -> active on
passing gate windows, then degrades and is rolled back automatically (the
previously active version restored); a redelivered window changes nothing,
also across a worker crash; an operator's signed CLI command is applied, a
forged one is refused; every decision is in ``rollout_audit`` and the stages
in ``model_registry``.

Gate results are built like ``tradeflow gates evaluate`` publishes them (one
evaluation: the hard metrics and readiness of a track, same ``window_end``),
with event times in the recent past: the agent runs live (event time never
ahead of its wall clock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.control.signing import Keyring, new_control_event
from agents.governance.config import DEFAULT_REQUIRED_GATES
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import ROOT, Proc, Procs, wait_until
from topics.records import ControlCommand, GateResult, GateStatus, ModelRegistryEvent, ModelStage
from topics.units import NS_PER_HOUR as HOUR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = "fake-governance-secret-NEVER-LOG-4e1d7a"
MODEL = "mlp-btcusdt-1h"
SYMBOL = "BTC/USDT"
P, F = GateStatus.PASSED, GateStatus.FAILED


@pytest.fixture
def gov_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", SECRET)
    monkeypatch.setenv("TRADEFLOW_CONTROL_SIGNING_KEY_ID", "ops1")
    monkeypatch.setenv("TRADEFLOW_OPERATOR", "alice")
    monkeypatch.setenv("TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE", "2")
    monkeypatch.setenv("TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK", "2")


def registry(version: str, stage: ModelStage, ts: int) -> ModelRegistryEvent:
    return builders.registry_event(
        version=version,
        stage=stage,
        ts=ts,
        model_id=MODEL,
        config={"symbol": SYMBOL, "timeframe": "1h", "window": 8},
        data_start=ts - 400 * 24 * HOUR,
        data_end=ts - 24 * HOUR,
        seed=7,
        metrics={"val_ic": 0.03},
        checkpoint_path=f"/m/{version}.ckpt",
        checkpoint_sha256="cd" * 32,
    )


def evaluation(end: int, status: GateStatus) -> list[GateResult]:
    """One gate evaluation of the model's track: every required gate with ``status``."""
    out = []
    for req in DEFAULT_REQUIRED_GATES:
        gate, _, metric = req.partition(":")
        out.append(
            builders.gate_result(
                status=status,
                value=2.0 if status is P else 0.2,
                gate=gate,
                track=MODEL,
                metric=metric,
                window_end=end,
                blockers=() if status is P else (f"{metric} below threshold",),
                config_hash="gates-test",
            )
        )
    return out


async def consumed(proc: Proc, topic: str) -> float:
    url = f"http://127.0.0.1:{proc.extra['web_port']}/metrics"
    try:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
    except OSError:
        return 0.0
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "tradeflow_records_in_total"
        and s.labels.get("consumer") == "governance"
        and s.labels.get("topic") == topic
    )


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def decisions(dsn: str) -> list[asyncpg.Record]:
    return await fetch(dsn, "SELECT * FROM rollout_audit ORDER BY ts_event, kafka_offset")


async def wait_decisions(dsn: str, n: int, procs: Procs, what: str, timeout: float = 60) -> list[asyncpg.Record]:
    async def enough() -> bool:
        return len(await decisions(dsn)) >= n

    await wait_until(enough, timeout, what, watch=procs)
    return await decisions(dsn)


async def stages(dsn: str) -> dict[str, str]:
    rows = await fetch(
        dsn,
        "SELECT DISTINCT ON (version) version, stage FROM model_registry WHERE model_id = $1 "
        "ORDER BY version, ts_event DESC",
        MODEL,
    )
    return {r["version"]: r["stage"] for r in rows}


def cli(broker: EmbeddedBroker, namespace: str, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    infra = ["--dsn", dsn] if args[0] == "rollout" else ["--bootstrap", broker.bootstrap, "--namespace", namespace]
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args, *infra],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def start_worker(procs: Procs, broker: EmbeddedBroker, namespace: str) -> Proc:
    worker = procs.worker(broker.bootstrap, namespace, "governance")

    async def up() -> bool:
        return "governance_state_restored" in worker.output()

    await wait_until(up, 60, "the governance worker to restore its state and start", watch=procs)
    return worker


async def test_rollout_when_gates_pass_then_fail_then_promoted_through_every_stage_rolled_back_and_audited(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, gov_env: None
) -> None:
    t0 = time.time_ns() - 48 * HOUR
    procs.sink(
        broker.bootstrap,
        namespace,
        dsn,
        "--topics",
        "governance.audit",
        "models.registry",
        "control.audit",
        "ops.alerts",
    )
    worker = await start_worker(procs, broker, namespace)
    async with RecordPublisher(broker.bootstrap, namespace, name="test") as pub:
        await pub.publish(
            [
                registry("v1", ModelStage.REGISTERED, t0),
                registry("v1", ModelStage.ACTIVE, t0 + 1),
                registry("v2", ModelStage.REGISTERED, t0 + 2),
                registry("v2", ModelStage.SHADOW, t0 + 3),
            ]
        )

        async def registry_seen() -> bool:
            return await consumed(worker, "models.registry") >= 4

        await wait_until(registry_seen, 30, "the agent to fold the registry", watch=procs)

        # 6 passing windows (2 per stage) then 2 failing ones, in one go: one ordered topic
        gates = [g for i in range(1, 7) for g in evaluation(t0 + i * HOUR, P)]
        gates += [g for i in (7, 8) for g in evaluation(t0 + i * HOUR, F)]
        await pub.publish(gates)
        rows = await wait_decisions(dsn, 8, procs, "8 window decisions in rollout_audit")

        actions = [(r["version"], r["action"], r["from_stage"], r["to_stage"]) for r in rows]
        assert actions == [
            ("v2", "hold", "shadow", "shadow"),
            ("v2", "promote", "shadow", "canary_10"),
            ("v2", "hold", "canary_10", "canary_10"),
            ("v2", "promote", "canary_10", "canary_30"),
            ("v2", "hold", "canary_30", "canary_30"),
            ("v2", "promote", "canary_30", "active"),
            ("v2", "hold", "active", "active"),
            ("v2", "rollback", "active", "rolled_back"),
        ]
        for i, r in enumerate(rows, start=1):
            assert r["trigger"] == "gates" and r["actor"] == "governance" and r["window_end"] == t0 + i * HOUR
            assert (r["windows_to_promote"], r["windows_to_rollback"]) == (2, 2) and len(r["config_hash"]) == 16
            assert sorted(json.loads(r["gates"])) == sorted(DEFAULT_REQUIRED_GATES)
            assert len(json.loads(r["gate_result_ids"])) == len(DEFAULT_REQUIRED_GATES)
        assert rows[-1]["restored_version"] == "v1" and rows[-1]["window_status"] == "failed"

        async def settled() -> bool:
            return await stages(dsn) == {"v1": "active", "v2": "rolled_back"}

        await wait_until(settled, 30, "v1 active again and v2 rolled back in model_registry", watch=procs)
        history = [
            r["stage"]
            for r in await fetch(
                dsn, "SELECT stage FROM model_registry WHERE model_id=$1 AND version='v1' ORDER BY ts_event", MODEL
            )
        ]
        assert history == ["registered", "active", "retired", "active"]

        # a redelivered window is not counted again, also after a crash of the worker
        worker.kill()
        worker = await start_worker(procs, broker, namespace)
        await pub.publish(evaluation(t0 + 8 * HOUR, F) + evaluation(t0 + 9 * HOUR, P))
        rows = await wait_decisions(dsn, 9, procs, "the decision of window 9")
        await asyncio.sleep(1.0)  # room for a wrong extra decision to arrive
        rows = await decisions(dsn)
        assert len(rows) == 9, [(r["window_end"], r["action"]) for r in rows]
        assert (rows[-1]["version"], rows[-1]["action"], rows[-1]["window_end"]) == ("v1", "hold", t0 + 9 * HOUR)
        assert rows[-1]["reason"].startswith("active_monitoring")

    status = cli(broker, namespace, dsn, "rollout", "status", "--model-id", MODEL, "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert {v["version"]: (v["stage"], v["capital_fraction"]) for v in row["versions"]} == {
        "v1": ("active", 1.0),
        "v2": ("rolled_back", 0.0),
    }
    audit = cli(broker, namespace, dsn, "rollout", "audit", "--model-id", MODEL, "--limit", "3")
    assert audit.returncode == 0 and "v2: rollback active -> rolled_back by governance" in audit.stdout
    assert cli(broker, namespace, dsn, "rollout", "status", "--model-id", "nope").returncode == 1


async def test_operator_commands_when_signed_then_applied_and_forged_then_refused_all_audited(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs, gov_env: None
) -> None:
    t0 = time.time_ns() - 48 * HOUR
    procs.sink(
        broker.bootstrap,
        namespace,
        dsn,
        "--topics",
        "governance.audit",
        "models.registry",
        "control.audit",
        "ops.alerts",
    )
    worker = await start_worker(procs, broker, namespace)
    async with RecordPublisher(broker.bootstrap, namespace, name="test") as pub:
        await pub.publish([registry("v3", ModelStage.REGISTERED, t0)])

        async def registry_seen() -> bool:
            return await consumed(worker, "models.registry") >= 1

        await wait_until(registry_seen, 30, "the agent to fold the registry", watch=procs)

        promote = cli(
            broker,
            namespace,
            dsn,
            "control",
            "rollout",
            "promote",
            "--model-id",
            MODEL,
            "--version",
            "v3",
            "--reason",
            "start shadowing",
        )
        assert promote.returncode == 0, promote.stderr
        now = time.time_ns()
        forged = new_control_event(
            command=ControlCommand.ROLLOUT_ROLLBACK,
            scope="model",
            target=MODEL,
            params={"model_id": MODEL, "version": "v3"},
            reason="forged",
            operator="mallory",
            key_id="ops1",
            nonce="forged-1",
            ts_event=now,
            ts_init=now,
            expires_at=None,
            keyring=Keyring({"ops1": b"z" * 40}),
        )
        await pub.publish([forged])
        rows = await wait_decisions(dsn, 2, procs, "the manual promote and the forged rollback audited")
        rollback = cli(
            broker,
            namespace,
            dsn,
            "control",
            "rollout",
            "rollback",
            "--model-id",
            MODEL,
            "--version",
            "v3",
            "--reason",
            "enough",
        )
        assert rollback.returncode == 0, rollback.stderr
        rows = await wait_decisions(dsn, 3, procs, "the manual rollback audited")

    got = [(r["action"], r["from_stage"], r["to_stage"], r["actor"], r["trigger"]) for r in rows]
    assert got == [
        ("manual_promote", "registered", "shadow", "operator:alice", "control"),
        ("rejected", None, None, "operator:mallory", "control"),
        ("manual_rollback", "shadow", "rolled_back", "operator:alice", "control"),
    ]
    assert rows[1]["reason"].startswith("bad_signature")

    async def audited() -> bool:
        n = await fetch(
            dsn, "SELECT outcome, reason, alert FROM control_audit WHERE component='governance' ORDER BY ts_event"
        )
        return len(n) == 3

    await wait_until(audited, 30, "three governance control audits", watch=procs)
    audits = [
        (r["outcome"], r["reason"], r["alert"])
        for r in await fetch(
            dsn, "SELECT outcome, reason, alert FROM control_audit WHERE component='governance' ORDER BY ts_event"
        )
    ]
    assert audits == [
        ("accepted", "applied", False),
        ("rejected", "bad_signature", True),
        ("accepted", "applied", False),
    ]

    async def alerted() -> bool:
        return bool(
            await fetch(
                dsn,
                "SELECT 1 FROM ev_alerts WHERE payload->>'source' = 'governance' "
                "AND payload->>'code' = 'control_rejected'",
            )
        )

    await wait_until(alerted, 30, "the forged command alerted", watch=procs)
    assert (await stages(dsn))["v3"] == "rolled_back"
    logs = worker.output()
    assert SECRET not in logs and "rollout_decision" in logs
