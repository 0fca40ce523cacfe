"""netstat and standard-protocol (agent-behaviour.md §4.18, §4.19) on real sockets.

netstat only reads, but it reads the sockets of the namespace it runs in, so
the rows-level tests run it inside an isolated test host (DEVELOPERS.md,
rule 1) where the only sockets are the ones the test opens:

- a client (root) with a TCP listener on one address, an unconnected UDP
  socket on ``0.0.0.0``, and connections to the server below (over loopback,
  and over eth0 to a dual-stack listener, which sees an IPv4-mapped peer) and
  to a listener in the peer namespace (invisible to the host);
- a server run as ``nobody`` through ``setpriv``: a TCP listener on
  ``0.0.0.0`` and a dual-stack one on ``::``, both accepting.

The rows are checked against fixed expectations and against what
``ss -tunap`` reports in the same namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.neighbour_table import database  # noqa: F401 (fixture)
from support.stores import backend_store, raw_rows  # noqa: F401 (fixture)

from situation.modules.netstat import HostNic, is_incoming, pick_remote_nics, plan_rows
from situation.net.sockets import ProcessInfo, classify, plain_ip

AGENT_ID = "ne75ae7ne75ae7ne75ae7ne75ae7ne70".replace("n", "a")
HOLDER = Path(__file__).parent / "support" / "socket_holder.py"
PYTHON = "/usr/bin/python3"
NOBODY = 65534
HOST_MODULES = ("fingerprint", "host-basic", "local-users", "host-network")

Addr = namedtuple("Addr", "ip port")
Conn = namedtuple("Conn", "fd family type laddr raddr status pid")


# -- classification and planning, on hand-made psutil entries -----------------------------


def _conn(kind, local, remote=(), status="NONE", pid=10, family=socket.AF_INET):
    type_ = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    return Conn(3, family, type_, Addr(*local) if local else (), Addr(*remote) if remote else (), status, pid)


def test_mapped_addresses_become_ipv4():
    assert plain_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert plain_ip("::ffff:0:1") == "::ffff:0:1"
    assert plain_ip("2001:db8::1") == "2001:db8::1"
    assert plain_ip("10.1.2.3") == "10.1.2.3"


def test_classify_listeners_connections_and_what_is_skipped():
    v6 = socket.AF_INET6
    listing = classify([
        _conn("tcp", ("0.0.0.0", 22), status="LISTEN"),
        _conn("udp", ("0.0.0.0", 53)),  # unconnected UDP: a listener
        _conn("udp", ("10.0.0.2", 4000), ("10.0.0.9", 53)),  # connected UDP: a connection
        _conn("tcp", ("10.0.0.2", 5000), ("10.0.0.9", 80), "ESTABLISHED"),
        _conn("tcp", ("10.0.0.2", 5001), ("10.0.0.9", 80), "SYN_SENT"),
        _conn("tcp", ("::ffff:10.0.0.2", 443), ("::ffff:10.0.0.7", 6000), "CLOSE_WAIT", family=v6),
        _conn("tcp", ("::", 443), status="LISTEN", family=v6),
        _conn("tcp", ("0.0.0.0", 23), status="LISTEN", pid=None),  # no process
        _conn("tcp", ("0.0.0.0", 24), status="LISTEN", pid=99),  # the agent itself
        _conn("udp", ()),  # unbound
    ], own_pid=99)
    assert [(s.protocol, s.local_ip, s.local_port) for s in listing.listeners] == [
        ("tcp", "0.0.0.0", 22), ("udp", "0.0.0.0", 53), ("tcp6", "::", 443)]
    assert [(s.protocol, s.local_ip, s.remote_ip, s.status) for s in listing.connections] == [
        ("udp", "10.0.0.2", "10.0.0.9", "NONE"), ("tcp", "10.0.0.2", "10.0.0.9", "ESTABLISHED"),
        ("tcp", "10.0.0.2", "10.0.0.7", "CLOSE_WAIT")]
    assert listing.unowned == 1


def test_plan_binds_wildcards_to_every_address_of_the_family_and_specific_ones_exactly():
    nics = [HostNic(1, ("127.0.0.1", "::1")), HostNic(2, ("10.0.0.2", "10.0.0.3", "fe80::2"))]
    info = {7: ProcessInfo(7, "/usr/sbin/sshd", ("-D",), 0), 8: ProcessInfo(8, "/bin/client", (), 1000)}
    entries = [
        _conn("tcp", ("0.0.0.0", 22), status="LISTEN", pid=7),
        _conn("tcp", ("10.0.0.3", 8080), status="LISTEN", pid=7),
        _conn("tcp", ("::", 22), status="LISTEN", pid=7, family=socket.AF_INET6),
        _conn("tcp", ("10.0.0.2", 22), ("10.0.0.9", 40000), "ESTABLISHED", pid=7),  # incoming
        _conn("tcp", ("10.0.0.2", 41000), ("10.0.0.3", 8080), "ESTABLISHED", pid=8),  # outgoing, to us
        _conn("tcp", ("10.0.0.2", 41001), ("192.0.2.1", 443), "ESTABLISHED", pid=8),  # outgoing, remote
        _conn("tcp", ("10.9.9.9", 41002), ("192.0.2.1", 443), "ESTABLISHED", pid=8),  # address on no NIC
    ]
    listing = classify(entries, own_pid=1)
    listing.processes = info
    plan = plan_rows(listing, nics, {"10.0.0.3": 2})
    assert plan.endpoints == {
        (22, "tcp", "127.0.0.1", 1): 7, (22, "tcp", "10.0.0.2", 2): 7, (22, "tcp", "10.0.0.3", 2): 7,
        (8080, "tcp", "10.0.0.3", 2): 7,  # the listener owns it, though a client reached it too
        (22, "tcp6", "::1", 1): 7, (22, "tcp6", "fe80::2", 2): 7,
        (443, "tcp", "192.0.2.1", None): None,
    }
    assert sorted(plan.flows.values(), key=repr) == sorted([
        _flow(None, None, "10.0.0.9", (22, "tcp", "10.0.0.2", 2)),
        _flow(8, 2, "10.0.0.2", (8080, "tcp", "10.0.0.3", 2)),
        _flow(8, 2, "10.0.0.2", (443, "tcp", "192.0.2.1", None)),
    ], key=repr)
    assert set(plan.processes) == {7, 8}


def _flow(*fields):
    from situation.modules.netstat import Flow

    return Flow(*fields)


def test_incoming_means_a_listener_of_the_same_transport_on_the_port():
    listing = classify([_conn("udp", ("10.0.0.2", 53), ("10.0.0.9", 5000))], own_pid=1)
    [sock] = listing.connections
    assert is_incoming(sock, {("udp", "0.0.0.0", 53)})
    assert is_incoming(sock, {("udp", "::", 53)})
    assert not is_incoming(sock, {("tcp", "0.0.0.0", 53)})
    assert not is_incoming(sock, {("udp", "10.0.0.3", 53)})


def test_remote_nics_prefer_the_hosts_own():
    rows = [{"id": 3, "ip": ["10.0.0.5"], "machine_id": None}, {"id": 9, "ip": ["10.0.0.5", "10.0.0.6"], "machine_id": 1},
            {"id": 4, "ip": ["10.0.0.6", "10.0.0.7"], "machine_id": 2}]
    assert pick_remote_nics(rows, host_id=1) == {"10.0.0.5": 9, "10.0.0.6": 9, "10.0.0.7": 4}


# -- in an isolated host ----------------------------------------------------------------------

CLIENT_SPECS = ("listen:tcp:10.231.7.2:8080", "bind:udp:0.0.0.0:5353", "connect:tcp:127.0.0.1:2222",
                "connect:tcp:10.231.7.2:8443", "connect:tcp:10.231.7.1:5432")
SERVER_SPECS = ("listen:tcp:0.0.0.0:2222", "listen:tcp6any:8443")


class Holders:
    """The socket-holding processes of one test, stopped (stdin closed) at the end."""

    def __init__(self, host):
        self.host, self.processes = host, []

    def start(self, argv, *, peer=False):
        env = clean_environ()
        if peer:
            process = subprocess.Popen(["ip", "netns", "exec", self.host.peer, *argv], env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        else:
            process = self.host.popen(*argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.processes.append(process)
        assert process.stdout.readline().strip() == "ready"
        return process

    def server(self):
        return self.start(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           PYTHON, str(HOLDER), *SERVER_SPECS])

    def stop(self, process):
        process.stdin.close()
        process.wait(timeout=10)
        self.processes.remove(process)

    def stop_all(self):
        for process in list(self.processes):
            self.stop(process)


@pytest.fixture
def holders(test_host):
    started = Holders(test_host)
    yield started
    started.stop_all()


def ss_lines(host) -> list[list[str]]:
    result = subprocess.run(["ip", "netns", "exec", host.name, "ss", "-tunapH"], capture_output=True, text=True,
                            check=True)
    return [line.split() for line in result.stdout.splitlines() if line.strip()]


def _ss_address(text: str) -> tuple[str, int]:
    address, port = text.rsplit(":", 1)
    address = address.strip("[]").split("%", 1)[0]
    return plain_ip("::" if address == "*" else address), int(port) if port != "*" else 0


def _ss_pid(fields: list[str]) -> int | None:
    process = next((f for f in fields if f.startswith("users:")), None)
    return int(process.split("pid=", 1)[1].split(",", 1)[0]) if process else None


def wait_for_accepted(host, count: int) -> None:
    """Until ``count`` established sockets have a process (the servers' accept threads ran)."""
    for _ in range(100):
        if sum(1 for f in ss_lines(host) if f[1] == "ESTAB" and _ss_pid(f)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"established sockets never reached {count}: {ss_lines(host)}")


def expected_from_ss(host) -> tuple[set, set]:
    """Listeners (transport, address, port, pid) and flows (src pid, src addr, dst addr, dst port), by ss."""
    listeners, connections = set(), []
    for netid, state, _rq, _sq, local, peer, *rest in ss_lines(host):
        pid = _ss_pid(rest)
        if pid is None:
            continue
        (local_ip, local_port), (peer_ip, peer_port) = _ss_address(local), _ss_address(peer)
        if state in ("LISTEN", "UNCONN"):
            listeners.add((netid, local_ip, local_port, pid))
        elif state == "ESTAB":
            connections.append((netid, local_ip, local_port, peer_ip, peer_port, pid))
    flows = set()
    for netid, local_ip, local_port, peer_ip, peer_port, pid in connections:
        if any(t == netid and port == local_port and ip in (local_ip, "0.0.0.0", "::")
               for t, ip, port, _ in listeners):
            flows.add((None, peer_ip, local_ip, local_port))
        else:
            flows.add((pid, local_ip, peer_ip, peer_port))
    return listeners, flows


def run_modules(host, db, tmp_path, *modules, user=None) -> tuple[dict, str]:
    from support.netns import RUN_MODULE

    argv = [os.sys.executable, str(RUN_MODULE), "--db", db.dsn, "--agent", AGENT_ID, "--host-lookup", *modules]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    result = host.run(*argv, env=clean_environ(HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def _int(value):
    return None if value is None else int(value)


def endpoints(db) -> dict[tuple, tuple]:
    """(port, protocol, addr, nic name) → (owner pid, application protocols)."""
    p = db.table_prefix
    rows = db.query(
        f"SELECT e.port, e.protocol, e.addr, n.name, a.pid, e.application_protocols FROM {p}application_endpoints e "
        f"LEFT JOIN {p}network_interfaces n ON n.id = e.network_interface_id "
        f"LEFT JOIN {p}applications a ON a.id = e.application_id")
    found = {}
    for port, protocol, addr, nic, pid, protocols in rows:
        key = (int(port), protocol, addr, nic)
        assert key not in found, f"two endpoints {key}"
        found[key] = (_int(pid), json.loads(protocols) if protocols else None)
    return found


def flows(db) -> set[tuple]:
    p = db.table_prefix
    rows = db.query(
        f"SELECT a.pid, n.name, f.src_addr, e.addr, e.port, e.protocol FROM {p}flows f "
        f"LEFT JOIN {p}applications a ON a.id = f.src_application_id "
        f"LEFT JOIN {p}network_interfaces n ON n.id = f.src_network_interface_id "
        f"JOIN {p}application_endpoints e ON e.id = f.dst_endpoint_id")
    return {(_int(pid), nic, src, dst, int(port), protocol) for pid, nic, src, dst, port, protocol in rows}


def host_addresses(db) -> dict[str, list[str]]:
    rows = db.query(f"SELECT name, {db.ip_json} FROM {db.table_prefix}network_interfaces WHERE machine_id IS NOT NULL")
    return {name: json.loads(ips) for name, ips in rows if ips}


def row_counts(db) -> dict[str, int]:
    tables = ("applications", "application_endpoints", "flows", "user_applications", "users")
    return {t: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{t}")[0][0]) for t in tables}


def test_sockets_of_a_namespace_into_applications_endpoints_and_flows(test_host, holders, database, tmp_path):
    holders.start([PYTHON, str(HOLDER), "listen:tcp:10.231.7.1:5432"], peer=True)
    server = holders.server()
    client = holders.start([PYTHON, str(HOLDER), *CLIENT_SPECS])
    wait_for_accepted(test_host, 5)
    S, C = server.pid, client.pid

    report, _ = run_modules(test_host, database, tmp_path, *HOST_MODULES, "netstat", "standard-protocol")
    assert report["rows"]["netstat"] > 0 and report["rows"]["standard-protocol"] > 0
    addresses = host_addresses(database)
    v4 = [(ip, nic) for nic, ips in addresses.items() for ip in ips if ":" not in ip]
    v6 = [(ip, nic) for nic, ips in addresses.items() for ip in ips if ":" in ip]
    assert ("10.231.7.2", "eth0") in v4 and ("127.0.0.1", "lo") in v4

    expected = {(8080, "tcp", "10.231.7.2", "eth0"): (C, ["http-alt"])}
    expected |= {(5353, "udp", ip, nic): (C, ["mdns"]) for ip, nic in v4}  # the UDP listener
    expected |= {(2222, "tcp", ip, nic): (S, None) for ip, nic in v4}
    expected |= {(8443, "tcp6", ip, nic): (S, ["https-alt"]) for ip, nic in v6}  # tcp6 labelled too
    expected[(8443, "tcp", "10.231.7.2", "eth0")] = (S, ["https-alt"])  # accepted from a mapped peer
    expected[(5432, "tcp", "10.231.7.1", None)] = (None, ["postgresql"])  # the far end, no application
    assert endpoints(database) == expected

    assert flows(database) == {
        (C, "lo", "127.0.0.1", "127.0.0.1", 2222, "tcp"),  # outgoing, to the server's endpoint
        (None, None, "127.0.0.1", "127.0.0.1", 2222, "tcp"),  # the same connection, incoming
        (C, "eth0", "10.231.7.2", "10.231.7.2", 8443, "tcp"),
        (None, None, "10.231.7.2", "10.231.7.2", 8443, "tcp"),
        (C, "eth0", "10.231.7.2", "10.231.7.1", 5432, "tcp"),
    }
    p = database.table_prefix
    apps = {_int(pid): (name, json.loads(args)) for pid, name, args in
            database.query(f"SELECT pid, name, args FROM {p}applications")}
    executable = os.path.realpath(PYTHON)
    assert apps == {C: (executable, [str(HOLDER), *CLIENT_SPECS]), S: (executable, [str(HOLDER), *SERVER_SPECS])}
    links = database.query(f"SELECT u.uid, a.pid FROM {p}user_applications l JOIN {p}users u ON u.id = l.user_id "
                           f"JOIN {p}applications a ON a.id = l.application_id")
    assert {(uid, _int(pid)) for uid, pid in links} == {("0", C), (str(NOBODY), S)}

    # What ss sees in the same namespace: every listener and connection, nothing more.
    listeners, ss_flows = expected_from_ss(test_host)
    assert {pid for *_, pid in listeners} == {C, S}
    stored = endpoints(database)
    for _netid, ip, port, pid in listeners:
        bound = [key for key, (owner, _) in stored.items() if key[0] == port and owner == pid]
        assert bound and (ip in ("0.0.0.0", "::") or {key[2] for key in bound} == {ip})
    assert {(pid, src, dst, port) for pid, _nic, src, dst, port, _ in flows(database)} == ss_flows

    # A second cycle changes nothing.
    counts = row_counts(database)
    again, _ = run_modules(test_host, database, tmp_path, "netstat", "standard-protocol")
    assert again["rows"] == {"netstat": 0, "standard-protocol": 0}
    assert row_counts(database) == counts

    # The server restarts: its endpoints follow the new process.
    holders.stop(server)
    restarted = holders.server()  # listening once it says ready
    run_modules(test_host, database, tmp_path, "netstat")
    now = endpoints(database)
    assert now[(2222, "tcp", "127.0.0.1", "lo")][0] == restarted.pid
    assert now[(8443, "tcp6", "::1", "lo")][0] == restarted.pid
    assert now[(8080, "tcp", "10.231.7.2", "eth0")][0] == C


@pytest.fixture
def nobody_home():
    """A directory ``nobody`` can reach (pytest's tmp_path is private to root)."""
    home = Path(tempfile.mkdtemp(prefix="sit-netstat-", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_without_root_the_users_own_processes_are_recorded(test_host, holders, nobody_home):
    from support.neighbour_table import SqliteDb

    server = holders.server()
    holders.start([PYTHON, str(HOLDER), "listen:tcp:10.231.7.2:8080"])  # root's: not visible
    db = SqliteDb(nobody_home / "netstat.sqlite")
    run_modules(test_host, db, nobody_home, *HOST_MODULES)
    for path in (nobody_home, *nobody_home.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    report, output = run_modules(test_host, db, nobody_home, "netstat", user=NOBODY)
    assert output.count("not running as root") == 1
    assert report["rows"]["netstat"] > 0
    assert {pid for pid, _ in endpoints(db).values()} == {server.pid}


# -- standard-protocol on both backends --------------------------------------------------------

async def test_standard_protocols_label_unlabelled_endpoints_of_every_transport(backend_store):
    import structlog

    from situation.hostroot import HostRoot
    from situation.module import REGISTRY, Context, load_builtin_modules

    rows = [(22, "tcp", "10.0.0.1", ["custom"]), (22, "tcp6", "::1", None), (53, "udp", "10.0.0.1", None),
            (5353, "udp6", "::1", None), (2222, "tcp", "10.0.0.1", None), (53, "tcp", "10.0.0.1", None),
            (443, "udp", "10.0.0.1", None), (161, "snmp", "10.0.0.1", None)]
    await backend_store.upsert("application_endpoints", [
        {"port": port, "protocol": protocol, "addr": addr, "network_interface_id": None,
         "application_protocols": labels} for port, protocol, addr, labels in rows],
        key="port_protocol_addr_network_interface_id")
    load_builtin_modules()
    spec = REGISTRY["standard-protocol"]
    assert spec.depends == ("netstat",)

    def context():
        return Context(store=backend_store, log=structlog.get_logger(), agent_id=backend_store.agent_id, options={},
                       root=HostRoot.under("/"))

    first = context()
    await spec.run(first)
    found = {(r["port"], r["protocol"]): r["application_protocols"] for r in
             await raw_rows(backend_store, "SELECT port, protocol, application_protocols FROM application_endpoints")}
    found = {k: json.loads(v) if isinstance(v, str) else v for k, v in found.items()}
    assert found == {(22, "tcp"): ["custom"], (22, "tcp6"): ["ssh"], (53, "udp"): ["dns"], (5353, "udp6"): ["mdns"],
                     (2222, "tcp"): None, (53, "tcp"): ["dns"], (443, "udp"): ["quic"], (161, "snmp"): None}
    assert first.rows_written == 5
    again = context()
    await spec.run(again)
    assert again.rows_written == 0
