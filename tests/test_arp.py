"""arp: the kernel's neighbour table into machine-less NICs (agent-behaviour.md §4.13).

The module only reads netlink, but it reads the table of the namespace it
runs in, so the rows-level tests run it inside an isolated test host whose
table the test seeds with ``ip neigh add`` (DEVELOPERS.md, rule 1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
import time

import pytest
from support.cluster import clean_environ
from support.neighbour_table import (
    PINGED,
    SEEN_TWICE,
    V4_SUBNET,
    V6_ONLY,
    V6_SUBNET,
    SqliteDb,
    database,  # noqa: F401 (fixture)
    links_of,
    neighbour_nics,
    prepare_host,
    seed_neighbours,
)

from situation.modules.arp import Sighting, StoredNic, Subnetwork, plan_changes, sightings
from situation.net.neighbour_table import (
    NUD_DELAY,
    NUD_REACHABLE,
    NUD_STALE,
    Neighbour,
    freshest,
    neighbour_from,
)

AGENT_ID = "a4b0a4b0a4b0a4b0a4b0a4b0a4b0a4b0"


# -- filters and planning ------------------------------------------------------------------


@pytest.mark.parametrize("state, destination, lladdr, kept", [
    (0x02, "10.1.2.3", "02:AA:00:00:00:01", True),  # reachable
    (0x04, "10.1.2.3", "02:aa:00:00:00:01", True),  # stale
    (0x08, "10.1.2.3", "02:aa:00:00:00:01", True),  # delay
    (0x10, "10.1.2.3", "02:aa:00:00:00:01", True),  # probe
    (0x01, "10.1.2.3", None, False),  # incomplete
    (0x20, "10.1.2.3", None, False),  # failed
    (0x40, "10.1.2.3", "02:aa:00:00:00:01", False),  # noarp
    (0x80, "10.1.2.3", "02:aa:00:00:00:01", False),  # permanent
    (0x02, "10.1.2.0", "02:aa:00:00:00:01", False),
    (0x02, "10.1.2.255", "02:aa:00:00:00:01", False),
    (0x02, "169.254.1.1", "02:aa:00:00:00:01", False),
    (0x02, "127.0.0.2", "02:aa:00:00:00:01", False),
    (0x02, "224.0.0.1", "01:00:5e:00:00:01", False),
    (0x02, "fe80::1", "02:aa:00:00:00:01", False),
    (0x02, "ff02::1", "33:33:00:00:00:01", False),
    (0x02, "fd00::1", "02:aa:00:00:00:01", True),  # private stays
    (0x02, "192.168.1.4", "02:aa:00:00:00:01", True),
    (0x02, "2001:db8::1", "00:00:00:00:00:00", False),
])
def test_entry_filter(state, destination, lladdr, kept):
    entry = neighbour_from(state, destination, lladdr)
    assert (entry is not None) == kept
    if kept:
        assert entry.mac == lladdr.lower()


def test_one_entry_per_address_the_freshest():
    ip = ipaddress.ip_address("10.0.0.5")
    entries = [Neighbour(ip, "02:00:00:00:00:01", NUD_STALE), Neighbour(ip, "02:00:00:00:00:02", NUD_REACHABLE),
               Neighbour(ip, "02:00:00:00:00:03", NUD_DELAY)]
    assert freshest(entries) == [entries[1]]


def _subnets(*cidrs):
    return [Subnetwork(i + 1, ipaddress.ip_network(c)) for i, c in enumerate(cidrs)]


def test_sightings_group_a_mac_across_families_and_subnets():
    entries = [Neighbour(ipaddress.ip_address(a), m, NUD_REACHABLE) for a, m in (
        ("10.0.0.5", "02:00:00:00:00:01"), ("2001:db8::5", "02:00:00:00:00:01"),
        ("10.0.0.6", "02:00:00:00:00:02"), ("192.0.2.9", "02:00:00:00:00:03"),  # outside every subnet
    )]
    found = sightings(entries, _subnets("10.0.0.0/24", "2001:db8::/64", "10.0.0.0/16"))
    assert [(s.mac, s.ips, s.subnets) for s in found] == [
        ("02:00:00:00:00:01", ["10.0.0.5", "2001:db8::5"], [1, 3, 2]),
        ("02:00:00:00:00:02", ["10.0.0.6"], [1, 3]),
    ]


def test_plan_matches_mac_then_a_macless_address_never_the_host_or_another_mac():
    host = 1
    stored = [
        StoredNic(10, "02:00:00:00:00:09", ["10.0.0.9"], host, {1}),  # the host's own NIC
        StoredNic(11, None, ["10.0.0.5"], None, {1}),  # from ping
        StoredNic(12, "02:00:00:00:00:07", ["10.0.0.6"], None, {1}),  # 10.0.0.6 had another MAC
        StoredNic(13, "02:00:00:00:00:08", ["10.0.0.8"], 7, {1}),  # another agent's host
    ]
    found = [Sighting("02:00:00:00:00:01", ["10.0.0.5"], [1]), Sighting("02:00:00:00:00:02", ["10.0.0.6"], [1]),
             Sighting("02:00:00:00:00:09", ["10.0.0.9"], [1]), Sighting("02:00:00:00:00:08", ["10.0.0.8", "fd::8"], [1, 2])]
    changes = plan_changes(found, stored, host)
    assert [(c.nic.id if c.nic else None, c.links, c.rewrite) for c in changes] == [
        (11, [], True), (None, [1], False), (None, [1], False), (13, [2], True),
    ]
    assert (stored[1].mac, stored[3].ip) == ("02:00:00:00:00:01", ["10.0.0.8", "fd::8"])
    again = plan_changes(found[:1], stored, host)
    assert (again[0].nic.id, again[0].links, again[0].rewrite) == (11, [], False)


def test_a_known_nic_gets_no_second_row_of_a_cidr_it_is_linked_to():
    # 1: host-network's untagged 172.17.0.0/16 of the bridge; 2: docker's network-tagged copy; 3: another CIDR.
    subnets = [Subnetwork(i, ipaddress.ip_network(cidr))
               for i, cidr in ((1, "172.17.0.0/16"), (2, "172.17.0.0/16"), (3, "fd00::/64"))]
    container = StoredNic(20, "02:42:ac:11:00:02", ["172.17.0.2"], 7, {2})  # docker placed it on the tagged copy
    found = [Sighting("02:42:ac:11:00:02", ["172.17.0.2", "fd00::2"], [1, 2, 3]),
             Sighting("02:42:ac:11:00:03", ["172.17.0.3"], [1, 2])]
    changes = plan_changes(found, [container], 1, subnets)
    assert [(c.nic.id if c.nic else None, c.links) for c in changes] == [(20, [3]), (None, [1, 2])]


# -- in an isolated host --------------------------------------------------------------------


def seed_pinged_nic(db) -> int:
    """What ping leaves for 10.231.7.11: a MAC-less NIC linked to the subnetwork with its address."""
    prefix = db.table_prefix
    ip_value = "'[\"10.231.7.11\"]'" if not prefix else "ARRAY['10.231.7.11']::varchar[]"
    flags = "'{\"up\":true,\"running\":true}'"
    db.execute(
        f"INSERT INTO {prefix}network_interfaces (name, mac, ip, flags, tag, machine_id) "
        f"VALUES (NULL, NULL, {ip_value}, {flags}, '', NULL);"
        f"INSERT INTO {prefix}network_interface_subnets (network_interface_id, subnetwork_id, ip, mac_subnet) "
        f"SELECT n.id, s.id, '10.231.7.11', NULL FROM {prefix}network_interfaces n, {prefix}subnetworks s "
        f"WHERE n.machine_id IS NULL AND s.network_cidr = '{V4_SUBNET}';"
    )
    [(nic_id,)] = db.query(f"SELECT id FROM {prefix}network_interfaces WHERE machine_id IS NULL")
    return int(nic_id)


def run_arp(host, db, tmp_path, timeout: float = 120) -> dict:
    result = host.run_module("--db", db.dsn, "--agent", AGENT_ID, "--host-lookup", "arp",
                             env=clean_environ(HOME=str(tmp_path)), timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def subnet_locks_held(db):
    """On PostgreSQL, another session holding every subnetwork's neighbour lock meanwhile."""
    if not db.table_prefix:
        yield
        return
    sql = ("SELECT count(pg_advisory_lock(hashtextextended('situation.subnet-neighbours:' || id, 0))) "
           "FROM situation.subnetworks; SELECT pg_sleep(300);")
    holder = subprocess.Popen([str(db.cluster.psql_path), "-X", "-q", "-d", db.dsn, "-c", sql],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        deadline = time.monotonic() + 30
        while int(db.query(query)[0][0]) == 0:
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not get the locks"
        yield
    finally:
        holder.kill()
        holder.wait()


def record_host(host, db, tmp_path) -> None:
    """The host's own rows only: no sweep (ping and what depends on it are disabled)."""
    env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"), SITUATION_AGENT_ID=AGENT_ID)
    result = host.run(sys.executable, "-m", "situation", "run", "--once", "--no-module-ping", "--db", db.dsn,
                      env=env)
    assert result.returncode == 0, result.stderr


def test_neighbour_table_into_nics(test_host, database, tmp_path):
    prepare_host(test_host)
    record_host(test_host, database, tmp_path)
    pinged_id = seed_pinged_nic(database)
    seed_neighbours(test_host)

    first = run_arp(test_host, database, tmp_path)
    nics = neighbour_nics(database)
    nics.pop(test_host.peer_mac, None)  # the peer, if the host's run talked to it
    assert set(nics) == {SEEN_TWICE, PINGED, V6_ONLY}
    assert nics[PINGED] == (pinged_id, ["10.231.7.11"])  # ping's NIC got the MAC, no second NIC
    twice_id, twice_ips = nics[SEEN_TWICE]
    assert twice_ips == ["10.231.7.10", "2001:db8:7::10"]
    twice_links = links_of(database, twice_id)
    assert set(twice_links) == {V4_SUBNET, V6_SUBNET}
    for cidr, (ip, mac_subnet, subnet_id) in twice_links.items():
        assert ip == "" and mac_subnet == f"{SEEN_TWICE}/{subnet_id}"
    assert set(links_of(database, nics[V6_ONLY][0])) == {V6_SUBNET}
    assert list(links_of(database, pinged_id)) == [V4_SUBNET]
    assert first["rows"]["arp"] > 0

    counts = database.query(f"SELECT count(*) FROM {database.table_prefix}network_interfaces")
    # Nothing to write: the steady state does not wait for the subnetwork lock (issue 12, a fleet).
    with subnet_locks_held(database):
        second = run_arp(test_host, database, tmp_path, timeout=60)
    assert second["rows"]["arp"] == 0
    assert database.query(f"SELECT count(*) FROM {database.table_prefix}network_interfaces") == counts
    assert neighbour_nics(database).get(SEEN_TWICE) == (twice_id, twice_ips)


def test_scan_targets_limit_what_is_recorded(test_host, tmp_path):
    db = SqliteDb(tmp_path / "only.sqlite")
    prepare_host(test_host)
    record_host(test_host, db, tmp_path)
    seed_neighbours(test_host)
    result = test_host.run_module("--db", db.dsn, "--agent", AGENT_ID, "--host-lookup", "--only", "10.231.7.8/29",
                                  "arp", env=clean_environ(HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    nics = neighbour_nics(db)
    assert set(nics) == {SEEN_TWICE, PINGED}
    assert nics[SEEN_TWICE][1] == ["10.231.7.10"]


def test_without_ping_arp_is_disabled_unless_missing_dependencies_are_ignored():
    from situation.module import load_builtin_modules
    from situation.scheduler import plan

    registry = {name: spec for name, spec in load_builtin_modules().items() if name != "ping"}
    assert registry["arp"].depends == ("ping",)
    assert "arp" not in plan(registry, set())
    assert "arp" in plan(registry, set(), ignore_missing_deps=True)
