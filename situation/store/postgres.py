"""The PostgreSQL store: one small asyncpg pool shared by every module.

A batch becomes one ``INSERT … SELECT FROM unnest(…) ON CONFLICT … DO UPDATE
… WHERE … IS DISTINCT FROM …``: one round trip and one cached statement per
table and shape, whatever the batch size, and no write when nothing changed.
Column types are read from the catalog once, when the store opens.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from situation.connection.connect import create_pool
from situation.connection.dsn import ConnectParams
from situation.errors import ConnectError, MigrationError, StoreUnavailable
from situation.store import JsonText, UpsertResult, clean_arguments, json_text, plan_batch, query_text, quote_ident

log = structlog.get_logger("situation.store")

SCHEMA = "situation"
RETRY_ATTEMPTS = 4
# Worth retrying as a unit: the connection went away, or the server chose us as a
# deadlock / serialization victim.
_TRANSIENT = (
    asyncpg.PostgresConnectionError,  # the connection went away mid-statement
    asyncpg.InterfaceError,  # e.g. a connection the server terminated, found on its next use
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,  # server shutting down or starting up
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.InvalidCachedStatementError,
    OSError,
    asyncio.TimeoutError,
)
# asyncpg's cached (named) statements meeting another session's on a server connection
# that a pooler in transaction mode shares between clients.
_STATEMENT_CLASHES = (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError)
_ARRAY_CASTS = {
    "bigint": "bigint[]",
    "integer": "integer[]",
    "smallint": "smallint[]",
    "boolean": "boolean[]",
    "character varying": "text[]",
    "text": "text[]",
    # JSON values and per-row lists travel as JSON text: asyncpg would read a list
    # inside an array parameter as one more array dimension.
    "json": "text[]",
    "jsonb": "text[]",
    "ARRAY": "text[]",
    "timestamp with time zone": "timestamptz[]",
}


async def _init_connection(connection: asyncpg.Connection) -> None:
    # Codecs are client-side, so they survive the pool's RESET ALL (unlike SET).
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class PostgresStore:
    dialect = "postgres"

    def __init__(
        self, pool: asyncpg.Pool, agent_id: str, columns: dict[str, dict[str, str]], nullable: dict[str, set[str]]
    ):
        self.pool = pool
        self.agent_id = agent_id
        self.columns = columns
        self.nullable = nullable
        self._connection: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
            "situation_pg_connection", default=None
        )

    @classmethod
    async def open(
        cls, params: ConnectParams, agent_id: str, *, max_size: int = 4, statement_cache: bool = True
    ) -> PostgresStore:
        pool = await create_pool(params, max_size=max_size, statement_cache=statement_cache, init=_init_connection)
        try:
            async with pool.acquire() as connection:
                await _require_search_path(connection)
                columns, nullable = await _table_columns(connection)
        except _STATEMENT_CLASHES as exc:
            await pool.close()
            raise _statement_clash(exc) from None
        except BaseException:
            await pool.close()
            raise
        return cls(pool, agent_id, columns, nullable)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except asyncio.TimeoutError:
            self.pool.terminate()

    # -- running statements, retried as units ----------------------------------------

    async def _with_connection(self, work):
        """Run ``work(connection)``: inside the current transaction, or as its own retried unit."""
        current = self._connection.get()
        if current is not None:
            return await work(current)
        return await self._retrying(work)

    async def _retrying(self, work):
        delay = 0.2
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as connection:
                    return await work(connection)
            except _STATEMENT_CLASHES as exc:
                raise _statement_clash(exc) from None
            except (*_TRANSIENT, ConnectError) as exc:
                if isinstance(exc, ConnectError) and not exc.transient:
                    raise
                if attempt == RETRY_ATTEMPTS:
                    raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from exc
                log.debug("retrying database work", attempt=attempt, error=_describe(exc))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 3, 5.0)

    async def run_in_transaction(self, work):
        """``await work()`` inside one transaction, rerun whole on connection loss or a deadlock."""
        if self._connection.get() is not None:
            return await work()

        async def unit(connection: asyncpg.Connection):
            async with self._transaction_on(connection):
                return await work()

        return await self._retrying(unit)

    @asynccontextmanager
    async def transaction(self):
        if self._connection.get() is not None:
            yield
            return
        async with self.pool.acquire() as connection, self._transaction_on(connection):
            yield

    @asynccontextmanager
    async def _transaction_on(self, connection: asyncpg.Connection):
        """A transaction on ``connection``, which store calls made meanwhile use."""
        token = self._connection.set(connection)
        try:
            async with connection.transaction():
                yield
        finally:
            self._connection.reset(token)

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        sql, args = query_text(self.dialect, query), clean_arguments(args, query)
        rows = await self._with_connection(lambda c: c.fetch(sql, *args))
        return [dict(r) for r in rows]

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(query, *args)
        return rows[0] if rows else None

    async def fetchval(self, query: str, *args: Any) -> Any:
        sql, args = query_text(self.dialect, query), clean_arguments(args, query)
        return await self._with_connection(lambda c: c.fetchval(sql, *args))

    async def execute(self, query: str, *args: Any) -> int:
        sql, args = query_text(self.dialect, query), clean_arguments(args, query)
        status = await self._with_connection(lambda c: c.execute(sql, *args))
        return _affected(status)

    # -- upserts ---------------------------------------------------------------------

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
        types = self.columns[table]
        unknown = [c for c in plan.columns if c not in types]
        if unknown:
            raise ValueError(f"table {table} has no column(s) {unknown}")
        key_columns = plan.key.columns
        statement = self._upsert_sql(table, plan.columns, plan.key.target(self.dialect), plan.update, key_columns)
        arrays = [_to_wire(plan.values[c], types[c]) for c in plan.columns]
        keys = plan.keys()

        async def work(connection: asyncpg.Connection) -> UpsertResult:
            async with connection.transaction():
                written = await connection.fetch(statement, *arrays, self.agent_id)
                ids_by_key = {tuple(r)[1:]: r[0] for r in written}
                batch_ids = [ids_by_key.get(k) for k in keys]
                # Rows left unchanged are not returned: look only those up.
                missing = [i for i, found in enumerate(batch_ids) if found is None]
                if missing:
                    lookup = self._lookup_sql(table, key_columns)
                    probes = [[plan.values[c][i] for i in missing] for c in key_columns]
                    for i, row in zip(missing, await connection.fetch(lookup, *probes)):
                        batch_ids[i] = row[0]
            return UpsertResult(written=len(written), ids=plan.ids_for_input(batch_ids))

        return await self._with_connection(work)

    def _upsert_sql(
        self, table: str, columns: list[str], target: str, update: Sequence[str], key_columns: Sequence[str]
    ) -> str:
        types = self.columns[table]
        names = ", ".join(quote_ident(c) for c in columns)
        casts = ", ".join(f"${i}::{_ARRAY_CASTS[types[c]]}" for i, c in enumerate(columns, start=1))
        selected = ", ".join(_from_wire(quote_ident(c), types[c]) for c in columns)
        agent = f"${len(columns) + 1}::text"
        has_updated_by = "updated_by" in types
        insert_columns = names + (", updated_by" if has_updated_by else "")
        insert_values = selected + (f", {agent}" if has_updated_by else "")
        qualified = f"{SCHEMA}.{quote_ident(table)}"
        returning = "RETURNING t.id, " + ", ".join(f"t.{quote_ident(c)}" for c in key_columns)
        sql = (
            f"INSERT INTO {qualified} AS t ({insert_columns}) "
            f"SELECT {insert_values} FROM unnest({casts}) AS u({names}) "
            f"ON CONFLICT ({target}) "
        )
        if not update:
            return sql + f"DO NOTHING {returning}"
        assignments = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in update]
        if "updated_at" in types:
            assignments.append("updated_at = now()")
        if has_updated_by:
            assignments.append("updated_by = EXCLUDED.updated_by")
        old = ", ".join(_comparable(f"t.{quote_ident(c)}", types[c]) for c in update)
        new = ", ".join(_comparable(f"EXCLUDED.{quote_ident(c)}", types[c]) for c in update)
        distinct = f"ROW({old}) IS DISTINCT FROM ROW({new})"
        return sql + f"DO UPDATE SET {', '.join(assignments)} WHERE {distinct} {returning}"

    def _lookup_sql(self, table: str, key_columns: Sequence[str]) -> str:
        """The id of the existing row for each key, in order: one index probe per key.

        A correlated subquery keeps every probe on the unique index whatever the
        table holds; a join lets the planner hash the whole table (every agent's
        rows) once the batch is large. ``IS NOT DISTINCT FROM`` and ``COALESCE``
        cannot use a plain index, so a nullable key column gets one probe per NULL
        pattern, with ``IS NULL`` where the value is NULL.
        """
        types = self.columns[table]
        nullable = [c for c in key_columns if c in self.nullable.get(table, set())]
        qualified = f"{SCHEMA}.{quote_ident(table)}"
        probes = []
        for pattern in itertools.product((True, False), repeat=len(nullable)):
            nulls = {c for c, is_null in zip(nullable, pattern) if is_null}
            matches = " AND ".join(
                f"t.{quote_ident(c)} IS NULL" if c in nulls else f"t.{quote_ident(c)} = k.{quote_ident(c)}"
                for c in key_columns
            )
            when = " AND ".join(f"k.{quote_ident(c)} IS {'' if c in nulls else 'NOT '}NULL" for c in nullable)
            probes.append((when, f"(SELECT t.id FROM {qualified} t WHERE {matches} LIMIT 1)"))
        if nullable:
            *branches, (_, otherwise) = probes
            found = "CASE " + " ".join(f"WHEN {w} THEN {p}" for w, p in branches) + f" ELSE {otherwise} END"
        else:
            [(_, found)] = probes
        names = ", ".join(quote_ident(c) for c in key_columns)
        casts = ", ".join(f"${i}::{_ARRAY_CASTS[types[c]]}" for i, c in enumerate(key_columns, start=1))
        return f"SELECT {found} FROM unnest({casts}) WITH ORDINALITY AS k({names}, n) ORDER BY k.n"

    async def release_memory(self) -> None:
        """Nothing to release: asyncpg's buffers go with each query."""

    async def counts(self) -> dict[str, int]:
        """Rows this agent wrote last, per table."""
        tables = sorted(t for t, cols in self.columns.items() if "updated_by" in cols)
        union = " UNION ALL ".join(
            f"SELECT {i} AS t, count(*) AS n FROM {SCHEMA}.{quote_ident(t)} WHERE updated_by = $1"
            for i, t in enumerate(tables)
        )
        rows = await self._with_connection(lambda c: c.fetch(union, self.agent_id))
        return {tables[r["t"]]: r["n"] for r in rows}


def _statement_clash(exc: asyncpg.PostgresError) -> ConnectError:
    return ConnectError(
        f"{exc.message}: a pooler in transaction mode (PgBouncer) sits in front of the server, "
        "where prepared statements do not last; run the agent with --no-statement-cache"
    )


async def _require_search_path(connection: asyncpg.Connection) -> None:
    """Named queries name tables without their schema: refuse a session whose search path lacks it.

    The pool asks for ``search_path`` at start-up, but a PgBouncer drops that
    parameter (``ignore_startup_parameters``); the role must then carry it.
    A schema that is missing or not granted is left to the schema checks.
    """
    row = await connection.fetchrow(
        "SELECT current_user AS role, current_setting('search_path') AS path, "
        "CASE WHEN to_regnamespace($1::text) IS NULL OR NOT has_schema_privilege($1::text, 'USAGE') THEN true "
        "ELSE $1::text = ANY(current_schemas(false)::text[]) END AS ok",
        SCHEMA,
    )
    if not row["ok"]:
        role = row["role"]
        raise MigrationError(
            f'schema {SCHEMA} is not on the search path of role "{role}" (search_path = {row["path"]}), '
            "as when a pooler such as PgBouncer drops the one the agent asks for; set it on the role: "
            f"`situation grant {role}` for an agent, or ALTER ROLE {quote_ident(role)} SET search_path = {SCHEMA}"
        )


async def _table_columns(connection: asyncpg.Connection) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
    """Column types, and the nullable columns, of every table of the schema."""
    rows = await connection.fetch(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable "
        "FROM information_schema.columns WHERE table_schema = $1",
        SCHEMA,
    )
    columns: dict[str, dict[str, str]] = {}
    nullable: dict[str, set[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
        if row["nullable"]:
            nullable.setdefault(row["table_name"], set()).add(row["column_name"])
    return columns, nullable


def _to_wire(values: list[Any], data_type: str) -> list[Any]:
    if data_type not in ("json", "jsonb", "ARRAY"):
        return values
    return [v if v is None or type(v) is JsonText else json_text(v) for v in values]


def _from_wire(column: str, data_type: str) -> str:
    if data_type == "ARRAY":
        return (
            f"CASE WHEN {column} IS NULL THEN NULL "
            f"ELSE ARRAY(SELECT jsonb_array_elements_text({column}::jsonb))::varchar[] END"
        )
    if data_type in ("json", "jsonb"):
        return f"{column}::{data_type}"
    return column


def _comparable(column: str, data_type: str) -> str:
    # json has no equality operator; compare it as jsonb.
    return f"{column}::jsonb" if data_type == "json" else column


def _affected(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _describe(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())
