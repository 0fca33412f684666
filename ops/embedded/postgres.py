"""Embedded PostgreSQL: a real server in a data directory the project owns.

Debian's postgresql package provides the binaries. initdb and postgres refuse
to run as root, so when we are root the server runs as the ``postgres`` OS
user (``runuser -u postgres``) in a data directory chowned to it.

``EmbeddedPostgres(persistent=False)`` is a throwaway cluster for tests
(fsync off: the tests kill workers, not the machine); the persistent cluster
used by ``make run`` keeps full durability.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ops.embedded.broker import free_port
from runtime.errors import NeedsOperator
from storage.databases import exists_query

log = structlog.get_logger("ops.embedded.postgres")


class PostgresError(NeedsOperator, RuntimeError):
    """The embedded PostgreSQL server could not be set up."""


def pg_bindir() -> Path:
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return Path(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresError(
        "PostgreSQL server binaries not found. Install them with `make deps` "
        "(apt-get install -y postgresql) or set PG_BINDIR."
    )


def _as_db_user() -> list[str]:
    """Command prefix that runs a command as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root but no 'postgres' OS user exists (install postgresql)") from None
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class EmbeddedPostgres:
    data_dir: Path | None = None
    port: int = 0
    persistent: bool = False
    database: str = "tradeflow"
    _tmp: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise PostgresError(f"database name {self.database!r} must be a lower-case SQL identifier")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*_as_db_user(), *argv]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 - argv is ours
        if check and res.returncode != 0:
            raise PostgresError(f"{' '.join(argv[:2])} failed ({res.returncode}): {res.stderr.strip()[-800:]}")
        return res

    def _prepare_dir(self) -> Path:
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="tradeflow-pg-")
            self.data_dir = Path(self._tmp) / "data"
        self.data_dir = self.data_dir.resolve()
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            # the postgres user must be able to traverse to the data dir
            for p in [parent, *parent.parents]:
                if p == Path("/"):
                    break
                mode = p.stat().st_mode
                if not mode & 0o001:
                    os.chmod(p, mode | 0o001)
            os.chown(parent, pw.pw_uid, pw.pw_gid)
        return self.data_dir

    def init(self) -> Path:
        """The data dir, with a cluster in it (initdb on first use) and a port chosen; returns the dir."""
        bindir = pg_bindir()
        data = self._prepare_dir()
        if not (data / "PG_VERSION").exists():
            self._run(
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            )
        if self.port == 0:
            self.port = free_port()
        return data

    def server_options(self) -> list[str]:
        assert self.data_dir is not None, "init() first"
        opts = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-k {self.data_dir}",
            "-c max_connections=100",
            "-c shared_buffers=256MB",
            "-c max_wal_size=2GB",
        ]
        if not self.persistent:
            opts += ["-c fsync=off", "-c full_page_writes=off"]
        return opts

    def server_argv(self) -> list[str]:
        """The server in the foreground (for a process supervisor; run it as :attr:`os_user`)."""
        assert self.data_dir is not None, "init() first"
        argv = [str(pg_bindir() / "postgres"), "-D", str(self.data_dir)]
        for opt in self.server_options():
            flag, _, value = opt.partition(" ")
            argv += [flag, value]
        return argv

    @property
    def os_user(self) -> str | None:
        """The OS user the server runs as: ``postgres`` when we are root (it refuses root), else us."""
        return "postgres" if os.geteuid() == 0 else None

    def start(self, timeout_s: float = 60.0) -> EmbeddedPostgres:
        bindir = pg_bindir()
        data = self.init()
        opts = self.server_options()
        logfile = data.parent / "postgres.log"
        self._run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(logfile),
            "-o",
            " ".join(opts),
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
        )
        deadline = time.monotonic() + timeout_s
        while True:
            res = self._run(
                str(bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                exists_query(self.database),
                check=False,
            )
            if res.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres not ready: {res.stderr.strip()}")
            time.sleep(0.1)
        if res.stdout.strip() != "1":
            self._run(
                str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database
            )
        log.info("postgres_started", port=self.port, data_dir=str(data), persistent=self.persistent)
        return self

    def stop(self) -> None:
        if self.data_dir is None or not (self.data_dir / "postmaster.pid").exists():
            return
        pg_ctl = str(pg_bindir() / "pg_ctl")
        res = self._run(pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
        if res.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            # a fast shutdown that did not finish in pg_ctl's wait (a loaded machine): do not return with
            # the server still up; an immediate shutdown is crash-safe (WAL replay on the next start)
            log.warning("postgres_fast_stop_failed", port=self.port, stderr=res.stderr.strip()[-300:])
            self._run(pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False)
        log.info("postgres_stopped", port=self.port)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._tmp)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
