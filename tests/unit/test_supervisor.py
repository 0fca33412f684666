"""The platform's crash-loop policy and supervisord configuration (no processes)."""

from __future__ import annotations

import shlex
from pathlib import Path

from ops.embedded.supervisor import CrashWatch, Program, render_conf


def test_one_crash_then_counted_once_whether_seen_as_exit_or_as_new_pid() -> None:
    w = CrashWatch(max_crashes=3, window_s=60)
    assert w.observe("sink", "RUNNING", 100, 0.0) is None
    assert w.observe("sink", "EXITED", 0, 1.0) is None  # the exit was polled
    assert w.observe("sink", "RUNNING", 101, 2.0) is None  # its restart: the same crash, not a second one
    assert w.restarts == {"sink": 1}
    assert w.observe("sink", "RUNNING", 102, 3.0) is None  # exit and restart both fell between two polls
    assert w.restarts == {"sink": 2}


def test_crashes_within_the_window_then_loop_reported() -> None:
    w = CrashWatch(max_crashes=3, window_s=60)
    w.observe("feed", "RUNNING", 1, 0.0)
    assert w.observe("feed", "RUNNING", 2, 10.0) is None
    assert w.observe("feed", "RUNNING", 3, 20.0) is None
    reason = w.observe("feed", "RUNNING", 4, 30.0)
    assert reason == "crashed 3 times within 60 s"


def test_crashes_spread_beyond_the_window_then_no_loop() -> None:
    w = CrashWatch(max_crashes=3, window_s=60)
    w.observe("feed", "RUNNING", 1, 0.0)
    for i, t in enumerate((50.0, 120.0, 190.0, 260.0), start=2):
        assert w.observe("feed", "RUNNING", i, t) is None
    assert w.restarts == {"feed": 4}


def test_fatal_then_loop_at_once_and_deliberate_stop_then_no_crash() -> None:
    w = CrashWatch()
    assert w.observe("broker", "FATAL", 0, 0.0) is not None
    w.observe("market", "RUNNING", 7, 0.0)
    w.observe("market", "STOPPED", 0, 1.0)
    assert w.observe("market", "RUNNING", 8, 2.0) is None
    assert w.restarts == {}


def test_conf_when_rendered_then_argv_survives_supervisord_parsing(tmp_path: Path) -> None:
    argv = ["/usr/bin/python3", "-c", "print('50% of it')", "--reason", "it's here"]
    conf = render_conf(
        [Program("odd", argv, {"TRADEFLOW_DSN": "postgresql://x/y"}, user="postgres")], tmp_path, tmp_path
    )
    command = next(line for line in conf.splitlines() if line.startswith("command="))[len("command=") :]
    # supervisord expands %(...)s and %% before splitting with shlex
    assert shlex.split(command.replace("%%", "%")) == argv
    assert "autostart=false" in conf and "autorestart=true" in conf
    assert "user=postgres" in conf
    assert 'environment=TRADEFLOW_DSN="postgresql://x/y"' in conf
    assert "chmod=0700" in conf  # the control socket is the owner's only
