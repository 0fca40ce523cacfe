"""A read-only view of a situation database, for commands that look and never write.

The store (situation/store/__init__.py) is built for writing: it migrates or checks the schema,
cleans what it writes and retries units. A reader does none of that. It opens the
database so that writing is impossible rather than merely avoided:

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from situation.errors import ConfigError
from situation.store import is_postgres_dsn, query_text, queries_for, sqlite_path

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

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor, path: str):
        self._db = connection
        self._executor = executor
        self.path = path
        self.where = f"SQLite {path}"

    @classmethod
    async def open(cls, path: str) -> SqliteReader:
        if path == ":memory:":
            raise ConfigError("an in-memory database is empty; give --db the SQLite file or PostgreSQL DSN to read")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="situation-reader")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _open_sqlite_read_only, path)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(
                f'cannot open SQLite database "{path}" read-only ({exc}); check that the file exists and is readable'
            ) from None
        return cls(connection, executor, path)

    async def fetch(self, name: str, *args: Any) -> list[dict[str, Any]]:
        from situation.store.sqlite import to_sqlite_placeholders

        sql = to_sqlite_placeholders(query_text("sqlite", name))
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._executor, _sqlite_rows, self._db, sql, args)
        return [decode_json_fields(row) for row in rows]

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=False)


def _open_sqlite_read_only(path: str) -> sqlite3.Connection:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"no such file: {path}")
    uri = "file:" + quote(str(Path(path).expanduser().resolve())) + "?mode=ro"
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA query_only = ON")
    connection.execute("PRAGMA busy_timeout = 2000")
    return connection


def _sqlite_rows(db: sqlite3.Connection, sql: str, args: tuple) -> list[dict[str, Any]]:
    return [dict(row) for row in db.execute(sql, args)]


class PostgresReader:
    dialect = "postgres"

    def __init__(self, connection, where: str):
        self._connection = connection
        self.where = where

    @classmethod
    async def open(cls, dsn: str, purpose: str) -> PostgresReader:
        from situation.connection.connect import connect
        from situation.connection.dsn import parse_dsn

        params = parse_dsn(dsn)
        settings = {
            "application_name": params.application_name or f"situation {purpose}",
            "search_path": "situation",
            "default_transaction_read_only": "on",
        }
        connection = await connect(params, server_settings=settings)
        return cls(connection, f"PostgreSQL {params.redacted()}")

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
