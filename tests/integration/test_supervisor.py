"""supervisord under the platform's driver: restarts a killed program, reports a crash loop with
the log tail, stops in the order given. Real supervisord, real processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ops.embedded.supervisor import CrashLoop, CrashWatch, Program, Supervisor

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_killed_program_then_restarted_with_a_new_pid(tmp_path: Path) -> None:
    sup = Supervisor([Program("sleeper", ["/bin/sleep", "300"], startsecs=1)], tmp_path / "run", tmp_path / "logs")
    sup.start()
    try:
        sup.start_program("sleeper")
        first = sup.pid("sleeper")
        os.kill(first, signal.SIGKILL)
        _wait(
            lambda: sup.states()["sleeper"]["statename"] == "RUNNING" and sup.pid("sleeper") != first, 20, "the restart"
        )
        assert sup.pid("sleeper") not in (0, first)
    finally:
        sup.shutdown(order=["sleeper"])
    assert sup.popen is not None and sup.popen.returncode == 0


def test_program_that_keeps_crashing_then_crash_loop_with_its_log_tail(tmp_path: Path) -> None:
    crasher = Program("crasher", ["/bin/sh", "-c", "echo 'cannot reach the broker'; sleep 1.2; exit 3"], startsecs=1)
    sup = Supervisor([crasher], tmp_path / "run", tmp_path / "logs").start()
    watch = CrashWatch(max_crashes=3, window_s=60)
    try:
        sup.start_program("crasher")
        deadline = time.monotonic() + 30
        reason = None
        while reason is None and time.monotonic() < deadline:
            info = sup.states()["crasher"]
            reason = watch.observe("crasher", info["statename"], int(info["pid"]), time.monotonic())
            time.sleep(0.2)
        assert reason == "crashed 3 times within 60 s"
        loop = CrashLoop("crasher", reason, sup.tail("crasher"))
        assert "cannot reach the broker" in str(loop) and loop.program == "crasher"
    finally:
        sup.shutdown()


def test_shutdown_then_programs_stopped_in_the_given_order(tmp_path: Path) -> None:
    marks = tmp_path / "stopped.txt"
    progs = [
        Program(
            name,
            ["/bin/sh", "-c", f"trap 'echo {name} >> {marks}; exit 0' TERM; while :; do sleep 0.1; done"],
            startsecs=1,
        )
        for name in ("infra", "agent")
    ]
    sup = Supervisor(progs, tmp_path / "run", tmp_path / "logs").start()
    for p in progs:
        sup.start_program(p.name)
    sup.shutdown(order=["agent", "infra"])
    assert marks.read_text().split() == ["agent", "infra"]
