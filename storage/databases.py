"""Whole databases of a cluster: create one, recreate one empty, ask whether one exists, probe one.

``name`` is an identifier the caller generated or validated; it is quoted,
never bound (PostgreSQL takes no parameters in these statements).
"""

from __future__ import annotations

from storage.connection import Conn

__all__ = ["create_database", "exists_query", "ping", "recreate_database"]


async def create_database(conn: Conn, name: str) -> None:
    """``conn`` is to another database of the cluster (e.g. ``postgres``)."""
    await conn.execute(f'CREATE DATABASE "{name}"')


async def recreate_database(conn: Conn, name: str) -> None:
    """Drop the database (disconnecting its sessions) and create it empty; ``conn`` as for :func:`create_database`."""
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')


def exists_query(name: str) -> str:
    """The query (for ``psql -tAc``) that prints ``1`` when the database exists and nothing otherwise."""
    return f"SELECT 1 FROM pg_database WHERE datname='{name}'"  # noqa: S608 - validated identifier


async def ping(conn: Conn) -> None:
    """One round trip: raises when the database does not answer."""
    await conn.fetchval("SELECT 1")
