"""The embedded SQLite store: stdlib sqlite3 driven from one worker thread.

sqlite3 calls block, so every one of them runs on a single dedicated thread
(which also satisfies sqlite3's one-thread-per-connection rule); the event loop
only awaits. JSON and list columns are stored as JSON text, as the original
agent does. Migrations are ``sql/sqlite/NNNN_*.sql`` with the same history
table as PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from situation.connection.dsn import redact_dsn
from situation.errors import ConfigError, DatabaseBusy, MigrationError, SituationError
from situation.connection.migration_files import Applied, Migration, load_migrations, plan
from situation.store import UpsertResult, clean_arguments, plan_batch, query_text, quote_ident

log = structlog.get_logger("situation.store")

MIN_SQLITE = (3, 35, 0)  # UPSERT, RETURNING, UPDATE … FROM, JSON1
BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another process's lock
OPEN_LOCK_POLL_MS = 100  # the wait per try while the store opens (see _while_locked)
JSON_COLUMNS = frozenset(
    {"ip", "flags", "partitions", "config", "tls", "fingerprints", "application_protocols", "args", "files"}
)
_PLACEHOLDER = re.compile(r"\$(\d+)")
_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    applied_by  TEXT    NOT NULL DEFAULT 'situation',
    duration_ms INTEGER NOT NULL DEFAULT 0
)
"""


def check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise ConfigError(
            f"SQLite {sqlite3.sqlite_version} is too old (situation needs 3.35 or newer); "
            "use a Python built with a recent SQLite, or PostgreSQL"
        )


async def _while_locked(path: str, attempt):
    """``await attempt()``, tried again while another process holds the database, for up to
    the busy timeout. Each try waits at most OPEN_LOCK_POLL_MS on the worker thread, so a
    stop signal cancels the open between tries instead of after the whole timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return await attempt()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(busy_message(path)) from None
        await asyncio.sleep(OPEN_LOCK_POLL_MS / 1000 / 2)


def is_busy(exc: BaseException) -> bool:
    """Another connection holds a lock this statement needed (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


FREE_SPACE = "free space on the file system that holds the database file, then run again"


def is_full(exc: BaseException) -> bool:
    """The disk (or the file system's quota) had no room for the write (SQLITE_FULL, ENOSPC)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def busy_message(path: str) -> str:
    return (
        f'another process holds the SQLite database "{redact_dsn(path)}" (waited {BUSY_TIMEOUT_MS / 1000:g}s, the busy '
        "timeout); try again once it has finished"
    )


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor, agent_id: str, path: str):
        self._db = connection
        self._executor = executor
        self.agent_id = agent_id
        self.path = path
        self._in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("situation_sqlite_tx", default=False)
        self._lock = asyncio.Lock()
        self.applied: list[Migration] = []

    @classmethod
    async def open(cls, path: str, agent_id: str, *, migrate: bool = True) -> SqliteStore:
        check_sqlite_version()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="situation-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await _while_locked(path, lambda: loop.run_in_executor(executor, _connect, path))
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            reason = getattr(exc, "strerror", None) or exc
            hint = " (a file holding a DSN goes to --db-file)" if "not a database" in str(exc) else ""
            message = f'cannot open SQLite database "{redact_dsn(path)}" ({reason}); '
            if is_full(exc):
                raise SituationError(message + FREE_SPACE) from None
            raise ConfigError(message + f"check the path and its permissions{hint}") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(connection, executor, agent_id, path)
        try:
            if migrate:
                store.applied = await _while_locked(path, store.migrate)
            else:
                await _while_locked(path, store.verify_schema)
            await store._call(_set_busy_timeout, connection, BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            await store.close()
            message = f'SQLite database "{redact_dsn(path)}" cannot be used ({exc}); '
            if is_full(exc):  # not bad input: the same command works once there is room
                raise SituationError(message + FREE_SPACE) from None
            raise ConfigError(message + "point --db at another file, or restore this one from a backup") from None
        except BaseException:
            await store.close()
            raise
        return store

    async def _call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def release_memory(self) -> None:
        # The page cache (up to 2 MiB) stays full between cycles otherwise; pages come back
        # from the operating system's cache when the next cycle reads them.
        await self._call(_shrink_memory, self._db)

    async def close(self) -> None:
        await self._call(self._db.close)
        await asyncio.to_thread(self._executor.shutdown, True)

    # -- migrations --------------------------------------------------------------------

    async def migrate(self, migrations: list[Migration] | None = None) -> list[Migration]:
        migrations = await asyncio.to_thread(load_migrations, "sqlite") if migrations is None else migrations
        return await self._call(_migrate, self._db, migrations)

    async def verify_schema(self) -> int:
        expected = len(await asyncio.to_thread(load_migrations, "sqlite"))
        found = await self._call(_schema_version, self._db)
        if found < expected:
            raise MigrationError(
                f"SQLite database {redact_dsn(self.path)} is at schema version {found} "
                f"but this build needs {expected}; run without --no-migration once"
            )
        return found

    # -- statements ----------------------------------------------------------------------

    async def run_in_transaction(self, work):
        """``await work()`` inside one transaction (one local writer: nothing to retry)."""
        async with self.transaction():
            return await work()

    @asynccontextmanager
    async def transaction(self, *, write: bool = True):
        if self._in_transaction.get():
            yield
            return
        async with self._lock:
            await self._settle(_begin if write else _begin_read)
            token = self._in_transaction.set(True)
            try:
                yield
            except BaseException:
                await self._settle(_rollback)
                raise
            else:
                try:
                    await self._settle(_commit)
                except sqlite3.Error:
                    await self._settle(_rollback)
                    raise
            finally:
                self._in_transaction.reset(token)

    async def _settle(self, function) -> None:
        """Run a transaction boundary to completion on the worker thread.

        A caller cancelled meanwhile (module timeout, fail-fast, shutdown) must not
        leave the connection inside a transaction: the job still runs, and a
        rollback is queued right behind it on the same single thread.
        """
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, self._db)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            self._executor.submit(_rollback, self._db)
            raise

    async def _run(self, function, *args, write: bool = True):
        """Run ``function(db, *args)`` inside the current transaction or a new one."""
        if self._in_transaction.get():
            return await self._call(function, self._db, *args)
        async with self.transaction(write=write):
            return await self._call(function, self._db, *args)

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        sql = to_sqlite_placeholders(query_text(self.dialect, query))
        # A deferred BEGIN: reads do not take the write lock other processes may want.
        return await self._run(_fetch, sql, [_encode(a) for a in clean_arguments(args, query)], write=False)

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        row = await self.fetchrow(query, *args)
        return next(iter(row.values())) if row else None

    async def execute(self, query: str, *args: Any) -> int:
        sql = to_sqlite_placeholders(query_text(self.dialect, query))
        return await self._run(_execute, sql, [_encode(a) for a in clean_arguments(args, query)])

    async def upsert(
        self,
        table: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        key: str,
        update: Sequence[str] | None = None,
    ) -> UpsertResult:
        plan = plan_batch(table, rows, key, update)
        if not len(plan):
            return UpsertResult()
        statement = _upsert_sql(table, plan.columns, plan.key.target(self.dialect), plan.update)
        lookup = _lookup_sql(table, plan.key.columns)
        # Lists and dicts are JSON text already (plan_batch), as SQLite stores them.
        values = [[*row, self.agent_id] for row in zip(*(plan.values[c] for c in plan.columns))]
        keys = plan.keys()
        written, batch_ids = await self._run(_upsert_rows, statement, lookup, values, keys)
        return UpsertResult(written=written, ids=plan.ids_for_input(batch_ids))

    async def counts(self) -> dict[str, int]:
        return await self._call(_counts, self._db, self.agent_id)


# -- functions run on the worker thread ------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        _set_busy_timeout(connection, OPEN_LOCK_POLL_MS)  # the full timeout once the store is open
        if path != ":memory:":
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        connection.close()
        raise
    return connection


def _shrink_memory(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # best effort: a cache left full is no fault
        db.execute("PRAGMA shrink_memory")


def _set_busy_timeout(db: sqlite3.Connection, milliseconds: int) -> None:
    db.execute(f"PRAGMA busy_timeout = {int(milliseconds)}")


def _begin(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # left open by a caller cancelled at a bad moment
        db.execute("ROLLBACK")
    db.execute("BEGIN IMMEDIATE")


def _begin_read(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")
    db.execute("BEGIN")


def _commit(db: sqlite3.Connection) -> None:
    db.execute("COMMIT")


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def _schema_version(db: sqlite3.Connection) -> int:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if not exists:
        return 0
    return db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def _migrate(db: sqlite3.Connection, migrations: list[Migration]) -> list[Migration]:
    db.execute("BEGIN IMMEDIATE")  # one writer at a time, also across processes
    try:
        db.execute(_HISTORY)
        history = [
            Applied(r["version"], r["name"], r["checksum"], r["applied_at"], r["applied_by"], r["duration_ms"])
            for r in db.execute("SELECT * FROM schema_migrations ORDER BY version")
        ]
        pending = plan(migrations, history)
        for migration in pending:
            started = time.monotonic()
            for statement in split_statements(migration.sql):
                db.execute(statement)
            _add_updated_by(db)
            db.execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_ms) VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, int((time.monotonic() - started) * 1000)),
            )
        db.execute("COMMIT")
        return pending
    except BaseException:
        _rollback(db)  # BEGIN itself may have failed: the database is locked
        raise


def _add_updated_by(db: sqlite3.Connection) -> None:
    """Tables the Go agent created lack our ``updated_by`` column (SQLite has no ADD COLUMN IF NOT EXISTS)."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    for table in tables:
        columns = {c[1] for c in db.execute(f"PRAGMA table_info({quote_ident(table)})")}
        if "created_at" in columns and "updated_by" not in columns:
            db.execute(f"ALTER TABLE {quote_ident(table)} ADD COLUMN updated_by VARCHAR(32)")


def split_statements(script: str) -> list[str]:
    """The statements of a script, using sqlite3's own notion of a complete statement."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(l.strip().startswith("--") or not l.strip() for l in current.splitlines()):
        statements.append(current.strip())
    return statements


def _fetch(db: sqlite3.Connection, sql: str, args: list) -> list[dict[str, Any]]:
    return [_decode_row(row) for row in db.execute(sql, args).fetchall()]


def _execute(db: sqlite3.Connection, sql: str, args: list) -> int:
    return db.execute(sql, args).rowcount


def _upsert_rows(db: sqlite3.Connection, statement: str, lookup: str, values: list, keys: list) -> tuple[int, list[int]]:
    written, ids = 0, []
    for row, key in zip(values, keys):
        returned = db.execute(statement, row).fetchone()
        if returned is not None:
            written += 1
            ids.append(returned[0])
        else:
            found = db.execute(lookup, key).fetchone()
            ids.append(found[0] if found else None)
    return written, ids


def _counts(db: sqlite3.Connection, agent_id: str) -> dict[str, int]:
    tables = [
        r[0]
        for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if any(c[1] == "updated_by" for c in db.execute(f"PRAGMA table_info({quote_ident(r[0])})"))
    ]
    return {
        t: db.execute(f"SELECT count(*) FROM {quote_ident(t)} WHERE updated_by = ?", (agent_id,)).fetchone()[0]
        for t in tables
    }


# -- SQL text ------------------------------------------------------------------------------


def to_sqlite_placeholders(sql: str) -> str:
    """``$1`` → ``?1``: the portable queries are written with PostgreSQL's numbered placeholders."""
    return _PLACEHOLDER.sub(r"?\1", sql)


def _upsert_sql(table: str, columns: list[str], target: str, update: Sequence[str]) -> str:
    names = ", ".join(quote_ident(c) for c in columns)
    marks = ", ".join("?" for _ in columns)
    sql = (
        f"INSERT INTO {quote_ident(table)} AS t ({names}, updated_by) VALUES ({marks}, ?) "
        f"ON CONFLICT ({target}) "
    )
    if not update:
        return sql + "DO NOTHING RETURNING id"
    assignments = [f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in update]
    assignments += ["updated_at = CURRENT_TIMESTAMP", "updated_by = excluded.updated_by"]
    changed = " OR ".join(f"t.{quote_ident(c)} IS NOT excluded.{quote_ident(c)}" for c in update)
    return sql + f"DO UPDATE SET {', '.join(assignments)} WHERE {changed} RETURNING id"


def _lookup_sql(table: str, key_columns: Sequence[str]) -> str:
    matches = " AND ".join(f"{quote_ident(c)} IS ?" for c in key_columns)
    return f"SELECT id FROM {quote_ident(table)} WHERE {matches}"


def _encode(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _decode_row(row: sqlite3.Row) -> dict[str, Any]:
    decoded = {}
    for name in row.keys():
        value = row[name]
        if name in JSON_COLUMNS and isinstance(value, str) and value[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        decoded[name] = value
    return decoded
