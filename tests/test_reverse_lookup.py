"""reverse-lookup: untrusted names cleaned, machines found or made per name, NICs never deleted.

The module sends DNS queries, so it runs only inside test-made namespaces
(tests/test_reverse_lookup_netns.py, with dnsmasq). Here: the pure parts, and
the storage step (``attach_by_name``, which only talks to the database) on
real SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import pytest
import structlog

from situation.discovery import Discovery, parse_networks
from situation.hostroot import HostRoot
from situation.module import Context, HostMachine
from situation.modules.reverse_lookup import attach_by_name, nameable_addresses, plan_attachments
from situation.net.reverse_dns import clean_hostname, parse_hosts
from support.stores import backend_store as store, raw_rows  # noqa: F401  (a fixture)

AGENT = "ab" * 16


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["Host-Ten", "Example", ""], "host-ten.example"),  # trailing dot gone, one case
        ([b"host_1", b"corp", b""], "host_1.corp"),
        (["xn--9ca", "example"], "xn--9ca.example"),  # an IDN stays in its ASCII form
        (["a" * 63, "example"], "a" * 63 + ".example"),
        (["a" * 64, "example"], None),  # label too long
        (["a" * 60] * 4 + ["x" * 12], None),  # 256 characters
        ([b"sp ace\\", b"x", b"example", b""], None),  # space and backslash
        ([b"evil\x1b[31m", b"example"], None),  # terminal escape
        ([b"caf\xc3\xa9", b"example"], None),  # raw UTF-8
        ([b"nul\x00", b"example"], None),
        (["-lead", "example"], None),
        (["10", "0", "0", "1"], None),  # an address, not a name
        (["localhost"], None),
        (["localhost", "localdomain"], None),
        ([""], None),
        ([], None),
    ],
)
def test_only_plain_host_names_are_kept(labels, expected):
    assert clean_hostname(labels) == expected


def test_hosts_file_first_line_wins_and_bad_names_are_refused():
    hosts = parse_hosts(
        "# comment\n"
        "127.0.0.1 localhost\n"
        "10.0.0.5   Printer.Example.  printer   # the office printer\n"
        "10.0.0.5   other-name\n"
        "::0001 ip6-localhost\n"
        "10.0.0.6 evil\x1b[2Jname\n"
        "not-an-address name\n"
        "10.0.0.7\n"
    )
    assert hosts == {"127.0.0.1": None, "10.0.0.5": "printer.example", "::1": "ip6-localhost", "10.0.0.6": None}


def test_nameable_addresses_skip_what_names_no_neighbour():
    policy = Discovery(exclude=parse_networks("10.0.0.9", what="x"))
    ips = ["10.0.0.1", "127.0.0.1", "fe80::1", "224.0.0.1", "0.0.0.0", "garbage", "10.0.0.9", "2001:db8::0001",
           "10.0.0.1"]
    assert nameable_addresses(ips, policy.allows) == ["10.0.0.1", "2001:db8::1"]
    assert nameable_addresses(None, policy.allows) == []


def test_plan_never_puts_one_mac_twice_on_a_machine():
    nics = [
        {"id": 3, "mac": "00:00:0c:00:00:01", "tag": "", "ip": ["10.0.1.3"]},
        {"id": 1, "mac": "00:00:0c:00:00:01", "tag": "", "ip": ["10.0.0.3"]},
        {"id": 4, "mac": None, "tag": "", "ip": ["10.0.0.4"]},
        {"id": 5, "mac": None, "tag": "", "ip": ["10.0.0.5"]},
        {"id": 6, "mac": "00:00:0c:00:00:06", "tag": "", "ip": ["10.0.0.6"]},
        {"id": 7, "mac": "00:00:0c:00:00:07", "tag": "", "ip": ["10.0.0.7"]},
        {"id": 8, "mac": "00:00:0c:00:00:08", "tag": "", "ip": ["10.0.0.8"]},
    ]
    held = [  # machine 20 has 00:..:06 already; machine 30 (an agent's host) has 00:..:07
        {"id": 50, "mac": "00:00:0c:00:00:06", "tag": "", "ip": ["10.0.9.6"], "machine_id": 20, "agent": None},
        {"id": 60, "mac": "00:00:0c:00:00:07", "tag": "", "ip": ["10.0.9.7"], "machine_id": 30, "agent": "cd" * 16},
    ]
    plan = plan_attachments(nics, {1: 20, 3: 20, 4: 20, 5: 20, 6: 20, 7: 30}, held)
    assert plan.attach == [(1, 20), (4, 20), (5, 20)]  # lowest id keeps the MAC; MAC-less NICs all join
    assert plan.addresses == {1: ["10.0.0.3", "10.0.1.3"], 50: ["10.0.9.6", "10.0.0.6"]}
    assert plan.kept_apart == 3  # 3, 6 and 7 stay machine-less; 8 had no name


# -- storage, on both backends ------------------------------------------------------


def context(store) -> Context:
    return Context(store=store, log=structlog.get_logger(), agent_id=AGENT, options={"timeout": 0.5},
                   root=HostRoot.under("/nonexistent"), host=HostMachine(), discovery=Discovery(scope="database"))


async def add_nic(store, mac: str | None, ips: list[str], machine_id: int | None = None) -> int:
    # NULL in the key never conflicts: each call inserts one row.
    row = {"mac": mac, "tag": "", "machine_id": machine_id, "ip": ips, "flags": {"up": True}}
    return (await store.upsert("network_interfaces", [row], key="machine_mac_tag")).ids[0]


async def add_machine(store, hostname: str, agent: str | None = None, host_id: str | None = None) -> int:
    key = "agent" if agent else "host_id"
    row = {"agent": agent} if agent else {"host_id": host_id}
    return (await store.upsert("machines", [{**row, "hostname": hostname}], key=key)).ids[0]


async def machineless(store) -> list[dict]:
    return await store.fetch("machineless_nics")


async def counts(store) -> dict[str, int]:
    return {t: (await raw_rows(store, f"SELECT count(*) AS n FROM {t}"))[0]["n"] for t in ("machines", "network_interfaces")}


async def test_one_new_machine_per_name_and_a_second_pass_changes_nothing(store):
    a = await add_nic(store, None, ["10.0.0.1"])
    b = await add_nic(store, None, ["10.0.0.2"])
    c = await add_nic(store, "00:00:0c:00:00:03", ["10.0.0.3"])
    ctx = context(store)
    outcome = await attach_by_name(ctx, await machineless(store), {a: "web.example", b: "web.example", c: "db.example"})
    assert (outcome.created, outcome.attached) == (2, 3) and ctx.rows_written == 5
    machines = {r["hostname"]: r for r in await raw_rows(store, "SELECT * FROM machines")}
    assert set(machines) == {"web.example", "db.example"}
    assert machines["web.example"]["updated_by"] == AGENT and machines["web.example"]["platform"] == ""
    nics = {r["id"]: r["machine_id"] for r in await raw_rows(store, "SELECT id, machine_id FROM network_interfaces")}
    assert nics == {a: machines["web.example"]["id"], b: machines["web.example"]["id"], c: machines["db.example"]["id"]}

    before = await counts(store)
    again = context(store)
    await attach_by_name(again, await machineless(store), {})
    assert await machineless(store) == [] and again.rows_written == 0 and await counts(store) == before


async def test_an_existing_machine_with_that_name_is_reused(store):
    existing = await add_machine(store, "Printer.Example", host_id="uuid-printer")
    nic = await add_nic(store, None, ["10.0.0.5"])
    outcome = await attach_by_name(context(store), await machineless(store), {nic: "printer.example"})
    assert (outcome.created, outcome.reused, outcome.attached) == (0, 1, 1)
    assert (await raw_rows(store, f"SELECT machine_id FROM network_interfaces WHERE id = {nic}"))[0]["machine_id"] == existing
    assert (await counts(store))["machines"] == 1


async def test_a_nic_given_a_machine_since_it_was_read_keeps_it_and_no_machine_is_made(store):
    nic = await add_nic(store, "02:00:00:00:00:0a", ["10.0.0.10"])
    read = await machineless(store)
    switch = await add_machine(store, "switch.lab", host_id="uuid-switch")  # what snmp does meanwhile
    await store.execute("attach_nics", [nic], [switch], AGENT)
    outcome = await attach_by_name(context(store), read, {nic: "sw10.example"})
    assert (outcome.created, outcome.attached) == (0, 0)
    assert (await raw_rows(store, f"SELECT machine_id FROM network_interfaces WHERE id = {nic}"))[0]["machine_id"] == switch
    assert (await counts(store))["machines"] == 1


async def test_an_ambiguous_name_creates_nothing_and_attaches_nothing(store):
    await add_machine(store, "dup.example", host_id="uuid-1")
    await add_machine(store, "DUP.example", host_id="uuid-2")
    nic = await add_nic(store, None, ["10.0.0.6"])
    other = await add_nic(store, None, ["10.0.0.7"])
    ctx = context(store)
    outcome = await attach_by_name(ctx, await machineless(store), {nic: "dup.example", other: "fresh.example"})
    assert outcome.ambiguous == ["dup.example"] and (outcome.created, outcome.attached) == (1, 1)
    assert [r["id"] for r in await machineless(store)] == [nic]
    assert (await counts(store))["machines"] == 3


async def test_same_mac_on_two_subnets_merges_addresses_and_deletes_nothing(store):
    first = await add_nic(store, "00:00:0c:aa:bb:cc", ["10.0.0.40"])
    second = await add_nic(store, "00:00:0c:aa:bb:cc", ["10.0.1.40"])
    agent_host = await add_machine(store, "agent.example", agent="cd" * 16)
    agent_nic = await add_nic(store, "00:00:0c:11:22:33", ["10.0.0.50"], machine_id=agent_host)
    seen_again = await add_nic(store, "00:00:0c:11:22:33", ["10.0.1.50"])
    names = {first: "twin.example", second: "twin.example", seen_again: "agent.example"}

    outcome = await attach_by_name(context(store), await machineless(store), names)
    assert (outcome.attached, outcome.merged, outcome.kept_apart) == (1, 1, 2)
    twin = (await raw_rows(store, "SELECT id FROM machines WHERE hostname = 'twin.example'"))[0]["id"]
    rows = {r["id"]: r for r in await store.fetch("nics_with_mac_on_machines", [twin, agent_host])}
    assert rows[first]["ip"] == ["10.0.0.40", "10.0.1.40"] and rows[first]["machine_id"] == twin
    assert rows[agent_nic]["ip"] == ["10.0.0.50"]  # an agent's NIC: its own agent reports its addresses
    assert {r["id"] for r in await machineless(store)} == {second, seen_again}  # kept, not deleted
    assert (await counts(store))["network_interfaces"] == 4

    before = await counts(store)
    again = context(store)
    await attach_by_name(again, await machineless(store), {second: "twin.example", seen_again: "agent.example"})
    assert again.rows_written == 0 and await counts(store) == before



def test_resolver_is_built_when_the_host_name_is_no_dns_name(tmp_path):
    """dnspython derives a search domain from the host name; a 64-character label must not stop lookups."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a UTS namespace needs root and unshare")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    script = (
        "import socket, sys; from pathlib import Path; from situation.net.reverse_dns import make_resolver; "
        "import dns.resolver; socket.sethostname('x' * 64); "
        f"r = make_resolver(Path({str(resolv)!r})); "
        "print(r.nameservers, dns.resolver.socket is socket)"
    )
    result = subprocess.run(["unshare", "--uts", sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['192.0.2.53'] True"
