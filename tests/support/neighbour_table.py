"""A test host's neighbour table and database, for the arp and scan tests.

``prepare_host`` gives an isolated host (support/netns.py) a second interface
on its subnetwork and a global IPv6 address; ``seed_neighbours`` fills its
neighbour table with entries of every kind, some to keep and some to ignore.
``SqliteDb`` / ``PostgresDb`` read the rows back the same way on both backends.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

V4_SUBNET, V6_SUBNET = "10.231.7.0/24", "2001:db8:7::/64"
SEEN_TWICE = "02:aa:00:00:00:10"  # 10.231.7.10 behind both host interfaces, and 2001:db8:7::10
PINGED = "02:aa:00:00:00:11"  # 10.231.7.11
V6_ONLY = "02:aa:00:00:00:20"


def _ip(namespace: str, *args: str) -> None:
    command = ["ip", "-n", namespace, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


def prepare_host(host) -> None:
    """A second interface on the same subnetwork, and a global IPv6 address on eth0."""
    ns = host.name
    _ip(ns, "-6", "addr", "add", "2001:db8:7::2/64", "dev", "eth0", "nodad")
    _ip(ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    _ip(ns, "link", "set", "eth1", "address", "02:5a:00:00:01:02")
    _ip(ns, "addr", "add", "10.231.7.3/24", "dev", "eth1")
    for link in ("eth1", "eth1p"):
        _ip(ns, "link", "set", link, "up")


def seed_neighbours(host) -> None:
    ns = host.name
    for device in ("eth0", "eth1"):
        _ip(ns, "neigh", "replace", "10.231.7.10", "lladdr", SEEN_TWICE, "dev", device, "nud", "reachable")
    _ip(ns, "neigh", "replace", "10.231.7.11", "lladdr", PINGED, "dev", "eth0", "nud", "stale")
    _ip(ns, "neigh", "replace", "10.231.7.12", "dev", "eth0", "nud", "failed")
    _ip(ns, "neigh", "replace", "10.231.7.13", "lladdr", "02:aa:00:00:00:13", "dev", "eth0", "nud", "permanent")
    _ip(ns, "neigh", "replace", "10.231.7.14", "dev", "eth0", "nud", "incomplete")
    _ip(ns, "neigh", "replace", "10.231.7.255", "lladdr", "02:aa:00:00:00:ff", "dev", "eth0", "nud", "reachable")
    _ip(ns, "neigh", "replace", "192.0.2.50", "lladdr", "02:aa:00:00:00:50", "dev", "eth0", "nud", "reachable")
    _ip(ns, "neigh", "replace", "2001:db8:7::10", "lladdr", SEEN_TWICE, "dev", "eth0", "nud", "reachable")
    _ip(ns, "neigh", "replace", "2001:db8:7::20", "lladdr", V6_ONLY, "dev", "eth0", "nud", "stale")
    _ip(ns, "neigh", "replace", "fe80::21", "lladdr", "02:aa:00:00:00:21", "dev", "eth0", "nud", "reachable")


class SqliteDb:
    table_prefix, ip_json = "", "ip"

    def __init__(self, path):
        self.path, self.dsn = path, str(path)

    def query(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.path) as db:
            return [tuple(row) for row in db.execute(sql)]

    def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path) as db:
            db.executescript(sql)


class PostgresDb:
    table_prefix, ip_json = "situation.", "array_to_json(ip)::text"

    def __init__(self, cluster, name):
        self.cluster, self.name, self.dsn = cluster, name, cluster.superuser_dsn(name)

    def query(self, sql: str) -> list[tuple]:
        out = self.cluster.psql(sql, dbname=self.name)
        return [tuple(None if v == "" else v for v in line.split("|")) for line in out.splitlines()]

    def execute(self, sql: str) -> None:
        self.cluster.psql(sql, dbname=self.name)


def neighbour_nics(db) -> dict[str, tuple[int, list[str]]]:
    """Machine-less NICs by MAC: (id, addresses)."""
    rows = db.query(f"SELECT id, mac, {db.ip_json} FROM {db.table_prefix}network_interfaces "
                    "WHERE machine_id IS NULL AND mac IS NOT NULL ORDER BY id")
    found: dict[str, tuple[int, list[str]]] = {}
    for nic_id, mac, ips in rows:
        assert mac not in found, f"two NICs for {mac}"
        found[mac] = (int(nic_id), json.loads(ips))
    return found


def links_of(db, nic_id: int) -> dict[str, tuple[str, str | None]]:
    rows = db.query(
        f"SELECT s.network_cidr, l.ip, l.mac_subnet, s.id FROM {db.table_prefix}network_interface_subnets l "
        f"JOIN {db.table_prefix}subnetworks s ON s.id = l.subnetwork_id WHERE l.network_interface_id = {int(nic_id)}"
    )
    return {cidr: (ip or "", mac_subnet, int(subnet_id)) for cidr, ip, mac_subnet, subnet_id in rows}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """The same assertions on both backends: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return SqliteDb(tmp_path / "discovery.sqlite")
    cluster = request.getfixturevalue("tls_cluster")
    return PostgresDb(cluster, request.getfixturevalue("fresh_database")("discovery"))
