"""Trading configuration from a TOML file and the environment: defaults < file < variables, every
engine setting reachable both ways, unknown keys refused (exit 2), one effective configuration whose
hash is stable and is the one the agent keys its checkpoints by."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.confighash import stable_config_hash
from agents.trading.agent import _configure
from agents.trading.configuration import (
    CONFIG_FILE_VARIABLE,
    FIELD_VARIABLES,
    SECTIONS,
    configurable_fields,
    effective_configuration,
    load_engine_settings,
)
from agents.trading.settings import TradingSettings
from runtime.env import VARIABLES, ConfigError
from runtime.exits import EXIT_CONFIG
from tests.conftest import ROOT

TOML = """
[strategy]
entry_threshold = 0.3
bucket_scale = { low = 1.0, mid = 0.7, high = 0.4 }

[risk]
daily_loss_limit = 0.02
strategy_consecutive_loss_limit = 3
vol_thresholds = { BTC = 0.04, "SOL/USDT" = 0.1 }
vol_hour_multipliers = { "00-11" = 1.5, "12-23" = 1.0 }
kill_switch_allows_reduce_only = true

[paper]
# the replaced system's per-symbol paper timeouts (probability per eligible bar)
timeout_probability = { "BTC/USDT" = 0.07, "ETH/USDT" = 0.08, "SOL/USDT" = 0.10 }
"""


def write(tmp_path: Path, text: str, name: str = "trading.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_engine_setting_then_one_variable_and_declared_in_the_registry() -> None:
    declared = {v.name: v for v in VARIABLES}
    for section in SECTIONS:
        assert set(FIELD_VARIABLES[section]) == set(configurable_fields(section)), section
        for name, var in FIELD_VARIABLES[section].items():
            assert var == f"TRADEFLOW_{section.upper()}_{name.upper()}" and var in declared
    assert CONFIG_FILE_VARIABLE in declared


def test_documented_defaults_when_set_as_variables_then_the_default_configs() -> None:
    documented = {v.name: v.default for v in VARIABLES}
    env = {var: documented[var] for fields in FIELD_VARIABLES.values() for var in fields.values() if documented[var]}
    engines = load_engine_settings(env)
    assert (engines.strategy, engines.risk, engines.paper) == tuple(cls() for cls in SECTIONS.values())


def test_file_then_its_values_over_the_defaults(tmp_path: Path) -> None:
    engines = load_engine_settings({CONFIG_FILE_VARIABLE: write(tmp_path, TOML)})
    assert engines.strategy.entry_threshold == 0.3 and engines.strategy.bucket_scale["mid"] == 0.7
    assert engines.risk.daily_loss_limit == 0.02 and engines.risk.strategy_consecutive_loss_limit == 3
    assert dict(engines.risk.vol_thresholds) == {"BTC": 0.04, "SOL/USDT": 0.1}
    assert engines.risk.vol_hour_multipliers == (1.5,) * 12 + (1.0,) * 12
    assert engines.risk.kill_switch_allows_reduce_only is True
    paper = engines.paper
    assert (paper.timeout_for("BTC/USDT"), paper.timeout_for("ETH/USDT"), paper.timeout_for("SOL/USDT")) == (
        0.07,
        0.08,
        0.10,
    )
    assert paper.timeout_for("XRP/USDT") == 0.0  # the default for symbols not named
    assert engines.sources["risk.daily_loss_limit"] == f"file {engines.file}"


def test_variable_and_file_then_the_variable_wins_and_the_rest_of_the_file_stays(tmp_path: Path) -> None:
    env = {
        CONFIG_FILE_VARIABLE: write(tmp_path, TOML),
        "TRADEFLOW_RISK_DAILY_LOSS_LIMIT": "0.025",
        "TRADEFLOW_PAPER_TIMEOUT_PROBABILITY": "BTC/USDT=0.5",
        "TRADEFLOW_STRATEGY_HOUR_SCALE": ",".join(["1"] * 24),
    }
    engines = load_engine_settings(env)
    assert engines.risk.daily_loss_limit == 0.025 and engines.risk.strategy_consecutive_loss_limit == 3
    assert dict(engines.paper.timeout_probability) == {"BTC/USDT": 0.5}  # a table is replaced, not merged
    assert engines.strategy.hour_scale == (1.0,) * 24
    assert engines.sources["risk.daily_loss_limit"] == "env TRADEFLOW_RISK_DAILY_LOSS_LIMIT"
    assert engines.sources["risk.strategy_consecutive_loss_limit"] == f"file {engines.file}"
    settings = TradingSettings.from_env(env)
    assert settings.config().paper.timeout_for("BTC/USDT") == 0.5 and settings.config().risk.daily_loss_limit == 0.025


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[risk]\ndaily_loss_limt = 0.02\n", r"unknown key\(s\) \['daily_loss_limt'\] in \[risk\]"),
        ("[risk]\nallowed_symbols = ['BTC/USDT']\n", r"not configurable"),
        ("[paper]\nadapter = 'x'\n", r"unknown key\(s\) \['adapter'\]"),
        ("[breaker]\nvol_halt_ns = 1\n", r"unknown section\(s\) \['breaker'\]"),
        ("[risk]\ndaily_loss_limit = 'high'\n", r"\[risk\] daily_loss_limit: expected a number"),
        ("[risk]\nconsecutive_loss_limit = 2.5\n", r"expected an integer"),
        ("[risk]\ndrawdown_warn = 0.5\n", r"drawdown tiers"),
        ("[risk\n", r"not TOML"),
    ],
)
def test_bad_file_then_config_error_naming_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_engine_settings({CONFIG_FILE_VARIABLE: write(tmp_path, text)})


def test_missing_file_then_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_engine_settings({CONFIG_FILE_VARIABLE: "/nonexistent/trading.toml"})


def test_unknown_key_when_the_agent_starts_then_it_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        _configure({CONFIG_FILE_VARIABLE: write(tmp_path, "[risk]\nbogus = 1\n")})
    assert exit_.value.code == EXIT_CONFIG == 2


def test_hash_then_stable_across_loads_key_order_and_source_and_changes_with_a_value(tmp_path: Path) -> None:
    def hash_of(env: dict[str, str]) -> str:
        settings = TradingSettings.from_env(env)
        assert settings.engines is not None
        printed = effective_configuration(settings.config(), settings.engines)
        assert printed["config_hash"] == stable_config_hash(settings.config())  # the checkpoint's key
        return str(printed["config_hash"])

    a = write(tmp_path, "[risk]\ndaily_loss_limit = 0.02\nstop_loss = 0.02\n", "a.toml")
    b = write(tmp_path, "[risk]\nstop_loss = 0.02\ndaily_loss_limit = 0.02\n", "b.toml")
    from_file = hash_of({CONFIG_FILE_VARIABLE: a})
    assert from_file == hash_of({CONFIG_FILE_VARIABLE: a}) == hash_of({CONFIG_FILE_VARIABLE: b})
    assert from_file == hash_of({"TRADEFLOW_RISK_DAILY_LOSS_LIMIT": "0.02", "TRADEFLOW_RISK_STOP_LOSS": "0.02"})
    assert from_file != hash_of({CONFIG_FILE_VARIABLE: a, "TRADEFLOW_RISK_STOP_LOSS": "0.021"})
    assert hash_of({}) == stable_config_hash(TradingSettings().config())


def test_cli_prints_the_effective_configuration_and_exits_2_on_an_unknown_key(tmp_path: Path) -> None:
    def run(path: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), CONFIG_FILE_VARIABLE: path, **extra}
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "trading", "config"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = run(write(tmp_path, TOML), TRADEFLOW_RISK_DAILY_LOSS_LIMIT="0.025")
    assert ok.returncode == 0, ok.stderr
    printed = json.loads(ok.stdout)
    settings = TradingSettings.from_env(
        {CONFIG_FILE_VARIABLE: str(tmp_path / "trading.toml"), "TRADEFLOW_RISK_DAILY_LOSS_LIMIT": "0.025"}
    )
    assert printed["config_hash"] == stable_config_hash(settings.config())
    assert printed["trading"]["risk"]["daily_loss_limit"] == 0.025
    assert printed["trading"]["paper"]["timeout_probability"] == {"BTC/USDT": 0.07, "ETH/USDT": 0.08, "SOL/USDT": 0.1}
    assert printed["set"]["risk.daily_loss_limit"] == "env TRADEFLOW_RISK_DAILY_LOSS_LIMIT"
    bad = run(write(tmp_path, "[paper]\nseeed = 1\n", "bad.toml"))
    assert bad.returncode == 2 and "unknown key(s) ['seeed'] in [paper]" in bad.stderr and bad.stdout == ""


def test_ccxt_execution_then_the_paper_settings_kept_under_the_adapter_name(tmp_path: Path) -> None:
    env = {
        CONFIG_FILE_VARIABLE: write(tmp_path, "[paper]\nfee_bps = 7.5\n"),
        "TRADEFLOW_EXECUTION_ADAPTER": "ccxt",
        "TRADEFLOW_EXECUTION_VENUE": "binance",
    }
    paper = TradingSettings.from_env(env).config().paper
    assert (paper.fee_bps, paper.adapter) == (7.5, "ccxt:binance:spot")
    assert dataclasses.replace(paper, adapter="paper").fee_bps == 7.5
