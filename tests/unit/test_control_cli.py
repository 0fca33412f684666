"""``tradeflow control``: commands are built and signed so the risk engine
accepts them; bad command lines and missing keys are usage errors (exit 2)
that never print the secret; an unreachable broker is exit 3."""

from __future__ import annotations

import argparse

import pytest

from agents.control.signing import ControlVerifier, load_keyring
from ops.cli.control import EXIT_INFRA, EXIT_USAGE, UsageError, build_event, cmd_control
from ops.cli.main import build_parser
from topics.records import ControlCommand

SECRET = "unit-test-control-secret-0123456789abcdef"
ENV = {"TRADEFLOW_CONTROL_KEY_OPS1": SECRET, "TRADEFLOW_CONTROL_SIGNING_KEY_ID": "ops1"}
NOW = 1_764_000_000_000_000_000


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["control", *argv])


@pytest.mark.parametrize(
    ("argv", "command", "scope", "target", "params"),
    [
        (("kill-switch", "on", "--reason", "r"), ControlCommand.KILL_SWITCH_ON, "global", "*", {}),
        (
            ("kill-switch", "on", "--reason", "r", "--ttl-s", "90"),
            ControlCommand.KILL_SWITCH_ON,
            "global",
            "*",
            {"duration_s": 90.0},
        ),
        (
            ("kill-switch", "off", "--scope", "strategy", "--target", "tanh-sizer"),
            ControlCommand.KILL_SWITCH_OFF,
            "strategy",
            "tanh-sizer",
            {},
        ),
        (
            ("set-limit", "max_orders_per_window", "12"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "max_orders_per_window", "value": 12},
        ),
        (
            ("set-limit", "stop_loss", "0.02"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "stop_loss", "value": 0.02},
        ),
        (
            ("rollout", "rollback", "--model-id", "m1", "--version", "7"),
            ControlCommand.ROLLOUT_ROLLBACK,
            "model",
            "m1",
            {"model_id": "m1", "version": "7"},
        ),
        (
            ("rollout", "promote", "--model-id", "m1", "--version", "7", "--to", "active"),
            ControlCommand.ROLLOUT_PROMOTE,
            "model",
            "m1",
            {"model_id": "m1", "version": "7", "to": "active"},
        ),
        (
            ("set-limit", "strategy.entry_threshold", "0.05"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "strategy.entry_threshold", "value": 0.05},
        ),
        (
            ("set-limit", "vol_breaker_mode", "range"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "vol_breaker_mode", "value": "range"},
        ),
        (
            ("set-limit", "vol_threshold.SOL", "0.09"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "vol_threshold.SOL", "value": 0.09},
        ),
        (
            ("set-limit", "vol_hour_multiplier.00-07", "1.5"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "vol_hour_multiplier.00-07", "value": 1.5},
        ),
        (
            ("set-limit", "vol_halt_ns", "120000000000"),
            ControlCommand.SET_LIMIT,
            "global",
            "*",
            {"name": "vol_halt_ns", "value": 120_000_000_000},
        ),
    ],
)
def test_command_line_when_built_then_signed_event_verifies(
    argv: tuple[str, ...], command: ControlCommand, scope: str, target: str, params: dict[str, object]
) -> None:
    event = build_event(parse(*argv), ENV, now_ns=lambda: NOW, nonce=lambda: "n1")
    assert (event.command, event.scope, event.target, event.params) == (command, scope, target, params)
    assert event.key_id == "ops1" and event.nonce == "n1" and event.ts_event == NOW
    assert ControlVerifier(load_keyring(ENV)).verify(event, NOW).ok


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (("kill-switch", "on"), ENV, "needs --reason"),
        (("kill-switch", "on", "--reason", "r", "--scope", "symbol"), ENV, "needs --target"),
        (("kill-switch", "on", "--reason", "r", "--target", "BTC/USDT"), ENV, "takes no --target"),
        (("kill-switch", "off", "--ttl-s", "5"), ENV, "only applies"),
        (("kill-switch", "on", "--reason", "r", "--ttl-s", "-1"), ENV, "positive"),
        (("set-limit", "allowed_symbols", "1"), ENV, "not a settable limit"),
        (("set-limit", "strategy.curve_gain", "1"), ENV, "not a settable limit"),
        (("rollout", "rollback", "--model-id", "m", "--version", "1", "--to", "active"), ENV, "--to only applies"),
        (("set-limit", "stop_loss", "nan"), ENV, "finite"),
        (("set-limit", "stop_loss", "abc"), ENV, "must be a number"),
        (("set-limit", "vol_breaker_mode", "sideways"), ENV, "VALUE must be one of"),
        (("set-limit", "vol_hour_multiplier.25", "1"), ENV, "not a settable limit"),
        (("set-limit", "vol_thresholds", "1"), ENV, "not a settable limit"),
        (("kill-switch", "on", "--reason", "r"), {"TRADEFLOW_CONTROL_KEY_OPS1": SECRET}, "no key id"),
        (("kill-switch", "on", "--reason", "r", "--key-id", "ops2"), ENV, "TRADEFLOW_CONTROL_KEY_OPS2"),
        (("kill-switch", "on", "--reason", "r"), {"TRADEFLOW_CONTROL_SIGNING_KEY_ID": "ops1"}, "no control keys"),
        (("kill-switch", "on", "--reason", "r"), {**ENV, "TRADEFLOW_CONTROL_KEY_ID": "ops1"}, "named 'id'"),
    ],
)
def test_bad_command_line_or_key_config_then_usage_error_without_the_secret(
    argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as err:
        build_event(parse(*argv), env)
    assert SECRET not in str(err.value)


def test_usage_error_when_run_then_exit_2_and_nothing_secret_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", SECRET)
    assert cmd_control(parse("kill-switch", "on", "--reason", "r", "--key-id", "nope")) == EXIT_USAGE
    out = capsys.readouterr()
    assert "nope" in out.err and SECRET not in out.out + out.err


def test_unreachable_broker_when_run_then_exit_3_and_nothing_secret_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRADEFLOW_CONTROL_KEY_OPS1", SECRET)
    args = parse(
        "kill-switch", "on", "--reason", "r", "--key-id", "ops1", "--bootstrap", "127.0.0.1:1", "--timeout-s", "10"
    )
    assert cmd_control(args) == EXIT_INFRA
    out = capsys.readouterr()
    assert "broker unreachable" in out.err and SECRET not in out.out + out.err
