"""Least privilege: agents write data over TLS and can never change the schema."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from situation.connection import migration_files, migrations
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.errors import MigrationError
from situation.connection.roles import grant

AGENT, AGENT_PASSWORD = "rl_agent", "agent-pw"
READER, READER_PASSWORD = "rl_reader", "reader-pw"


@pytest.fixture(scope="module")
def login_roles(tls_cluster):
    tls_cluster.create_role(AGENT, AGENT_PASSWORD)
    tls_cluster.create_role(READER, READER_PASSWORD)
    return AGENT, READER


async def as_superuser(cluster, database):
    return await connect(parse_dsn(cluster.superuser_dsn(database), environ={}), statement_cache_size=0)


async def as_role(cluster, certs, role, password, database):
    dsn = cluster.uri(role, password, dbname=database, sslmode="verify-full", sslrootcert=certs.ca_crt)
    return await connect(parse_dsn(dsn, environ={}))


@pytest.fixture
async def migrated(tls_cluster, fresh_database, login_roles):
    name = fresh_database("roles")
    owner = await as_superuser(tls_cluster, name)
    await migrations.migrate(owner)
    await grant(owner, AGENT)
    await grant(owner, READER, reader=True)
    yield name, owner
    await owner.close()


@pytest.fixture
async def agent(migrated, tls_cluster, certs):
    connection = await as_role(tls_cluster, certs, AGENT, AGENT_PASSWORD, migrated[0])
    yield connection
    await connection.close()


async def test_group_roles_are_nologin_and_powerless(migrated):
    _, owner = migrated
    rows = await owner.fetch(
        "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
        "WHERE rolname IN ('situation_agent', 'situation_reader') ORDER BY rolname"
    )
    assert [r["rolname"] for r in rows] == ["situation_agent", "situation_reader"]
    for row in rows:
        assert not any(row[k] for k in ("rolcanlogin", "rolsuper", "rolcreaterole", "rolcreatedb", "rolbypassrls"))
    for group in ("situation_agent", "situation_reader"):
        assert not await owner.fetchval("SELECT has_schema_privilege($1, 'situation', 'CREATE')", group)
        assert not await owner.fetchval("SELECT has_database_privilege($1, current_database(), 'CREATE')", group)
        assert not await owner.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'situation' AND pg_has_role($1, c.relowner, 'MEMBER')", group
        )


async def test_agent_dml_succeeds(agent):
    machine = await agent.fetchval(
        "INSERT INTO situation.machines (hostname, agent) VALUES ('h1', 'aa') "
        "ON CONFLICT (agent) DO UPDATE SET updated_at = now() RETURNING id"
    )
    await agent.execute("INSERT INTO situation.cpus (machine_id, model_name, vendor, cores) VALUES ($1, 'x', 'y', 2)", machine)
    await agent.execute("UPDATE situation.machines SET hostname = 'h2' WHERE id = $1", machine)
    await agent.execute(
        "INSERT INTO situation.subnetworks (network_cidr, network_addr, mask_size, ip_version) "
        "VALUES ('10.0.0.0/24', '10.0.0.0', 24, 4) ON CONFLICT (network_cidr, tag) DO NOTHING"
    )
    assert await agent.fetchval("SELECT hostname FROM machines WHERE id = $1", machine) == "h2"  # search_path works
    assert await agent.fetchval("SHOW jit") == "off"  # set on the role by grant
    assert await agent.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
    await agent.execute("DELETE FROM situation.cpus WHERE machine_id = $1", machine)
    assert await migrations.verify_agent_schema(agent) == migrations.latest_version()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE situation.x (id int)",
        "CREATE TABLE public.x (id int)",
        "ALTER TABLE situation.machines ADD COLUMN evil text",
        "DROP TABLE situation.cpus",
        "TRUNCATE situation.machines",
        "CREATE FUNCTION situation.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA evil",
        "CREATE INDEX ON situation.machines (hostname)",
        "INSERT INTO situation.schema_migrations (version, name, checksum) VALUES (99, 'x', 'x')",
        "DELETE FROM situation.schema_migrations",
        "GRANT situation_agent TO rl_reader",
    ],
)
async def test_agent_cannot_change_the_schema(agent, statement):
    with pytest.raises(asyncpg.PostgresError) as caught:
        await agent.execute(statement)
    assert caught.value.sqlstate == "42501", caught.value


async def test_reader_reads_only(migrated, tls_cluster, certs):
    reader = await as_role(tls_cluster, certs, READER, READER_PASSWORD, migrated[0])
    try:
        assert await reader.fetchval("SELECT count(*) FROM machines") == 0
        with pytest.raises(asyncpg.PostgresError) as caught:
            await reader.execute("INSERT INTO situation.machines (hostname) VALUES ('x')")
        assert caught.value.sqlstate in ("42501", "25006")  # denied, or refused by the read-only default
    finally:
        await reader.close()


async def test_tables_added_by_later_migrations_are_granted(migrated, tls_cluster, certs):
    import hashlib

    name, owner = migrated
    sql = "CREATE TABLE situation.later (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text)"
    later = migrations.Migration(2, "later", sql, hashlib.sha256(sql.encode()).hexdigest())
    await migrations.migrate(owner, migrations=[*migrations.load_migrations(), later])
    agent = await as_role(tls_cluster, certs, AGENT, AGENT_PASSWORD, name)
    try:
        await agent.execute("INSERT INTO situation.later (v) VALUES ('ok')")
    finally:
        await agent.close()


async def test_grant_refuses_unknown_role(migrated):
    from situation.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        await grant(migrated[1], "no_such_role_here")


async def test_non_superuser_owner_can_migrate(tls_cluster, fresh_database, certs):
    tls_cluster.create_role("rl_owner", "owner-pw", extra="CREATEROLE")
    name = fresh_database("owned")
    tls_cluster.psql(f"ALTER DATABASE {name} OWNER TO rl_owner")
    owner = await as_role(tls_cluster, certs, "rl_owner", "owner-pw", name)
    try:
        await migrations.migrate(owner)
        assert await owner.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'situation'") == "rl_owner"
        assert await migrations.schema_version(owner) == migrations.latest_version()
    finally:
        await owner.close()


# `run --no-migration` as an agent role runs whole cycles, so it is tested inside an
# isolated host in test_agent.py.


async def test_no_migration_refuses_a_database_one_version_behind(migrated, monkeypatch):
    import hashlib

    _, owner = migrated
    sql = "SELECT 1"
    ahead = [*migrations.load_migrations(), migrations.Migration(2, "next", sql, hashlib.sha256(sql.encode()).hexdigest())]
    # An agent built with one more migration than the database has:
    monkeypatch.setattr(migration_files, "load_migrations", lambda *a, **k: ahead)
    with pytest.raises(MigrationError, match="version 1 but this build needs 2"):
        await migrations.verify_agent_schema(owner)


async def test_concurrent_grants_all_succeed(migrated, tls_cluster):
    """Each grant rewrites the same catalog rows (schema and default ACLs): they take turns."""
    name, _ = migrated
    roles = [f"rl_many_{i}" for i in range(5)]
    connections = []
    try:
        for role in roles:
            tls_cluster.create_role(role, "many-pw")
            connections.append(await as_superuser(tls_cluster, name))
        results = await asyncio.gather(*(grant(c, r) for c, r in zip(connections, roles)), return_exceptions=True)
        assert results == ["situation_agent"] * len(roles)
    finally:
        for connection in connections:
            await connection.close()
        for role in roles:
            tls_cluster.psql(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role};", dbname=name)
