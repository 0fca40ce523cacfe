"""Neighbour discovery end to end, in a namespace lab (DEVELOPERS.md, rule 1).

`situation scan` and `situation run --once` run in the lab's scanner
namespace (support/lab.py) behind the guard; dnsmasq, also in the scanner
namespace, serves the PTR records its resolv.conf points at. Every live host
must come back with its MAC, a vendor where its MAC has a real IEEE prefix,
and its name; the excluded host must receive nothing; a second pass must
change no row count. On SQLite and on PostgreSQL (over its Unix socket).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from support.cluster import clean_environ
from support.lab import Lab, LabHost, nft_available
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.netns import netns_available

LAN = "198.51.100.0/24"
AGENT_ID = "1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1a"
ROUTER = LabHost("198.51.100.10/24", "00:00:0c:12:34:56")  # a Cisco MA-L prefix
FILES = LabHost("198.51.100.11/24", "02:1a:b0:00:00:11")  # locally administered: no vendor
QUIET = LabHost("198.51.100.12/24", "02:1a:b0:00:00:12", drops_icmp=True)  # found by ARP only
FRAGILE = LabHost("198.51.100.13/24", "02:1a:b0:00:00:13")  # excluded: never probed
NAMES = {ROUTER.ip: "router.lab.example", FILES.ip: "files.lab.example", QUIET.ip: "quiet.lab.example",
         FRAGILE.ip: "fragile.lab.example"}
TABLES = ("machines", "network_interfaces", "network_interface_subnets", "subnetworks")


@pytest.fixture
def lab(tmp_path):
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    hosts = [LabHost(h.address, h.mac, drops_icmp=h.drops_icmp) for h in (ROUTER, FILES, QUIET, FRAGILE)]
    made = Lab(hosts=hosts).create()
    dns = start_dnsmasq(made, tmp_path)
    try:
        yield made
    finally:
        dns.terminate()
        dns.wait(timeout=10)
        made.destroy()


def reverse_name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


def start_dnsmasq(lab: Lab, tmp_path) -> subprocess.Popen:
    argv = ["ip", "netns", "exec", lab.name, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            f"--listen-address={lab.scanner_ip}", "--bind-interfaces", "--port=53", "--user=root",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
            *(f"--ptr-record={reverse_name(address)},{name}" for address, name in NAMES.items())]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {process.stderr.read()}")
        listening = subprocess.run(["ip", "netns", "exec", lab.name, "ss", "-lun", "sport", "= :53"],
                                   capture_output=True, text=True).stdout
        if lab.scanner_ip in listening:
            return process
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError("dnsmasq did not start listening")


def situation(lab: Lab, tmp_path, *args: str):
    env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"), SITUATION_AGENT_ID=AGENT_ID,
                        SITUATION_DISCOVERY_EXCLUDE=FRAGILE.ip)
    return lab.run(sys.executable, "-m", "situation", *args, env=env, timeout=180)


def table_lines(stdout: str) -> dict[str, str]:
    """The scan table's lines by their first column (the address)."""
    return {line.split()[0]: line for line in stdout.strip().splitlines()[1:-1]}


def counts(db) -> dict[str, int]:
    return {table: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{table}")[0][0]) for table in TABLES}


def test_scan_then_run_find_every_host_with_mac_vendor_and_name(lab, database, tmp_path):
    scanned = situation(lab, tmp_path, "scan", "--db", database.dsn, LAN)
    assert scanned.returncode == 0, scanned.stderr
    lines = table_lines(scanned.stdout)
    assert set(lines) == {lab.scanner_ip, ROUTER.ip, FILES.ip, QUIET.ip}  # every live host, no phantom
    for host in (ROUTER, FILES, QUIET):
        assert host.mac in lines[host.ip] and NAMES[host.ip] in lines[host.ip], lines[host.ip]
    assert "Cisco Systems" in lines[ROUTER.ip]
    [sweep] = [json.loads(line) for line in scanned.stderr.splitlines() if '"hosts found"' in line]
    assert (sweep["icmp"], sweep["arp"], sweep["arp_only"]) == (2, 3, 1)  # QUIET drops echo: ARP found it
    assert lab.probes_received(lab.hosts[3]) == 0

    first = situation(lab, tmp_path, "run", "--once", "--db", database.dsn)
    assert first.returncode == 0, first.stderr
    after_first = counts(database)
    second = situation(lab, tmp_path, "run", "--once", "--db", database.dsn)
    assert second.returncode == 0, second.stderr
    assert counts(database) == after_first
    assert lab.probes_received(lab.hosts[3]) == 0
    prefix = database.table_prefix
    named = database.query(
        f"SELECT m.hostname, n.mac, n.mac_vendor FROM {prefix}network_interfaces n "
        f"JOIN {prefix}machines m ON m.id = n.machine_id WHERE m.agent IS NULL ORDER BY m.hostname"
    )
    assert [tuple(row) for row in named] == [
        ("files.lab.example", FILES.mac, None),
        ("quiet.lab.example", QUIET.mac, None),
        ("router.lab.example", ROUTER.mac, "Cisco Systems, Inc"),
    ]
