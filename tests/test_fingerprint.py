"""fingerprint: an agent finds the machine row that already describes its host.

The host is a fixture tree (HostRoot), the store a real SQLite database and a real
PostgreSQL one, so every lookup runs the real named queries of both dialects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine
from situation.modules import fingerprint  # noqa: F401 - registers the module
from situation.modules.fingerprint import Identity, LocalInterface, score_machines
from situation.store import open_store

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


async def run_fingerprint(store, root) -> Context:
    ctx = Context(store=store, log=structlog.get_logger().bind(module="fingerprint"), agent_id=AGENT,
                  options={}, root=root, host=HostMachine())
    await REGISTRY["fingerprint"].run(ctx)
    return ctx


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


async def test_claims_the_row_with_this_host_id(store, root):
    found = await machine(store, host_id=HOST_ID, hostname="seen-by-someone")
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id == found
    assert (await store.fetchrow("machine_by_agent", AGENT))["id"] == found


async def test_never_takes_another_agents_row(store, root):
    await machine(store, agent=OTHER, host_id=HOST_ID)
    ctx = await run_fingerprint(store, root)
    assert ctx.host.id is None


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


async def test_host_basic_then_creates_no_second_row(store, root):
    from situation.modules import host_basic  # noqa: F401 - registers the module

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
