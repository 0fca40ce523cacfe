"""A store on each backend, and plain reads that bypass the store's named queries.

``backend_store`` is a fixture (import it into a test module to use it):
parametrised over a fresh SQLite file and a fresh database on the session's
TLS cluster (reached over its Unix socket), migrated, closed after the test.
"""

from __future__ import annotations

import sqlite3

import pytest

from situation.store import open_store

AGENT = "ab" * 16


@pytest.fixture(params=["sqlite", "postgres"])
async def backend_store(request, tmp_path):
    if request.param == "sqlite":
        dsn = str(tmp_path / "situation.sqlite")
    else:
        dsn = request.getfixturevalue("tls_cluster").superuser_dsn(request.getfixturevalue("fresh_database")("bk"))
    opened = await open_store(dsn, AGENT)
    yield opened
    await opened.close()


async def raw_rows(store, sql: str) -> list[dict]:
    """Rows of a plain SELECT with unqualified table names, on either backend."""
    if store.dialect == "postgres":
        async with store.pool.acquire() as connection:
            await connection.execute("SET search_path = situation")
            return [dict(r) for r in await connection.fetch(sql)]
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql)]
