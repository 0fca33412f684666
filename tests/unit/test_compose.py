"""compose.yaml is validated here (no Docker engine on these machines)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ops.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _services() -> dict[str, dict[str, object]]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc["services"]


def test_compose_services_when_parsed_then_each_tradeflow_command_parses_with_the_real_cli() -> None:
    parser = build_parser()
    checked = 0
    for name, svc in _services().items():
        if svc.get("image") != "tradeflow:latest":
            continue
        cmd = svc.get("command")
        assert isinstance(cmd, list) and cmd, name
        ns = parser.parse_args([str(c) for c in cmd])  # exits (SystemExit) on an unknown command or flag
        assert callable(ns.fn), name
        checked += 1
    assert checked >= 4


def test_compose_when_parsed_then_three_broker_nodes_postgres_and_ordered_start() -> None:
    svcs = _services()
    assert {"redpanda-0", "redpanda-1", "redpanda-2", "postgres", "topics-init", "migrate"} <= set(svcs)
    for name in ("sink", "bars-checker"):
        deps = svcs[name]["depends_on"]
        assert isinstance(deps, dict)
        assert deps["topics-init"] == {"condition": "service_completed_successfully"}
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
