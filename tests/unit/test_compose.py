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
- who may write what: SASL/SCRAM + ACLs on the brokers, one broker user per service, and the grants
  that ``deploy/redpanda/acl-init.sh`` really makes (run with a recording ``rpk``) equal to each
  service's agents' declared inputs and outputs (``AGENT_NEEDS``);
- that ``tradeflow topics --create`` really sets each catalogued topic's cleanup.policy
  and retention.ms on the broker (integration, against the embedded broker).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; used for one validate call
import pytest
import yaml

from ops.cli.main import AGENT_NEEDS, _agent_registry, agent_topics, build_parser
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
    assert init["depends_on"] == {"broker-acl-init": {"condition": "service_completed_successfully"}}
    assert svcs["broker-acl-init"]["depends_on"] == {b: {"condition": "service_healthy"} for b in brokers}
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
# who may write what: broker users and ACLs
# ---------------------------------------------------------------------------

ACL_INIT = ROOT / "deploy" / "redpanda" / "acl-init.sh"
#: tradeflow services that never talk to the broker
NO_BROKER = ("migrate", "alert-receiver")
ORDER_TOPICS = ("orders.intents", "risk.decisions", "orders.updates", "fills", "portfolio.state")
MARKET_TOPICS = ("market.ticks", "market.bars.raw", "market.bars")

#: a stand-in for rpk that records its arguments, one JSON array per call
FAKE_RPK = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["RPK_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@dataclass
class Grants:
    """What the script gave one user: topic -> operations (exact names), prefixed topic grants, groups."""

    topics: dict[str, set[str]] = field(default_factory=dict)
    prefixed: dict[str, set[str]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    cluster: set[str] = field(default_factory=set)

    def with_op(self, op: str) -> set[str]:
        return {t for t, ops in self.topics.items() if op in ops}


def _run_acl_init(tmp_path: Path, namespace: str = "") -> tuple[dict[str, str], dict[str, Grants]]:
    """Run the real script with a recording rpk; the users it created (name -> password) and their grants."""
    bin_dir, secrets = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir(parents=True)
    secrets.mkdir(parents=True)
    (bin_dir / "rpk").write_text(FAKE_RPK)
    (bin_dir / "rpk").chmod(0o755)
    for u in _secret_users():
        (secrets / f"kafka_{u}").write_text(f"pw-{u}")
    log = tmp_path / "rpk.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RPK_LOG": str(log),
        "SECRETS_DIR": str(secrets),
        "TRADEFLOW_NAMESPACE": namespace,
    }
    res = subprocess.run(["bash", str(ACL_INIT)], capture_output=True, text=True, check=False, env=env)
    assert res.returncode == 0, res.stderr
    users: dict[str, str] = {}
    grants: dict[str, Grants] = {}
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        assert argv[-6:] == ["-X", "user=admin", "-X", "pass=pw-admin", "-X", "sasl.mechanism=SCRAM-SHA-256"]
        argv = argv[:-8]  # -X brokers=... and the admin credentials
        if argv[:3] == ["security", "user", "create"]:
            assert _flag(argv, "--mechanism") == ["SCRAM-SHA-256"]
            users[argv[3]] = _flag(argv, "--password")[0]
            continue
        assert argv[:3] == ["security", "acl", "create"], argv
        who = _flag(argv, "--allow-principal")[0].removeprefix("User:")
        ops = set(_flag(argv, "--operation")[0].split(","))
        g = grants.setdefault(who, Grants())
        prefixed = _flag(argv, "--resource-pattern-type") == ["prefixed"]
        if "--topic" in argv:
            (g.prefixed if prefixed else g.topics).setdefault(_flag(argv, "--topic")[0], set()).update(ops)
        elif "--group" in argv:
            assert prefixed and ops == {"read", "describe"}
            g.groups.add(_flag(argv, "--group")[0])
        else:
            assert "--cluster" in argv, argv
            g.cluster |= ops
    return users, grants


def _secret_users() -> list[str]:
    return [n.removeprefix("kafka_") for n in _doc()["secrets"] if n.startswith("kafka_")]


def _broker_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _tradeflow_services().items() if n not in NO_BROKER}


def test_brokers_when_parsed_then_sasl_scram_and_authorization_required_with_admin_from_a_secret() -> None:
    svcs = _services()
    boot = yaml.safe_load((ROOT / "deploy" / "redpanda" / "bootstrap.yaml").read_text())
    assert boot["enable_sasl"] is True and boot["kafka_enable_authorization"] is True
    assert boot["sasl_mechanisms"] == ["SCRAM"] and boot["superusers"] == ["admin"]
    for b in ("redpanda-0", "redpanda-1", "redpanda-2"):
        assert "./deploy/redpanda/bootstrap.yaml:/etc/redpanda/.bootstrap.yaml:ro" in svcs[b]["volumes"]
        assert "kafka_admin" in svcs[b]["secrets"]
        # compose turns $$ into $: the shell reads the secret file when the node starts
        assert any(
            'RP_BOOTSTRAP_USER="admin:$$(cat /run/secrets/kafka_admin)"' in str(e) for e in svcs[b]["entrypoint"]
        )
    init = svcs["broker-acl-init"]
    assert init["volumes"] == ["./deploy/redpanda/acl-init.sh:/acl-init.sh:ro"]
    assert sorted(init["secrets"]) == sorted(f"kafka_{u}" for u in _secret_users())


def test_every_broker_service_when_parsed_then_its_own_user_with_the_password_from_a_secret_file() -> None:
    text = COMPOSE.read_text()
    users = set(_secret_users())
    seen = set()
    for name, svc in _broker_services().items():
        env = svc["environment"]
        user = env.get("TRADEFLOW_KAFKA_SASL_USERNAME")
        assert user == name, f"{name}: broker user {user!r}"
        assert "TRADEFLOW_KAFKA_SASL_PASSWORD" not in env, name  # only ever the _FILE form
        assert env["TRADEFLOW_KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka_{user}", name
        assert f"kafka_{user}" in svc["secrets"], name
        assert env["TRADEFLOW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256", name
        assert user in users, name
        seen.add(user)
        other = [s for s in svc["secrets"] if str(s).startswith("kafka_") and s != f"kafka_{user}"]
        assert not other, f"{name} mounts another service's broker password: {other}"
    assert seen == users - {"admin", "operator"}
    for name, svc in _tradeflow_services().items():
        if name in NO_BROKER:
            assert "TRADEFLOW_KAFKA_SASL_USERNAME" not in svc["environment"], name
    # the only signal key holders: the signer (inference) and the verifier (trading)
    svcs = _services()
    holders = {n for n, s in svcs.items() if "signal_key_inference" in s.get("secrets", [])}
    assert holders == {"inference", "trading"}
    for n in holders:
        assert svcs[n]["environment"]["TRADEFLOW_SIGNAL_KEY_INFERENCE_FILE"] == "/run/secrets/signal_key_inference"
    assert "REQUIRE_SIGNED" not in text  # the default (on with a key) holds


def test_acl_init_when_run_then_each_service_reads_and_writes_exactly_its_agents_topics(tmp_path: Path) -> None:
    users, grants = _run_acl_init(tmp_path)
    assert users == {u: f"pw-{u}" for u in _secret_users() if u != "admin"}  # passwords only from the secrets
    every = {t.name for t in TOPICS}
    for name, svc in _broker_services().items():
        cmd = [str(c) for c in svc["command"]]
        g = grants[name]
        reads, writes = g.with_op("read"), g.with_op("write")
        assert all("describe" in ops for ops in g.topics.values()), name
        if cmd[0] == "worker":
            inputs, outputs = agent_topics(_flag(cmd, "--agents"))
            assert reads == set(inputs), f"{name} reads {sorted(reads)}, its agents read {sorted(inputs)}"
            assert writes == set(outputs) | {"deadletter"}, f"{name} writes {sorted(writes)}, declared {outputs}"
            assert g.groups == {"tradeflow-"}, name
        elif cmd[0] == "sink":
            assert reads == every and writes == {"deadletter"} and g.groups == {"tradeflow-"}
        elif cmd[0] == "gates":
            assert reads == set() and writes == {"gates.results"} and not g.groups
        elif cmd[0] == "collect":
            assert reads == set() and writes == {"market.ticks", "market.bars.raw", "deadletter"}
        elif cmd[0] == "topics":
            assert set(g.topics) == {"*"} and not g.prefixed, g
            assert g.cluster == {"create", "describe"} and "create" in g.topics["*"]
        else:
            raise AssertionError(f"{name}: no ACL rule for the command {cmd[0]!r}")
        assert set(g.prefixed) <= {"tradeflow-features"}, name  # only features keeps a state changelog
        assert not g.cluster or cmd[0] == "topics", name
        assert (reads | writes) <= every | {"*"}, name
    assert grants["operator"].topics == {"control": {"write", "describe"}}
    assert set(grants) == set(users)


def test_acl_init_when_run_then_signals_orders_and_market_topics_have_only_their_writers(tmp_path: Path) -> None:
    _, grants = _run_acl_init(tmp_path)

    def writers(topic: str) -> set[str]:
        return {u for u, g in grants.items() if topic in g.with_op("write")}

    assert writers("signals") == {"inference"}
    for t in ORDER_TOPICS:
        assert writers(t) == {"trading"}, t
    assert writers("market.ticks") == {"collector"}
    assert writers("market.bars.raw") == {"collector", "bar-aggregator"}
    assert writers("market.bars") == {"bars-checker"}
    assert writers("control") == {"operator"}
    # the same grants, namespaced
    _, spaced = _run_acl_init(tmp_path / "ns", namespace="blue")
    plain = {t for g in grants.values() for t in g.topics if t != "*"}
    assert {t for g in spaced.values() for t in g.topics} == {f"blue.{t}" for t in plain}
    assert spaced["topics-init"].prefixed == {"blue.": {"create", "describe", "describe_configs", "alter_configs"}}


def test_agent_needs_when_compared_with_the_trading_agent_then_same_topics() -> None:
    from agents.trading import agent as trading

    assert agent_topics(["trading"]) == (trading.INPUTS, trading.OUTPUTS)
    assert set(AGENT_NEEDS) == set(_agent_registry())


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
