"""The distributed deployment (compose.yaml, Dockerfile, deploy/) is validated here.

No Docker engine runs on the development machines or CI, so nothing is started.
What is checked instead:

- schema: the official compose-spec JSON schema (vendored by check-jsonschema, a dev
  dependency) always; additionally ``docker compose config -q`` when the compose plugin
  is installed (it is a pure client and needs no engine). Where the plugin is absent
  (this machine has the docker CLI without it), the schema check is the validation;
- every tradeflow service's command parses with the REAL ``tradeflow`` parser and every
  ``--agents`` name is in the real agent registry at test time;
- topology rules: 3 brokers, replication factor 3, start order, singletons vs
  partition-scaled replicas, GPU reservations, Prometheus/Alertmanager wiring;
- Prometheus config by ``promtool check config`` (bootstrap installs promtool), with
  the rule file path pointed at this repository's deploy/prometheus/alerts.yml;
- that ``tradeflow topics --create`` really sets each catalogued topic's cleanup.policy
  and retention.ms on the broker (integration, against the embedded broker).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; used for one validate call
import pytest
import yaml

from ops.cli.main import _agent_registry, build_parser
from ops.embedded.broker import EmbeddedBroker
from topics.catalogue import TOPICS, physical_name, spec

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
PROM_DIR = ROOT / "deploy" / "prometheus"
AM_DIR = ROOT / "deploy" / "alertmanager"

#: partition-scaled agent groups -> the catalogue topic whose partitions bound their replicas
SCALED_BY = {
    "bar-aggregator": "market.ticks",
    "bars-checker": "market.bars.raw",
    "features": "market.bars",
    "inference": "features",
    "trainer": "jobs.train",
}
SINGLETONS = ("trading", "governance", "gates", "dashboard")


def _doc() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _doc()["services"]
    return services


def _tradeflow_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith("tradeflow")}


def _flag(cmd: list[str], name: str) -> list[str]:
    """Values of ``--name v1 v2 ...`` in an argv (up to the next flag)."""
    if name not in cmd:
        return []
    out = []
    for tok in cmd[cmd.index(name) + 1 :]:
        if tok.startswith("--"):
            break
        out.append(tok)
    return out


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    res = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return res.returncode == 0


# ---------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------


def test_compose_when_validated_against_the_compose_spec_schema_then_no_errors() -> None:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_doc()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:20])
    # the validator does reject what compose rejects (guards against a schema that accepts anything)
    bad = {"services": {"x": {"image": "a", "deploy": {"replicas": "two"}, "no_such_key": 1}}}
    assert len(list(validator.iter_errors(bad))) >= 1
    assert "secrets/" in (ROOT / ".gitignore").read_text().splitlines()  # where compose reads the secrets from
    if _compose_plugin():  # this machine has the docker CLI without the compose plugin: schema only
        _docker_compose_config()


def _docker_compose_config() -> None:
    """``docker compose config -q`` (a pure client, no engine needed), where the compose plugin exists."""
    secrets = [Path(s["file"]) for s in _doc().get("secrets", {}).values() if "file" in s]
    missing = [ROOT / p for p in secrets if not (ROOT / p).exists()]
    try:
        for p in missing:  # compose config checks that secret files exist
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x" * 32)
        res = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
    finally:
        for p in missing:
            p.unlink()
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------
# commands exist in the project
# ---------------------------------------------------------------------------


def test_compose_services_when_parsed_then_each_tradeflow_command_parses_with_the_real_cli() -> None:
    parser = build_parser()
    registry = _agent_registry()
    checked, unknown_agents = 0, []
    for name, svc in _tradeflow_services().items():
        cmd = svc.get("command")
        assert isinstance(cmd, list) and cmd, name
        argv = [str(c) for c in cmd]
        ns = parser.parse_args(argv)  # SystemExit on an unknown command or flag
        assert callable(ns.fn), name
        unknown_agents += [(name, a) for a in _flag(argv, "--agents") if a not in registry]
        checked += 1
    assert not unknown_agents, f"agents not in the registry {sorted(registry)}: {unknown_agents}"
    assert checked >= 12


def test_every_registered_agent_when_compose_parsed_then_it_has_a_service() -> None:
    deployed = {a for s in _tradeflow_services().values() for a in _flag([str(c) for c in s["command"]], "--agents")}
    assert set(_agent_registry()) <= deployed, set(_agent_registry()) - deployed


# ---------------------------------------------------------------------------
# topology
# ---------------------------------------------------------------------------


def test_compose_when_parsed_then_three_broker_nodes_rf3_topics_and_ordered_start() -> None:
    svcs = _services()
    brokers = [n for n in svcs if n.startswith("redpanda-")]
    assert sorted(brokers) == ["redpanda-0", "redpanda-1", "redpanda-2"]
    for b in brokers:
        assert "healthcheck" in svcs[b]
        assert "redpanda.auto_create_topics_enabled=false" in svcs[b]["command"]
    init = svcs["topics-init"]
    assert [str(c) for c in init["command"]] == ["topics", "--create", "--replication-factor", "3"]
    assert init["depends_on"] == {b: {"condition": "service_healthy"} for b in brokers}
    assert "test" in svcs["postgres"]["healthcheck"]
    assert svcs["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, svc in _tradeflow_services().items():
        if name in ("topics-init", "migrate"):
            continue
        deps = svc["depends_on"]
        assert deps["topics-init"] == {"condition": "service_completed_successfully"}, name
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        env = svc["environment"]
        assert env["TRADEFLOW_BOOTSTRAP"].split(",") == [f"{b}:9092" for b in brokers], name


def test_singletons_when_parsed_then_exactly_one_replica() -> None:
    svcs = _services()
    for name in SINGLETONS:
        assert svcs[name]["deploy"]["replicas"] == 1, name
    assert "replicas: 1" in COMPOSE.read_text()
    trading = svcs["trading"]
    assert trading["environment"]["TRADEFLOW_CONTROL_KEY_OPS1_FILE"].startswith("/run/secrets/")
    assert "control_key_ops1" in trading["secrets"]


def test_partition_scaled_services_when_parsed_then_replicas_within_partitions() -> None:
    svcs = _services()
    for name, topic in SCALED_BY.items():
        replicas = svcs[name]["deploy"]["replicas"]
        assert 1 <= replicas <= spec(topic).partitions, (name, replicas)
    assert 1 <= svcs["sink"]["deploy"]["replicas"] <= min(t.partitions for t in TOPICS if t.partitions > 1)


def test_gpu_workers_when_parsed_then_nvidia_gpu_reserved_and_cuda_image() -> None:
    svcs = _services()
    for name in ("trainer", "inference"):
        devices = svcs[name]["deploy"]["resources"]["reservations"]["devices"]
        assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices, name
        assert "/cu" in svcs[name]["build"]["args"]["TORCH_INDEX"], name
        assert any(str(v).endswith(":/var/lib/tradeflow/models") for v in svcs[name]["volumes"]), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX=", dockerfile, re.M)
    assert '--index-url "${TORCH_INDEX}"' in dockerfile
    assert 'ENTRYPOINT ["tradeflow"]' in dockerfile


def test_dockerfile_when_read_then_every_top_level_package_is_in_the_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.M))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


# ---------------------------------------------------------------------------
# Prometheus / Alertmanager
# ---------------------------------------------------------------------------


def _web_port(svc: dict[str, Any]) -> int:
    cmd = [str(c) for c in svc["command"]]
    port = (
        _flag(cmd, "--web-port")
        or _flag(cmd, "--metrics-port")
        or [p.rsplit(":", 1)[-1] for p in _flag(cmd, "--listen")]
    )
    assert port, cmd
    return int(port[0])


def test_prometheus_when_parsed_then_scrapes_every_service_on_its_metrics_port_and_loads_project_rules() -> None:
    svcs = _services()
    prom = svcs["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    scraped: dict[str, int] = {}
    for job in cfg["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for n in sd["names"]:
                scraped[n] = sd["port"]
    long_running = {n: s for n, s in _tradeflow_services().items() if n not in ("topics-init", "migrate")}
    expected = {n: _web_port(s) for n, s in long_running.items() if "profiles" not in s and n != "gates"}
    assert scraped == expected


def test_prometheus_config_when_checked_by_promtool_then_valid_with_the_project_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: run ops/bootstrap.sh (installs Debian's prometheus package)"
    rules = PROM_DIR / "alerts.yml"
    assert rules.exists(), "deploy/prometheus/alerts.yml (the project's alert rules) is missing"
    text = (PROM_DIR / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(rules))
    (tmp_path / "prometheus.yml").write_text(text)
    res = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_alertmanager_when_parsed_then_every_route_reaches_a_receiver_with_a_destination() -> None:
    svcs = _services()
    am = svcs["alertmanager"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in am["volumes"]
    cfg = yaml.safe_load((AM_DIR / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in cfg["receivers"]}

    def routes(r: dict[str, Any]) -> list[dict[str, Any]]:
        return [r, *(x for child in r.get("routes", []) for x in routes(child))]

    for r in routes(cfg["route"]):
        if "receiver" in r:
            assert r["receiver"] in receivers, r
    mounted = {f"/run/secrets/{s}" for s in am["secrets"]}
    for name, r in receivers.items():
        configs = [c for k, v in r.items() if k.endswith("_configs") for c in v]
        assert configs, f"receiver {name} has no destination: alerts routed there would be dropped silently"
        for c in configs:
            if "url_file" in c:
                assert c["url_file"] in mounted, (name, c["url_file"])
            else:
                assert "url" in c, (name, c)
    # every severity the project's rules use reaches a receiver; P1 pages (own route, hourly repeats)
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    severities = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert severities and severities <= {"P1", "P2"}, severities

    def route_for(severity: str) -> dict[str, Any]:
        for child in cfg["route"].get("routes", []):
            if f'severity="{severity}"' in child.get("matchers", []):
                found: dict[str, Any] = child
                return found
        route: dict[str, Any] = cfg["route"]
        return route

    # the repeat intervals of the system this project replaced: P1 every 5 minutes, P2 every 15
    assert route_for("P1")["receiver"] == "ops-page" and route_for("P1")["repeat_interval"] == "5m"
    assert route_for("P2")["receiver"] == "ops-webhook" and route_for("P2")["repeat_interval"] == "15m"
    # every receiver also posts to the notification record, the compose service on its --listen port
    record_url = f"http://alert-receiver:{_web_port(svcs['alert-receiver'])}/alerts"
    assert [str(c) for c in svcs["alert-receiver"]["command"]][:2] == ["alerts", "receive"]
    for name, r in receivers.items():
        assert {"url": record_url, "send_resolved": True} in [
            {k: v for k, v in c.items() if k != "max_alerts"} for c in r["webhook_configs"]
        ], name


def test_alertmanager_config_when_checked_by_amtool_then_valid(tmp_path: Path) -> None:
    """``amtool check-config`` (Debian's prometheus-alertmanager, installed by ops/bootstrap.sh). Debian's 0.25
    predates the webhook ``url_file`` that the compose image (0.27) reads: the check sees a ``url`` in its place."""
    amtool = shutil.which("amtool")
    assert amtool is not None, "amtool missing: run ops/bootstrap.sh (installs Debian's prometheus-alertmanager)"
    text, n = re.subn(
        r"url_file: /run/secrets/\S+", "url: https://hooks.example/alerts", (AM_DIR / "alertmanager.yml").read_text()
    )
    assert n >= 2
    (tmp_path / "alertmanager.yml").write_text(text)
    res = subprocess.run(
        [amtool, "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and " - 2 receivers" in res.stdout, res.stdout
    # the check can fail: a route to a receiver that does not exist
    (tmp_path / "bad.yml").write_text(text.replace("receiver: ops-page", "receiver: nobody"))
    bad = subprocess.run(
        [amtool, "check-config", str(tmp_path / "bad.yml")], capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0, bad.stdout


# ---------------------------------------------------------------------------
# topics-init really sets the catalogue's topic configs
# ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_topics_create_when_run_then_each_topic_has_catalogue_cleanup_policy_and_retention(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    ns = f"c{tmp_path.name[-8:].replace('_', '')}"
    res = subprocess.run(  # the same command the topics-init service runs (replication factor 1 on one node)
        [sys.executable, "-m", "ops.cli", "topics", "--create", "--bootstrap", broker.bootstrap, "--namespace", ns],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=90,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, physical_name(t.name, ns)) for t in TOPICS]
        got = {
            name: {k: v for k, v, *_ in entries}
            for resp in await admin.describe_configs(resources)
            for _code, _msg, _type, name, entries in resp.resources
        }
    finally:
        await admin.close()
    for t in TOPICS:
        cfg = got[physical_name(t.name, ns)]
        assert cfg.get("cleanup.policy") == t.cleanup.value, t.name
        want = None if t.retention_ms is None else str(t.retention_ms)
        assert cfg.get("retention.ms") == want, t.name
    assert {t.cleanup.value for t in TOPICS} == {"compact", "delete"}
