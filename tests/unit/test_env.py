"""Configuration from the environment: the typed readers, secrets, the
generated reference (docs/configuration.md) and the registry being exactly
the variables the code reads, none of them at import time."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from runtime.env import (
    VARIABLES,
    ConfigError,
    configuration_markdown,
    env_flag,
    env_float,
    env_int,
    env_list,
    env_str,
    read_secret,
)
from runtime.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("agents", "runtime", "ops", "gpu_workers", "storage", "backtest", "models", "topics")
NAME = re.compile(r"TRADEFLOW_[A-Z_]+")
SECRET = "s3cret-value-never-shown-123"
READERS = {"env_str", "env_int", "env_float", "env_flag", "env_list", "read_secret", "getenv"}


# ---------------------------------------------------------------------------
# typed readers
# ---------------------------------------------------------------------------


def test_typed_readers_when_set_then_parsed_and_stripped() -> None:
    env = {"S": "  text ", "I": " 42", "F": "2.5 ", "L": " a, b ,,c "}
    assert env_str("S", "d", env) == "text"
    assert env_int("I", 0, env) == 42
    assert env_int("I", 0, env, minimum=42) == 42
    assert env_float("F", 0.0, env) == 2.5
    assert env_float("I", 0.0, env, minimum=1.0) == 42.0
    assert env_list("L", (), env) == ("a", "b", "c")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_typed_readers_when_unset_or_blank_then_default(value: str | None) -> None:
    env = {} if value is None else {"X": value}
    assert env_str("X", "d", env) == "d"
    assert env_int("X", 7, env) == 7
    assert env_float("X", 0.5, env) == 0.5
    assert env_flag("X", True, env) is True
    assert env_flag("X", False, env) is False
    assert env_list("X", ("1m",), env) == ("1m",)
    assert env_list("X", (), {"X": " , ,"}) == ()


def test_typed_readers_when_environ_omitted_then_os_environ_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEFLOW_TEST_READER", "5")
    assert env_int("TRADEFLOW_TEST_READER", 0) == 5
    monkeypatch.setenv("TRADEFLOW_TEST_READER", "6")
    assert env_int("TRADEFLOW_TEST_READER", 0) == 6
    monkeypatch.delenv("TRADEFLOW_TEST_READER")
    assert env_int("TRADEFLOW_TEST_READER", 0) == 0


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_flag_when_true_spelling_then_true(text: str) -> None:
    assert env_flag("F", False, {"F": text}) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
def test_flag_when_false_spelling_then_false(text: str) -> None:
    assert env_flag("F", True, {"F": text}) is False


@pytest.mark.parametrize("text", ["2", "y", "n", "enabled", "-1", "truee"])
def test_flag_when_junk_then_config_error_not_false(text: str) -> None:
    with pytest.raises(ConfigError, match="TRADEFLOW_SOME_FLAG"):
        env_flag("TRADEFLOW_SOME_FLAG", False, {"TRADEFLOW_SOME_FLAG": text})


@pytest.mark.parametrize(
    ("read", "value", "message"),
    [
        (lambda env: env_int("TRADEFLOW_N", 1, env), "ten", "must be an integer"),
        (lambda env: env_int("TRADEFLOW_N", 1, env), "1.5", "must be an integer"),
        (lambda env: env_int("TRADEFLOW_N", 1, env, minimum=1), "0", "must be >= 1"),
        (lambda env: env_float("TRADEFLOW_N", 1.0, env), "fast", "must be a number"),
        (lambda env: env_float("TRADEFLOW_N", 1.0, env), "nan", "must be finite"),
        (lambda env: env_float("TRADEFLOW_N", 1.0, env), "inf", "must be finite"),
        (lambda env: env_float("TRADEFLOW_N", 1.0, env, minimum=0.0), "-0.5", "must be >= 0"),
    ],
)
def test_typed_readers_when_malformed_then_config_error_naming_the_variable(
    read: object, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        read({"TRADEFLOW_N": value})  # type: ignore[operator]
    assert "TRADEFLOW_N" in str(err.value)


def test_config_error_then_bad_input_and_value_error() -> None:
    assert issubclass(ConfigError, BadInput) and issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------


def test_secret_from_value_or_file_then_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n", encoding="utf-8")
    assert read_secret("TRADEFLOW_X", {}) is None
    assert read_secret("TRADEFLOW_X", {"TRADEFLOW_X": f" {SECRET} "}) == SECRET
    assert read_secret("TRADEFLOW_X", {"TRADEFLOW_X_FILE": str(path)}) == SECRET
    assert read_secret("TRADEFLOW_X", {"TRADEFLOW_X": "", "TRADEFLOW_X_FILE": ""}) is None


def test_secret_misconfigured_then_error_names_variable_never_value(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET, encoding="utf-8")
    empty = tmp_path / "empty"
    empty.write_text(" \n", encoding="utf-8")
    cases = [
        ({"TRADEFLOW_X": SECRET, "TRADEFLOW_X_FILE": str(path)}, "not both"),
        ({"TRADEFLOW_X_FILE": str(empty)}, "is empty"),
        ({"TRADEFLOW_X_FILE": str(tmp_path / "missing")}, "cannot read"),
        ({"TRADEFLOW_X_FILE": str(tmp_path)}, "cannot read"),  # a directory: unreadable as a file
    ]
    for env, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            read_secret("TRADEFLOW_X", env)
        assert "TRADEFLOW_X" in str(err.value)
        assert SECRET not in str(err.value) and SECRET not in repr(err.value)


# ---------------------------------------------------------------------------
# the registry and the generated reference
# ---------------------------------------------------------------------------


def test_configuration_doc_then_equals_the_generated_reference() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == configuration_markdown(), "regenerate: tradeflow topics --config > docs/configuration.md"


def test_configuration_doc_then_one_row_per_variable_with_three_cells() -> None:
    rows = [line for line in configuration_markdown().splitlines() if line.startswith("| `TRADEFLOW_")]
    assert len(rows) == len(VARIABLES)
    # an unescaped | in a help text would split its row into more cells
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in rows)


def test_registry_then_names_unique_and_prefixes_marked() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert all(NAME.fullmatch(n) for n in names)
    prefixes = [v for v in VARIABLES if v.name.endswith("_")]
    assert [v.name for v in prefixes] == ["TRADEFLOW_CONTROL_KEY_", "TRADEFLOW_SIGNAL_KEY_"]


def _source_files() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]


def _names_in(path: Path) -> set[str]:
    """TRADEFLOW_* names in the string constants of a module (docstrings and f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        m
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for m in NAME.findall(node.value)
    }


def _declared(name: str) -> bool:
    for v in VARIABLES:
        if name == v.name or (v.secret and name == v.name + "_FILE"):
            return True
        if v.name.endswith("_") and name.startswith(v.name):  # TRADEFLOW_CONTROL_KEY_<ID>[_FILE]
            return True
    # a family named in prose or a message: "TRADEFLOW_EXECUTION_*", "TRADEFLOW_GOVERNANCE_..."
    return name.endswith("_") and any(v.name.startswith(name) for v in VARIABLES)


def test_every_variable_in_the_source_then_declared() -> None:
    undeclared = sorted(
        f"{name} ({path.relative_to(ROOT)})"
        for path in _source_files()
        for name in _names_in(path)
        if not _declared(name)
    )
    assert undeclared == [], "declare them in runtime.env.VARIABLES"


def test_every_declared_variable_then_in_the_source() -> None:
    """No stale entry: each variable is named somewhere outside the registry itself."""
    mentioned = {n for p in _source_files() if p != ROOT / "runtime" / "env.py" for n in _names_in(p)}
    stale = [v.name for v in VARIABLES if v.name not in mentioned]
    assert stale == []


def _import_time_reads(source: str, label: str) -> list[str]:
    """Environment reads that run when the module is imported: outside any function body
    (module level, class bodies, default values and decorators all run at import)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for expr in [*args.defaults, *args.kw_defaults, *getattr(node, "decorator_list", [])]:
                if expr is not None:
                    visit(expr)
            return  # the body runs when called
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            found.append(f"{label}:{node.lineno} os.environ")
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in READERS:
                found.append(f"{label}:{node.lineno} {called}()")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source, label))
    return found


def test_modules_then_read_no_environment_at_import() -> None:
    reads = [
        r for p in _source_files() for r in _import_time_reads(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))
    ]
    assert reads == []


def test_import_time_check_then_catches_a_module_level_read() -> None:
    """The check above can fail: a module-level read and a default value are caught, a function body is not."""
    code = (
        "import os\n"
        "X = int(os.environ.get('TRADEFLOW_X', '1'))\n"
        "class C:\n    y = env_str('TRADEFLOW_Y', '')\n"
        "def f(z=env_int('TRADEFLOW_Z', 1)):\n    return os.environ['Z'], env_flag('TRADEFLOW_F', False)\n"
    )
    assert _import_time_reads(code, "probe") == ["probe:2 os.environ", "probe:4 env_str()", "probe:5 env_int()"]


# ---------------------------------------------------------------------------
# registry defaults are the code's defaults
# ---------------------------------------------------------------------------


def _default(name: str) -> str:
    return next(v.default for v in VARIABLES if v.name == name)


def test_registry_defaults_then_match_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.governance.config import DEFAULT_REQUIRED_GATES, GovernanceConfig
    from agents.market.aggregator import bar_timeframes
    from gpu_workers.agents import artifacts_dir
    from ops.cli.main import build_parser
    from ops.dashboard.agent import DashboardSettings
    from runtime.faust_app import WorkerSettings
    from storage.sink import SinkConfig

    for v in VARIABLES:
        monkeypatch.delenv(v.name, raising=False)
    worker = WorkerSettings(app_id="a", bootstrap="b")
    assert str(worker.fetch_wait_ms) == _default("TRADEFLOW_FETCH_WAIT_MS")
    assert str(SinkConfig(bootstrap="b", dsn="d").fetch_wait_ms) == _default("TRADEFLOW_SINK_FETCH_WAIT_MS")
    assert worker.data_dir == _default("TRADEFLOW_DATA_DIR")
    assert worker.web_host == _default("TRADEFLOW_WEB_HOST")
    gov = GovernanceConfig.from_env({})
    assert str(gov.windows_to_promote) == _default("TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE")
    assert str(gov.windows_to_rollback) == _default("TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK")
    assert ",".join(DEFAULT_REQUIRED_GATES) == _default("TRADEFLOW_GOVERNANCE_REQUIRED_GATES")
    dash = DashboardSettings.from_env({})
    assert dash.token is None and _default("TRADEFLOW_DASHBOARD_TOKEN") == ""
    assert f"{dash.min_interval_s * 1000:g}" == _default("TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS")
    assert str(dash.queue_size) == _default("TRADEFLOW_DASHBOARD_QUEUE")
    assert ",".join(t.value for t in bar_timeframes({})) == _default("TRADEFLOW_BAR_TIMEFRAMES")
    assert str(artifacts_dir()) == _default("TRADEFLOW_ARTIFACTS")
    sink = build_parser().parse_args(["sink"])
    assert sink.bootstrap == _default("TRADEFLOW_BOOTSTRAP")
    assert sink.dsn == _default("TRADEFLOW_DSN")
    assert sink.namespace == _default("TRADEFLOW_NAMESPACE")
    assert sink.metrics_host == _default("TRADEFLOW_METRICS_HOST")
    assert sink.log_level == _default("TRADEFLOW_LOG_LEVEL")
    assert build_parser().parse_args(["backfill"]).data_dir == _default("TRADEFLOW_DATA_DIR")


def test_cli_defaults_then_read_when_the_parser_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.cli.main import build_parser

    monkeypatch.setenv("TRADEFLOW_BOOTSTRAP", "broker-1:9092")
    monkeypatch.setenv("TRADEFLOW_NAMESPACE", "t1")
    a = build_parser().parse_args(["sink"])
    assert (a.bootstrap, a.namespace) == ("broker-1:9092", "t1")
    assert build_parser().parse_args(["sink", "--bootstrap", "x:1"]).bootstrap == "x:1"


def test_cli_when_a_variable_is_malformed_then_exit_usage_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.cli import main as cli
    from runtime.exits import EXIT_USAGE

    def cmd(_: object) -> int:
        raise ConfigError("TRADEFLOW_FETCH_WAIT_MS must be an integer, got 'x'")

    monkeypatch.setattr(cli, "cmd_topics", cmd)  # bound when main() builds the parser
    assert cli.main(["topics"]) == EXIT_USAGE
    assert "TRADEFLOW_FETCH_WAIT_MS" in capsys.readouterr().err
