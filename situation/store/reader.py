"""A read-only view of a situation database, for commands that look and never write.

The store (situation/store/__init__.py) is built for writing: it migrates or checks the schema,
cleans what it writes and retries units. A reader does none of that. It opens the
database so that writing is impossible rather than merely avoided, as readonly.py does
(situation/store/readonly_open.py, which both use):

- SQLite: a ``file:…?mode=ro`` URI (the file must exist; nothing is created) with
  ``PRAGMA query_only``, on a worker thread of its own;
- PostgreSQL: one connection made as the agent's are (situation/connection/connect.py: libpq's
  DSN rules, TLS and error wording), with ``default_transaction_read_only`` and
  ``search_path = situation``; meant for a role made with ``situation grant ROLE --reader``.

Queries are the named queries of ``sql/queries/*.sql`` (``$n`` placeholders), as
for the store; rows come back as dicts, with the JSON and list columns named in
``JSON_FIELDS`` decoded on both backends.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from situation.errors import ConfigError
from situation.store import is_postgres_dsn, query_text, queries_for, sqlite_path
from situation.store.readonly_open import SqliteThread, connect_read_only

# Result columns that hold JSON (text on SQLite, json/jsonb/arrays on PostgreSQL).
JSON_FIELDS = frozenset({"ips", "tls", "application_protocols"})


class NoSchema(ConfigError):
    """The database is reachable but has no readable situation tables."""


def decode_json_fields(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_FIELDS.intersection(row):
        value = row[name]
        if isinstance(value, str):
            try:
                row[name] = json.loads(value)
            except ValueError:
                row[name] = None  # not JSON: shown as absent rather than as raw text
    return row


class SqliteReader:
    dialect = "sqlite"

    def __init__(self, sqlite: SqliteThread, path: str):
        self._sqlite = sqlite
        self.path = path
        self.where = f"SQLite {path}"

    @classmethod
    async def open(cls, path: str) -> SqliteReader:
        return cls(await SqliteThread.open(path, setup=_rows_as_dicts, thread_name="situation-reader"), path)

    async def fetch(self, name: str, *args: Any) -> list[dict[str, Any]]:
        from situation.store.sqlite import to_sqlite_placeholders

        sql = to_sqlite_placeholders(query_text("sqlite", name))
        rows = await self._sqlite.run(_sqlite_rows, sql, args)
        return [decode_json_fields(row) for row in rows]

    async def close(self) -> None:
        await self._sqlite.close()


def _rows_as_dicts(connection: sqlite3.Connection) -> None:
    connection.row_factory = sqlite3.Row


def _sqlite_rows(db: sqlite3.Connection, sql: str, args: tuple) -> list[dict[str, Any]]:
    return [dict(row) for row in db.execute(sql, args)]


class PostgresReader:
    dialect = "postgres"

    def __init__(self, connection, where: str):
        self._connection = connection
        self.where = where

    @classmethod
    async def open(cls, dsn: str, purpose: str) -> PostgresReader:
        from situation.connection.dsn import parse_dsn

        params = parse_dsn(dsn)
        return cls(await connect_read_only(params, purpose), f"PostgreSQL {params.redacted()}")

    async def fetch(self, name: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self._connection.fetch(query_text("postgres", name), *args)
        return [decode_json_fields(dict(row)) for row in rows]

    async def close(self) -> None:
        await self._connection.close()


Reader = SqliteReader | PostgresReader


async def open_reader(dsn: str, purpose: str = "reader") -> Reader:
    """A read-only reader for ``dsn``, checked to hold the situation tables."""
    postgres = is_postgres_dsn(dsn)
    await asyncio.to_thread(queries_for, "postgres" if postgres else "sqlite")  # file reads, once
    reader = await PostgresReader.open(dsn, purpose) if postgres else await SqliteReader.open(sqlite_path(dsn))
    try:
        await check_schema(reader)
    except BaseException:
        await reader.close()
        raise
    return reader


async def check_schema(reader: Reader) -> None:
    """NoSchema (one line, with the fix) unless the tables exist and may be read."""
    try:
        await reader.fetch("explore_schema_check")
    except sqlite3.DatabaseError as exc:
        if "no such table" not in str(exc) and "not a database" not in str(exc):
            raise
        raise NoSchema(
            f"{reader.where} has no situation tables ({exc}); "
            "point --db at a database the agent wrote (`situation run` or `situation migrate` creates them)"
        ) from None
    except Exception as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == "42P01":  # undefined_table
            raise NoSchema(
                f"{reader.where} has no situation schema ({_one_line(exc)}); "
                "run `situation migrate` as the owner first, or fix --db"
            ) from None
        if sqlstate in ("42501", "3F000"):  # insufficient_privilege, invalid_schema_name
            raise NoSchema(
                f"{reader.where}: the role may not read the situation schema ({_one_line(exc)}); "
                "make it a reader as the owner: situation grant ROLE --reader"
            ) from None
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
