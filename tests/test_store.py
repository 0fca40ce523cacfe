"""The store on both backends: batched upserts, idempotence, ids, JSON and arrays."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from support.stored_text import postgres_control_characters, sqlite_control_characters

from situation.store import is_postgres_dsn, open_store, plan_batch, CONFLICT_KEYS
from situation.errors import ConfigError

AGENT = "0123456789abcdef0123456789abcdef"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        dsn = str(tmp_path / "situation.sqlite")
    else:
        cluster = request.getfixturevalue("tls_cluster")
        name = request.getfixturevalue("fresh_database")("store")
        dsn = cluster.superuser_dsn(name)
    opened = await open_store(dsn, AGENT)
    yield opened
    await opened.close()


async def host(store) -> int:
    result = await store.upsert("machines", [{"agent": AGENT, "hostname": "h1", "platform": "linux"}], key="agent")
    return result.ids[0]


async def test_upsert_inserts_then_changes_nothing(store):
    first = await store.upsert("machines", [{"agent": AGENT, "hostname": "h1", "uptime": 5}], key="agent")
    assert first.written == 1 and first.ids[0] is not None
    again = await store.upsert("machines", [{"agent": AGENT, "hostname": "h1", "uptime": 5}], key="agent")
    assert again.written == 0 and again.ids == first.ids
    changed = await store.upsert("machines", [{"agent": AGENT, "hostname": "h2", "uptime": 5}], key="agent")
    assert changed.written == 1 and changed.ids == first.ids
    assert await store.counts() == {**{t: 0 for t in await store.counts()}, "machines": 1}


async def test_batches_are_deduplicated_and_ids_follow_input_order(store):
    machine = await host(store)
    rows = [
        {"uid": uid, "gid": "0", "name": name, "username": name, "domain": "", "machine_id": machine}
        for uid, name in [("1000", "bob"), ("0", "root"), ("1000", "bobby"), ("5", "games")]
    ]
    result = await store.upsert("users", rows, key="machine_user")
    assert result.written == 3
    assert result.ids[0] == result.ids[2] and len(set(result.ids)) == 3
    assert (await store.upsert("users", rows, key="machine_user")).written == 0


async def test_json_and_ip_lists_round_trip(store):
    machine = await host(store)
    nic = {
        "name": "eth0", "mac": "52:54:00:ab:cd:ef", "ip": ["192.168.1.10", "fe80::1"], "tag": "",
        "flags": {"up": True, "broadcast": True}, "machine_id": machine, "gateway": None, "mac_vendor": None,
    }
    first = await store.upsert("network_interfaces", [nic], key="machine_mac_tag")
    assert first.written == 1
    assert (await store.upsert("network_interfaces", [nic], key="machine_mac_tag")).written == 0
    nic["ip"] = ["192.168.1.10"]
    assert (await store.upsert("network_interfaces", [nic], key="machine_mac_tag")).written == 1
    disk = {"name": "vda", "model": "x", "size": 10, "type": "hdd", "controller": "virtio",
            "partitions": [{"name": "vda1", "size": 5}], "machine_id": machine}
    await store.upsert("disks", [disk], key="machine_disk_name")
    assert (await store.upsert("disks", [disk], key="machine_disk_name")).written == 0


async def test_null_key_parts_do_not_duplicate(store):
    flow = {"src_application_id": None, "src_addr": "10.0.0.9", "dst_endpoint_id": None, "src_network_interface_id": None}
    for _ in range(3):
        result = await store.upsert("flows", [flow], key="flow_src_dst")
    assert result.written == 0 and result.ids[0] is not None
    endpoint = {"port": 22, "protocol": "tcp", "addr": "10.0.0.2", "network_interface_id": None}
    ids = {(await store.upsert("application_endpoints", [endpoint], key="port_protocol_addr_network_interface_id")).ids[0]
           for _ in range(2)}
    assert len(ids) == 1


async def test_unchanged_rows_of_every_null_pattern_keep_their_ids(store):
    """Rows left unchanged are looked up by key, NULL key parts included, in input order."""
    machine = await host(store)
    app = (await store.upsert("applications", [{"name": "sshd", "pid": 1, "machine_id": machine}],
                              key="machine_app_name_pid")).ids[0]
    endpoint = (await store.upsert("application_endpoints", [{"port": 22, "protocol": "tcp", "addr": "0.0.0.0",
                                                               "network_interface_id": None}],
                                   key="port_protocol_addr_network_interface_id")).ids[0]
    flows = [
        {"src_application_id": source, "src_addr": f"10.0.0.{n}", "dst_endpoint_id": target, "src_network_interface_id": None}
        for n, (source, target) in enumerate([(None, None), (app, None), (None, endpoint), (app, endpoint)])
    ]
    first = await store.upsert("flows", flows[:3], key="flow_src_dst")
    both = await store.upsert("flows", list(reversed(flows)), key="flow_src_dst")
    assert both.written == 1  # only the fourth is new
    assert both.ids[1:] == list(reversed(first.ids))
    assert (await store.upsert("flows", flows, key="flow_src_dst")).ids == list(reversed(both.ids))


async def test_do_nothing_upsert(store):
    subnet = {"network_cidr": "10.1.0.0/24", "network_addr": "10.1.0.0", "mask_size": 24, "ip_version": 4, "tag": ""}
    first = await store.upsert("subnetworks", [subnet], key="cidr_tag", update=[])
    second = await store.upsert("subnetworks", [{**subnet, "gateway": "10.1.0.1"}], key="cidr_tag", update=[])
    assert first.written == 1 and second.written == 0 and first.ids == second.ids


async def test_memory_released_between_cycles_keeps_the_store_usable(store):
    await host(store)
    await store.release_memory()
    assert await store.fetchval("ping") == 1
    assert (await store.counts())["machines"] == 1


async def test_empty_batch_is_a_noop(store):
    result = await store.upsert("disks", [], key="machine_disk_name")
    assert result.written == 0 and result.ids == []


async def test_named_query_and_transaction_rollback(store):
    assert await store.fetchval("ping") == 1
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await store.upsert("machines", [{"agent": "f" * 32, "hostname": "gone"}], key="agent")
            raise RuntimeError("abort")
    assert (await store.counts())["machines"] == 0


async def test_concurrent_upserts_of_the_same_rows(store):
    machine = await host(store)
    rows = [{"name": f"pkg{i}", "version": "1", "vendor": "", "manager": "dpkg", "install_time_unix": 0,
             "files": [], "machine_id": machine} for i in range(200)]
    results = await asyncio.gather(*(
        store.upsert("packages", list(reversed(rows)) if n % 2 else rows, key="name_version_machine_id")
        for n in range(6)
    ))
    assert sum(r.written for r in results) == 200
    assert (await store.counts())["packages"] == 200


def test_backend_detection():
    assert is_postgres_dsn("postgresql://u@h/db") and is_postgres_dsn("host=h dbname=d")
    assert not is_postgres_dsn("/var/lib/situation/situation.sqlite")
    assert not is_postgres_dsn(":memory:") and not is_postgres_dsn("file:x.db?mode=ro")
    with pytest.raises(ConfigError, match="mysql"):
        is_postgres_dsn("mysql://u@h/db")


def test_plan_batch_sorts_by_key_and_keeps_the_last_duplicate():
    rows = [{"name": n, "version": "1", "machine_id": 1, "vendor": v} for n, v in (("b", "x"), ("a", "y"), ("b", "z"), ("c", "w"))]
    batch = plan_batch("packages", rows, "name_version_machine_id", None)
    assert batch.values["name"] == ["a", "b", "c"] and batch.values["vendor"] == ["y", "z", "w"]
    assert batch.index == [1, 0, 1, 2]
    assert batch.keys() == [("a", "1", 1), ("b", "1", 1), ("c", "1", 1)]
    assert batch.update == ["vendor"]


def test_plan_batch_sorts_null_keys_first_and_dedupes_after_cleaning():
    rows = [
        {"src_application_id": 2, "src_addr": "10.0.0.1", "dst_endpoint_id": 5},
        {"src_application_id": None, "src_addr": "10.0.0.1", "dst_endpoint_id": 5},
        {"src_application_id": None, "src_addr": "10.0.0.1\x00", "dst_endpoint_id": 5},
    ]
    batch = plan_batch("flows", rows, "flow_src_dst", None)
    assert batch.keys() == [(None, "10.0.0.1", 5), (2, "10.0.0.1", 5)]
    assert batch.index == [1, 0, 0]


async def test_hostile_text_is_stored_as_clean_bounded_utf8(store):
    hostile = "evil\x00name\udcff" + "x" * 10000
    result = await store.upsert("machines", [{"agent": AGENT, "hostname": hostile, "distribution": "a'); DROP TABLE machines; --"}],
                                key="agent")
    assert result.written == 1
    rows = await store.fetch("machine_by_agent", AGENT)
    assert rows[0]["id"] == result.ids[0]
    assert (await store.counts())["machines"] == 1


def test_clean_value():
    from situation.store import MAX_TEXT, clean_value

    assert clean_value("a\x00b") == "ab"
    assert clean_value("caf\udce9") == "caf?"
    assert len(clean_value("x" * (MAX_TEXT + 5))) == MAX_TEXT
    assert clean_value({"k\x00": ["v\x00", 1, None]}) == {"k": ["v", 1, None]}


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain ASCII, kept as is", "plain ASCII, kept as is"),
        ("tab\tnewline\ncr\r", "tab newline cr "),  # word separators become spaces
        ("\x1b]0;pwned\x07", "]0;pwned"),  # ESC, BEL
        ("a\x00b\x01c\x1fd\x7fe", "abcde"),  # NUL, other C0, DEL
        ("a\x80b\x85c\x9bd\x9f", "abcd"),  # C1
        ("café\u00a0naïve\u2028ok", "café\u00a0naïve\u2028ok"),  # printable or not, not a control character
        ("\udcff\x1b[2J", "?[2J"),  # an undecodable byte, then an escape sequence
    ],
)
def test_control_characters_are_removed_from_text(text, stored):
    from situation.store import clean_column, clean_text, json_text

    assert clean_text(text) == stored
    assert clean_column([text, "other"]) == [stored, "other"]
    assert json.loads(json_text({text: [text]})) == {stored: [stored]}


def test_json_text_is_cleaned_only_when_it_needs_to_be():
    from situation.store import MAX_TEXT, json_text

    assert json_text(["/usr/bin/a", "b"]) == '["/usr/bin/a","b"]'
    assert json_text({"k\x00": ["caf\udce9\x00", 1, None]}) == '{"k":["caf?",1,null]}'
    assert json_text(["café"]) == '["caf\\u00e9"]'
    assert len(json_text(["x" * (MAX_TEXT + 10)])) == MAX_TEXT + 4


@pytest.mark.parametrize("odd", [None, 'a"b', "a\\b", "tab\there", "del\x7f", "café", "x" * 5000, 7, ""])
def test_long_string_lists_take_the_one_piece_path_only_when_nothing_needs_escaping(odd):
    import json

    from situation.store import _dumps, clean_value, json_text

    paths = [f"/usr/share/doc/p/file-{i}" for i in range(500)]
    value = paths if odd is None else [*paths[:250], odd, *paths[250:]]
    assert json_text(value) == _dumps(clean_value(value))  # the same text as the encoder's, cleaned
    assert json.loads(json_text(tuple(value))) == json.loads(json_text(value))


async def test_unchanged_rows_are_found_by_index_probes_whatever_the_table_holds(tls_cluster, fresh_database):
    """Looking up the ids of unchanged rows never reads the whole table: it holds every agent's rows."""
    import json

    store = await open_store(tls_cluster.superuser_dsn(fresh_database("probes")), AGENT)
    try:
        endpoint = (await store.upsert("application_endpoints", [{"port": 22, "protocol": "tcp", "addr": "0.0.0.0",
                                                                   "network_interface_id": None}],
                                       key="port_protocol_addr_network_interface_id")).ids[0]
        flows = [{"src_application_id": None, "src_addr": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                  "dst_endpoint_id": endpoint if i % 2 else None} for i in range(20_000)]
        await store.upsert("flows", flows, key="flow_src_dst")
        async with store.pool.acquire() as connection:
            await connection.execute("ANALYZE situation.flows")
            probed = flows[:3000]
            lookup = store._lookup_sql("flows", ("src_application_id", "src_addr", "dst_endpoint_id"))
            plan = await connection.fetchval(
                f"EXPLAIN (FORMAT JSON) {lookup}",
                [f["src_application_id"] for f in probed], [f["src_addr"] for f in probed],
                [f["dst_endpoint_id"] for f in probed],
            )
        text = json.dumps(plan)
        assert "Index Scan" in text and "Seq Scan" not in text and "Hash" not in text, text
    finally:
        await store.close()


async def test_deadlock_victim_is_retried_as_a_unit(tls_cluster, fresh_database):
    """A unit of work chosen as a deadlock victim runs again, whole, on a fresh acquire."""
    import asyncpg

    from situation.store.postgres import PostgresStore

    store = await open_store(tls_cluster.superuser_dsn(fresh_database("retry")), AGENT)
    assert isinstance(store, PostgresStore)
    attempts = []

    async def work(connection):
        attempts.append(await connection.fetchval("SELECT pg_backend_pid()"))
        if len(attempts) == 1:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return "done"

    try:
        assert await store._retrying(work) == "done"
        assert len(attempts) == 2
    finally:
        await store.close()


async def test_two_writers_in_opposite_orders_do_not_deadlock(tls_cluster, fresh_database):
    """Batches are sorted by key, so writers holding rows in opposite orders queue instead of deadlocking."""
    dsn = tls_cluster.superuser_dsn(fresh_database("order"))
    stores = [await open_store(dsn, AGENT), await open_store(dsn, AGENT)]
    try:
        machine = (await stores[0].upsert("machines", [{"agent": AGENT}], key="agent")).ids[0]
        rows = [{"uid": str(i), "name": f"u{i}", "machine_id": machine} for i in range(300)]
        for round_ in range(5):
            results = await asyncio.gather(
                stores[0].upsert("users", [dict(r, name=f"a{round_}{r['uid']}") for r in rows], key="machine_user"),
                stores[1].upsert("users", [dict(r, name=f"b{round_}{r['uid']}") for r in reversed(rows)],
                                 key="machine_user"),
            )
            assert sum(r.written for r in results) >= 300
    finally:
        for store in stores:
            await store.close()


async def test_sqlite_transaction_cancelled_while_waiting_leaves_no_transaction_open(tmp_path):
    import sqlite3

    path = tmp_path / "locked.sqlite"
    store = await open_store(str(path), AGENT)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(store.upsert("machines", [{"agent": AGENT}], key="agent"), 0.3)
    finally:
        other.execute("COMMIT")
        other.close()
    await store.upsert("machines", [{"agent": "e" * 32, "hostname": "after"}], key="agent")
    await store.close()
    with sqlite3.connect(path) as db:  # committed, not left in a dangling transaction
        assert db.execute("SELECT count(*) FROM machines WHERE hostname = 'after'").fetchone()[0] == 1


async def test_a_transaction_unit_is_rerun_whole(store):
    """A unit chosen as deadlock victim is rolled back and run again, whole (PostgreSQL);
    SQLite has one local writer and runs it once."""
    import asyncpg

    attempts = []

    async def unit():
        await store.upsert("machines", [{"agent": AGENT, "hostname": f"try{len(attempts)}"}], key="agent")
        attempts.append(1)
        if len(attempts) == 1 and store.dialect == "postgres":
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return "done"

    assert await store.run_in_transaction(unit) == "done"
    assert len(attempts) == (2 if store.dialect == "postgres" else 1)
    assert (await store.counts())["machines"] == 1


async def test_a_module_counts_a_rerun_unit_once(store):
    """Rows counted by an attempt that was rolled back are not counted again on the rerun."""
    import asyncpg
    import structlog

    from situation.hostroot import HostRoot
    from situation.module import Context

    ctx = Context(store=store, log=structlog.get_logger(), agent_id=AGENT, options={}, root=HostRoot())
    ctx.count(5)  # written before the unit, kept
    attempts = []

    async def unit():
        result = await store.upsert("machines", [{"agent": AGENT, "hostname": f"try{len(attempts)}"}], key="agent")
        ctx.count(result.written)
        attempts.append(1)
        if len(attempts) == 1 and store.dialect == "postgres":
            raise asyncpg.DeadlockDetectedError("deadlock detected")

    await ctx.run_in_transaction(unit)
    assert ctx.rows_written == 6


HOSTILE = "\x1b]0;pw\x07"


async def stored_control_characters(store) -> list[str]:
    if store.dialect == "sqlite":
        return sqlite_control_characters(store.path)
    async with store.pool.acquire() as connection:
        return await postgres_control_characters(connection)


async def stored_machine(store) -> dict:
    if store.dialect == "sqlite":
        with sqlite3.connect(store.path) as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM machines").fetchone())
    async with store.pool.acquire() as connection:
        return dict(await connection.fetchrow("SELECT * FROM situation.machines"))


async def test_no_control_character_is_ever_stored(store):
    """Upserted columns, JSON strings and keys, arrays and named-query arguments: one rule on both backends."""
    machine = (await store.upsert("machines", [{
        "agent": AGENT, "hostname": f"web{HOSTILE}01", "host_id": "id\x9b\x85\x00", "platform": "linux",
        "distribution": "Deb\x7fian\tGNU/Linux\r\n",
    }], key="agent")).ids[0]
    await store.upsert("users", [{"uid": "1000", "gid": "0", "name": "Bob\nghost", "username": f"bob{HOSTILE}",
                                  "domain": "", "machine_id": machine}], key="machine_user")
    await store.upsert("network_interfaces", [{
        "name": HOSTILE, "mac": "52:54:00:ab:cd:ef", "ip": [f"10.0.0.1{HOSTILE}"], "tag": "",
        "flags": {f"up{HOSTILE}": [HOSTILE]}, "machine_id": machine,
    }], key="machine_mac_tag")
    await store.execute("set_machine_chassis", f"vm{HOSTILE}", machine, AGENT)

    assert await stored_control_characters(store) == []
    row = await stored_machine(store)
    assert (row["hostname"], row["host_id"], row["distribution"], row["chassis"]) == (
        "web]0;pw01", "id", "Debian GNU/Linux  ", "vm]0;pw")
    # Arguments are cleaned as values are, so hostile text finds the row it was stored as.
    assert (await store.fetchrow("machine_by_host_id", "id\x9b\x85\x00"))["id"] == machine
    assert [r["machine_id"] for r in await store.fetch("machines_by_hostname", f"web{HOSTILE}01")] == [machine]


async def stored_disk_sizes(store) -> dict[str, int]:
    if store.dialect == "sqlite":
        with sqlite3.connect(store.path) as db:
            return dict(db.execute("SELECT name, size FROM disks"))
    async with store.pool.acquire() as connection:
        return dict(await connection.fetch("SELECT name, size FROM situation.disks"))


async def test_an_integer_outside_64_bits_never_reaches_the_backend(store):
    """The batch is refused whole, with one error naming table and column; the range's ends are stored."""
    from situation.store import IntegerOutOfRange

    machine = await host(store)
    for huge in (2**63, -(2**63) - 1, 99999999999999999999999, 10**5000):
        rows = [{"name": "sda", "size": 1, "machine_id": machine}, {"name": "sdb", "size": huge, "machine_id": machine}]
        with pytest.raises(IntegerOutOfRange, match=r"^disks\.size: .* outside the signed 64-bit range"):
            await store.upsert("disks", rows, key="machine_disk_name")
        with pytest.raises(IntegerOutOfRange, match=r"^argument \$2 of query set_machine_chassis: "):
            await store.execute("set_machine_chassis", "vm", huge, AGENT)
    assert await stored_disk_sizes(store) == {}
    edges = [{"name": "max", "size": 2**63 - 1, "machine_id": machine},
             {"name": "min", "size": -(2**63), "machine_id": machine}]
    assert (await store.upsert("disks", edges, key="machine_disk_name")).written == 2
    assert await stored_disk_sizes(store) == {"max": 2**63 - 1, "min": -(2**63)}
