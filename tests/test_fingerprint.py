"""fingerprint: an agent finds the machine row that already describes its host.

The host is a fixture tree (HostRoot), the store a real SQLite database and a real
PostgreSQL one, so every lookup runs the real named queries of both dialects.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine
from situation.modules import fingerprint, host_basic  # noqa: F401 - registers the modules
from situation.modules.fingerprint import Identity, LocalInterface, score_machines
from situation.store import open_store
from support.stores import raw_rows

AGENT = "ab" * 16
OTHER = "cd" * 16
MAC = "52:54:00:12:34:56"
IP = "192.168.50.7"
MACHINE_ID = "0123456789abcdef0123456789abcdef"
HOST_ID = "01234567-89ab-cdef-0123-456789abcdef"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def root(tmp_path) -> HostRoot:
    base = tmp_path / "host"
    write(base / "proc/sys/kernel/hostname", "web-7\n")
    write(base / "etc/machine-id", MACHINE_ID + "\n")
    write(base / "sys/class/net/eth0/address", MAC + "\n")
    write(base / "sys/class/net/eth0/flags", "0x1043\n")
    write(base / "sys/class/net/eth0/type", "1\n")
    write(base / "sys/class/net/lo/address", "00:00:00:00:00:00\n")
    write(base / "sys/class/net/lo/flags", "0x9\n")
    write(base / "sys/class/net/lo/type", "772\n")
    write(base / "situation-test/addresses.json", json.dumps({"eth0": [f"{IP}/24", "fe80::1/64"], "lo": ["127.0.0.1/8"]}))
    write(base / "proc/net/tcp",
          "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000\n")
    return HostRoot.under(base)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path):
    if request.param == "postgres":
        cluster = request.getfixturevalue("tls_cluster")
        dsn = cluster.superuser_dsn(request.getfixturevalue("fresh_database")("fp"))
    else:
        dsn = str(tmp_path / "fp.sqlite")
    opened = await open_store(dsn, AGENT)
    yield opened
    await opened.close()


async def run_fingerprint(store, root, agent: str = AGENT) -> Context:
    ctx = Context(store=store, log=structlog.get_logger().bind(module="fingerprint"), agent_id=agent,
                  options={}, root=root, host=HostMachine())
    await REGISTRY["fingerprint"].run(ctx)
    return ctx


async def run_host_basic(store, root, host: HostMachine, agent: str = AGENT) -> Context:
    write(Path(str(root.proc)) / "uptime", "100.0 50.0\n")
    ctx = Context(store=store, log=structlog.get_logger().bind(module="host-basic"), agent_id=agent,
                  options={}, root=root, host=host)
    await REGISTRY["host-basic"].run(ctx)
    return ctx


async def all_machines(store) -> list[dict]:
    return await raw_rows(store, "SELECT id, agent, host_id, hostname FROM machines ORDER BY id")


async def written_an_hour_ago(store, machine_id: int) -> None:
    ago = "now() - interval '1 hour'" if store.dialect == "postgres" else "datetime('now', '-1 hour')"
    await raw_rows(store, f"UPDATE machines SET updated_at = {ago} WHERE id = {int(machine_id)}")


async def machine(store, **columns) -> int:
    key = "agent" if columns.get("agent") else "host_id"
    columns.setdefault("host_id", None)
    return (await store.upsert("machines", [columns], key=key)).ids[0]


async def nic(store, machine_id, mac=MAC, ip=(IP,)) -> int:
    row = {"name": None, "mac": mac, "ip": list(ip), "tag": "", "machine_id": machine_id, "flags": {"up": True}}
    if machine_id is None:
        async with store.transaction():
            await store.upsert("network_interfaces", [row], key="machine_mac_tag")
        return (await store.fetch("nics_by_mac", mac))[0]["id"]
    return (await store.upsert("network_interfaces", [row], key="machine_mac_tag")).ids[0]


async def test_nothing_known_claims_nothing(store, root):
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id is None
    assert (await store.counts())["machines"] == 0


async def test_own_agent_row_comes_first(store, root):
    await machine(store, host_id=HOST_ID, hostname="web-7")  # would match by host_id
    mine = await machine(store, agent=AGENT, hostname="old-name")
    assert (await run_fingerprint(store, root)).host.id == mine


async def test_proposes_the_row_with_this_host_id_and_host_basic_takes_it(store, root):
    found = await machine(store, host_id=HOST_ID, hostname="seen-by-someone")
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id == found and await store.fetchrow("machine_by_agent", AGENT) is None  # no write yet
    with capture_logs() as logs:
        await run_host_basic(store, root, ctx.host)
    assert (await store.fetchrow("machine_by_agent", AGENT))["id"] == found
    assert not [e for e in logs if "previous_agent" in e]  # a row without an agent: no take-over to report


async def test_another_agents_row_of_this_host_is_taken_over_once(store, root):
    theirs = await machine(store, agent=OTHER, host_id=HOST_ID)
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id == theirs
    with capture_logs() as logs:
        await run_host_basic(store, root, ctx.host)
        await run_host_basic(store, root, (await run_fingerprint(store, root)).host)
    [takeover] = [e for e in logs if "previous_agent" in e]
    assert takeover["previous_agent"] == OTHER and takeover["machine_id"] == theirs
    # Written just now by the other agent: two agents on this host, a warning.
    assert takeover["log_level"] == "warning"
    assert [(r["id"], r["agent"]) for r in await all_machines(store)] == [(theirs, AGENT)]


async def test_claims_a_machine_neighbours_discovered(store, root):
    neighbour_view = await machine(store, host_id="ffffffff-0000-0000-0000-000000000001", hostname="WEB-7")
    await nic(store, neighbour_view)
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id == neighbour_view  # MAC 0.4 + address 0.2 + hostname 0.2


async def test_hostname_alone_is_not_enough(store, root):
    await machine(store, host_id="ffffffff-0000-0000-0000-000000000002", hostname="web-7")
    assert (await run_fingerprint(store, root)).host.id is None


async def test_adopts_a_lone_interface_seen_by_arp(store, root):
    nic_id = await nic(store, None)
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id is not None
    assert (await store.fetchrow("machine_by_agent", AGENT))["id"] == ctx.host.id
    assert [r["machine_id"] for r in await store.fetch("nics_by_mac", MAC)] == [ctx.host.id]
    assert nic_id


async def test_two_agents_adopting_one_interface_at_once_make_one_machine(store, root):
    await nic(store, None)
    first, second = await asyncio.gather(run_fingerprint(store, root), run_fingerprint(store, root, OTHER))
    [row] = await all_machines(store)
    assert [first.host.id, second.host.id].count(row["id"]) == 1  # the loser rolled its machine back
    assert [r["machine_id"] for r in await store.fetch("nics_by_mac", MAC)] == [row["id"]]


async def test_host_basic_then_creates_no_second_row(store, root):
    found = await machine(store, host_id=HOST_ID)
    ctx = await run_fingerprint(store, root)
    write(Path(str(root.proc)) / "uptime", "100.0 50.0\n")
    await REGISTRY["host-basic"].run(ctx)
    counts = await store.counts()
    assert counts["machines"] == 1 and ctx.host.id == found


def test_scores():
    identity = Identity(None, "h", [LocalInterface(MAC, (IP,))], listening_ports={22, 443})
    candidates = score_machines(
        identity,
        mac_nics=[{"machine_id": 1, "agent": None}, {"machine_id": 2, "agent": None}],
        ip_nics=[{"machine_id": 1, "agent": None}],
        same_hostname=[{"machine_id": 3, "agent": None}],
        ports={1: 2, 3: 5},
    )
    assert [(c.machine_id, round(c.score, 2)) for c in candidates] == [(1, 0.8), (3, 0.5), (2, 0.4)]


async def test_addresses_and_ports_without_a_mac_are_not_enough(store, root):
    """Sites reuse private ranges: an address plus an open port must not hand over a row."""
    elsewhere = await machine(store, host_id="ffffffff-0000-0000-0000-000000000003", hostname="web-7")
    await nic(store, elsewhere, mac="02:00:00:00:99:99")  # our address, another MAC
    assert (await run_fingerprint(store, root)).host.id is None


# -- one row per host (situation/host_row.py) --------------------------------------------------


async def test_a_stale_agents_row_is_taken_over_quietly(store, root):
    theirs = await machine(store, agent=OTHER, host_id=HOST_ID)
    await written_an_hour_ago(store, theirs)
    with capture_logs() as logs:
        await run_host_basic(store, root, (await run_fingerprint(store, root)).host)
    [takeover] = [e for e in logs if "previous_agent" in e]
    assert takeover["log_level"] == "info" and takeover["previous_agent"] == OTHER
    assert takeover["seconds_since_written"] >= 3500


async def test_a_new_host_id_with_our_mac_keeps_our_row(store, root):
    """The host_id source changed (a new DMI UUID, a boot_id after a reboot): still this host."""
    ours = await machine(store, agent=AGENT, host_id="01d01d00-0000-0000-0000-000000000000", hostname="web-7")
    await nic(store, ours)
    with capture_logs() as logs:
        await run_host_basic(store, root, (await run_fingerprint(store, root)).host)
    assert [(r["id"], r["agent"], r["host_id"]) for r in await all_machines(store)] == [(ours, AGENT, HOST_ID)]
    assert not [e for e in logs if e["log_level"] == "warning"]


async def test_an_earlier_row_without_host_id_gives_the_agent_id_up(store, root):
    host_row = await machine(store, host_id=HOST_ID, hostname="seen-by-someone")
    leftover = await machine(store, agent=AGENT, hostname="web-7")  # written before its host_id was known
    await run_host_basic(store, root, (await run_fingerprint(store, root)).host)
    rows = {r["id"]: r for r in await all_machines(store)}
    assert rows[host_row]["agent"] == AGENT and rows[leftover]["agent"] is None


async def test_a_cloned_agent_id_never_writes_over_the_other_host(store, root):
    from situation import host_row

    host_row._clones_warned.clear()  # once per process, and both backends run in this one
    other_host = await machine(store, agent=AGENT, host_id="c10ec10e-0000-0000-0000-000000000000", hostname="db-1")
    await nic(store, other_host, mac="02:00:00:00:c1:0e")
    with capture_logs() as logs:
        for _ in range(2):
            ctx = await run_host_basic(store, root, (await run_fingerprint(store, root)).host)
    rows = {r["host_id"]: r for r in await all_machines(store)}
    assert rows["c10ec10e-0000-0000-0000-000000000000"] == {
        "id": other_host, "agent": AGENT, "host_id": "c10ec10e-0000-0000-0000-000000000000", "hostname": "db-1"}
    assert rows[HOST_ID]["agent"] is None and rows[HOST_ID]["hostname"] == "web-7"
    assert ctx.host.id == rows[HOST_ID]["id"]
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["other_machine_id"] == other_host and "cloned image" in warning["event"]
