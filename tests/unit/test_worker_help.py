"""``tradeflow worker --help`` lists every agent with the topics it reads and
writes and what it needs, from one table next to the agent registry that
matches the agents themselves."""

from __future__ import annotations

import subprocess
import sys

from agents.governance import agent as governance
from agents.trading import agent as trading
from ops.cli.main import AGENT_NEEDS, _agent_registry
from ops.dashboard.state import TOPICS as DASHBOARD_TOPICS
from tests.conftest import ROOT
from topics.catalogue import TOPICS


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(","))


def test_agent_table_then_one_row_per_registered_agent_naming_catalogued_topics() -> None:
    assert set(AGENT_NEEDS) == set(_agent_registry())
    catalogue = {t.name for t in TOPICS}
    for name, (inputs, outputs, needs) in AGENT_NEEDS.items():
        assert set(_names(inputs)) <= catalogue, name
        if name != "dashboard":  # its output is a web page
            assert set(_names(outputs)) <= catalogue, name
        assert needs, name


def test_agent_registry_then_named_as_each_module_names_its_agent_and_loaded_only_when_hosted() -> None:
    from agents.features import agent as features
    from agents.market import aggregator, checker
    from gpu_workers import agents as gpu
    from ops.dashboard import agent as dashboard

    modules = {
        checker.NAME: checker.register,
        aggregator.NAME: aggregator.register,
        features.NAME: features.register,
        trading.NAME: trading.register,
        governance.NAME: governance.register,
        gpu.TRAINER: gpu.register_trainer,
        gpu.INFERENCE: gpu.register_inference,
        dashboard.NAME: dashboard.register,
    }
    assert _agent_registry() == modules
    assert list(_agent_registry(["trading", "nope"])) == ["trading"]
    probe = (
        "import sys; from ops.cli.main import _agent_registry; "
        "_agent_registry(['bars-checker', 'features', 'trading', 'governance', 'dashboard']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"  # a worker without the model agents does not import torch


def test_agent_table_then_the_topics_the_agents_declare() -> None:
    assert _names(AGENT_NEEDS["trading"][0]) == trading.INPUTS
    assert _names(AGENT_NEEDS["trading"][1]) == trading.OUTPUTS
    assert _names(AGENT_NEEDS["governance"][1]) == governance.OUTPUT_TOPICS
    assert _names(AGENT_NEEDS["dashboard"][0]) == DASHBOARD_TOPICS


def test_worker_help_then_lists_every_agent_with_what_it_needs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "worker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())  # argparse may wrap long lines
    for name, (inputs, outputs, needs) in AGENT_NEEDS.items():
        assert f"{name} in: {inputs} out: {outputs} needs: {needs}" in text
    assert "TRADEFLOW_CONTROL_KEY_<ID>" in text and "TRADEFLOW_DSN" in text
