"""The platform's crash-loop policy and supervisord configuration (no processes)."""

from __future__ import annotations

import shlex
from pathlib import Path

from ops.embedded.supervisor import Availability, Change, CrashWatch, Program, render_conf


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


def test_crashes_during_an_outage_then_counted_as_restarts_but_no_loop() -> None:
    w = CrashWatch(max_crashes=2, window_s=60)
    w.observe("trading", "RUNNING", 1, 0.0)
    for i, t in enumerate((1.0, 3.0, 6.0), start=2):
        w.observe("trading", "BACKOFF", 0, t, excused=True)
        assert w.observe("trading", "STARTING", i, t + 0.5, excused=True) is None
    assert w.observe("trading", "FATAL", 0, 10.0, excused=True) is None  # the caller starts it again
    assert w.restarts == {"trading": 3}
    w.observe("trading", "RUNNING", 9, 20.0)
    w.observe("trading", "EXITED", 0, 30.0)  # on its own: counted
    w.observe("trading", "RUNNING", 10, 31.0)
    assert w.observe("trading", "RUNNING", 11, 32.0) == "crashed 2 times within 60 s"
    assert w.observe("feed", "FATAL", 0, 33.0) is not None  # not excused: a loop at once


def test_program_down_then_reported_once_and_back_with_its_downtime() -> None:
    a = Availability()
    assert a.observe("postgres", "STARTING", 5, 0.0) == []  # first start: not a fault
    assert a.observe("postgres", "RUNNING", 5, 2.0) == []
    assert a.observe("postgres", "BACKOFF", 0, 10.0, "Exited too quickly") == [
        Change("postgres", False, "BACKOFF", 0, 0.0, "Exited too quickly")
    ]
    assert a.observe("postgres", "STARTING", 6, 11.0) == []  # still the same outage
    assert a.down() == {"postgres": 10.0}
    assert a.disturbed(["postgres", "broker"], 11.0, grace_s=30) == ["postgres"]
    assert a.observe("postgres", "RUNNING", 6, 14.5) == [Change("postgres", True, "RUNNING", 6, 4.5)]
    assert a.down() == {}
    assert a.disturbed(["postgres"], 40.0, grace_s=30) == ["postgres"]  # dependants still recovering
    assert a.disturbed(["postgres"], 45.0, grace_s=30) == []


def test_restart_between_two_looks_then_down_and_back_and_deliberate_stop_then_nothing() -> None:
    a = Availability()
    a.observe("market", "RUNNING", 7, 0.0)
    changes = a.observe("market", "RUNNING", 8, 1.0)
    assert [(c.up, c.pid) for c in changes] == [(False, 7), (True, 8)]
    assert a.observe("market", "STOPPING", 8, 2.0) == []
    assert a.observe("market", "STOPPED", 0, 3.0) == []
    assert a.observe("market", "STARTING", 9, 4.0) == []  # started again on purpose
    assert a.observe("market", "RUNNING", 9, 5.0) == []


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
