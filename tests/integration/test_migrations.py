"""Migrations on a real PostgreSQL server."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from storage.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate

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
