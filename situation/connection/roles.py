"""Making a login role an agent (writes data) or a reader (reads it)."""

from __future__ import annotations

import asyncpg

from situation.connection.connect import IDLE_IN_TRANSACTION_TIMEOUT
from situation.errors import ConfigError, MigrationError
from situation.connection.migrations import apply_roles, schema_access, schema_lock, schema_version

AGENT_GROUP = "situation_agent"
READER_GROUP = "situation_reader"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def grant(connection: asyncpg.Connection, role: str, *, reader: bool = False) -> str:
    """Add ``role`` to the agent (or reader) group; return the group's name."""
    found = await connection.fetchrow("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = $1", role)
    if found is None:
        raise ConfigError(
            f'role "{role}" does not exist; create it first: CREATE ROLE {quote_ident(role)} LOGIN PASSWORD \'…\''
        )
    access = await schema_access(connection)
    if access is not None and not access["owned"]:
        raise MigrationError(
            f"role {access['role']} lacks the owner's rights on schema situation, so it may not grant; "
            f"run `situation grant {role}` as the owner (the role that ran `situation migrate`)"
        )
    if access is None or await schema_version(connection) == 0:
        raise MigrationError("the database has no situation schema yet; run `situation migrate` first")
    async with schema_lock(connection):
        await apply_roles(connection)
        await _grant_group(connection, role, reader)
    return READER_GROUP if reader else AGENT_GROUP


async def _grant_group(connection: asyncpg.Connection, role: str, reader: bool) -> None:
    group = READER_GROUP if reader else AGENT_GROUP
    if not await connection.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", group):
        raise MigrationError(
            f"group role {group} does not exist and the connected role may not create it; "
            f"ask a superuser to run: CREATE ROLE {group} NOLOGIN, then `situation migrate`"
        )
    try:
        async with connection.transaction():  # all or nothing
            await connection.execute(f"GRANT {group} TO {quote_ident(role)}")
            # Queries written for the original agent use unqualified table names.
            await connection.execute(f"ALTER ROLE {quote_ident(role)} SET search_path = situation")
            if reader:
                await connection.execute(f"ALTER ROLE {quote_ident(role)} SET default_transaction_read_only = on")
            else:
                # As the agent's pool asks at start-up, for when a PgBouncer drops those parameters:
                # its statements take milliseconds, less than JIT compiling them would, and its
                # transactions are short (see connect.IDLE_IN_TRANSACTION_TIMEOUT).
                await connection.execute(f"ALTER ROLE {quote_ident(role)} SET jit = off")
                await connection.execute(f"ALTER ROLE {quote_ident(role)} SET idle_in_transaction_session_timeout "
                                         f"= '{IDLE_IN_TRANSACTION_TIMEOUT}'")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise MigrationError(
            f"the connected role may not change role {role} ({exc}); run `situation grant` as a superuser, "
            "or as an owner with CREATEROLE that created the role (PostgreSQL 16+ also needs ADMIN OPTION on it)"
        ) from None
