"""``ops.embedded.workers``: child processes with a log, stopped gently then killed."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from ops.embedded.workers import ChildProcess, cli_argv, worker_argv

PRINT_AND_WAIT = "import sys, time; print('ready', flush=True); time.sleep(60)"
IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def _until_ready(p: ChildProcess) -> None:
    deadline = time.monotonic() + 20
    while "ready" not in p.output():
        assert time.monotonic() < deadline, p.output()
        time.sleep(0.02)


def test_child_when_stopped_then_sigterm_exit_code_and_output_in_the_log(tmp_path: Path) -> None:
    p = ChildProcess("c", [sys.executable, "-c", PRINT_AND_WAIT], tmp_path / "c.log").start()
    _until_ready(p)
    assert p.alive and p.returncode is None
    p.check_alive()
    assert p.stop(timeout=10) == -signal.SIGTERM and not p.alive
    with pytest.raises(RuntimeError, match=r"c exited with code -15; log tail:\nready"):
        p.check_alive()


def test_child_ignoring_sigterm_then_killed_after_the_grace(tmp_path: Path) -> None:
    p = ChildProcess("stubborn", [sys.executable, "-c", IGNORE_TERM], tmp_path / "s.log").start()
    _until_ready(p)
    assert p.stop(timeout=0.5) == -signal.SIGKILL


def _run(p: ChildProcess) -> int:
    assert p.start().popen is not None
    return p.popen.wait(20)


def test_log_appended_or_started_from_empty(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("before\n")
    assert _run(ChildProcess("a", [sys.executable, "-c", "print('one')"], log)) == 0
    assert log.read_text() == "before\none\n"
    assert _run(ChildProcess("b", [sys.executable, "-c", "print('two')"], log, append=False)) == 0
    assert log.read_text() == "two\n"


def test_never_started_then_stop_and_kill_do_nothing(tmp_path: Path) -> None:
    p = ChildProcess("idle", ["true"], tmp_path / "i.log")
    p.kill()
    assert p.stop() is None and not p.alive and p.output() == ""


def test_worker_argv_then_the_cli_worker_command() -> None:
    assert cli_argv("sink", "--dsn", "x") == [sys.executable, "-m", "ops.cli", "sink", "--dsn", "x"]
    assert worker_argv("b:1", "features", "trading", namespace="ns", dsn="d", web_port=8) == cli_argv(
        "worker",
        "--bootstrap",
        "b:1",
        "--namespace",
        "ns",
        "--dsn",
        "d",
        "--web-port",
        "8",
        "--agents",
        "features",
        "trading",
    )
    port_and_agent = worker_argv("b:1", "features")[-4:]
    assert (
        port_and_agent[0] == "--web-port"
        and int(port_and_agent[1]) > 0
        and port_and_agent[2:] == ["--agents", "features"]
    )
