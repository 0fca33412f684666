"""Our own processes (``tradeflow`` workers, the sink) as children, their output in a log file.

One way to start, watch and stop them for the run job, the benchmarks and
the tests: stdout and stderr go to the log (appended, or from empty); a stop
is SIGTERM, then SIGKILL when the process has not exited within the grace
period, so a hung child never outlives its parent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ops.embedded.broker import free_port

__all__ = ["ChildProcess", "cli_argv", "worker_argv"]


def cli_argv(*args: str) -> list[str]:
    """``python -m ops.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "ops.cli", *args]


def worker_argv(
    bootstrap: str, *agents: str, namespace: str | None = None, dsn: str | None = None, web_port: int | None = None
) -> list[str]:
    """A ``tradeflow worker`` hosting ``agents``; its web port is a free one unless given."""
    argv = ["worker", "--bootstrap", bootstrap]
    if namespace is not None:
        argv += ["--namespace", namespace]
    if dsn is not None:
        argv += ["--dsn", dsn]
    argv += ["--web-port", str(free_port() if web_port is None else web_port), "--agents", *agents]
    return cli_argv(*argv)


@dataclass
class ChildProcess:
    """One child process: ``start`` launches it, ``stop`` ends it."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    #: Append to the log (a restarted child keeps its history) or start it from empty.
    append: bool = True
    popen: subprocess.Popen[bytes] | None = None
    #: What the caller wants to remember about the child (e.g. its web port).
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Self:
        with open(self.log, "ab" if self.append else "wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - argv built by the caller, no shell
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check_alive(self) -> None:
        """Raise (with the log's tail) when the child has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.popen.returncode}; log tail:\n{self.output()[-2000:]}"
            )

    def kill(self) -> None:
        """SIGKILL, no grace: a crash, as a drill needs it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20, kill_timeout: float = 10) -> int | None:
        """SIGTERM, up to ``timeout`` s to exit, else SIGKILL; the exit code (None: never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(kill_timeout)
        return self.popen.returncode
