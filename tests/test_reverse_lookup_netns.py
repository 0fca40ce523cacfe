"""reverse-lookup for real: dnsmasq serving PTR records inside a test-made namespace.

The agent's namespace resolves through the peer namespace (its resolv.conf
under /etc/netns/), where dnsmasq answers from ``--ptr-record`` options only
(no upstream, no hosts file) and logs every query it gets. The module runs
through tests/support/run_module.py behind the namespace guard. The store is
seeded with machine-less NICs as ping and arp leave them.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.stores import raw_rows

from situation.store import open_store

AGENT = "ab" * 16
LONG = ".".join(["a" * 63] * 3) + ".example"  # 200 characters: long, and a plain name
BLACK_HOLE = "10.231.7.250"  # nobody there: queries forwarded to it go unanswered

# address → PTR target served by dnsmasq
PTR = {
    "10.231.7.10": "host-ten.example",
    "10.231.7.11": LONG,
    "10.231.7.12": "sp ace\\.x.example",  # a space and a backslash inside a label
    "10.231.7.13": "é.example",  # dnsmasq sends the IDN as xn--9ca.example
    "10.231.7.14": "Mixed-Case.Example",
    "10.231.7.15": "mixed-case.example",
    "10.231.7.17": "dns-loses.example",  # /etc/hosts names it first
    "10.231.7.20": "reused.example",
    "10.231.7.21": "dup.example",
    "10.231.7.22": "excluded.example",  # --exclude: never asked
    "10.231.7.40": "twin.example",
    "10.231.8.40": "twin.example",
    "10.99.0.30": "far.example",  # a subnet this host is not on: out of the attached scope
}
HOSTS = (
    "10.231.7.16 from-hosts.example\n"
    "10.231.7.17 hosts-wins.example\n"
    "10.231.7.18 evil\x1b[31mname\n"
)


def reverse_zone(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


@pytest.fixture
def dns_server(test_host, tmp_path):
    """dnsmasq in the peer namespace, on the address the agent's resolv.conf names."""
    log = tmp_path / "dnsmasq.log"
    listen = test_host.peer_address.split("/")[0]
    argv = [
        "ip", "netns", "exec", test_host.peer, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
        f"--listen-address={listen}", "--bind-interfaces", "--port=53", "--user=root",
        f"--pid-file={tmp_path / 'dnsmasq.pid'}", f"--log-facility={log}", "--log-queries",
        f"--server=/{reverse_zone('10.231.7.99')}/{BLACK_HOLE}",
        *(f"--ptr-record={reverse_zone(a)},{name}" for a, name in PTR.items()),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(test_host.peer, process)
        (Path("/etc/netns") / test_host.name / "hosts").write_text(HOSTS)
        yield log
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_listening(namespace: str, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {process.stderr.read()}")
        sockets = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-Hlun", "sport = :53"],
                                 capture_output=True, text=True).stdout
        if sockets.strip():
            return
        time.sleep(0.05)
    raise RuntimeError("dnsmasq did not start listening")


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "situation.sqlite")
    return request.getfixturevalue("tls_cluster").superuser_dsn(request.getfixturevalue("fresh_database")("rlns"))


async def seed(dsn: str) -> dict[str, int]:
    """This host on 10.231.7.0/24 and 10.231.8.0/24, and neighbour NICs as ping/arp leave them."""
    store = await open_store(dsn, AGENT)
    try:
        subnets = {}
        for cidr in ("10.231.7.0/24", "10.231.8.0/24", "10.99.0.0/24"):
            network, size = cidr.split("/")
            row = {"network_cidr": cidr, "network_addr": network, "mask_size": int(size), "ip_version": 4, "tag": ""}
            subnets[cidr] = (await store.upsert("subnetworks", [row], key="cidr_tag")).ids[0]
        host = (await store.upsert("machines", [{"agent": AGENT, "hostname": "scanner"}], key="agent")).ids[0]
        await store.upsert("machines", [{"host_id": "uuid-reused", "hostname": "Reused.Example"}], key="host_id")
        for host_id in ("uuid-dup-1", "uuid-dup-2"):
            await store.upsert("machines", [{"host_id": host_id, "hostname": "dup.example"}], key="host_id")
        eth0 = {"name": "eth0", "mac": "02:5a:00:00:00:02", "tag": "", "machine_id": host, "ip": ["10.231.7.2"]}
        eth0_id = (await store.upsert("network_interfaces", [eth0], key="machine_mac_tag")).ids[0]
        for cidr in ("10.231.7.0/24", "10.231.8.0/24"):
            await store.execute("link_interface_subnet", eth0_id, subnets[cidr], "", f"02:5a:00:00:00:02/{subnets[cidr]}")

        nics = {}

        async def neighbour(address: str, mac: str | None = None) -> None:
            row = {"mac": mac, "tag": "", "machine_id": None, "ip": [address], "flags": {"up": True, "running": True}}
            nic = (await store.upsert("network_interfaces", [row], key="machine_mac_tag")).ids[0]
            cidr = next(c for c in subnets if ipaddress.ip_address(address) in ipaddress.ip_network(c))
            await store.execute("link_interface_subnet", nic, subnets[cidr], address, f"{mac}/{subnets[cidr]}" if mac else None)
            nics[address] = nic

        for last in (10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 60, 99):  # .60 has no PTR record
            await neighbour(f"10.231.7.{last}")
        await neighbour("10.231.7.40", "00:00:0c:aa:bb:cc")
        await neighbour("10.231.8.40", "00:00:0c:aa:bb:cc")  # the same MAC on the other subnet
        await neighbour("10.99.0.30")
        return nics
    finally:
        await store.close()


async def query(dsn: str, sql: str) -> list[dict]:
    store = await open_store(dsn, AGENT)
    try:
        return await raw_rows(store, sql)
    finally:
        await store.close()


async def row_counts(dsn: str) -> dict[str, int]:
    tables = ("machines", "network_interfaces", "network_interface_subnets")
    return {t: (await query(dsn, f"SELECT count(*) AS n FROM {t}"))[0]["n"] for t in tables}


def run_reverse_lookup(test_host, dsn: str, tmp_path: Path) -> dict:
    result = test_host.run_module(
        "--db", dsn, "--agent", AGENT, "--host-lookup", "--exclude", "10.231.7.22",
        "--option", "reverse-lookup.timeout=500ms", "reverse-lookup",
        env=clean_environ(HOME=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # structlog writes to stdout before it


async def test_names_from_ptr_and_hosts_become_machines(test_host, dns_server, dsn, tmp_path):
    nics = await seed(dsn)
    first = run_reverse_lookup(test_host, dsn, tmp_path)
    assert first["rows"]["reverse-lookup"] > 0

    machine_of = {r["id"]: r["machine_id"] for r in await query(dsn, "SELECT id, machine_id FROM network_interfaces")}
    names = {r["id"]: r["hostname"] for r in await query(dsn, "SELECT id, hostname FROM machines")}
    named = {address: names.get(machine_of[nic]) for address, nic in nics.items()}
    assert named == {
        "10.231.7.10": "host-ten.example",
        "10.231.7.11": LONG,
        "10.231.7.12": None,  # hostile PTR refused
        "10.231.7.13": "xn--9ca.example",
        "10.231.7.14": "mixed-case.example",
        "10.231.7.15": "mixed-case.example",
        "10.231.7.16": "from-hosts.example",
        "10.231.7.17": "hosts-wins.example",
        "10.231.7.18": None,  # escape sequence in the hosts file refused
        "10.231.7.20": "Reused.Example",  # the existing machine, not a new one
        "10.231.7.21": None,  # two machines are called dup.example
        "10.231.7.22": None,  # excluded
        "10.231.7.60": None,  # no PTR record
        "10.231.7.99": None,  # timed out
        "10.231.7.40": "twin.example",
        "10.231.8.40": None,  # same MAC: merged into .40's NIC, kept, not deleted
        "10.99.0.30": None,  # not on an attached subnet
    }
    assert machine_of[nics["10.231.7.14"]] == machine_of[nics["10.231.7.15"]]  # one machine per name
    hostnames = sorted(names.values())
    created = ["from-hosts.example", "host-ten.example", "hosts-wins.example", "mixed-case.example",
               "twin.example", "xn--9ca.example", LONG]
    assert hostnames == sorted(["scanner", "Reused.Example", "dup.example", "dup.example", *created])
    twin = (await query(dsn, f"SELECT ip FROM network_interfaces WHERE id = {nics['10.231.7.40']}"))[0]["ip"]
    assert (json.loads(twin) if isinstance(twin, str) else twin) == ["10.231.7.40", "10.231.8.40"]
    assert all(len(h) <= 253 and h.isprintable() for h in hostnames)

    asked = dns_server.read_text()
    for address in ("10.231.7.22", "10.99.0.30", "10.231.7.16", "10.231.7.17"):  # excluded, out of scope, hosts
        assert f"query[PTR] {reverse_zone(address)}" not in asked
    assert f"forwarded {reverse_zone('10.231.7.99')} to {BLACK_HOLE}" in asked

    before = await row_counts(dsn)
    second = run_reverse_lookup(test_host, dsn, tmp_path)
    assert second["rows"]["reverse-lookup"] == 0
    assert await row_counts(dsn) == before
