"""Adopting a PostgreSQL database that the Go agent migrated first.

The Go agent leaves Bun's ``bun_migrations`` / ``bun_migration_locks`` beside its 14 tables
(BIGSERIAL ids, Bun's nullable columns, the original's constraint names, the indexes of its
migrations 0002 and 0003), in whatever schema ``search_path`` selects.  ``situation migrate``
must neither re-run nor refuse those migrations: when the tables are in schema ``situation``
it continues them in ``situation.schema_migrations`` (adding ``updated_by`` and the NULL-safe
keys, collapsing the duplicates the original's NULL-distinct keys let pile up); when they are
in ``public`` it leaves them there and says so.

The Go agent's schema and rows are in ``tests/fixtures/go_agent/`` (written from
agent-behaviour.md §1.2–§1.6; unqualified names, so ``search_path`` decides the schema).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import clean_environ

from situation.connection import migrations
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "go_agent"

ORIGINAL_TABLES = (
    "subnetworks", "machines", "cpus", "gpus", "disks", "network_interfaces", "network_interface_subnets",
    "packages", "applications", "application_endpoints", "users", "user_applications", "flows",
    "endpoint_policies",
)
# The join table has no id and no timestamps, so no updated_by either (0001_initial.sql).
TABLES_WITH_UPDATED_BY = tuple(t for t in ORIGINAL_TABLES if t != "network_interface_subnets")
# Tables whose rows migrate may remove (duplicates); every other row must survive unchanged.
DEDUPLICATED = ("flows", "endpoint_policies")

# The original's constraint names that conflict targets and client tools refer to (§1.3).
ORIGINAL_CONSTRAINTS = {
    "subnetworks": {"cidr_tag"},
    "machines": {"machines_host_id_key", "machines_agent_key"},
    "cpus": {"cpus_machine_id_key"},
    "gpus": {"machine_gpu_index"},
    "disks": {"machine_disk_name"},
    "network_interfaces": {"machine_mac_tag", "machine_nic_name"},
    "network_interface_subnets": {"network_interface_subnets_mac_subnet_key"},
    "packages": {"name_version_machine_id"},
    "applications": {"machine_app_name_pid"},
    "users": {"machine_user"},
    "user_applications": {"user_application"},
    "flows": {"flow_src_dst"},
    "endpoint_policies": {"endpoint_action_src"},
}

GO_AGENT_ID = "fc097e65503cb3ad9eb8e10f5a617611"
OUR_AGENT_ID = "ab" * 16


# -- building the Go agent's database ---------------------------------------------------------


def build_go_database(cluster, database: str, schema: str) -> None:
    """The Go agent's tables and rows, created through ``search_path = <schema>``."""
    script = []
    if schema != "public":
        script.append(f"CREATE SCHEMA {schema};")
    script.append(f"SET search_path = {schema};")
    script.append((FIXTURES / "schema.sql").read_text(encoding="utf-8"))
    script.append((FIXTURES / "rows.sql").read_text(encoding="utf-8"))
    cluster.psql("\n".join(script), dbname=database)


async def superuser(cluster, database: str):
    return await connect(parse_dsn(cluster.superuser_dsn(database), environ={}), statement_cache_size=0)


async def column_names(connection, schema: str) -> dict[str, list[str]]:
    rows = await connection.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
        schema,
    )
    columns: dict[str, list[str]] = {}
    for row in rows:
        columns.setdefault(row["table_name"], []).append(row["column_name"])
    return columns


async def snapshot(connection, schema: str, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every row of the original tables, restricted to the Go agent's columns, in a stable order."""
    taken = {}
    for table in ORIGINAL_TABLES:
        names = columns[table]
        listed = ", ".join(f'"{c}"::text' for c in names)  # ::text: json has no equality
        order = "id" if "id" in names else ", ".join(f'"{c}"' for c in names)
        rows = await connection.fetch(f'SELECT {listed} FROM {schema}."{table}" ORDER BY {order}')
        taken[table] = [tuple(r) for r in rows]
    return taken


async def bun_state(connection, schema: str) -> tuple[list[tuple], list[tuple]]:
    history = await connection.fetch(
        f"SELECT id, name, group_id, migrated_at FROM {schema}.bun_migrations ORDER BY id"
    )
    locks = await connection.fetch(f"SELECT id, table_name FROM {schema}.bun_migration_locks ORDER BY id")
    return [tuple(r) for r in history], [tuple(r) for r in locks]


# -- running the CLI ----------------------------------------------------------------------------


def run_migrate(cluster, database: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "situation", "migrate", "--db", cluster.superuser_dsn(database)],
        env=clean_environ(HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_events(stderr: str) -> list[dict]:
    """The JSON log lines of a run (stderr is not a terminal, so the format is JSON)."""
    events = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


# -- scenario 1: the Go agent's tables in schema `situation` ------------------------------------


async def test_migrate_adopts_go_agent_tables_in_schema_situation(tls_cluster, fresh_database, tmp_path):
    name = fresh_database("goadopt")
    build_go_database(tls_cluster, name, "situation")
    db = await superuser(tls_cluster, name)
    try:
        go_columns = await column_names(db, "situation")
        assert set(ORIGINAL_TABLES) <= set(go_columns)
        before = await snapshot(db, "situation", go_columns)
        bun_before = await bun_state(db, "situation")
        assert [r[1] for r in bun_before[0]] == ["0001", "0002", "0003"]
        piled_flows = [r[0] for r in await db.fetch(
            "SELECT id FROM situation.flows WHERE src_application_id IS NULL AND src_addr = '192.168.1.50' ORDER BY id"
        )]
        piled_policies = [r[0] for r in await db.fetch(
            "SELECT id FROM situation.endpoint_policies WHERE source = 'docker' ORDER BY id"
        )]
        assert len(piled_flows) == 3 and len(piled_policies) == 3  # what the Go agent let pile up

        # -- first migrate: adopt ------------------------------------------------------------
        result = run_migrate(tls_cluster, name, tmp_path)
        assert result.returncode == 0, result.stderr
        build = migrations.load_migrations()
        for migration in build:
            assert f"applied {migration.filename}" in result.stdout, result.stdout
        events = log_events(result.stderr)
        assert any("found the Go agent's bun_migrations" in e.get("event", "") for e in events), result.stderr
        assert not any("another schema" in e.get("event", "") for e in events), result.stderr

        history = await db.fetch("SELECT version, name, checksum FROM situation.schema_migrations ORDER BY version")
        assert [(r["version"], r["name"], r["checksum"]) for r in history] == [
            (m.version, m.name, m.checksum) for m in build
        ]

        # Bun's bookkeeping: neither re-run, nor refused, nor touched.
        assert await bun_state(db, "situation") == bun_before

        # Our one column addition, on every table with an id.
        after_columns = await column_names(db, "situation")
        for table in TABLES_WITH_UPDATED_BY:
            assert "updated_by" in after_columns[table], table
            assert after_columns[table][:-1] == go_columns[table], table  # nothing renamed or reordered
        assert after_columns["network_interface_subnets"] == go_columns["network_interface_subnets"]

        # The Go agent's ids stay BIGSERIAL (no rewrite to identity columns).
        serial_ids = await db.fetch(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'situation' "
            "AND column_name = 'id' AND column_default LIKE 'nextval(%' AND is_identity = 'NO'"
        )
        assert {r["table_name"] for r in serial_ids} >= set(TABLES_WITH_UPDATED_BY)

        # Constraint and index names: the original's are all there, ours are added.
        constraints = await db.fetch(
            "SELECT conrelid::regclass::text AS tbl, conname FROM pg_constraint "
            "WHERE connamespace = 'situation'::regnamespace"
        )
        by_table: dict[str, set[str]] = {}
        for row in constraints:
            by_table.setdefault(row["tbl"].removeprefix("situation."), set()).add(row["conname"])
        for table, names in ORIGINAL_CONSTRAINTS.items():
            assert names <= by_table.get(table, set()), (table, by_table.get(table))
        # 0003 replaced the endpoints' plain constraint: it must not come back.
        assert "port_protocol_addr_network_interface_id" not in by_table.get("application_endpoints", set())
        indexes = {r["indexname"]: r["indexdef"] for r in await db.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'situation'"
        )}
        for index in ("network_interface_ip", "network_interface_mac", "application_endpoint_protocol_port"):
            assert index in indexes
        assert "COALESCE(network_interface_id" in indexes["port_protocol_addr_network_interface_id"]
        null_safe = {n for n in indexes if "null_safe" in n}
        assert null_safe == {"flow_src_dst_null_safe", "endpoint_action_src_null_safe"}
        for index in null_safe:
            assert "NULLS NOT DISTINCT" in indexes[index] and "UNIQUE" in indexes[index]

        # The piled-up duplicates are collapsed into their first row, which keeps the last sighting.
        kept = await db.fetch(
            "SELECT id, updated_at = '2025-06-01 10:00:00+00'::timestamptz AS last_seen, "
            "created_at = '2025-06-01 08:00:00+00'::timestamptz AS first_seen "
            "FROM situation.flows WHERE src_application_id IS NULL AND src_addr = '192.168.1.50'"
        )
        assert [tuple(r) for r in kept] == [(piled_flows[0], True, True)]
        kept = await db.fetch(
            "SELECT id, updated_at = '2025-06-01 10:00:00+00'::timestamptz AS last_seen "
            "FROM situation.endpoint_policies WHERE source = 'docker'"
        )
        assert [tuple(r) for r in kept] == [(piled_policies[0], True)]

        # Every other row of the Go agent is intact: same ids, same values.
        after = await snapshot(db, "situation", go_columns)
        for table in ORIGINAL_TABLES:
            if table not in DEDUPLICATED:
                assert after[table] == before[table], table
        removed = {"flows": set(piled_flows[1:]), "endpoint_policies": set(piled_policies[1:])}
        for table in DEDUPLICATED:
            updated_at = go_columns[table].index("updated_at")
            survivors = [r for r in before[table] if int(r[0]) not in removed[table]]
            strip = lambda rows: [r[:updated_at] + r[updated_at + 1:] for r in rows]  # noqa: E731
            assert strip(after[table]) == strip(survivors), table
        assert len(after["flows"]) == 3 and len(after["endpoint_policies"]) == 1

        # -- second migrate: nothing to do ------------------------------------------------------
        again = run_migrate(tls_cluster, name, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "schema is up to date" in again.stdout
        assert "applied" not in again.stdout
        assert [tuple(r) for r in await db.fetch(
            "SELECT version, name, checksum FROM situation.schema_migrations ORDER BY version"
        )] == [tuple(r) for r in history]
        assert await snapshot(db, "situation", go_columns) == after
        assert await bun_state(db, "situation") == bun_before
    finally:
        await db.close()


async def test_store_writes_into_adopted_go_agent_tables(tls_cluster, fresh_database, home):
    from situation.store import open_store

    name = fresh_database("gostore")
    build_go_database(tls_cluster, name, "situation")
    db = await superuser(tls_cluster, name)
    store = await open_store(tls_cluster.superuser_dsn(name), OUR_AGENT_ID)  # migrates, then opens
    try:
        old_max = await db.fetchval("SELECT max(id) FROM situation.machines")
        go_host = await db.fetchrow(
            "SELECT m.id AS machine_id, n.id AS nic_id, e.id AS ssh_endpoint_id "
            "FROM situation.machines m JOIN situation.network_interfaces n ON n.machine_id = m.id "
            "JOIN situation.application_endpoints e ON e.network_interface_id = n.id "
            "WHERE m.agent = $1 AND n.name = 'eth0' AND e.port = 22",
            GO_AGENT_ID,
        )
        collapsed_flow = await db.fetchval(
            "SELECT id FROM situation.flows WHERE src_application_id IS NULL AND src_addr = '192.168.1.50'"
        )

        # machines, on our agent id: a new row from the BIGSERIAL sequence, then nothing to write.
        machine = [{
            "agent": OUR_AGENT_ID, "host_id": "0b6e2a9c-5d4f-4e3a-9b8c-7d6e5f4a3b2c", "hostname": "web2",
            "arch": "x86_64", "platform": "linux", "distribution": "debian", "distribution_version": "12",
            "distribution_family": "debian", "uptime": 3_600_000_000_000, "cpe": "", "chassis": "vm",
        }]
        first = await store.upsert("machines", machine, key="agent")
        assert first.written == 1
        (machine_id,) = first.ids
        assert machine_id > old_max
        second = await store.upsert("machines", machine, key="agent")
        assert (second.written, second.ids) == (0, [machine_id])
        assert await db.fetchval("SELECT updated_by FROM situation.machines WHERE id = $1", machine_id) == OUR_AGENT_ID

        # network_interfaces on machine_mac_tag: our NIC, and the Go agent's eth0 found again.
        nics = [
            {"name": "eth0", "mac": "52:54:00:12:34:56", "mac_vendor": "QEMU virtual NIC",
             "ip": ["192.168.1.11", "fe80::5054:ff:fe12:3456"], "gateway": "192.168.1.1",
             "flags": {"up": True, "broadcast": True, "multicast": True, "running": True},
             "tag": "", "machine_id": machine_id},
            {"name": "eth0", "mac": "52:54:00:ab:cd:ef", "mac_vendor": "QEMU virtual NIC",
             "ip": ["192.168.1.10", "fe80::5054:ff:feab:cdef"], "gateway": "192.168.1.1",
             "flags": {"up": True, "broadcast": True, "multicast": True, "running": True},
             "tag": "", "machine_id": go_host["machine_id"]},
        ]
        first = await store.upsert("network_interfaces", nics, key="machine_mac_tag")
        assert first.written == 1  # the Go agent's eth0 already holds these values
        assert first.ids[1] == go_host["nic_id"]
        second = await store.upsert("network_interfaces", nics, key="machine_mac_tag")
        assert (second.written, second.ids) == (0, first.ids)

        # flows on flow_src_dst: incoming flows (NULL source application) no longer pile up,
        # and the one migrate collapsed is the one found again.
        flows = [
            {"src_application_id": None, "src_network_interface_id": None, "src_addr": "10.0.0.9",
             "dst_endpoint_id": go_host["ssh_endpoint_id"]},
            {"src_application_id": None, "src_network_interface_id": None, "src_addr": "192.168.1.50",
             "dst_endpoint_id": go_host["ssh_endpoint_id"]},
        ]
        first = await store.upsert("flows", flows, key="flow_src_dst")
        assert first.written == 1
        assert first.ids[1] == collapsed_flow
        second = await store.upsert("flows", flows, key="flow_src_dst")
        assert (second.written, second.ids) == (0, first.ids)
        counts = await db.fetch(
            "SELECT src_addr, count(*) AS n FROM situation.flows WHERE src_application_id IS NULL GROUP BY src_addr"
        )
        assert {r["src_addr"]: r["n"] for r in counts} == {"10.0.0.9": 1, "192.168.1.50": 1, "192.168.1.51": 1}
    finally:
        await store.close()
        await db.close()


# -- scenario 2: the Go agent's tables in schema `public` ----------------------------------------


async def test_migrate_leaves_go_agent_tables_in_public_alone(tls_cluster, fresh_database, tmp_path):
    name = fresh_database("gopublic")
    build_go_database(tls_cluster, name, "public")
    db = await superuser(tls_cluster, name)
    try:
        public_columns = await column_names(db, "public")
        before = await snapshot(db, "public", public_columns)
        bun_before = await bun_state(db, "public")
        public_indexes = await db.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        )

        result = run_migrate(tls_cluster, name, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "applied 0001_initial.sql" in result.stdout

        # Our own tables, new and empty, in schema situation.
        tables = {r["table_name"] for r in await db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'situation'"
        )}
        assert tables == set(ORIGINAL_TABLES) | {"schema_migrations"}
        assert await db.fetchval("SELECT count(*) FROM situation.machines") == 0
        assert [r["version"] for r in await db.fetch("SELECT version FROM situation.schema_migrations")] == [
            m.version for m in migrations.load_migrations()
        ]

        # public is left exactly as the Go agent left it, duplicates included.
        assert await column_names(db, "public") == public_columns
        assert await snapshot(db, "public", public_columns) == before
        assert await bun_state(db, "public") == bun_before
        assert await db.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        ) == public_indexes
        assert len(before["flows"]) == 5 and len(before["endpoint_policies"]) == 3

        # ... and the log says where the Go agent's tables are.
        warnings = [e for e in log_events(result.stderr) if "another schema" in e.get("event", "")]
        assert len(warnings) == 1, result.stderr
        assert warnings[0]["schema"] == "public"
        assert warnings[0]["level"] == "warning"
    finally:
        await db.close()
