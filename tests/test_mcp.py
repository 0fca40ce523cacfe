"""`situation mcp` as an assistant's client sees it: the SDK's own stdio client against the
command run as a subprocess, on an SQLite file and on PostgreSQL as a reader role.

Every statement that could change something is refused, and afterwards the data is the
same and no file was created.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from situation.connection import migrations
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.connection.roles import grant
from situation.schema import resource_uri, schema_text
from situation.store import open_store

READER, READER_PASSWORD = "mcp_reader", "reader-pw"
AGENT, AGENT_PASSWORD = "mcp_agent", "agent-pw"
HOSTS = ("alpha", "bravo", "charlie")


@asynccontextmanager
async def mcp_session(dsn: str, tmp_path: Path, *args: str):
    """An initialised client session with `situation mcp` (DSN through SITUATION_DB, as documented);
    yields (session, stderr file)."""
    errors = tmp_path / f"mcp-{uuid.uuid4().hex[:6]}.err"
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "situation", "mcp", *args],
        env={"SITUATION_DB": dsn, "HOME": str(tmp_path), "SITUATION_LOG_FORMAT": "json"},
    )
    with errors.open("w") as errlog:
        async with stdio_client(server, errlog=errlog) as streams:
            async with ClientSession(*streams) as session:
                await session.initialize()
                yield session, errors


async def query(session, sql: str):
    result = await session.call_tool("query", {"sql": sql})
    texts = [item.text for item in result.content]
    return result.is_error, texts


# -- the databases ---------------------------------------------------------------


async def fill(store) -> None:
    await store.upsert(
        "machines",
        [{"hostname": name, "agent": f"{index:032x}", "uptime": 10**12 * index} for index, name in enumerate(HOSTS, 1)],
        key="agent",
    )


@pytest.fixture(scope="module")
def login_roles(tls_cluster):
    tls_cluster.create_role(READER, READER_PASSWORD)
    tls_cluster.create_role(AGENT, AGENT_PASSWORD)


async def migrated_database(cluster, fresh_database):
    """A migrated, filled database with the reader and agent granted: (name, superuser connection)."""
    name = fresh_database("mcp")
    owner = await connect(parse_dsn(cluster.superuser_dsn(name), environ={}), statement_cache_size=0)
    await migrations.migrate(owner)
    await grant(owner, READER, reader=True)
    await grant(owner, AGENT)
    store = await open_store(cluster.superuser_dsn(name), "ab" * 16, migrate=False)
    await fill(store)
    await store.close()
    return name, owner


@pytest.fixture
async def pg_db(tls_cluster, fresh_database, login_roles):
    name, owner = await migrated_database(tls_cluster, fresh_database)
    yield name, owner
    await owner.close()


def role_dsn(cluster, certs, database, role=READER, password=READER_PASSWORD):
    return cluster.uri(role, password, dbname=database, sslmode="verify-full", sslrootcert=certs.ca_crt)


@dataclass
class Backend:
    dialect: str
    dsn: str  # the reader's
    snapshot: Callable  # async () -> what must never change
    owner: object = None  # PostgreSQL: a superuser connection


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "inventory.sqlite"
        store = await open_store(str(path), "ab" * 16)
        await fill(store)
        await store.close()

        async def sqlite_snapshot():
            with sqlite3.connect(path) as db:
                return (
                    db.execute("SELECT group_concat(hostname || ':' || uptime, ',') FROM machines ORDER BY id").fetchone(),
                    db.execute("SELECT group_concat(name, ',') FROM sqlite_master").fetchone(),
                    db.execute("PRAGMA user_version").fetchone(),
                )

        yield Backend("sqlite", str(path), sqlite_snapshot)
        return
    cluster, certs = request.getfixturevalue("tls_cluster"), request.getfixturevalue("certs")
    request.getfixturevalue("login_roles")
    name, owner = await migrated_database(cluster, request.getfixturevalue("fresh_database"))

    async def pg_snapshot():
        return (
            await owner.fetchval("SELECT string_agg(hostname || ':' || uptime, ',' ORDER BY id) FROM situation.machines"),
            await owner.fetchval("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c "
                                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = 'situation'"),
            await owner.fetchval("SELECT last_value FROM situation.machines_id_seq"),
            await owner.fetchval("SELECT count(*) FROM pg_largeobject_metadata"),
        )

    yield Backend("postgres", role_dsn(cluster, certs, name), pg_snapshot, owner)
    await owner.close()


# -- what a client sees ----------------------------------------------------------


async def test_schema_resource_query_and_syntax_error(backend, tmp_path):
    dialect, dsn = backend.dialect, backend.dsn
    async with mcp_session(dsn, tmp_path) as (session, _):
        resources = (await session.list_resources()).resources
        assert [(r.name, str(r.uri), r.mime_type) for r in resources] == [("schema", resource_uri(dialect), "text/plain")]
        contents = (await session.read_resource(resources[0].uri)).contents
        assert contents[0].text == schema_text(dialect)
        assert resources[0].size == len(schema_text(dialect).encode())

        tool = (await session.list_tools()).tools[0]
        assert tool.name == "query" and tool.annotations.read_only_hint and not tool.annotations.destructive_hint
        assert tool.input_schema["required"] == ["sql"]

        failed, texts = await query(session, "SELECT hostname, uptime, created_at FROM machines ORDER BY hostname")
        assert not failed and len(texts) == 1
        rows = json.loads(texts[0])
        assert [(r["hostname"], r["uptime"]) for r in rows] == [(h, 10**12 * i) for i, h in enumerate(HOSTS, 1)]
        assert isinstance(rows[0]["created_at"], str) and rows[0]["created_at"].startswith("20")

        failed, texts = await query(session, "SELEC hostname FROM machines")
        assert failed and texts[0].startswith("Error: ") and "syntax" in texts[0]


async def test_plain_json_values(backend, tmp_path):
    dialect, dsn = backend.dialect, backend.dsn
    sql = {
        "sqlite": "SELECT x'00ff' AS blob, CAST('héllo' AS BLOB) AS text_blob, 1.5 AS f, NULL AS n",
        "postgres": "SELECT '\\x00ff'::bytea AS blob, convert_to('héllo', 'UTF8') AS text_blob, 1.5::numeric AS f, "
                    "NULL AS n, timestamptz '2025-01-02 03:04:05+00' AS ts, ARRAY['10.0.0.1'] AS ip, "
                    "'{\"a\": [1]}'::jsonb AS doc, '10.0.0.0/8'::cidr AS net",
    }[dialect]
    async with mcp_session(dsn, tmp_path) as (session, _):
        failed, texts = await query(session, sql)
    assert not failed, texts
    row = json.loads(texts[0])[0]
    assert row["blob"] == "\\x00ff" and row["text_blob"] == "héllo" and row["f"] == 1.5 and row["n"] is None
    if dialect == "postgres":
        assert row["ts"] == "2025-01-02T03:04:05+00:00"
        assert row["ip"] == ["10.0.0.1"] and row["doc"] == {"a": [1]} and row["net"] == "10.0.0.0/8"


async def test_row_limit_is_reported(backend, tmp_path):
    dsn = backend.dsn
    async with mcp_session(dsn, tmp_path, "--max-rows", "2") as (session, _):
        failed, texts = await query(session, "SELECT hostname FROM machines ORDER BY hostname")
        assert not failed and len(json.loads(texts[0])) == 2
        assert "Row limit reached" in texts[1] and "first 2 rows" in texts[1]
        failed, texts = await query(session, "SELECT hostname FROM machines WHERE hostname = 'alpha'")
        assert not failed and len(texts) == 1


async def test_a_long_statement_is_stopped(backend, tmp_path):
    dialect, dsn = backend.dialect, backend.dsn
    slow = {
        "sqlite": ["WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"],
        "postgres": ["SELECT pg_sleep(30)",
                     "SELECT set_config('statement_timeout', '0', false), pg_sleep(30)"],
    }[dialect]
    async with mcp_session(dsn, tmp_path, "--timeout", "1s") as (session, _):
        for sql in slow:
            failed, texts = await query(session, sql)
            assert failed and "1s timeout" in texts[0], (sql, texts)
        failed, texts = await query(session, "SELECT count(*) AS n FROM machines")  # the server goes on
        assert not failed and json.loads(texts[0]) == [{"n": 3}]


def attacks(dialect: str, scratch: str, backend_pid: int | None = None, large_object: int | None = None) -> list[str]:
    common = [
        "DELETE FROM machines",
        "DROP TABLE machines",
        "UPDATE machines SET hostname = 'evil'",
        "INSERT INTO machines (hostname) VALUES ('evil')",
        "CREATE TABLE evil (x int)",
        "CREATE TEMP TABLE evil (x int)",
        f"ATTACH DATABASE '{scratch}-attached' AS evil",
        f"COPY machines TO PROGRAM 'touch {scratch}-program'",
        "SET TRANSACTION READ WRITE",
        "COMMIT; DELETE FROM machines",
        "SELECT 1; DELETE FROM machines",
        "BEGIN",
    ]
    if dialect == "sqlite":
        return common + [
            f"VACUUM INTO '{scratch}-vacuum'",
            "PRAGMA query_only = OFF",
            "PRAGMA user_version = 7",
            "PRAGMA writable_schema = ON",
            "SELECT load_extension('/nonexistent/evil')",
            "REINDEX",
            "ANALYZE",
        ]
    return common + [
        "TRUNCATE machines",
        "COMMIT",
        "ROLLBACK",
        "DO $$BEGIN DELETE FROM situation.machines; END$$",
        f"COPY (SELECT 1) TO '{scratch}-copy'",
        "SELECT setval(pg_get_serial_sequence('situation.machines', 'id'), 1000)",
        "SELECT nextval(pg_get_serial_sequence('situation.machines', 'id'))",
        f"SELECT pg_terminate_backend({backend_pid})",
        f"SELECT pg_cancel_backend({backend_pid})",
        "SELECT lo_import('/etc/hostname')",
        f"SELECT lo_export({large_object}, '{scratch}-lo')",
        "SET ROLE situation_agent",
        "SET SESSION AUTHORIZATION postgres",
        "CREATE EXTENSION IF NOT EXISTS dblink",
        "ALTER ROLE mcp_reader SUPERUSER",
        "GRANT situation_agent TO mcp_reader",
    ]


async def test_every_write_is_refused(backend, tmp_path):
    dialect, dsn, snapshot, owner = backend.dialect, backend.dsn, backend.snapshot, backend.owner
    scratch = f"/tmp/situation-mcp-{uuid.uuid4().hex[:8]}"  # /tmp: the server's user could write there too
    extra = {}
    if dialect == "postgres":
        extra = {
            "backend_pid": await owner.fetchval("SELECT pg_backend_pid()"),
            "large_object": await owner.fetchval("SELECT lo_from_bytea(0, 'secret')"),
        }
    before = await snapshot()
    async with mcp_session(dsn, tmp_path) as (session, errors):
        for sql in attacks(dialect, scratch, **extra):
            failed, texts = await query(session, sql)
            assert failed and texts[0].startswith("Error: "), (sql, texts)
        if dialect == "postgres":
            # Session settings do not outlive their query, and never make a write possible.
            await query(session, "SET default_transaction_read_only = off")
            failed, _ = await query(session, "DELETE FROM machines")
            assert failed
            failed, texts = await query(session, "SHOW default_transaction_read_only")
            assert not failed and json.loads(texts[0]) == [{"default_transaction_read_only": "on"}]
            # What the read-only check lets through is rolled back: the large object is gone.
            failed, texts = await query(session, "SELECT lo_create(0) AS oid")
            if not failed:
                oid = json.loads(texts[0])[0]["oid"]
                assert not await owner.fetchval("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $1", oid)
            # A session lock is released after its query.
            failed, _ = await query(session, "SELECT pg_advisory_lock(42)")
            assert not failed
            assert await owner.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        failed, texts = await query(session, "SELECT count(*) AS n FROM machines")
        assert not failed and json.loads(texts[0]) == [{"n": 3}]
    assert await snapshot() == before
    assert not list(Path("/tmp").glob(Path(scratch).name + "*")), "a refused statement created a file"
    assert "could change the data" not in errors.read_text()
    if dialect == "postgres":
        assert await owner.fetchval("SELECT 1") == 1  # not terminated


async def test_dblink_cannot_reach_out(pg_db, tls_cluster, certs, tmp_path):
    name, owner = pg_db
    if not await owner.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'"):
        pytest.skip("dblink is not installed on this server")
    await owner.execute("CREATE EXTENSION dblink")
    target = f"host={tls_cluster.socket_dir} port={tls_cluster.port} dbname={name} user=postgres"
    async with mcp_session(role_dsn(tls_cluster, certs, name), tmp_path) as (session, _):
        for sql in (f"SELECT dblink_exec('{target}', 'DELETE FROM situation.machines')",
                    f"SELECT * FROM dblink('{target}', 'SELECT 1') AS t(x int)"):
            failed, texts = await query(session, sql)
            assert failed, (sql, texts)
    assert await owner.fetchval("SELECT count(*) FROM situation.machines") == 3


# -- start-up ---------------------------------------------------------------------


async def test_a_role_that_could_write_gets_a_warning(pg_db, tls_cluster, certs, tmp_path):
    name, owner = pg_db
    dsn = role_dsn(tls_cluster, certs, name, role=AGENT, password=AGENT_PASSWORD)
    async with mcp_session(dsn, tmp_path) as (session, errors):
        failed, _ = await query(session, "DELETE FROM machines")  # still refused: read-only transaction
        assert failed
    warning = errors.read_text()
    assert "could change the data" in warning and "situation_agent" in warning and "--reader" in warning
    assert AGENT_PASSWORD not in warning
    assert await owner.fetchval("SELECT count(*) FROM situation.machines") == 3


def run_mcp(*args, env):
    import subprocess

    return subprocess.run([sys.executable, "-m", "situation", "mcp", *args], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_bad_start_is_one_line(tmp_path):
    from support.cluster import clean_environ

    env = clean_environ(HOME=str(tmp_path))
    missing = run_mcp("--db", str(tmp_path / "none.sqlite"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    unmigrated = run_mcp("--db", str(empty), env=env)
    assert unmigrated.returncode == 1 and "no situation tables" in unmigrated.stderr
    transport = run_mcp("--db", str(empty), "-t", "sse", env=env)
    assert transport.returncode == 2 and "stdio" in transport.stderr
    assert not list(tmp_path.glob("none.sqlite*"))  # never creates the file it was pointed at


async def test_a_lost_connection_is_opened_again(pg_db, tls_cluster, certs, tmp_path):
    name, owner = pg_db
    async with mcp_session(role_dsn(tls_cluster, certs, name), tmp_path) as (session, _):
        failed, texts = await query(session, "SELECT pg_backend_pid() AS pid")
        assert not failed
        assert await owner.fetchval("SELECT pg_terminate_backend($1)", json.loads(texts[0])[0]["pid"])
        outcomes = [await query(session, "SELECT count(*) AS n FROM machines") for _ in range(2)]
    assert outcomes[-1] == (False, [json.dumps([{"n": 3}], indent=2)])
    assert all(texts[0].startswith("Error: ") for failed, texts in outcomes if failed)
