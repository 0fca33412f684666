"""supervisord as the process supervisor of the embedded platform.

Why supervisord (PyPI ``supervisor``) and not a hand-written loop: it is the
well-known tool for exactly this (restart on exit, start retries with
backoff, per-program logs with rotation, run-as-user for PostgreSQL), and an
operator gets ``supervisorctl -c <data-dir>/run/supervisord.conf status|tail|restart``
for free. What it does not model, ``tradeflow up`` adds on top through its
XML-RPC interface: readiness-ordered start (a program is started only once the
ones it needs answer) and a crash-loop policy (:class:`CrashWatch`): a
program that exits ``max_crashes`` times within ``window_s`` (or that
supervisord gives up on: FATAL) stops the whole platform loudly, with the tail
of its log, instead of restarting for ever. Design: docs/operations.md#the-running-platform.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import NeedsOperator

__all__ = [
    "Availability",
    "Change",
    "CrashLoop",
    "CrashWatch",
    "Program",
    "Supervisor",
    "SupervisorError",
    "program_states",
    "render_conf",
]


class SupervisorError(NeedsOperator, RuntimeError):
    """supervisord did not start, or a program could not be started or stopped."""


class CrashLoop(NeedsOperator, RuntimeError):
    """A program keeps crashing: the platform stops instead of restarting it for ever."""

    def __init__(self, program: str, reason: str, log_tail: str) -> None:
        super().__init__(f"{program} {reason}; last lines of its log:\n{log_tail}")
        self.program = program
        self.log_tail = log_tail


@dataclass(frozen=True)
class Program:
    """One supervised process. ``argv`` is run as is (no shell); ``env`` is added to supervisord's."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    cwd: Path | None = None
    #: seconds a start must survive to count as started (supervisord ``startsecs``)
    startsecs: int = 2
    #: SIGTERM, then SIGKILL after this many seconds
    stopwaitsecs: int = 20
    stopsignal: str = "TERM"


def _quote(arg: str) -> str:
    """supervisord splits ``command`` with shlex; quote every argument and escape ``%`` (its expansions)."""
    return "'" + arg.replace("%", "%%").replace("'", "'\"'\"'") + "'"


def render_conf(programs: Sequence[Program], run_dir: Path, log_dir: Path) -> str:
    """The supervisord configuration: a unix socket owned by this user only, every program with
    ``autostart=false`` (``tradeflow up`` starts them in dependency order) and ``autorestart=true``."""
    lines = [
        "[unix_http_server]",
        f"file={run_dir / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={log_dir / 'supervisord.log'}",
        f"pidfile={run_dir / 'supervisord.pid'}",
        "nodaemon=true",
        "silent=true",
        "minfds=4096",
        f"childlogdir={log_dir}",
        *(["user=root"] if os.geteuid() == 0 else []),
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run_dir / 'supervisor.sock'}",
        "",
    ]
    for p in programs:
        env = ",".join(f'{k}="{v.replace("%", "%%")}"' for k, v in sorted(p.env.items()))
        lines += [
            f"[program:{p.name}]",
            "command=" + " ".join(_quote(a) for a in p.argv),
            "autostart=false",
            "autorestart=true",
            f"startsecs={p.startsecs}",
            "startretries=5",
            f"stopwaitsecs={p.stopwaitsecs}",
            f"stopsignal={p.stopsignal}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={log_dir / (p.name + '.log')}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=3",
            *([f"user={p.user}"] if p.user else []),
            *([f"directory={p.cwd}"] if p.cwd else []),
            *([f"environment={env}"] if env else []),
            "",
        ]
    return "\n".join(lines)


class CrashWatch:
    """Counts each program's unexpected exits; ``observe`` returns the reason of a crash loop.

    Pure: fed polled (program, state name, pid, now) snapshots. One crash is an exit seen as
    ``EXITED``/``BACKOFF``, or a new pid of a running program whose exit fell between two polls;
    ``FATAL`` (supervisord gave up on starting it) is a loop at once. A crash observed with
    ``excused`` (the caller knows a program it needs was down: a database or broker outage) is
    counted in :attr:`restarts` but not toward a loop, and an excused ``FATAL`` is no loop: the
    caller starts the program again once what it needs is back.
    """

    def __init__(self, max_crashes: int = 5, window_s: float = 300.0) -> None:
        self.max_crashes = max_crashes
        self.window_s = window_s
        self._pid: dict[str, int] = {}
        self._down: dict[str, bool] = {}
        self._crashes: dict[str, deque[float]] = {}
        self.restarts: dict[str, int] = {}

    def observe(self, program: str, state: str, pid: int, now: float, *, excused: bool = False) -> str | None:
        if state == "FATAL":
            if excused:
                self._down[program] = True
                return None
            return "could not be started (supervisord gave up after its start retries)"
        crashed = False
        if state in ("EXITED", "BACKOFF"):
            crashed = not self._down.get(program, False)
            self._down[program] = True
        elif state in ("STARTING", "RUNNING") and pid:
            last = self._pid.get(program)
            crashed = last is not None and pid != last and not self._down.get(program, False)
            self._down[program] = False
            self._pid[program] = pid
        elif state == "STOPPED":  # stopped on purpose: its next start is not a crash
            self._pid.pop(program, None)
            self._down[program] = False
        if not crashed:
            return None
        self.restarts[program] = self.restarts.get(program, 0) + 1
        if excused:
            return None
        times = self._crashes.setdefault(program, deque())
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.max_crashes:
            return f"crashed {len(times)} times within {self.window_s:.0f} s"
        return None


@dataclass(frozen=True)
class Change:
    """A supervised program went down (``up`` False) or is running again (``up`` True, after ``down_s``)."""

    program: str
    up: bool
    state: str
    pid: int
    down_s: float = 0.0
    #: supervisord's description of the state (``exit status 1``, ``Exited too quickly``, ...)
    description: str = ""


class Availability:
    """Which supervised programs are down, since when; ``observe`` returns what changed.

    Pure: fed the same polled snapshots as :class:`CrashWatch`. A program that has run goes down
    when it leaves ``RUNNING`` other than by a deliberate stop (``STOPPING``/``STOPPED``: not a
    fault, not reported), and is back at its next ``RUNNING``. A new pid of a running program (its
    exit and restart fell between two polls) is reported as down and back at once.
    """

    def __init__(self) -> None:
        self._pid: dict[str, int] = {}
        self._down_since: dict[str, float] = {}
        self._back_at: dict[str, float] = {}

    def observe(self, program: str, state: str, pid: int, now: float, description: str = "") -> list[Change]:
        if state == "RUNNING":
            last = self._pid.get(program)
            self._pid[program] = pid
            if program in self._down_since:
                self._back_at[program] = now
                return [Change(program, True, state, pid, now - self._down_since.pop(program), description)]
            if last is not None and last != pid:
                self._back_at[program] = now
                return [
                    Change(program, False, "EXITED", last, description="exited and restarted between two looks"),
                    Change(program, True, state, pid, 0.0, description),
                ]
            return []
        if state in ("STOPPING", "STOPPED"):
            self._pid.pop(program, None)
            self._down_since.pop(program, None)
            return []
        if program in self._pid and program not in self._down_since:
            self._down_since[program] = now
            return [Change(program, False, state, pid, description=description)]
        return []

    def down(self) -> dict[str, float]:
        """Program -> when it went down, for every program down now."""
        return dict(self._down_since)

    def disturbed(self, programs: Sequence[str], now: float, grace_s: float) -> list[str]:
        """Those of ``programs`` down now or back for less than ``grace_s`` (their dependants may still be
        failing on the outage: reconnecting, or crashed and waiting for their restart)."""
        return [
            p for p in programs if p in self._down_since or (p in self._back_at and now - self._back_at[p] < grace_s)
        ]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__()
        self._path, self._timeout_s = path, timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout_s)


def program_states(run_dir: Path, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """What the running platform's supervisord says of each program (``statename``, ``pid``,
    ``description``, ...), for a second shell (``tradeflow status``). Raises :class:`SupervisorError`
    when no supervisord answers on ``run_dir``'s socket."""
    sock = run_dir / "supervisor.sock"
    rpc: Any = xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(sock), timeout_s))
    try:
        return {p["name"]: p for p in rpc.supervisor.getAllProcessInfo()}
    except (OSError, http.client.HTTPException, xmlrpc.client.Error) as exc:
        raise SupervisorError(f"no supervisord answers on {sock}: {type(exc).__name__}: {exc}") from None


class Supervisor:
    """supervisord as our child process, driven over its XML-RPC unix socket."""

    def __init__(self, programs: Sequence[Program], run_dir: Path, log_dir: Path) -> None:
        self.programs = {p.name: p for p in programs}
        self.run_dir, self.log_dir = run_dir, log_dir
        self.conf = run_dir / "supervisord.conf"
        self.popen: subprocess.Popen[bytes] | None = None
        self._rpc: Any = None
        self._transport: Any = None

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def start(self, timeout_s: float = 20.0) -> Supervisor:
        from supervisor.xmlrpc import SupervisorTransport

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_conf(list(self.programs.values()), self.run_dir, self.log_dir))
        sock = self.run_dir / "supervisor.sock"
        sock.unlink(missing_ok=True)
        with open(self.log_dir / "supervisord.out", "ab") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - our own argv
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches `tradeflow up`, which stops it in order
            )
        deadline = time.monotonic() + timeout_s
        while True:
            # a fresh proxy per try: the transport's connection is unusable after a refused attempt
            self._close_transport()
            self._transport = SupervisorTransport(None, None, f"unix://{sock}")
            self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)
            try:
                if self._rpc.supervisor.getState()["statename"] == "RUNNING":
                    return self
            except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
                pass
            if self.popen.poll() is not None:
                raise SupervisorError(f"supervisord exited with code {self.popen.returncode}: see {self.log_dir}")
            if time.monotonic() > deadline:
                self.popen.terminate()  # never leave a supervisord behind that nobody drives
                self.popen.wait(30)
                raise SupervisorError(f"supervisord did not answer on {sock} within {timeout_s:.0f} s")
            time.sleep(0.1)

    @property
    def rpc(self) -> Any:
        if self._rpc is None:
            raise SupervisorError("supervisord not started")
        return self._rpc

    def start_program(self, name: str, *, wait: bool = True) -> None:
        """Start ``name`` and (``wait``) wait until it has run for its ``startsecs`` (supervisord's RUNNING)."""
        try:
            self.rpc.supervisor.startProcess(name, wait)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise SupervisorError(
                    f"{name} did not start ({exc.faultString}); log tail:\n{self.tail(name)}"
                ) from None

    def start_programs(self, names: Sequence[str], timeout_s: float = 60.0) -> None:
        """Start ``names`` together and wait until each is RUNNING (past its ``startsecs``)."""
        for name in names:
            try:
                self.rpc.supervisor.startProcess(name, False)
            except xmlrpc.client.Fault as exc:
                if "ALREADY_STARTED" not in exc.faultString:
                    raise SupervisorError(f"{name} did not start ({exc.faultString})") from None
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            for name in names:
                if states[name]["statename"] == "FATAL":  # BACKOFF: supervisord retries
                    raise SupervisorError(f"{name} did not start; log tail:\n{self.tail(name)}")
            if all(states[n]["statename"] == "RUNNING" for n in names):
                return
            if time.monotonic() > deadline:
                pending = [n for n in names if states[n]["statename"] != "RUNNING"]
                raise SupervisorError(f"not running within {timeout_s:.0f} s: {pending}")
            time.sleep(0.1)

    def stop_program(self, name: str) -> None:
        try:
            self.rpc.supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString:
                raise SupervisorError(f"{name} did not stop: {exc.faultString}") from None

    def states(self) -> dict[str, dict[str, Any]]:
        """Program name -> supervisord's process info (``statename``, ``pid``, ``start``, ``exitstatus``)."""
        return {p["name"]: p for p in self.rpc.supervisor.getAllProcessInfo()}

    def pid(self, name: str) -> int:
        return int(self.rpc.supervisor.getProcessInfo(name)["pid"])

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64 * 1024))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def shutdown(self, order: Sequence[str] = (), timeout_s: float = 60.0) -> None:
        """Stop the programs in ``order`` one by one (then any left), then supervisord itself."""
        if self.popen is None:
            return
        try:
            if self.popen.poll() is None:
                running = {n for n, s in self.states().items() if s["statename"] not in ("STOPPED", "EXITED", "FATAL")}
                for name in [*order, *sorted(running - set(order))]:
                    if name in running:
                        self.stop_program(name)
                self.rpc.supervisor.shutdown()
        except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
            self.popen.terminate()
        finally:
            self._close_transport()
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
