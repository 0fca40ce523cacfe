"""Read-only SQL on the inventory, for `situation mcp`: one statement at a time, as JSON.

Read-only is enforced by the database, not by inspecting the SQL text:

- SQLite: the file is opened ``mode=ro`` with ``PRAGMA query_only`` (as
  reader.py opens it: situation/store/readonly_open.py), and an
  authorizer allows reading only (SELECT, reads, functions, a list of
  informational pragmas). It denies ATTACH, which ``mode=ro`` alone does not
  stop from creating a file anywhere the user may write (``VACUUM INTO`` goes
  through ATTACH too), every write, transaction control and every other pragma.
  Python's driver runs one statement per call. All sqlite3 work runs on one
  worker thread.
- PostgreSQL: every query is a single statement (asyncpg prepares it with the
  extended protocol, which refuses several), inside a ``READ ONLY`` transaction
  whose snapshot is taken before the statement runs, so ``SET TRANSACTION READ
  WRITE`` is refused; a statement that ends the transaction is reported as an
  error. The session is reset (``DISCARD ALL``) after each query. The role
  should hold no write grant at all (``situation grant ROLE --reader``); the
  server warns at start when it could write.

Both stop a statement after ``timeout`` seconds and return at most ``max_rows``
rows, saying so when the limit cut the result.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import structlog

from situation.connection.dsn import redact_dsn
from situation.errors import ConfigError, MigrationError, SituationError
from situation.store.readonly_open import SqliteThread, connect_read_only

log = structlog.get_logger("situation.readonly")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ROWS = 1000


class QueryRefused(Exception):
    """The statement failed or was not allowed; the message is shown to the client."""


@dataclass
class QueryResult:
    rows: list[dict[str, Any]]
    truncated: bool  # more rows existed than max_rows


# -- plain JSON values ------------------------------------------------------------


def plain(value: Any) -> Any:
    """A driver value as a plain JSON value: ISO timestamps, decoded text, no base64."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "\\x" + raw.hex()  # PostgreSQL's text form of bytea
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    return str(value)  # UUID, inet/cidr, bit strings, geometric types: their text form


def rows_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False)


# -- SQLite -------------------------------------------------------------------------

# Pragmas that only describe the database; any argument names what to describe.
_INFO_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "integrity_check", "quick_check",
})
# Pragmas that may be read (never given a value).
_READ_PRAGMAS = frozenset({
    "user_version", "schema_version", "application_id", "encoding", "foreign_keys", "journal_mode",
    "page_size", "page_count", "freelist_count", "query_only", "data_version", "auto_vacuum",
})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"})
_PROGRESS_STEPS = 10_000  # virtual-machine steps between two looks at the clock


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _INFO_PRAGMAS or (name in _READ_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_UPDATE and (arg1 or "").lower() in _SCHEMA_TABLES:
        # Table-valued functions (json_each, pragma_table_info) declare their columns through
        # the schema parser, which asks this; writing the schema table itself needs
        # PRAGMA writable_schema, denied above, and a writable file.
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def lock_down(connection: sqlite3.Connection) -> None:
    """What readonly adds to a read-only SQLite connection: no ATTACH, the authorizer, text never refused."""
    connection.text_factory = lambda raw: raw.decode("utf-8", "replace")
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    connection.set_authorizer(_authorize)  # last: from here on, not even query_only could be set


def _sqlite_query(connection: sqlite3.Connection, sql: str, timeout: float, max_rows: int) -> QueryResult:
    deadline = time.monotonic() + timeout
    connection.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
    try:
        cursor = connection.execute(sql)
        names = [column[0] for column in cursor.description or ()]
        fetched = cursor.fetchmany(max_rows + 1)
        cursor.close()
    except sqlite3.Error as exc:
        if time.monotonic() > deadline and "interrupted" in str(exc):
            raise QueryRefused(f"the statement ran longer than the {timeout:g}s timeout and was stopped") from None
        if str(exc) in ("not authorized", "authorization denied"):
            raise QueryRefused(f"{exc}: this server only reads (one SELECT, informational pragmas)") from None
        raise QueryRefused(str(exc)) from None
    finally:
        connection.set_progress_handler(None, 0)
    rows = [{name: plain(value) for name, value in zip(names, row)} for row in fetched[:max_rows]]
    return QueryResult(rows, truncated=len(fetched) > max_rows)


def _sqlite_has_schema(connection: sqlite3.Connection) -> bool:
    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'machines'").fetchone() is not None


class SqliteReader:
    dialect = "sqlite"

    def __init__(self, sqlite: SqliteThread, timeout: float, max_rows: int):
        self._sqlite = sqlite
        self.timeout = timeout
        self.max_rows = max_rows
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, timeout: float, max_rows: int) -> SqliteReader:
        sqlite = await SqliteThread.open(path, setup=lock_down, thread_name="situation-sqlite-ro")
        reader = cls(sqlite, timeout, max_rows)
        try:
            has_schema = await reader._sqlite.run(_sqlite_has_schema)
        except sqlite3.Error as exc:
            await reader.close()
            raise ConfigError(f'cannot read SQLite database "{redact_dsn(path)}" ({exc}); check the path and its permissions') from None
        except BaseException:
            await reader.close()
            raise
        if not has_schema:
            await reader.close()
            raise MigrationError(f'SQLite database "{redact_dsn(path)}" has no situation tables; run `situation run --once --db …` first')
        return reader

    async def query(self, sql: str) -> QueryResult:
        async with self._lock:
            return await self._sqlite.run(_sqlite_query, sql, self.timeout, self.max_rows)

    async def close(self) -> None:
        await self._sqlite.close()


# -- PostgreSQL -------------------------------------------------------------------

_WRITE_CHECK = """
SELECT current_user AS role, r.rolsuper AS superuser,
       coalesce((SELECT array_agg(g.rolname ORDER BY g.rolname) FROM pg_roles g
                  WHERE g.rolname IN ('situation_agent', 'situation_owner', 'situation_migrator', 'pg_write_all_data',
                                      'pg_write_server_files', 'pg_execute_server_program', 'pg_signal_backend')
                    AND pg_has_role(current_user, g.oid, 'MEMBER')), '{}') AS writer_groups,
       coalesce((SELECT array_agg(c.relname ORDER BY c.relname) FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'situation' AND c.relkind IN ('r', 'p')
                    AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')), '{}') AS writable_tables
  FROM pg_roles r WHERE r.rolname = current_user
"""


def write_powers(row) -> list[str]:
    """Why the connected role could change data, one phrase per reason (empty: it cannot)."""
    reasons = []
    if row["superuser"]:
        reasons.append("it is a superuser")
    if row["writer_groups"]:
        reasons.append("it is a member of " + ", ".join(row["writer_groups"]))
    if row["writable_tables"]:
        tables = row["writable_tables"]
        more = f" and {len(tables) - 3} more" if len(tables) > 3 else ""
        reasons.append("it may write to " + ", ".join(tables[:3]) + more)
    return reasons


class PostgresReader:
    dialect = "postgres"

    def __init__(self, params, connection, timeout: float, max_rows: int):
        self._params = params
        self._connection = connection
        self.timeout = timeout
        self.max_rows = max_rows
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, params, *, timeout: float, max_rows: int) -> PostgresReader:
        reader = cls(params, None, timeout, max_rows)
        reader._connection = await reader._connect()
        try:
            await reader._check_role()
        except BaseException:
            await reader.close()
            raise
        return reader

    async def _connect(self):
        connection = await connect_read_only(self._params, "mcp", statement_cache_size=0)
        await connection.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return connection

    async def _check_role(self) -> None:
        connection = self._connection
        if await connection.fetchval("SELECT to_regclass('situation.machines')") is None:
            raise MigrationError(
                "the database has no situation schema (or this role may not see it); "
                "run `situation migrate` as the owner, and `situation grant ROLE --reader`"
            )
        powers = await connection.fetchrow(_WRITE_CHECK)
        reasons = write_powers(powers)
        if reasons:
            log.warning(
                f"role {powers['role']} could change the data ({'; '.join(reasons)}): every query still runs "
                "in a read-only transaction, but give the MCP server a role of its own made with "
                "`situation grant ROLE --reader`",
            )

    async def query(self, sql: str) -> QueryResult:
        import asyncpg

        async with self._lock:
            if self._connection is None or self._connection.is_closed():
                try:
                    self._connection = await self._connect()
                except SituationError as exc:  # the server went away; the next query tries again
                    raise QueryRefused(f"the database cannot be reached: {exc}") from None
            connection = self._connection
            try:
                # The server stops the statement; the client-side limit (a little later)
                # covers a server that does not answer, and asyncpg then cancels the query.
                async with asyncio.timeout(self.timeout + 5):
                    return await self._run(connection, sql)
            except TransactionControl:
                raise QueryRefused(
                    "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT …) is not allowed: "
                    "each query runs in a read-only transaction of its own"
                ) from None
            except TimeoutError:
                await self._drop(connection)
                raise QueryRefused(f"the statement ran longer than the {self.timeout:g}s timeout and was stopped") from None
            except asyncpg.QueryCanceledError as exc:
                if "statement timeout" in str(exc):
                    raise QueryRefused(f"the statement ran longer than the {self.timeout:g}s timeout and was stopped") from None
                raise QueryRefused(_pg_message(exc)) from None
            except asyncpg.PostgresError as exc:
                raise QueryRefused(_pg_message(exc)) from None
            except (asyncpg.InterfaceError, OSError) as exc:
                await self._drop(connection)
                raise QueryRefused(f"{exc}".strip() or type(exc).__name__) from None

    async def _run(self, connection, sql: str) -> QueryResult:
        # Never committed: whatever a statement might do that the read-only check
        # misses (lo_create, for one) is rolled back with the transaction.
        transaction = connection.transaction(readonly=True, isolation="repeatable_read")
        await transaction.start()
        try:
            # A query first: it takes the transaction's snapshot, after which the
            # transaction can no longer be made read-write.
            await connection.execute(
                "SELECT set_config('statement_timeout', $1, true)", f"{max(1, int(self.timeout * 1000))}ms"
            )
            statement = await connection.prepare(sql)  # one statement only (extended protocol)
            if statement.get_attributes():
                records = await (await statement.cursor()).fetch(self.max_rows + 1)
            else:  # a statement without a result (SET, DO, ...): run it, no rows
                await statement.fetch()
                records = []
            if not connection.is_in_transaction() or _is_transaction_control(statement.get_statusmsg()):
                raise TransactionControl()
        except asyncio.CancelledError:
            raise  # timed out: the caller drops the connection
        except BaseException:
            await self._end(connection, transaction)
            raise
        await self._end(connection, transaction)
        names = [attribute.name for attribute in statement.get_attributes()]
        rows = [{name: plain(value) for name, value in zip(names, record)} for record in records[: self.max_rows]]
        return QueryResult(rows, truncated=len(records) > self.max_rows)

    async def _end(self, connection, transaction) -> None:
        """Roll the transaction back, then forget whatever the statement left in the
        session (settings, advisory locks, LISTEN)."""
        try:
            await transaction.rollback()
            await connection.execute("DISCARD ALL")
        except Exception:  # noqa: BLE001 - the next query reconnects
            await self._drop(connection)

    async def _drop(self, connection) -> None:
        connection.terminate()
        self._connection = None

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()


class TransactionControl(Exception):
    """The statement began, ended or split the transaction it was given."""


_TRANSACTION_TAGS = ("BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PREPARE TRANSACTION")


def _is_transaction_control(status: str | None) -> bool:
    return (status or "").upper().startswith(_TRANSACTION_TAGS)


def _pg_message(exc) -> str:
    text = " ".join(str(exc).split())
    return f"{text} (SQLSTATE {exc.sqlstate})" if getattr(exc, "sqlstate", None) else text


# -- opening ----------------------------------------------------------------------


async def open_reader(dsn: str, *, timeout: float = DEFAULT_TIMEOUT, max_rows: int = DEFAULT_MAX_ROWS):
    """A reader for ``dsn``: an SQLite path or a PostgreSQL DSN. Never migrates."""
    from situation.store import is_postgres_dsn, sqlite_path

    if is_postgres_dsn(dsn):
        from situation.connection.dsn import parse_dsn

        return await PostgresReader.open(parse_dsn(dsn), timeout=timeout, max_rows=max_rows)
    return await SqliteReader.open(sqlite_path(dsn), timeout=timeout, max_rows=max_rows)
