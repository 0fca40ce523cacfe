"""Migrations on a real PostgreSQL: fresh, idempotent, concurrent, drift, gaps, newer databases."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from support.cluster import clean_environ

from situation.connection import migrations
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.errors import MigrationError

ORIGINAL_TABLES = {
    "subnetworks", "machines", "cpus", "gpus", "disks", "network_interfaces", "network_interface_subnets",
    "packages", "applications", "application_endpoints", "users", "user_applications", "flows",
    "endpoint_policies",
}


async def superuser(cluster, database):
    return await connect(parse_dsn(cluster.superuser_dsn(database), environ={}), statement_cache_size=0)


@pytest.fixture
async def db(tls_cluster, fresh_database):
    name = fresh_database("mig")
    connection = await superuser(tls_cluster, name)
    yield connection
    await connection.close()


def extra(version: int, name: str, sql: str) -> migrations.Migration:
    import hashlib

    return migrations.Migration(version, name, sql, hashlib.sha256(sql.encode()).hexdigest())


async def test_fresh_database_gets_every_table(db):
    report = await migrations.migrate(db)
    assert [m.version for m in report.applied] == [m.version for m in migrations.load_migrations()]
    tables = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'situation'"
    )}
    assert ORIGINAL_TABLES | {"schema_migrations"} == tables
    row = await db.fetchrow("SELECT * FROM situation.schema_migrations WHERE version = 1")
    assert row["name"] == "initial"
    assert row["checksum"] == migrations.load_migrations()[0].checksum
    assert row["applied_by"] == "postgres"
    assert row["duration_ms"] >= 0


async def test_migrate_twice_is_a_noop(db):
    await migrations.migrate(db)
    before = await db.fetch("SELECT * FROM situation.schema_migrations")
    report = await migrations.migrate(db, lock_wait=0)
    assert report.applied == [] and report.pending == []
    assert await db.fetch("SELECT * FROM situation.schema_migrations") == before


async def test_status_and_dry_run_change_nothing(db):
    report = await migrations.migrate(db, dry_run=True)
    assert [m.version for m in report.pending] == [1]
    assert await db.fetchval("SELECT to_regnamespace('situation')") is None
    report = await migrations.status(db)
    assert report.history == [] and [m.version for m in report.pending] == [1]


async def test_documented_queries_run_unchanged(db):
    """A query written for the original's SQL API runs with search_path = situation."""
    await migrations.migrate(db)
    await db.execute("SET search_path = situation")
    await db.execute(
        "INSERT INTO machines (hostname, agent, platform) VALUES ('web1', 'fc097e65503cb3ad9eb8e10f5a617611', 'linux')"
    )
    await db.execute(
        "INSERT INTO network_interfaces (name, mac, ip, machine_id, flags) "
        "SELECT 'eth0', '52:54:00:ab:cd:ef', ARRAY['192.168.1.10', 'fe80::1'], id, '{\"up\":true}' FROM machines"
    )
    rows = await db.fetch(
        "SELECT m.hostname, n.mac, n.ip FROM machines m JOIN network_interfaces n ON n.machine_id = m.id "
        "WHERE '192.168.1.10' = ANY(n.ip)"
    )
    assert [tuple(r) for r in rows] == [("web1", "52:54:00:ab:cd:ef", ["192.168.1.10", "fe80::1"])]


async def test_null_safe_keys_deduplicate_incoming_flows(db):
    await migrations.migrate(db)
    for _ in range(3):
        await db.execute(
            "INSERT INTO situation.flows (src_application_id, src_addr, dst_endpoint_id) VALUES (NULL, '10.0.0.9', NULL) "
            "ON CONFLICT (src_application_id, src_addr, dst_endpoint_id) DO UPDATE SET updated_at = now()"
        )
    assert await db.fetchval("SELECT count(*) FROM situation.flows") == 1


async def test_changed_file_is_refused(db):
    await migrations.migrate(db)
    changed = [replace(m, sql=m.sql + "\n-- edited", checksum="0" * 64) for m in migrations.load_migrations()]
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await migrations.migrate(db, migrations=changed)


async def test_database_newer_than_build_is_refused_by_migrate_and_tolerated_by_agents(db):
    await migrations.migrate(db)
    await db.execute(
        "INSERT INTO situation.schema_migrations (version, name, checksum) VALUES (999, 'from_the_future', 'x')"
    )
    with pytest.raises(MigrationError, match="newer than this build"):
        await migrations.migrate(db)
    assert await migrations.verify_agent_schema(db) == 999  # a warning, not a refusal


async def test_gap_in_history_is_refused(db):
    sql = "CREATE TABLE situation.extra_two (id int)"
    three = [*migrations.load_migrations(), extra(2, "two", sql), extra(3, "three", "SELECT 1")]
    await migrations.migrate(db, migrations=three)
    await db.execute("DELETE FROM situation.schema_migrations WHERE version = 2")
    with pytest.raises(MigrationError, match="gap"):
        await migrations.migrate(db, migrations=three)


def test_files_must_be_numbered_without_gaps(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="skip from 0001 to 0003"):
        migrations.load_migrations(directory=tmp_path)


def test_checksum_ignores_line_endings(tmp_path):
    (tmp_path / "0001_a.sql").write_bytes(b"SELECT 1;\nSELECT 2;\n")
    unix = migrations.load_migrations(directory=tmp_path)[0].checksum
    (tmp_path / "0001_a.sql").write_bytes(b"SELECT 1;\r\nSELECT 2;\r\n")
    assert migrations.load_migrations(directory=tmp_path)[0].checksum == unix


async def test_failed_migration_leaves_nothing_behind(db):
    broken = [*migrations.load_migrations(), extra(2, "broken", "CREATE TABLE situation.half (id int); SELECT 1/0;")]
    with pytest.raises(MigrationError, match="0002_broken.sql failed"):
        await migrations.migrate(db, migrations=broken)
    assert await db.fetchval("SELECT to_regclass('situation.half')") is None
    assert await migrations.schema_version(db) == 1


async def test_no_transaction_migration_runs_alone(db):
    concurrently = extra(
        2, "concurrent_index",
        "-- situation:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS machines_hostname ON situation.machines (hostname)",
    )
    await migrations.migrate(db, migrations=[*migrations.load_migrations(), concurrently])
    assert await db.fetchval("SELECT to_regclass('situation.machines_hostname') IS NOT NULL")
    assert await migrations.schema_version(db) == 2


async def test_lock_is_polled_and_released(db, tls_cluster):
    name = await db.fetchval("SELECT current_database()")
    holder = await superuser(tls_cluster, name)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", migrations.LOCK_KEY)
        with pytest.raises(MigrationError, match="held the migration lock"):
            await migrations.migrate(db, lock_wait=0.5)
        await holder.execute("SELECT pg_advisory_unlock($1)", migrations.LOCK_KEY)
        await migrations.migrate(db, lock_wait=5)
    finally:
        await holder.close()
    assert await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ) == 0


async def test_a_lock_holder_keeps_the_lock_in_a_transaction_of_its_own(db, tls_cluster):
    """The lock that holds through PgBouncer in transaction mode: transaction-level, on the holder."""
    name = await db.fetchval("SELECT current_database()")
    holder, other = await superuser(tls_cluster, name), await superuser(tls_cluster, name)
    probe = extra(2, "lock_probe", "CREATE TABLE situation.lock_probe AS "
                                   "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", migrations.LOCK_KEY)
        with pytest.raises(MigrationError, match="held the migration lock"):
            await migrations.migrate(db, lock_wait=0.3, lock_holder=holder)
        assert not holder.is_in_transaction()  # it waited outside a transaction
        await other.execute("SELECT pg_advisory_unlock($1)", migrations.LOCK_KEY)
        report = await migrations.migrate(db, lock_holder=holder, migrations=[*migrations.load_migrations(), probe])
        assert [m.version for m in report.applied] == [1, 2]
        assert await db.fetchval("SELECT array_agg(pid) FROM situation.lock_probe") == [holder.get_server_pid()]
        assert not holder.is_in_transaction()
        assert await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ) == 0
    finally:
        await holder.close()
        await other.close()


def test_six_concurrent_migrate_commands_apply_each_version_once(tls_cluster, fresh_database, tmp_path):
    name = fresh_database("conc")
    env = clean_environ(HOME=str(tmp_path))
    command = [sys.executable, "-m", "situation", "migrate", "--db", tls_cluster.superuser_dsn(name)]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, outputs
    applied = [out for out, _err in outputs if "applied 0001_initial.sql" in out]
    assert len(applied) == 1, outputs
    rows = tls_cluster.psql("SELECT version, count(*) FROM situation.schema_migrations GROUP BY version", dbname=name)
    assert rows.splitlines() == ["1|1"]


async def test_concurrent_migrations_in_process(tls_cluster, fresh_database):
    name = fresh_database("conc2")
    connections = [await superuser(tls_cluster, name) for _ in range(6)]
    try:
        reports = await asyncio.gather(*(migrations.migrate(c) for c in connections))
    finally:
        for c in connections:
            await c.close()
    assert sum(len(r.applied) for r in reports) == len(migrations.load_migrations())


def test_cli_status_and_dry_run(tls_cluster, fresh_database, tmp_path):
    name = fresh_database("cli")
    env = clean_environ(HOME=str(tmp_path))
    base = [sys.executable, "-m", "situation", "migrate", "--db", tls_cluster.superuser_dsn(name)]

    def run(*args):
        result = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "would apply 0001_initial.sql" in run("--dry-run")
    assert "0001_initial.sql  pending" in run("--status")
    assert "applied 0001_initial.sql" in run()
    assert "schema is up to date" in run()
    assert run("--status").startswith("0001_initial  applied")


def test_wheel_ships_the_migrations(tmp_path):
    """A non-editable install must find sql/ inside the package."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    import zipfile

    (wheel,) = tmp_path.glob("situation-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("situation/sql/postgres/0001_initial.sql", "situation/sql/postgres/history.sql",
                     "situation/sql/postgres/roles.sql", "situation/sql/sqlite/0001_initial.sql"):
        assert expected in names


async def test_roles_created_after_a_migrate_get_their_grants_on_rerun(tls_cluster, fresh_database):
    """An owner that may not create roles migrates; an admin creates them; a rerun grants them."""
    name = fresh_database("rolesafter")
    owner = await superuser(tls_cluster, name)
    try:
        await migrations.migrate(owner)
        await owner.execute("REVOKE USAGE ON SCHEMA situation FROM situation_agent, situation_reader")
        await owner.execute("REVOKE ALL ON ALL TABLES IN SCHEMA situation FROM situation_agent, situation_reader")
        report = await migrations.migrate(owner)
        assert report.applied == []
        assert await owner.fetchval("SELECT has_table_privilege('situation_agent', 'situation.machines', 'INSERT')")
    finally:
        await owner.close()


def test_status_on_a_newer_database_lists_and_explains(tls_cluster, fresh_database, tmp_path):
    name = fresh_database("newer")
    env = clean_environ(HOME=str(tmp_path))
    base = [sys.executable, "-m", "situation", "migrate", "--db", tls_cluster.superuser_dsn(name)]
    subprocess.run(base, env=env, check=True, capture_output=True)
    tls_cluster.psql("INSERT INTO situation.schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')",
                     dbname=name)
    result = subprocess.run([*base, "--status"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "0001_initial  applied" in result.stdout and "0099_future  applied" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "situation: error: database schema is at version 99, newer than this build (1); upgrade situation before migrating"
    ]


def test_history_row_with_version_zero_is_one_clear_line(tls_cluster, fresh_database, tmp_path):
    env = clean_environ(HOME=str(tmp_path))

    def migrate(database: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "situation", "migrate", "--db", database, *flags],
                              env=env, capture_output=True, text=True, timeout=60)

    name = fresh_database("zero")
    postgres = tls_cluster.superuser_dsn(name)
    sqlite_file = tmp_path / "zero.sqlite"
    assert migrate(postgres).returncode == 0 and migrate(str(sqlite_file)).returncode == 0
    row = "INSERT INTO {}schema_migrations (version, name, checksum) VALUES (0, 'zero', 'x')"
    tls_cluster.psql(row.format("situation."), dbname=name)
    with sqlite3.connect(sqlite_file) as db:
        db.execute(row.format(""))
    for database, flags in ((postgres, ()), (postgres, ("--status",)), (str(sqlite_file), ())):
        result = migrate(database, *flags)
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [
            "situation: error: database migration history holds version 0, which no migration has (they start at "
            "0001); it was changed by hand: delete that row from schema_migrations before migrating"
        ]
