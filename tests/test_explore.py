"""`situation explore` on real SQLite and PostgreSQL databases, driven by Textual's pilot."""

from __future__ import annotations

import hashlib
import os
import io
import re
import sqlite3
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from rich.console import Console
from support.cluster import clean_environ
from support.inventory import fill_inventory

from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.explore import MAX_CELL, ExploreApp
from situation.store.reader import open_reader
from situation.connection.roles import grant
from situation.store import open_store

READER, READER_PASSWORD = "ex_reader", "reader-pw"
HOSTILE = "\x1b[2J\x1b]0;pwned\x07[red]EVIL[/red][link=http://x]y[/link]\u202e\x9b31m" + "A" * 10_000


@pytest.fixture(scope="module")
def reader_role(tls_cluster):
    tls_cluster.drop_role(READER)
    tls_cluster.create_role(READER, READER_PASSWORD)
    yield READER
    tls_cluster.drop_role(READER)


@pytest.fixture(params=["sqlite", "postgres"])
async def lab(request, tmp_path):
    """A filled database (3 zones × 8 hosts, one host with a hostile name written raw) and the DSN to read it."""
    if request.param == "sqlite":
        dsn = owner_dsn = str(tmp_path / "lab.sqlite")
    else:
        cluster, certs = request.getfixturevalue("tls_cluster"), request.getfixturevalue("certs")
        role = request.getfixturevalue("reader_role")
        name = request.getfixturevalue("fresh_database")("ex")
        owner_dsn = cluster.superuser_dsn(name)
        dsn = cluster.uri(role, READER_PASSWORD, dbname=name, sslmode="verify-full", sslrootcert=certs.ca_crt)
    store = await open_store(owner_dsn, "ab" * 16)
    try:
        inventory = await fill_inventory(store, zones=3, hosts=8)
    finally:
        await store.close()
    victim = inventory.hosts[next(iter(inventory.zones))][2]
    await raw_execute(owner_dsn, "UPDATE {s}machines SET hostname = $1 WHERE id = $2", HOSTILE, victim["machine_id"])
    if request.param == "postgres":
        owner = await connect(parse_dsn(owner_dsn, environ={}), statement_cache_size=0)
        try:
            await grant(owner, READER, reader=True)
        finally:
            await owner.close()
    return dsn, owner_dsn, inventory, victim


async def raw_execute(dsn: str, sql: str, *args):
    """A write that bypasses the store (and its cleaning), as another writer could make it."""
    if dsn.startswith("postgresql://"):
        connection = await connect(parse_dsn(dsn, environ={}), statement_cache_size=0)
        try:
            return await connection.fetch(sql.format(s="situation."), *args)
        finally:
            await connection.close()
    with sqlite3.connect(dsn) as db:
        return [tuple(r) for r in db.execute(re.sub(r"\$\d+", "?", sql.format(s="")), args)]


async def settle(pilot, app):
    for _ in range(3):
        await pilot.pause()
        await app.workers.wait_for_complete()
    await pilot.pause()


def card_text(app) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(app.card)
    return console.file.getvalue()


def column(app, index: int) -> list[str]:
    table = app.query_one("#hosts")
    return [table.get_row_at(row)[index].plain for row in range(table.row_count)]


async def test_zones_hosts_card_filter_and_screenshot(lab, tmp_path):
    dsn, owner_dsn, inventory, _victim = lab
    cidrs = list(inventory.zones)
    reader = await open_reader(dsn, "explore")
    app = ExploreApp(reader, screenshot_dir=str(tmp_path))
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, app)
            assert [z.label for z in app.zones] == cidrs
            ips = column(app, 1)
            assert ips == [h["ip"] for h in inventory.hosts[cidrs[0]]]
            assert all(re.fullmatch(r"52:54(:[0-9a-f]{2}){4}", mac) for mac in column(app, 2))
            assert all(vendor for vendor in column(app, 3))

            # The node card of the first host: system, endpoints with incoming counts, outgoing flows.
            first = inventory.hosts[cidrs[0]][0]
            text = card_text(app)
            assert first["hostname"] in text and "Platform" in text and "Chassis" in text
            endpoints = await raw_execute(
                owner_dsn, "SELECT e.port, (SELECT count(*) FROM {s}flows f WHERE f.dst_endpoint_id = e.id) "
                "FROM {s}application_endpoints e WHERE e.network_interface_id = $1", first["nic_id"])
            for port, incoming in endpoints:
                assert re.search(rf"tcp/{port} \w+ \({incoming}\)", text), text
            assert column(app, 4)[0] == str(len(endpoints))
            assert "Flows (outgoing)" in text and " → " in text
            tls_ports = [p for p, _ in endpoints if p in (443, 8443)]
            if tls_ports:
                assert re.search(r"certificate (expires|expired) \d{4}-\d\d-\d\d", text)

            # ↓ moves to the next host's card; Tab goes to the next zone, and wraps.
            await pilot.press("down")
            await settle(pilot, app)
            assert inventory.hosts[cidrs[0]][1]["hostname"] in card_text(app)
            await pilot.press("tab")
            await settle(pilot, app)
            assert app.zone_index == 1
            assert column(app, 1) == [h["ip"] for h in inventory.hosts[cidrs[1]]]
            assert inventory.hosts[cidrs[1]][0]["hostname"] in card_text(app)
            await pilot.press("tab", "tab")
            await settle(pilot, app)
            assert app.zone_index == 0

            # / filters the hosts; Esc clears the filter.
            wanted = inventory.hosts[cidrs[0]][5]
            await pilot.press("slash", *wanted["ip"])
            await settle(pilot, app)
            assert column(app, 1) == [wanted["ip"]]
            assert wanted["hostname"] in card_text(app)
            await pilot.press("escape")
            await settle(pilot, app)
            assert len(column(app, 1)) == len(inventory.hosts[cidrs[0]])
            await pilot.press("q")  # q quits once the filter is closed
            await settle(pilot, app)
    finally:
        await reader.close()
    assert app.failure is None and not app.is_running


async def test_ctrl_s_writes_an_svg(lab, tmp_path):
    dsn, *_ = lab
    reader = await open_reader(dsn, "explore")
    app = ExploreApp(reader, screenshot_dir=str(tmp_path))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, app)
            await pilot.press("ctrl+s")
            await settle(pilot, app)
            assert app.last_screenshot is not None
            assert re.fullmatch(r"situation-\d+\.svg", app.last_screenshot.rsplit("/", 1)[-1])
            assert app.screen.__class__.__name__ == "Notice"
            await pilot.press("enter")
            await settle(pilot, app)
            assert app.screen.__class__.__name__ != "Notice"
    finally:
        await reader.close()
    path = app.last_screenshot
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert "Zones" in "".join(root.itertext())


async def test_hostile_hostname_renders_inert(lab, tmp_path):
    dsn, _owner, inventory, victim = lab
    reader = await open_reader(dsn, "explore")
    app = ExploreApp(reader, screenshot_dir=str(tmp_path))
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, app)
            machines = column(app, 0)
            shown = machines[2]
            assert len(shown) <= MAX_CELL
            assert "[red]EVIL[/red]" in shown  # markup shown as text, not applied
            assert not any(ch in shown for ch in "\x1b\x07\x9b\u202e")
            await pilot.press("down", "down")
            await settle(pilot, app)
            text = card_text(app)
            assert "[red]EVIL" in text and "\x1b" not in text and len(max(text.splitlines(), key=len)) < 200
            svg = app.export_screenshot()
    finally:
        await reader.close()
    assert "\x1b" not in svg and "\x07" not in svg
    root = ET.fromstring(svg)
    assert "EVIL" in "".join(root.itertext()).replace("\xa0", " ")
    assert victim["hostname"] not in svg


async def test_reader_never_writes(lab):
    dsn, owner_dsn, *_ = lab
    if not dsn.startswith("postgresql://"):
        before = hashlib.sha256(open(dsn, "rb").read()).hexdigest()
    reader = await open_reader(dsn, "explore")
    try:
        if reader.dialect == "postgres":
            assert await reader._connection.fetchval("SHOW default_transaction_read_only") == "on"
            with pytest.raises(Exception, match="read-only"):
                await reader._connection.execute("DELETE FROM flows")
        else:
            with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
                reader._sqlite.connection.execute("DELETE FROM flows")
            assert hashlib.sha256(open(dsn, "rb").read()).hexdigest() == before
    finally:
        await reader.close()


# -- the command ---------------------------------------------------------------------------


def situation(*args, env=None):
    return subprocess.run([sys.executable, "-m", "situation", *args], env=env or clean_environ(), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_missing_or_foreign_database_is_one_line(tmp_path):
    missing = tmp_path / "nothing.sqlite"
    result = situation("explore", "--db", str(missing))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "cannot open SQLite database" in result.stderr and not missing.exists()
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text)")
    result = situation("explore", "--db", str(foreign))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "has no situation tables" in result.stderr and "Traceback" not in result.stderr
    with sqlite3.connect(foreign) as db:  # never migrated
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_postgres_without_schema_is_one_line(tls_cluster, fresh_database):
    result = situation("explore", "--db", tls_cluster.superuser_dsn(fresh_database("exn")))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "has no situation schema" in result.stderr and "situation migrate" in result.stderr


async def test_without_a_terminal_is_one_line(tmp_path):
    path = tmp_path / "lab.sqlite"
    store = await open_store(str(path), "ab" * 16)
    await store.close()
    result = situation("explore", "--db", str(path))
    assert result.returncode == 2 and "needs a terminal" in result.stderr and len(result.stderr.splitlines()) == 1
