"""Ingest speed of the store, against a naive one-statement-per-row baseline.

Run it from the repository::

    .venv/bin/python bench/ingest.py [--pg DSN] [--keep] [--check]

What it does, per backend (PostgreSQL, then SQLite in a temporary file):

1. Builds a synthetic inventory of one host: 1 machine, 1 network interface,
   3,000 packages (each with a ``files`` list of 3–4 paths), 300 applications
   (``args`` lists, ``config`` on some, every other one linked to a package),
   1,000 application endpoints (some on the NIC, most owned by an application,
   some with ``tls`` / ``application_protocols``) and 5,000 flows (one in five
   incoming, with a NULL ``src_application_id``).
2. Writes it through ``store.upsert`` three times into a fresh database:
   *fresh* (empty tables), *unchanged* (the same rows again: must write 0 rows)
   and *10% changed* (every tenth row of packages, applications, endpoints and
   flows differs in a non-key column: must write exactly those). Each table is
   one ``upsert`` call, timed on its own, ids included (they feed the foreign
   keys of the next table, as in the agent).
3. Writes the fresh inventory once more with the naive baseline into a second
   fresh database of the same server (or a second SQLite file):

   - PostgreSQL: one ``INSERT … VALUES … ON CONFLICT (…) DO UPDATE SET …
     RETURNING id`` per row, ``await connection.fetchval(…)`` one row at a time
     (asyncpg prepares the statement once and caches it), all rows of a table
     in one transaction. That is the favourable naive variant: autocommit per
     row would add a commit per row on top.
   - SQLite: one ``execute`` of the same statement per row on a connection in
     autocommit mode, so every row is its own transaction and commit — what a
     naive writer gets from ``sqlite3`` by default — with the store's own
     pragmas (WAL, ``synchronous = NORMAL``, foreign keys on), called directly
     on the event loop's thread (no worker-thread hop).

   The figure reported is store/baseline: the baseline's time for the fresh
   pass divided by the store's, i.e. how many times faster the store is.
4. PostgreSQL only: measures the server floor. The baseline's rows are copied
   (untimed) into staging temp tables of a third fresh database, then each
   table is filled by one ``INSERT … SELECT … ON CONFLICT DO NOTHING`` on the
   server, timed: the heap, index, foreign-key and WAL work that every writer of
   these rows pays, with no client and no network in it. baseline/floor is the
   ceiling of store/baseline on this server: no writer beats the floor.

Steps 2 to 4 are repeated ``--repeat`` times (default 3), each time into new
databases, store and baseline interleaved; every time shown is the best (the
minimum) of the repetitions, per table and pass, which is the least noisy
estimate on a shared machine.

Target: on PostgreSQL the store's fresh pass is at least 20x the baseline's.
Figures are information, not gates: the script prints PASS/FAIL and exits 0
either way, unless ``--check`` is given (exit 1 below target). It always exits
2 when the store got something wrong: the unchanged pass wrote rows, the 10%
pass wrote another number of rows than changed, ids were missing or moved
between passes, or the tables do not hold the expected number of rows.

Without ``--pg`` a throwaway PostgreSQL cluster is started with
``tests/support/cluster.py`` (fsync and synchronous_commit off, Unix socket)
and destroyed at the end. With ``--pg DSN`` the DSN must be a role allowed to
CREATE DATABASE: databases ``situation_bench_<pid>_store_<n>``,
``…_baseline_<n>`` and ``…_floor_<n>`` are created there and dropped at the end. ``--keep`` keeps the
cluster's directory (stopped), the databases and the SQLite files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sqlite3
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))

import uvloop  # noqa: E402

from situation import logs  # noqa: E402
from situation.store import conflict_key, open_store, quote_ident  # noqa: E402

AGENT = "be0c4be0c4be0c4be0c4be0c4be0c4be"
TARGET_RATIO = 20.0

N_PACKAGES = 3_000
N_APPLICATIONS = 300
N_ENDPOINTS = 1_000
N_FLOWS = 5_000

# The tables in write order, with the conflict key each one is upserted on.
KEYS = {
    "machines": "agent",
    "network_interfaces": "machine_mac_tag",
    "packages": "name_version_machine_id",
    "applications": "machine_app_name_pid",
    "application_endpoints": "port_protocol_addr_network_interface_id",
    "flows": "flow_src_dst",
}


def changed(index: int) -> bool:
    """Every tenth row differs in the 10% pass."""
    return index % 10 == 3


def expected_changes(table: str, rows: int) -> int:
    if table in ("machines", "network_interfaces"):
        return 0
    return sum(1 for i in range(rows) if changed(i))


# -- the synthetic inventory ---------------------------------------------------------------


def machine_rows() -> list[dict[str, Any]]:
    return [
        {
            "agent": AGENT,
            "hostname": "bench-host",
            "host_id": "5d1c3a2e9f0b4e6a8c7d2b1a0f9e8d7c",
            "arch": "x86_64",
            "platform": "linux",
            "distribution": "debian",
            "distribution_version": "12.7",
            "distribution_family": "debian",
            "uptime": 864_000_000_000_000,
            "cpe": "",
            "chassis": "vm",
            "parent_machine_id": None,
        }
    ]


def nic_rows(machine_id: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "eth0",
            "mac": "52:54:00:12:34:56",
            "mac_vendor": "QEMU virtual NIC",
            "ip": ["10.20.0.5", "fe80::5054:ff:fe12:3456"],
            "gateway": "10.20.0.1",
            "flags": {"up": True, "broadcast": True, "multicast": True, "loopback": False},
            "tag": "",
            "machine_id": machine_id,
        }
    ]


def package_rows(machine_id: int, change: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(N_PACKAGES):
        name = f"bench-pkg-{i:04d}"
        files = [
            f"/usr/lib/x86_64-linux-gnu/lib{name}.so.{i % 5}",
            f"/usr/share/doc/{name}/copyright",
            f"/usr/share/doc/{name}/changelog.Debian.gz",
        ]
        if i % 3 == 0:
            files.append(f"/usr/bin/{name}")
        installed = 1_700_000_000 + 37 * i
        if change and changed(i):
            files.append(f"/etc/{name}/{name}.conf")
            installed += 86_400
        rows.append(
            {
                "name": name,
                "version": f"{1 + i % 7}.{i % 13}.{i % 5}-{1 + i % 3}",
                "vendor": "Bench Maintainers <bench@example.org>",
                "manager": "dpkg",
                "install_time_unix": installed,
                "files": files,
                "machine_id": machine_id,
            }
        )
    return rows


def application_rows(machine_id: int, package_ids: Sequence[int], change: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(N_APPLICATIONS):
        level = "debug" if change and changed(i) else "info"
        rows.append(
            {
                "name": f"/usr/sbin/bench-daemon-{i:03d}",
                "args": ["--config", f"/etc/bench-daemon-{i:03d}/daemon.conf", "--log-level", level, "--foreground"],
                "pid": 1_000 + 3 * i,
                "version": "2.4.1" if not (change and changed(i)) else "2.4.2",
                "protocol": "http" if i % 3 == 0 else "",
                "config": {"workers": 1 + i % 4, "listen": [f"0.0.0.0:{8_000 + i}"]} if i % 5 == 0 else None,
                "cpe": "",
                "machine_id": machine_id,
                "package_id": package_ids[i * 10] if i % 2 == 0 else None,
            }
        )
    return rows


def endpoint_rows(nic_id: int, application_ids: Sequence[int], change: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(N_ENDPOINTS):
        on_nic = i % 3 == 0
        protocols = ["http"] if i % 2 else None
        if change and changed(i):
            protocols = ["http", "h2"]
        rows.append(
            {
                "port": 1_024 + i,
                "protocol": "tcp" if i % 4 else "udp",
                "addr": "10.20.0.5" if on_nic else ("0.0.0.0" if i % 2 else "::"),
                "tls": {"version": "TLS 1.3", "cipher": "TLS_AES_128_GCM_SHA256"} if i % 7 == 0 else None,
                "fingerprints": None,
                "application_protocols": protocols,
                "saas": None,
                "application_id": application_ids[i % N_APPLICATIONS] if i % 5 != 4 else None,
                "network_interface_id": nic_id if on_nic else None,
            }
        )
    return rows


def flow_rows(nic_id: int, application_ids: Sequence[int], endpoint_ids: Sequence[int], change: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(N_FLOWS):
        incoming = i % 5 == 0
        nic = None if incoming else nic_id
        if change and changed(i):
            nic = nic_id if nic is None else None
        rows.append(
            {
                "src_application_id": None if incoming else application_ids[(7 * i) % N_APPLICATIONS],
                "src_network_interface_id": nic,
                "src_addr": f"{192 if incoming else 10}.{168 if incoming else 21}.{i // 256}.{i % 256}",
                "dst_endpoint_id": endpoint_ids[i % N_ENDPOINTS],
            }
        )
    return rows


# -- one pass ---------------------------------------------------------------------------------


@dataclass
class Timing:
    rows: int
    written: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Pass:
    timings: dict[str, Timing]
    ids: dict[str, list[int | None]]

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings.values())

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.timings.values())

    @property
    def written(self) -> int:
        return sum(t.written for t in self.timings.values())


Upsert = Callable[[str, list[dict[str, Any]], str], Any]  # async (table, rows, key) -> (written, ids)


async def load(upsert: Upsert, change: bool) -> Pass:
    """Write the whole inventory through ``upsert``, one timed call per table."""
    timings: dict[str, Timing] = {}
    ids: dict[str, list[int | None]] = {}

    async def put(table: str, rows: list[dict[str, Any]]) -> list[int | None]:
        started = time.perf_counter()
        written, got = await upsert(table, rows, KEYS[table])
        timings[table] = Timing(len(rows), written, time.perf_counter() - started)
        ids[table] = list(got)
        return ids[table]

    [machine] = await put("machines", machine_rows())
    [nic] = await put("network_interfaces", nic_rows(machine))
    packages = await put("packages", package_rows(machine, change))
    applications = await put("applications", application_rows(machine, packages, change))
    endpoints = await put("application_endpoints", endpoint_rows(nic, applications, change))
    await put("flows", flow_rows(nic, applications, endpoints, change))
    return Pass(timings, ids)


def store_upsert(store) -> Upsert:
    async def upsert(table: str, rows: list[dict[str, Any]], key: str):
        result = await store.upsert(table, rows, key=key)
        return result.written, result.ids

    return upsert


# -- the naive baselines ---------------------------------------------------------------------


def naive_sql(dialect: str, table: str, columns: list[str], key: str) -> str:
    target = conflict_key(table, key)
    update = [c for c in columns if c not in target.columns]
    names = ", ".join(quote_ident(c) for c in [*columns, "updated_by"])
    if dialect == "postgres":
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 2))
        qualified, now = f"situation.{quote_ident(table)}", "now()"
    else:
        marks = ", ".join("?" for _ in range(len(columns) + 1))
        qualified, now = quote_ident(table), "CURRENT_TIMESTAMP"
    sets = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in update]
    sets += [f"updated_at = {now}", "updated_by = EXCLUDED.updated_by"]
    return (
        f"INSERT INTO {qualified} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({target.target(dialect)}) DO UPDATE SET {', '.join(sets)} RETURNING id"
    )


AUTOCOMMIT = False  # set by --autocommit


def postgres_baseline(connection) -> Upsert:
    async def upsert(table: str, rows: list[dict[str, Any]], key: str):
        columns = list(rows[0])
        sql = naive_sql("postgres", table, columns, key)
        ids = []
        if AUTOCOMMIT:  # what an ORM-style writer does: every row its own transaction
            for row in rows:
                ids.append(await connection.fetchval(sql, *(row[c] for c in columns), AGENT))
            return len(rows), ids
        async with connection.transaction():
            for row in rows:
                ids.append(await connection.fetchval(sql, *(row[c] for c in columns), AGENT))
        return len(rows), ids

    return upsert


def sqlite_baseline(connection: sqlite3.Connection) -> Upsert:
    def encode(value: Any) -> Any:
        return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value

    async def upsert(table: str, rows: list[dict[str, Any]], key: str):
        columns = list(rows[0])
        sql = naive_sql("sqlite", table, columns, key)
        ids = []
        for row in rows:  # autocommit: one transaction, one commit per row
            ids.append(connection.execute(sql, [*(encode(row[c]) for c in columns), AGENT]).fetchone()[0])
        return len(rows), ids

    return upsert


def open_sqlite_baseline(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA busy_timeout = 10000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


# -- checks and printing ------------------------------------------------------------------------


class Problems(list):
    def add(self, backend: str, text: str) -> None:
        self.append(f"{backend}: {text}")


def check_passes(backend: str, fresh: Pass, unchanged: Pass, modified: Pass, problems: Problems) -> None:
    for table, timing in fresh.timings.items():
        ids = fresh.ids[table]
        if timing.written != timing.rows:
            problems.add(backend, f"fresh pass wrote {timing.written} of {timing.rows} new {table} rows")
        if any(i is None for i in ids) or len(set(ids)) != len(ids):
            problems.add(backend, f"fresh pass returned missing or repeated {table} ids")
    for name, later in (("unchanged", unchanged), ("10% changed", modified)):
        for table in fresh.timings:
            if later.ids[table] != fresh.ids[table]:
                problems.add(backend, f"{name} pass returned other {table} ids than the fresh pass")
    if unchanged.written:
        problems.add(backend, f"unchanged re-run wrote {unchanged.written} rows (must be 0)")
    for table, timing in modified.timings.items():
        expected = expected_changes(table, timing.rows)
        if timing.written != expected:
            problems.add(backend, f"10% pass wrote {timing.written} {table} rows, {expected} changed")


def check_counts(backend: str, counts: dict[str, int], fresh: Pass, problems: Problems) -> None:
    for table, timing in fresh.timings.items():
        if counts.get(table) != timing.rows:
            problems.add(backend, f"{table} holds {counts.get(table)} rows of this agent, expected {timing.rows}")


def rate(value: float) -> str:
    return f"{value:,.0f}"


def print_store(title: str, fresh: Pass, unchanged: Pass, modified: Pass) -> None:
    print(f"\n{title}")
    passes = (("fresh", fresh), ("unchanged", unchanged), ("10% changed", modified))
    head = "".join(f" | {name:>26}" for name, _ in passes)
    sub = "".join(f" | {'written':>8} {'ms':>7} {'rows/s':>9}" for _ in passes)
    print(f"  {'table':<22} {'rows':>6}{head}")
    print(f"  {'':<22} {'':>6}{sub}")
    for table in fresh.timings:
        cells = "".join(
            f" | {p.timings[table].written:>8} {p.timings[table].seconds * 1e3:>7.1f} {rate(p.timings[table].rate):>9}"
            for _, p in passes
        )
        print(f"  {table:<22} {fresh.timings[table].rows:>6}{cells}")
    totals = "".join(f" | {p.written:>8} {p.seconds * 1e3:>7.1f} {rate(p.rows / p.seconds):>9}" for _, p in passes)
    print(f"  {'total':<22} {fresh.rows:>6}{totals}")
    share = modified.written / modified.rows * 100
    print(f"  unchanged re-run wrote {unchanged.written} rows; 10% pass wrote {modified.written} rows ({share:.1f}% of {modified.rows})")


def print_baseline(title: str, store: Pass, baseline: Pass) -> float:
    print(f"\n{title}")
    print(f"  {'table':<22} {'rows':>6} | {'ms':>8} {'rows/s':>9} | {'store/baseline':>14}")
    for table, timing in baseline.timings.items():
        ratio = timing.seconds / store.timings[table].seconds
        print(f"  {table:<22} {timing.rows:>6} | {timing.seconds * 1e3:>8.1f} {rate(timing.rate):>9} | {ratio:>13.1f}x")
    ratio = baseline.seconds / store.seconds
    print(f"  {'total':<22} {baseline.rows:>6} | {baseline.seconds * 1e3:>8.1f} {rate(baseline.rows / baseline.seconds):>9} | {ratio:>13.1f}x")
    return ratio


def print_floor(title: str, store: Pass, baseline: Pass, floor: Pass) -> float:
    """The floor per table, and the ceiling it puts on store/baseline: baseline/floor."""
    print(f"\n{title}")
    print(f"  {'table':<22} {'rows':>6} | {'ms':>8} {'rows/s':>9} | {'store/floor':>11} | {'baseline/floor':>14}")
    for table, timing in floor.timings.items():
        print(
            f"  {table:<22} {timing.rows:>6} | {timing.seconds * 1e3:>8.1f} {rate(timing.rate):>9} | "
            f"{store.timings[table].seconds / timing.seconds:>10.1f}x | {baseline.timings[table].seconds / timing.seconds:>13.1f}x"
        )
    ceiling = baseline.seconds / floor.seconds
    print(
        f"  {'total':<22} {floor.rows:>6} | {floor.seconds * 1e3:>8.1f} {rate(floor.rows / floor.seconds):>9} | "
        f"{store.seconds / floor.seconds:>10.1f}x | {ceiling:>13.1f}x"
    )
    print(f"  no writer beats the floor, so store/baseline cannot exceed baseline/floor = {ceiling:.1f}x on this server")
    return ceiling


# -- the two backends ---------------------------------------------------------------------------


def best(passes: Sequence[Pass]) -> Pass:
    """Per table, the fastest of several runs of the same pass (ids and counts of the first)."""
    first = passes[0]
    timings = {
        table: Timing(timing.rows, timing.written, min(p.timings[table].seconds for p in passes))
        for table, timing in first.timings.items()
    }
    return Pass(timings, first.ids)


async def bench_store(dsn: str, backend: str, problems: Problems) -> tuple[Pass, Pass, Pass]:
    store = await open_store(dsn, AGENT)
    try:
        upsert = store_upsert(store)
        fresh = await load(upsert, change=False)
        unchanged = await load(upsert, change=False)
        modified = await load(upsert, change=True)
        check_counts(backend, await store.counts(), fresh, problems)
    finally:
        await store.close()
    check_passes(backend, fresh, unchanged, modified, problems)
    return fresh, unchanged, modified


async def postgres_baseline_pass(dsn: str) -> Pass:
    from situation.connection.connect import connect
    from situation.connection.dsn import parse_dsn
    from situation.store.postgres import _init_connection

    await (await open_store(dsn, AGENT)).close()  # migrate the baseline database
    connection = await connect(parse_dsn(dsn), server_settings={"application_name": "situation bench"})
    try:
        await _init_connection(connection)  # the store's JSON codecs
        return await load(postgres_baseline(connection), change=False)
    finally:
        await connection.close()


async def sqlite_baseline_pass(path: Path) -> Pass:
    await (await open_store(str(path), AGENT)).close()  # migrate the baseline database
    connection = open_sqlite_baseline(str(path))
    try:
        return await load(sqlite_baseline(connection), change=False)
    finally:
        connection.close()


async def postgres_floor_pass(source_dsn: str, target_dsn: str) -> Pass:
    """The server's own work for the fresh inventory, with no client and no network in it.

    Each table's rows (ids included) are copied from ``source_dsn`` into a staging
    temp table of a fresh database, untimed; then one ``INSERT … SELECT … ON
    CONFLICT DO NOTHING`` per table, committed on its own, is timed. That is the
    same heap, index, foreign-key and WAL work as any writer's, and nothing else:
    no writer of these rows can be faster than this on this server.
    """
    from situation.connection.connect import connect
    from situation.connection.dsn import parse_dsn

    await (await open_store(target_dsn, AGENT)).close()  # migrate
    source = await connect(parse_dsn(source_dsn))
    target = await connect(parse_dsn(target_dsn))
    timings: dict[str, Timing] = {}
    try:
        for table, key in KEYS.items():
            staging, qualified = quote_ident(f"staging_{table}"), f"situation.{quote_ident(table)}"
            copied = io.BytesIO()
            await source.copy_from_table(table, schema_name="situation", output=copied, format="binary")
            await target.execute(f"CREATE TEMP TABLE {staging} (LIKE {qualified})")
            copied.seek(0)
            await target.copy_to_table(f"staging_{table}", source=copied, format="binary")
            rows = await target.fetchval(f"SELECT count(*) FROM {staging}")
            started = time.perf_counter()
            status = await target.execute(
                f"INSERT INTO {qualified} OVERRIDING SYSTEM VALUE SELECT * FROM {staging} "
                f"ON CONFLICT ({conflict_key(table, key).target('postgres')}) DO NOTHING"
            )
            timings[table] = Timing(rows, int(status.rsplit(" ", 1)[-1]), time.perf_counter() - started)
    finally:
        await source.close()
        await target.close()
    return Pass(timings, {})


async def bench_postgres(databases: Sequence[tuple[str, str, str]], server: str, problems: Problems) -> tuple[float, float]:
    runs, baselines, floors = [], [], []
    for store_dsn, baseline_dsn, floor_dsn in databases:
        runs.append(await bench_store(store_dsn, "PostgreSQL", problems))
        baselines.append(await postgres_baseline_pass(baseline_dsn))
        floors.append(await postgres_floor_pass(baseline_dsn, floor_dsn))
    fresh, unchanged, modified = (best([run[i] for run in runs]) for i in range(3))
    baseline, floor = best(baselines), best(floors)
    times = f"best of {len(databases)}"
    print_store(f"PostgreSQL {server}: store.upsert, one call per table ({times})", fresh, unchanged, modified)
    ratio = print_baseline(
        "PostgreSQL baseline: one INSERT … ON CONFLICT … RETURNING id per row, awaited one at a time, "
        f"{'a commit per row' if AUTOCOMMIT else 'one transaction per table'} (fresh pass, {times})",
        fresh,
        baseline,
    )
    ceiling = print_floor(
        f"PostgreSQL server floor: one INSERT … SELECT per table from a staging table on the server, "
        f"no client, no network (fresh pass, {times})",
        fresh,
        baseline,
        floor,
    )
    return ratio, ceiling


async def bench_sqlite(directory: Path, repeat: int, problems: Problems) -> float:
    runs, baselines = [], []
    for n in range(1, repeat + 1):
        runs.append(await bench_store(str(directory / f"store_{n}.sqlite"), "SQLite", problems))
        baselines.append(await sqlite_baseline_pass(directory / f"baseline_{n}.sqlite"))
    fresh, unchanged, modified = (best([run[i] for run in runs]) for i in range(3))
    times = f"best of {repeat}"
    print_store(f"SQLite {sqlite3.sqlite_version}, files in {directory}: store.upsert, one call per table ({times})",
                fresh, unchanged, modified)
    return print_baseline(
        f"SQLite baseline: one INSERT … ON CONFLICT … RETURNING id per row, autocommit: a commit per row "
        f"(fresh pass, {times})",
        fresh,
        best(baselines),
    )


# -- PostgreSQL servers and databases -----------------------------------------------------------


RELAY_PASSWORD = "bench-relay"


class LatencyRelay:
    """bench/latency_proxy.py in a process of its own, so it takes no time from the measured loop."""

    def __init__(self, process: subprocess.Popen, port: int):
        self.process, self.port = process, port

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_latency_relay(cluster, rtt_ms: float) -> LatencyRelay:
    cluster.psql(f"ALTER ROLE postgres PASSWORD '{RELAY_PASSWORD}'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("latency_proxy.py")
    process = subprocess.Popen(
        [sys.executable, str(script), str(port), str(cluster.port), str(rtt_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the latency relay did not start")
    return LatencyRelay(process, port)


async def measured_round_trip(dsn: str, samples: int = 50) -> float:
    """Median milliseconds of ``SELECT 1`` on one connection: what a per-row writer pays each row."""
    from situation.connection.connect import connect
    from situation.connection.dsn import parse_dsn

    connection = await connect(parse_dsn(dsn))
    try:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            await connection.fetchval("SELECT 1")
            times.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return sorted(times)[samples // 2] * 1000


def with_dbname(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name``: libpq keeps the last value of a key."""
    text = dsn.strip()
    if "://" in text:
        return f"{text}{'&' if '?' in text else '?'}dbname={quote(name, safe='')}"
    return f"{text} dbname={name}"


async def server_version(dsn: str) -> str:
    from situation.connection.connect import connect
    from situation.connection.dsn import parse_dsn

    connection = await connect(parse_dsn(dsn))
    try:
        return await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()


async def admin(dsn: str, statements: Sequence[str]) -> None:
    from situation.connection.connect import connect
    from situation.connection.dsn import parse_dsn

    connection = await connect(parse_dsn(dsn), server_settings={"application_name": "situation bench"})
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def run(args: argparse.Namespace, workdir: Path) -> tuple[float, float, Problems]:
    problems = Problems()
    cluster = None
    relay = None
    created: list[str] = []
    names = [(f"store_{n}", f"baseline_{n}", f"floor_{n}") for n in range(1, args.repeat + 1)]
    try:
        if args.pg:
            prefix = f"situation_bench_{os.getpid()}_"
            for pair in names:
                for name in pair:
                    await admin(args.pg, [f"CREATE DATABASE {quote_ident(prefix + name)}"])
                    created.append(prefix + name)
            databases = [tuple(with_dbname(args.pg, prefix + name) for name in pair) for pair in names]
            where = "at --pg"
        else:
            from support.cluster import Cluster

            for key in [k for k in os.environ if k.startswith("PG")]:
                del os.environ[key]  # our own cluster: nothing of the caller's libpq setup applies
            cluster = Cluster(
                Path(tempfile.mkdtemp(prefix="sit-pg-bench-", dir="/tmp")), tls=False, name="bench", keep=args.keep
            ).start()
            for pair in names:
                for name in pair:
                    cluster.create_database(name)
            databases = [tuple(cluster.superuser_dsn(name) for name in pair) for pair in names]
            where = "throwaway cluster, Unix socket, fsync off"
            if args.durable:  # commits reach the disk, as on a production server
                cluster.psql("ALTER SYSTEM SET fsync = on")
                cluster.psql("ALTER SYSTEM SET synchronous_commit = on")
                cluster.psql("SELECT pg_reload_conf()")
                where = "throwaway cluster, Unix socket, fsync on"
            if args.rtt is not None:
                relay = start_latency_relay(cluster, args.rtt)
                databases = [
                    tuple(f"postgresql://postgres:{RELAY_PASSWORD}@127.0.0.1:{relay.port}/{name}?sslmode=disable"
                          for name in pair)
                    for pair in names
                ]
                effective = await measured_round_trip(databases[0][0])
                where = where.replace(
                    "Unix socket", f"TCP through a relay asked for {args.rtt:g} ms, measured round trip {effective:.2f} ms"
                )
        server = f"{await server_version(databases[0][0])} ({where})"
        pg_ratio, pg_ceiling = await bench_postgres(databases, server, problems)
        await bench_sqlite(workdir, args.repeat, problems)
        return pg_ratio, pg_ceiling, problems
    finally:
        if created and not args.keep:
            await admin(args.pg, [f"DROP DATABASE IF EXISTS {quote_ident(n)} WITH (FORCE)" for n in created])
        elif created:
            print(f"\nkept databases {', '.join(created)}")
        if relay is not None:
            relay.stop()
        if cluster is not None:
            cluster.destroy()
            if args.keep:
                print(f"\nkept the cluster (stopped) in {cluster.base_dir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", metavar="DSN", help="a PostgreSQL server to use (a role with CREATEDB) instead of a throwaway cluster")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory, databases and SQLite files")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="runs of every pass, best taken (default 3)")
    parser.add_argument("--autocommit", action="store_true",
                        help="PostgreSQL baseline commits every row (the naive writer) instead of one transaction per table")
    parser.add_argument("--durable", action="store_true",
                        help="throwaway cluster with fsync and synchronous_commit on, like a production server")
    parser.add_argument("--rtt", type=float, default=None, metavar="MS",
                        help="reach the throwaway cluster over TCP through a relay process adding MS milliseconds "
                             "per round trip (0: the relay alone); the measured round trip is printed")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when PostgreSQL is below {TARGET_RATIO:g}x the baseline")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    global AUTOCOMMIT
    AUTOCOMMIT = args.autocommit
    logs.configure(level="warning", fmt="console", stream=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="sit-bench-sqlite-"))
    started = time.perf_counter()
    try:
        pg_ratio, pg_ceiling, problems = uvloop.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"kept the SQLite files in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    verdict = "PASS" if pg_ratio >= TARGET_RATIO else "FAIL"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nPostgreSQL store/baseline, fresh pass: {pg_ratio:.1f}x (target >= {TARGET_RATIO:g}x): {verdict}")
    print(f"PostgreSQL ceiling for any batched writer here (baseline/floor): {pg_ceiling:.1f}x")
    print(f"wall time {time.perf_counter() - started:.1f} s, peak RSS {peak:.0f} MiB")
    if problems:
        print("\nSTORE ERRORS:")
        for problem in dict.fromkeys(problems):
            print(f"  {problem}")
        return 2
    if args.check and verdict == "FAIL":
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
