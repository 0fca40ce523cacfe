"""Numbered plain-SQL migrations for PostgreSQL.

Files are ``sql/postgres/NNNN_description.sql``. Each runs in its own
transaction with a ``lock_timeout`` on a dedicated connection (never the
pool), under an advisory lock taken by polling (a blocking wait would deadlock
against ``CREATE INDEX CONCURRENTLY``). The lock is transaction-level, held by
an open transaction on a second connection (``lock_holder``) until the run
ends, so that it also holds through a PgBouncer in transaction mode, where
consecutive transactions of one client may run on different server sessions
and a session-level lock would protect nothing and could outlive the run.
Without a ``lock_holder`` the lock is session-level, which is only right on a
connection straight to PostgreSQL.
A file whose first line is ``-- situation:no-transaction`` holds exactly one
statement and runs outside a transaction.

History lives in ``situation.schema_migrations``; :mod:`.migration_files`
checks it against the build's files before anything is applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import structlog

from situation.connection.migration_files import Applied, Migration, latest_version, load_migrations, plan, read_sql
from situation.errors import MigrationError

log = structlog.get_logger("situation.migrations")

SCHEMA = "situation"
HISTORY_TABLE = f"{SCHEMA}.schema_migrations"
# pg_try_advisory_lock takes a bigint: the first 8 bytes of a fixed digest.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"situation.migrations").digest()[:8], "big", signed=True)
LOCK_POLL_SECONDS = 0.2
STATEMENT_LOCK_TIMEOUT = "10s"
LOCK_TIMEOUT_RETRIES = 3


@dataclass
class MigrationReport:
    applied: list[Migration] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    history: list[Applied] = field(default_factory=list)
    problem: str | None = None  # why nothing can be applied (a newer database, drift, a gap)


class SchemaAccessDenied(MigrationError):
    """The connected role may not even look into schema situation: it was never granted."""

    def __init__(self, role: str):
        super().__init__(f"role {role} has no rights on schema {SCHEMA}; run `situation grant {role}` as the owner")
        self.role = role


async def schema_access(connection: asyncpg.Connection) -> asyncpg.Record | None:
    """``role``, ``usable`` (USAGE) and ``owned`` (the owner's rights) on schema situation; None without one."""
    return await connection.fetchrow(
        "SELECT current_user AS role, has_schema_privilege(n.oid, 'USAGE') AS usable, "
        "pg_has_role(n.nspowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS owned "
        "FROM pg_namespace n WHERE n.nspname = $1",
        SCHEMA,
    )


async def read_history(connection: asyncpg.Connection) -> list[Applied] | None:
    """Applied migrations, or None when the history table does not exist yet."""
    access = await schema_access(connection)
    if access is None:
        return None
    if not access["usable"]:  # to_regclass would fail with "permission denied for schema"
        raise SchemaAccessDenied(access["role"])
    exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", HISTORY_TABLE)
    if not exists:
        return None
    try:
        rows = await connection.fetch(
            f"SELECT version, name, checksum, applied_at, applied_by, duration_ms FROM {HISTORY_TABLE} ORDER BY version"
        )
    except asyncpg.InsufficientPrivilegeError:
        raise MigrationError(
            f"the connected role may not read {HISTORY_TABLE}; connect as the owner role "
            "(or an agent, for whom `situation grant` allows it)"
        ) from None
    return [Applied(**dict(row)) for row in rows]


async def schema_version(connection: asyncpg.Connection) -> int:
    history = await read_history(connection)
    return max((row.version for row in history), default=0) if history else 0


async def status(connection: asyncpg.Connection, migrations: list[Migration] | None = None) -> MigrationReport:
    migrations = await asyncio.to_thread(load_migrations) if migrations is None else migrations
    history = await read_history(connection) or []
    try:
        return MigrationReport(history=history, pending=plan(migrations, history))
    except MigrationError as exc:  # reported, not raised: this is what --status is for
        return MigrationReport(history=history, problem=str(exc))


async def migrate(
    connection: asyncpg.Connection,
    *,
    dry_run: bool = False,
    lock_wait: float = 300.0,
    migrations: list[Migration] | None = None,
    lock_holder: asyncpg.Connection | None = None,
) -> MigrationReport:
    """Bring the database to this build's version, on a connection of its own.

    ``lock_holder``, a second connection, holds the migration lock (see the module
    docstring). ``migrations`` replaces the build's files (tests use it to add versions).
    """
    migrations = await asyncio.to_thread(load_migrations) if migrations is None else migrations
    if dry_run:
        return await status(connection, migrations)
    async with _migration_lock(connection, lock_holder, lock_wait):
        await _bootstrap(connection)
        history = await read_history(connection) or []
        report = MigrationReport(history=history, pending=plan(migrations, history))
        if report.pending:
            await _note_go_agent_history(connection)
        for migration in report.pending:
            await _apply(connection, migration)
            report.applied.append(migration)
        if report.applied or await _grants_missing(connection):
            await apply_roles(connection)
        report.pending = []
        return report


@asynccontextmanager
async def _migration_lock(connection: asyncpg.Connection, holder: asyncpg.Connection | None, lock_wait: float):
    if holder is None:
        await _wait_for_lock(connection, lock_wait, lambda: connection.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY))
        try:
            yield
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        return
    held = await _locked_transaction(holder, lock_wait, connection)
    try:
        yield
    finally:
        try:
            await held.rollback()  # the transaction wrote nothing; ending it releases the lock
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # A lost connection released the lock already; the migrations' outcome stands.
            log.warning("could not end the migration lock's transaction", error=str(exc))


@asynccontextmanager
async def schema_lock(connection: asyncpg.Connection, lock_wait: float = 300.0):
    """A transaction on ``connection`` holding the migration lock, for `situation grant`: changes to
    roles and grants never overlap a migration or each other (PostgreSQL fails one of two updates of
    the same catalog row with "tuple concurrently updated"). Committed when the block succeeds."""
    transaction = await _locked_transaction(connection, lock_wait, connection)
    try:
        yield
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()


async def _locked_transaction(connection: asyncpg.Connection, lock_wait: float, asker: asyncpg.Connection):
    """A started transaction on ``connection`` that holds the migration lock (transaction-level).

    It polls, and waits outside a transaction, so that a pooler's server connection
    stays free meanwhile; ``asker`` looks up who holds the lock.
    """
    held = None

    async def try_lock() -> bool:
        nonlocal held
        transaction = connection.transaction()
        await transaction.start()
        # Held as long as its holder wants: a server-wide idle_in_transaction_session_timeout must not end it.
        if await connection.fetchval(
            "SELECT pg_try_advisory_xact_lock($1) FROM set_config('idle_in_transaction_session_timeout', '0', true)",
            LOCK_KEY,
        ):
            held = transaction
            return True
        await transaction.rollback()
        return False

    await _wait_for_lock(asker, lock_wait, try_lock)
    return held


async def _wait_for_lock(connection: asyncpg.Connection, lock_wait: float, try_lock) -> None:
    deadline = time.monotonic() + lock_wait
    announced = False
    while not await try_lock():
        if not announced:
            holder = await connection.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
                LOCK_KEY,
            )
            log.info("waiting for another migration to finish", holder_pid=holder)
            announced = True
        if time.monotonic() > deadline:
            raise MigrationError(
                f"another `situation migrate` or `situation grant` has held the migration lock for over {lock_wait:.0f}s; "
                "wait for it to finish, or end that session"
            )
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def _bootstrap(connection: asyncpg.Connection) -> None:
    try:
        await connection.execute(await asyncio.to_thread(read_sql, "history.sql"))
    except asyncpg.InsufficientPrivilegeError as exc:
        raise _privilege_error(exc) from None


async def _apply(connection: asyncpg.Connection, migration: Migration) -> None:
    log.info("applying migration", version=migration.version, name=migration.name)
    for attempt in range(1, LOCK_TIMEOUT_RETRIES + 1):
        started = time.monotonic()
        try:
            if migration.transactional:
                async with connection.transaction():
                    await connection.execute(f"SET LOCAL lock_timeout = '{STATEMENT_LOCK_TIMEOUT}'")
                    await connection.execute(migration.sql)
                    await _record(connection, migration, started)
            else:
                await connection.execute(migration.sql)
                await _record(connection, migration, started)
            return
        except asyncpg.LockNotAvailableError:
            if attempt == LOCK_TIMEOUT_RETRIES:
                raise MigrationError(
                    f"migration {migration.filename} could not lock its tables after {attempt} tries; "
                    "long transactions are holding them, retry when the database is quieter"
                ) from None
            log.warning("migration waited too long for a lock, retrying", version=migration.version)
            await asyncio.sleep(attempt)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise _privilege_error(exc) from None
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"migration {migration.filename} failed: {exc}") from None


async def _record(connection: asyncpg.Connection, migration: Migration, started: float) -> None:
    await connection.execute(
        f"INSERT INTO {HISTORY_TABLE} (version, name, checksum, duration_ms) VALUES ($1, $2, $3, $4)",
        migration.version,
        migration.name,
        migration.checksum,
        int((time.monotonic() - started) * 1000),
    )


async def _roles_exist(connection: asyncpg.Connection) -> bool:
    count = await connection.fetchval(
        "SELECT count(*) FROM pg_roles WHERE rolname IN ('situation_agent', 'situation_reader')"
    )
    return count == 2


async def _grants_missing(connection: asyncpg.Connection) -> bool:
    """Group roles missing, or present without their grants (created after a migrate)."""
    return not await connection.fetchval(
        "SELECT count(*) = 2 AND bool_and(has_schema_privilege(rolname, 'situation', 'USAGE')) "
        "FROM pg_roles WHERE rolname IN ('situation_agent', 'situation_reader')"
    )


async def apply_roles(connection: asyncpg.Connection) -> None:
    """Create the group roles when allowed, and grant them what every table needs."""
    roles_sql = await asyncio.to_thread(read_sql, "roles.sql")
    try:
        async with connection.transaction():
            await connection.execute(roles_sql)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise _privilege_error(exc) from None
    if not await _roles_exist(connection):
        log.warning(
            "the migrating role may not create roles: situation_agent and situation_reader were not created; "
            "create them as NOLOGIN roles and rerun `situation migrate`"
        )


async def _note_go_agent_history(connection: asyncpg.Connection) -> None:
    """A database first migrated by the Go agent keeps Bun's bookkeeping tables.

    Our 0001 is written to be idempotent over the Go agent's tables, so we simply
    continue in our own history table, and say so once.
    """
    schemas = await connection.fetch(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'bun_migrations'"
    )
    for row in schemas:
        schema = row["table_schema"]
        if schema == SCHEMA:
            log.info("found the Go agent's bun_migrations; continuing its schema in situation.schema_migrations")
        else:
            log.warning(
                "the Go agent's tables are in another schema and are left there; move them to schema "
                "situation by hand if this database should keep their data",
                schema=schema,
            )


def _privilege_error(exc: Exception) -> MigrationError:
    return MigrationError(
        f"the connected role may not change the schema ({exc}); run `situation migrate` as the owner role"
    )


async def verify_agent_schema(connection: asyncpg.Connection) -> int:
    """The `--no-migration` gate: no DDL, refuse a schema behind this build, warn when ahead."""
    expected = await asyncio.to_thread(latest_version)
    found = await schema_version(connection)
    if found < expected:
        raise MigrationError(
            f"database schema is at version {found} but this build needs {expected}; "
            "run `situation migrate` with an owner role"
        )
    if found > expected:
        log.warning(
            "database schema is newer than this build; upgrade situation",
            schema_version=found,
            expected_version=expected,
        )
    return found
