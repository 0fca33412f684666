"""Versioned SQL migrations, applied in order, each exactly once.

Files are ``storage/migrations/NNN_name.sql``; applied versions are recorded
in ``schema_migrations`` with the file's sha256. A migration that was edited
after being applied is an error (history is immutable: add a new file).
An advisory lock serialises concurrent migrators (several workers starting).

:func:`ensure_database` creates the DSN's database when the server has none
of that name (through the cluster's ``postgres`` database, same user).
Connection failures (server down, refused login, no privilege to create the
database) are :class:`DatabaseUnreachable`, whose message is one line naming
host, port, database and user, never the password.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from runtime.errors import NeedsOperator, Retriable
from storage.databases import create_database

log = structlog.get_logger("storage.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x7472616465  # "trade"


class MigrationError(NeedsOperator, RuntimeError):
    """The migrations cannot be applied as they are (a bad file name, a gap, a changed applied migration)."""


class DatabaseUnreachable(Retriable, ConnectionError):
    """PostgreSQL cannot be used: server down or not answering, login refused, database missing or not
    creatable. The message is one line and never holds the password."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"bad migration file name {path.name} (want NNN_name.sql)")
        out.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise MigrationError(f"migration versions must be 1..N without gaps, got {versions}")
    return out


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"]: r["sha256"] for r in await conn.fetch("SELECT version, sha256 FROM schema_migrations")}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.sha256:
                    raise MigrationError(f"migration {m.version}_{m.name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.sha256,
                )
            applied_now.append(m.version)
            log.info("migration_applied", version=m.version, name=m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now


async def migrate_dsn(dsn: str) -> list[int]:
    """Apply pending migrations to the DSN's database (:class:`DatabaseUnreachable` when it cannot be used)."""
    conn = await connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def where(dsn: str) -> str:
    """``user@host:port/database`` of a DSN, for messages (never the password)."""
    parts = urlsplit(dsn)
    database = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{parts.username or 'postgres'}@{parts.hostname or 'localhost'}:{parts.port or 5432}/{database}"


def _database(dsn: str) -> str:
    return where(dsn).rsplit("/", 1)[1]


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def connect(dsn: str, *, timeout_s: float = 10.0) -> asyncpg.Connection:
    """A connection to the DSN's database; every way that fails is one :class:`DatabaseUnreachable`."""
    try:
        return await _open(dsn, timeout_s)
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseUnreachable(
            f"database {_database(dsn)!r} does not exist on {where(dsn)} (`tradeflow migrate` creates it)"
        ) from None


async def _open(dsn: str, timeout_s: float) -> asyncpg.Connection:
    """``asyncpg.connect``; a missing database stays ``InvalidCatalogNameError``, the rest is mapped."""
    at = where(dsn)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout_s)
    except asyncpg.InvalidCatalogNameError:
        raise
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise DatabaseUnreachable(f"PostgreSQL at {at} refused the login: {_one_line(exc)}") from None
    except TimeoutError:
        raise DatabaseUnreachable(f"PostgreSQL at {at} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise DatabaseUnreachable(
            f"cannot reach PostgreSQL at {at}: {exc.strerror or _one_line(exc)} (is the server running?)"
        ) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnreachable(f"PostgreSQL at {at}: {_one_line(exc)}") from None
    return conn


async def ensure_database(dsn: str, *, timeout_s: float = 10.0) -> bool:
    """Create the DSN's database if the server has none of that name; True when it was created now."""
    try:
        conn = await _open(dsn, timeout_s)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = _database(dsn)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", name):
        raise DatabaseUnreachable(f"database {name!r} does not exist and is not a name this command creates")
    admin = await connect(_with_database(dsn, "postgres"), timeout_s=timeout_s)
    try:
        await create_database(admin, name)
    except asyncpg.DuplicateDatabaseError:
        return False  # created meanwhile by another migrator
    except asyncpg.PostgresError as exc:
        raise DatabaseUnreachable(f"cannot create database {name!r} on {where(dsn)}: {_one_line(exc)}") from None
    finally:
        await admin.close()
    log.info("database_created", database=name, at=where(dsn))
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
