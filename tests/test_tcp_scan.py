"""tcp-scan in a namespace lab (DEVELOPERS.md, rule 1): real listeners, a filtered host, an excluded one.

The lab (support/lab.py) has four hosts: two with listeners, one whose TCP is
dropped by nftables (listeners behind it: silent, never open), and one the
agent is told to exclude, which must receive no packet at all. The open ports
must be found exactly, by the SYN scan as root and by the connect scan as an
unprivileged user; a second run must change no row count; SQLite and
PostgreSQL. Nothing runs in, or is sent from, the initial namespace.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.lab import Lab, make_hosts, nft_available
from support.listeners import filter_tcp, start_listeners, stop
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.netns import netns_available

from situation.config import Setting, convert
from situation.errors import ConfigError
from situation.net.icmp import checksum
from situation.net.tcp import ipv4_pseudo_header, parse_ports, parse_segment, syn_segment

LAN = "198.51.100.0/24"
DISCOVERY = ("fingerprint", "host-basic", "host-network", "ping", "arp")
OPEN = {0: [22, 80, 443, 8080], 1: [21, 3306, 5432]}  # host index → its listening ports
FILTERED, EXCLUDED = 2, 3


@pytest.fixture
def lab():
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    made = Lab(hosts=make_hosts(LAN, 4)).create()
    servers = []
    try:
        for index, host in enumerate(made.hosts):
            servers.append(start_listeners(host.namespace, OPEN.get(index, [22, 80])))
        filter_tcp(made.hosts[FILTERED].namespace)
        yield made
    finally:
        stop(servers)
        made.destroy()


def expected(lab: Lab) -> set[tuple[str, int]]:
    return {(lab.hosts[index].ip, port) for index, ports in OPEN.items() for port in ports}


def run_modules(lab: Lab, db: str, *modules: str, unprivileged: bool = False, extra=()) -> tuple[dict, str]:
    env = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    runner = lab.run_module_unprivileged if unprivileged else lab.run_module
    argv = ["--db", db, "--exclude", lab.hosts[EXCLUDED].ip, *extra, *modules]
    result = runner(*argv, env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    *logs, report = result.stdout.splitlines()
    return json.loads(report), "\n".join(logs) + result.stderr


def scan_line(logs: str) -> dict[str, str]:
    [line] = [line for line in logs.splitlines() if "ports scanned" in line]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def endpoints(db) -> set[tuple[str, int]]:
    """(addr, port) of the tcp endpoints, each checked to sit on the neighbour NIC holding addr."""
    prefix = db.table_prefix
    rows = db.query(f"SELECT e.addr, e.port, e.protocol, e.application_id, {db.ip_json} "
                    f"FROM {prefix}application_endpoints e "
                    f"JOIN {prefix}network_interfaces n ON n.id = e.network_interface_id")
    found = set()
    for addr, port, protocol, application_id, ips in rows:
        assert protocol == "tcp" and application_id is None and addr in json.loads(ips)
        found.add((addr, int(port)))
    return found


def counts(db) -> dict[str, int]:
    tables = ("application_endpoints", "network_interfaces", "machines", "subnetworks")
    return {t: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{t}")[0][0]) for t in tables}


def test_syn_scan_finds_the_open_ports_exactly_and_a_second_run_changes_nothing(lab, database):
    _, logs = run_modules(lab, database.dsn, *DISCOVERY, "tcp-scan")
    assert endpoints(database) == expected(lab)
    line = scan_line(logs)
    # The filtered host's 1000 ports stay silent through both rounds; the others all answer.
    assert (line["method"], line["addresses"], line["silent"], line["open"]) == ("syn", "3", "1000", "7")
    assert lab.probes_received(lab.hosts[EXCLUDED]) == 0
    assert lab.probes_received(lab.hosts[FILTERED]) >= 2000  # every port, twice
    before = counts(database)
    report, _ = run_modules(lab, database.dsn, *DISCOVERY, "tcp-scan")
    assert report["rows"]["tcp-scan"] == 0 and counts(database) == before
    assert lab.probes_received(lab.hosts[EXCLUDED]) == 0


def test_connect_scan_without_cap_net_raw_finds_the_same_ports(lab, shared_dir):
    from support.neighbour_table import SqliteDb

    db = SqliteDb(shared_dir / "lab.sqlite")
    run_modules(lab, db.dsn, *DISCOVERY)  # ARP needs root; the scan itself does not
    subprocess.run(["chmod", "-R", "a+rw", str(shared_dir)], check=True)
    report, logs = run_modules(lab, db.dsn, "tcp-scan", unprivileged=True, extra=("--host-lookup",))
    assert report["skipped"] == {}
    line = scan_line(logs)
    assert (line["method"], line["silent"], line["open"]) == ("connect", "1000", "7")
    assert endpoints(db) == expected(lab)
    assert lab.probes_received(lab.hosts[EXCLUDED]) == 0
    report, _ = run_modules(lab, db.dsn, "tcp-scan", unprivileged=True, extra=("--host-lookup",))
    assert report["rows"]["tcp-scan"] == 0


def test_ports_option_and_scan_targets_limit_what_is_probed(lab, tmp_path):
    from support.neighbour_table import SqliteDb

    db = SqliteDb(tmp_path / "lab.sqlite")
    run_modules(lab, db.dsn, *DISCOVERY)
    first, second = lab.hosts[0], lab.hosts[1]
    received = lab.probes_received(second)
    _, logs = run_modules(lab, db.dsn, "tcp-scan", extra=("--host-lookup", "--only", f"{first.ip}/32",
                                                           "--option", "tcp-scan.ports=80-81,22,8080"))
    assert endpoints(db) == {(first.ip, 22), (first.ip, 80), (first.ip, 8080)}
    assert scan_line(logs)["ports"] == "4"
    assert lab.probes_received(second) == received  # outside the targets: nothing sent


def test_situation_scan_prints_the_open_ports(lab, tmp_path):
    env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"),
                        SITUATION_AGENT_ID="7c97c97c97c97c97c97c97c97c97c97c",
                        SITUATION_DISCOVERY_EXCLUDE=lab.hosts[EXCLUDED].ip)
    result = lab.run(sys.executable, "-m", "situation", "scan", "--db", str(tmp_path / "scan.sqlite"),
                     "--tcp-scan-ports", "1-1024,3306,5432,8080", LAN, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    header, *rows, _total = result.stdout.strip().splitlines()
    assert "OPEN TCP PORTS" in header and "CERT EXPIRES" in header and "SAAS" in header
    lines = {row.split()[0]: row for row in rows}
    assert "22,80,443,8080" in lines[lab.hosts[0].ip] and "21,3306,5432" in lines[lab.hosts[1].ip]
    assert lab.hosts[FILTERED].ip in lines and lab.hosts[EXCLUDED].ip not in lines


def want_v6(host) -> str:
    return host.ipv6.split("/")[0]


def test_ipv6_addresses_are_scanned_by_both_paths(shared_dir):
    from support.neighbour_table import SqliteDb

    if not netns_available() or not nft_available():
        pytest.skip("network namespaces need root, iproute2 and nft")
    lab = Lab(hosts=make_hosts(LAN, 1, ipv6_prefix="2001:db8:9::/64"), scanner_ipv6="2001:db8:9::1/64").create()
    servers = []
    try:
        servers.append(start_listeners(lab.hosts[0].namespace, [22, 443]))
        host = lab.hosts[0]
        want = {(address, port) for address in (host.ip, want_v6(host)) for port in (22, 443)}
        env = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        db = SqliteDb(shared_dir / "lab.sqlite")
        ports = ("--option", "tcp-scan.ports=22,80,443")
        # The all-nodes echo is answered from link-local addresses: the global one is put into the
        # scanner's neighbour table, where arp adds it to the host's NIC.
        subprocess.run(["ip", "-n", lab.name, "neigh", "replace", want_v6(host), "lladdr", host.mac, "dev", "br0",
                        "nud", "reachable"], check=True)
        result = lab.run_module("--db", db.dsn, *ports, *DISCOVERY, "tcp-scan", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert endpoints(db) == want  # SYN scan
        db.execute("DELETE FROM application_endpoints")
        subprocess.run(["chmod", "-R", "a+rw", str(shared_dir)], check=True)
        result = lab.run_module_unprivileged("--db", db.dsn, *ports, "--host-lookup", "tcp-scan", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert endpoints(db) == want  # connect scan
    finally:
        stop(servers)
        lab.destroy()


# -- pure pieces ------------------------------------------------------------------------------


def test_ports_are_parsed_in_order_once_and_bad_items_named():
    top = parse_ports("top1000")
    assert len(top) == len(set(top)) == 1000 and top[:3] == (1, 3, 4)
    assert parse_ports("443, 22,20-23,top1000")[:5] == (443, 22, 20, 21, 23)
    assert parse_ports("65535") == (65535,)
    for bad, words in (("0", "out of range"), ("80-79", "out of range"), ("http", "not a port"),
                       ("1-70000", "out of range"), ("", "no port"), (",", "no port")):
        with pytest.raises(ValueError, match=words):
            parse_ports(bad)


def test_a_bad_ports_setting_is_one_line_at_start():
    setting = Setting("modules.tcp-scan.ports", "x", "--tcp-scan-ports", (), "top1000", "ports", "")
    assert convert(setting, None) == "top1000" and convert(setting, "22,80") == "22,80"
    with pytest.raises(ConfigError, match=r"^--tcp-scan-ports: 'ssh' is not a port"):
        convert(setting, "22,ssh")


def test_syn_segment_checksum_and_answer_parsing():
    source, destination = socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.10")
    segment = syn_segment(40000, 443, 0x01020304, ipv4_pseudo_header(source, destination, 24))
    assert len(segment) == 24 and checksum(ipv4_pseudo_header(source, destination, 24) + segment) == 0
    assert parse_segment(segment, ipv4_header=False) == (40000, 443, 0, 0x02)
    ip_header = bytes([0x45]) + bytes(19)
    assert parse_segment(ip_header + segment, ipv4_header=True) == (40000, 443, 0, 0x02)
    assert parse_segment(ip_header + segment[:10], ipv4_header=True) is None  # truncated
    assert parse_segment(b"\x60" + bytes(40), ipv4_header=True) is None  # not IPv4


def test_targets_skip_own_unroutable_and_excluded_addresses_and_the_newest_nic_wins():
    from situation.discovery import Discovery, parse_networks
    from situation.modules.tcp_scan import probe_addresses

    nics = [{"id": 4, "ip": ["198.51.100.10", "fe80::1", "2001:db8::10", "127.0.0.1", "garbage"]},
            {"id": 7, "ip": ["198.51.100.10", "198.51.100.1", "198.51.100.66", "224.0.0.1"]}]
    policy = Discovery(exclude=parse_networks("198.51.100.66", what="x"))
    targets = probe_addresses(nics, {"198.51.100.1"}, policy.allows)
    assert targets == {ipaddress.ip_address("198.51.100.10"): 7, ipaddress.ip_address("2001:db8::10"): 4}


def test_open_file_limit_is_raised_within_the_hard_limit():
    import resource

    from situation.net.tcp import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = raise_open_file_limit(soft + 1)
        assert got == (soft + 1 if hard == resource.RLIM_INFINITY or soft < hard else soft)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
