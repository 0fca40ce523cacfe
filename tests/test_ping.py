"""The ping module and the sweeps under it, in a namespace lab (DEVELOPERS.md, rule 1).

Every test builds its own lab (support/lab.py): a scanner namespace with a
bridge, where the modules run behind the guard, and host namespaces plugged
into it. Nothing is sent from, or added to, the initial namespace.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.lab import Lab, make_hosts, nft_available
from support.netns import netns_available

from situation.net import set_within

MODULES = ("fingerprint", "host-basic", "host-network", "ping")
LAN = "198.51.100.0/24"


@pytest.fixture
def make_lab():
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    labs = []

    def make(**kwargs) -> Lab:
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab.create()

    yield make
    for lab in labs:
        lab.destroy()


def env() -> dict[str, str]:
    return clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def run_modules(lab: Lab, db: str, *extra: str, unprivileged: bool = False, modules=MODULES) -> tuple[dict, str]:
    runner = lab.run_module_unprivileged if unprivileged else lab.run_module
    result = runner("--db", db, *extra, *modules, env=env())
    assert result.returncode == 0, result.stdout + result.stderr
    *logs, report = result.stdout.splitlines()  # structlog's default logger writes to stdout
    return json.loads(report), "\n".join(logs) + result.stderr


def summary(stderr: str) -> dict[str, str]:
    """The key=value pairs of the module's 'hosts found' line."""
    [line] = [line for line in stderr.splitlines() if "hosts found" in line]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def neighbours(db: Path) -> dict[str, str | None]:
    """Machine-less NICs: address → MAC."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT ip, mac FROM network_interfaces WHERE machine_id IS NULL").fetchall()
    found = {}
    for ip, mac in rows:
        [address] = json.loads(ip)
        found[address] = mac
    return found


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("network_interfaces", "network_interface_subnets", "subnetworks", "machines")
        }


def test_every_live_host_found_once_with_arp_for_the_one_dropping_icmp(make_lab, tmp_path):
    hosts = make_hosts(LAN, 5, drops_icmp=(2,))
    lab = make_lab(hosts=hosts)
    db = tmp_path / "lab.sqlite"
    report, stderr = run_modules(lab, str(db))
    assert report["skipped"] == {}
    assert neighbours(db) == {host.ip: host.mac for host in hosts}  # every host, its MAC, no phantom
    line = summary(stderr)
    assert (line["icmp"], line["arp"], line["arp_only"], line["socket"]) == ("4", "5", "1", "raw")
    with sqlite3.connect(db) as connection:
        links = connection.execute(
            "SELECT l.ip, l.mac_subnet, s.network_cidr FROM network_interface_subnets l "
            "JOIN network_interfaces n ON n.id = l.network_interface_id "
            "JOIN subnetworks s ON s.id = l.subnetwork_id WHERE n.machine_id IS NULL"
        ).fetchall()
        flags = {row[0] for row in connection.execute("SELECT flags FROM network_interfaces WHERE machine_id IS NULL")}
    assert sorted(links) == sorted((host.ip, None, LAN) for host in hosts)
    assert flags == {'{"up":true,"running":true}'}
    before = counts(db)
    report, _ = run_modules(lab, str(db))
    assert report["rows"]["ping"] == 0 and counts(db) == before


def test_unprivileged_datagram_socket(make_lab, shared_dir):
    hosts = make_hosts(LAN, 3, drops_icmp=(1,))
    lab = make_lab(hosts=hosts)
    lab.set_ping_group_range(65534, 65534)
    db = shared_dir / "lab.sqlite"
    report, stderr = run_modules(lab, str(db), unprivileged=True)
    assert report["skipped"] == {}
    line = summary(stderr)
    assert line["socket"] == "datagram" and line["arp"] == "0" and "arp_skipped" in line
    # Without ARP the host dropping ICMP stays unseen; the others are found though Linux rewrote the id.
    assert neighbours(db) == {hosts[0].ip: None, hosts[2].ip: None}


def test_neither_capability_nor_ping_group_skips_with_one_line(make_lab, shared_dir):
    lab = make_lab(hosts=make_hosts(LAN, 1))  # a new namespace: ping_group_range is "1 0"
    report, _ = run_modules(lab, str(shared_dir / "lab.sqlite"), unprivileged=True)
    reason = report["skipped"]["ping"]
    assert "CAP_NET_RAW" in reason and "net.ipv4.ping_group_range" in reason and "\n" not in reason


def test_excluded_host_receives_no_packet(make_lab, tmp_path):
    hosts = make_hosts(LAN, 3)
    lab = make_lab(hosts=hosts)
    db = tmp_path / "lab.sqlite"
    run_modules(lab, str(db), "--exclude", f"{hosts[1].ip}/32,192.0.2.0/24")
    assert set(neighbours(db)) == {hosts[0].ip, hosts[2].ip}
    assert lab.probes_received(hosts[1]) == 0
    assert lab.probes_received(hosts[0]) > 0  # the counters do count


def test_a_20_is_swept_and_a_19_skipped_with_a_warning(make_lab, tmp_path):
    swept = make_hosts("10.77.0.0/20", 1, first=10) + make_hosts("10.77.0.0/20", 1, first=4000)
    skipped = make_hosts("10.78.0.0/19", 1, first=10)
    lab = make_lab(scanner_address="10.77.0.1/20", extra_addresses=("10.78.0.1/19",), hosts=swept + skipped)
    db = tmp_path / "lab.sqlite"
    _, stderr = run_modules(lab, str(db))
    assert set(neighbours(db)) == {host.ip for host in swept}
    assert re.search(r"ignoring network \(too wide\).*network=10\.78\.0\.0/19", stderr)
    assert lab.probes_received(skipped[0]) == 0


def test_ipv6_neighbour_answers_the_all_nodes_echo(make_lab, tmp_path):
    hosts = make_hosts(LAN, 2, ipv6_prefix="2001:db8:5::/64")
    lab = make_lab(hosts=hosts, scanner_ipv6="2001:db8:5::1/64")
    _, stderr = run_modules(lab, str(tmp_path / "lab.sqlite"))
    assert summary(stderr)["ipv6"] == "2"
    table = subprocess.run(["ip", "-n", lab.name, "-6", "neigh", "show", "dev", "br0"],
                           capture_output=True, text=True, check=True).stdout.lower()
    assert all(host.mac in table for host in hosts)  # both are now in the kernel's neighbour table


def test_postgres_second_run_changes_no_row_count(make_lab, tls_cluster, fresh_database):
    hosts = make_hosts(LAN, 3, drops_icmp=(0,))
    lab = make_lab(hosts=hosts)
    name = fresh_database("ping")
    dsn = tls_cluster.superuser_dsn(name)  # the Unix socket: reachable from the lab namespace
    run_modules(lab, dsn)

    def pg_rows(sql: str) -> str:
        return tls_cluster.psql(sql, dbname=name)

    stored = pg_rows("SELECT string_agg(array_to_string(ip, ',') || '=' || mac, ' ' ORDER BY id) "
                     "FROM situation.network_interfaces WHERE machine_id IS NULL")
    assert sorted(stored.split()) == sorted(f"{host.ip}={host.mac}" for host in hosts)
    tables = ("network_interfaces", "network_interface_subnets", "subnetworks")
    before = [pg_rows(f"SELECT count(*) FROM situation.{table}") for table in tables]
    report, _ = run_modules(lab, dsn)
    assert report["rows"]["ping"] == 0
    assert [pg_rows(f"SELECT count(*) FROM situation.{table}") for table in tables] == before


def test_scope_database_sweeps_subnetworks_no_host_interface_links(make_lab, tmp_path):
    here, elsewhere = make_hosts(LAN, 1), make_hosts("10.78.0.0/24", 1)
    lab = make_lab(hosts=here + elsewhere, extra_addresses=("10.78.0.1/24",))
    db = tmp_path / "lab.sqlite"
    run_modules(lab, str(db), modules=("fingerprint", "host-basic", "host-network"))
    with sqlite3.connect(db) as connection:  # 10.78.0.0/24 becomes a subnetwork only some other agent saw
        connection.execute("DELETE FROM network_interface_subnets WHERE subnetwork_id = "
                           "(SELECT id FROM subnetworks WHERE network_cidr = '10.78.0.0/24')")
    run_modules(lab, str(db), "--host-lookup", modules=("ping",))
    assert set(neighbours(db)) == {here[0].ip} and lab.probes_received(elsewhere[0]) == 0
    run_modules(lab, str(db), "--host-lookup", "--scope", "database", "--option", "ping.timeout=300ms",
                modules=("ping",))
    assert set(neighbours(db)) == {here[0].ip, elsewhere[0].ip}


# -- pure pieces ----------------------------------------------------------------------------


def test_echo_request_checksum_and_arp_frames():
    import ipaddress
    import socket

    from situation.net.arp import arp_request, parse_arp_reply
    from situation.net.icmp import checksum, echo_request

    packet = echo_request(socket.AF_INET, 0x1234, 7)
    assert checksum(packet) == 0 and packet.endswith(b"situation")
    request = arp_request(bytes.fromhex("021ab0000001"), ipaddress.IPv4Address("198.51.100.1"),
                          ipaddress.IPv4Address("198.51.100.9"))
    assert len(request) == 60 and parse_arp_reply(request) is None  # a request is no reply
    reply = bytearray(request)
    reply[20:22] = b"\x00\x02"
    reply[22:28], reply[28:32] = bytes.fromhex("021ab0abcdef"), bytes([198, 51, 100, 9])
    assert parse_arp_reply(bytes(reply)) == (ipaddress.IPv4Address("198.51.100.9"), "02:1a:b0:ab:cd:ef")


def test_plan_sweeps_widths_and_addresses():
    import ipaddress

    import structlog

    from situation.discovery import Discovery, parse_networks
    from situation.modules.ping import plan_sweeps, sweep_addresses
    from situation.net.links import Link

    br0 = Link("br0", "02:1a:b0:00:00:01", True, True, False, False,
               (ipaddress.IPv4Interface("10.1.2.1/28"),), ())
    rows = [{"id": 1, "network_cidr": "10.1.2.0/28"}, {"id": 2, "network_cidr": "10.1.2.0/24"},
            {"id": 3, "network_cidr": "10.0.0.0/16"}, {"id": 4, "network_cidr": "203.0.113.0/24"}]
    with structlog.testing.capture_logs() as logs:
        sweeps = plan_sweeps(rows, [br0], structlog.get_logger())
    assert [(str(s.network), s.subnet_ids, s.interface) for s in sweeps] == [
        ("10.1.2.0/24", [1, 2], "br0"), ("203.0.113.0/24", [4], None)]
    assert logs[0]["event"] == "ignoring network (too wide)" and logs[0]["network"] == "10.0.0.0/16"
    policy = Discovery(exclude=parse_networks("10.1.2.7", what="x"))
    addresses = sweep_addresses(ipaddress.IPv4Network("10.1.2.0/24"), policy, {ipaddress.IPv4Address("10.1.2.1")})
    assert len(addresses) == 256 - 3 and str(addresses[0]) == "10.1.2.0"  # not .255, .7, ours


async def test_waiting_for_the_answers_never_swallows_the_modules_cancellation():
    # The last answer and the module's deadline in one loop iteration (no packet: an event set by hand).
    answered = asyncio.Event()
    assert not await set_within(answered, 0.01)
    waiting = asyncio.create_task(set_within(answered, 5))
    await asyncio.sleep(0)

    def answer_and_cancel():
        answered.set()
        waiting.cancel()

    asyncio.get_running_loop().call_soon(answer_and_cancel)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await set_within(answered, 0)
