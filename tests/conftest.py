"""Shared fixtures: one real broker and one real PostgreSQL server per session.

Isolation per test: a fresh database (migrated) and a fresh topic namespace,
so tests share the expensive servers without sharing state.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from ops.embedded.broker import EmbeddedBroker, free_port
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import ChildProcess, cli_argv, worker_argv
from runtime.broker import ensure_topics
from storage.migrate import migrate_dsn

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "tests"


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=ARTIFACTS / "tansu.log") as b:
        yield b


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(persistent=False) as pg:
        yield pg


@pytest.fixture
async def dsn(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = pg_server.dsn.rsplit("/", 1)[0] + "/" + name
    await migrate_dsn(url)
    yield url
    admin = await asyncpg.connect(pg_server.dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def namespace(broker: EmbeddedBroker) -> str:
    ns = f"t{uuid.uuid4().hex[:10]}"
    await ensure_topics(broker.bootstrap, namespace=ns)
    return ns


#: A ``tradeflow`` subprocess of a test (``popen``, ``log``, ``output()``, ``stop()``, ``kill()``...).
Proc = ChildProcess


class Procs:
    """Spawns `tradeflow` subprocesses and guarantees they are stopped."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[Proc] = []

    def cli(self, name: str, *args: str) -> Proc:
        return self._start(name, cli_argv(*args))

    def worker(self, bootstrap: str, namespace: str, *agents: str) -> Proc:
        port = free_port()
        p = self._start("worker", worker_argv(bootstrap, *agents, namespace=namespace, web_port=port))
        p.extra["web_port"] = port
        return p

    def sink(self, bootstrap: str, namespace: str, dsn: str, *extra: str) -> Proc:
        return self.cli("sink", "sink", "--bootstrap", bootstrap, "--namespace", namespace, "--dsn", dsn, *extra)

    def _start(self, name: str, argv: list[str]) -> Proc:
        p = Proc(
            name, argv, self.tmp / f"{name}-{len(self.all)}.log", env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT
        )
        self.all.append(p)
        return p.start()

    def stop_all(self) -> None:
        for p in self.all:
            p.stop(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    yield ps
    ps.stop_all()


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.25, watch: Procs | None = None
) -> None:
    """Poll an async condition; fail with ``what`` if it does not hold in time.

    With ``watch``, fail at once (with the log tail) when one of its processes died.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return
        for p in watch.all if watch else ():
            if p.popen is not None and p.popen.poll() is not None and p.popen.returncode not in (0, -9, -15):
                raise AssertionError(
                    f"{p.name} exited {p.popen.returncode} while waiting for {what}:\n" + p.output()[-3000:]
                )
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(every)
