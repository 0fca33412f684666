"""Migrations on a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from ops.embedded.broker import free_port
from ops.embedded.postgres import EmbeddedPostgres
from ops.embedded.workers import cli_argv
from runtime.exits import EXIT_INFRA
from storage.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_migrated_database_when_migrated_again_then_nothing_applied_and_versions_recorded(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, sha256 FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["sha256"]) for r in rows] == [(m.version, m.sha256) for m in load_migrations()]
    finally:
        await conn.close()


async def test_applied_migration_when_edited_then_refused(dsn: str, tmp_path: Path) -> None:
    edited = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, edited)
    first = sorted(edited.glob("001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- sneaky edit\n")
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# `tradeflow migrate`: creates a missing database, one-line exit 3 when PostgreSQL cannot be used
# ---------------------------------------------------------------------------


def _migrate(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv("migrate", "--dsn", dsn), cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def _dsn_for(pg: EmbeddedPostgres, database: str) -> str:
    return pg.dsn.rsplit("/", 1)[0] + "/" + database


async def test_migrate_when_the_database_is_missing_then_created_and_migrated(pg_server: EmbeddedPostgres) -> None:
    name = f"m_{uuid.uuid4().hex[:12]}"
    dsn = _dsn_for(pg_server, name)
    try:
        first = _migrate(dsn)
        assert first.returncode == 0, first.stderr[-2000:]
        assert f"created database postgres@127.0.0.1:{pg_server.port}/{name}" in first.stdout
        assert "applied migrations: [1, 2," in first.stdout
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == len(load_migrations())
        finally:
            await conn.close()
        again = _migrate(dsn)  # idempotent: nothing created, nothing pending
        assert again.returncode == 0 and again.stdout.strip() == "applied migrations: none pending"
    finally:
        admin = await asyncpg.connect(pg_server.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _assert_one_line_exit_3(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == EXIT_INFRA, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("tradeflow migrate:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_migrate_when_the_server_is_down_then_one_line_and_exit_3_without_the_password() -> None:
    port = free_port()  # nothing listens there
    result = _migrate(f"postgresql://alice:pw-NEVER-SHOWN-42@127.0.0.1:{port}/tradeflow")
    _assert_one_line_exit_3(result, f"cannot reach PostgreSQL at alice@127.0.0.1:{port}/tradeflow", "running")
    assert "pw-NEVER-SHOWN-42" not in result.stdout + result.stderr


def test_migrate_when_the_login_is_refused_then_one_line_and_exit_3(pg_server: EmbeddedPostgres) -> None:
    dsn = pg_server.dsn.replace("postgres@", "no_such_role_7f3a@", 1)
    assert dsn != pg_server.dsn
    result = _migrate(dsn)
    _assert_one_line_exit_3(result, "refused the login", "no_such_role_7f3a")
