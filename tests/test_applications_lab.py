"""Applications, flows, packages and containers end to end (issue 10, "Done when").

Everything runs inside one test-made network namespace (support/podman.py;
DEVELOPERS.md, rule 1), entered behind the guard: a podman-served Docker
Engine with a container publishing a port, and a process started from a
packaged binary (Debian's python3.11) holding a TCP listener, a UDP listener
and a connection to its own listener. One real ``situation run --once`` (the
CLI, as a subprocess in the namespace, ``--docker-host`` at podman's socket)
must record the processes, the listeners (UDP too), both ends of the
connection as flows, dpkg's packages with the process linked to the package
owning its binary, and the container as a child machine with its published
port (one NIC for it, although arp saw it first: the host talked to it before
the first run); a second run must change no row count. On SQLite and on PostgreSQL
(over its Unix socket). The lab is set up once for the file, and each backend's
two runs once for the tests that read them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.neighbour_table import PostgresDb, SqliteDb
from support.podman import IMAGE, PodmanEngine, podman_missing

AGENT_ID = "a995a995a995a995a995a995a995a995"
HOLDER = Path(__file__).parent / "support" / "socket_holder.py"
PYTHON = os.path.realpath("/usr/bin/python3")  # a packaged interpreter (python3.11-minimal here)
TCP_PORT, UDP_PORT = 7070, 5353
HOLDER_SPECS = (f"listen:tcp:127.0.0.1:{TCP_PORT}", f"bind:udp:0.0.0.0:{UDP_PORT}", f"connect:tcp:127.0.0.1:{TCP_PORT}")
TABLES = ("machines", "network_interfaces", "subnetworks", "network_interface_subnets", "users", "applications",
          "user_applications", "application_endpoints", "flows", "endpoint_policies", "packages")


def dpkg_missing() -> str | None:
    if shutil.which("dpkg-query") is None or not Path("/var/lib/dpkg/status").exists():
        return "not a Debian system (no dpkg database)"
    if not Path(PYTHON).exists():
        return f"{PYTHON} is not here"
    return None


def established_with_owner(engine: PodmanEngine) -> int:
    """Established TCP sockets in the lab namespace that ss can name a process for."""
    out = subprocess.run(["ip", "netns", "exec", engine.name, "ss", "-tnpH", "state", "established"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if "pid=" in line)


@dataclass
class Lab:
    engine: PodmanEngine
    holder: subprocess.Popen
    container_id: str
    container_address: str
    container_mac: str


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = podman_missing() or dpkg_missing()
    if reason:
        pytest.skip(reason)
    engine = PodmanEngine(tmp_path_factory.mktemp("podman"))
    resolver = Path("/etc/netns") / engine.name
    holder = None
    try:
        engine.start()
        resolver.mkdir(parents=True, exist_ok=True)  # reverse lookups stay in the namespace: nothing answers
        (resolver / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        engine.podman("run", "-d", "--name", "web", "-p", "8080:80", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        # The host has talked to the container: it is in the neighbour table before the first run, so
        # arp records its MAC before docker does (docker must adopt that NIC, not add a second).
        address = engine.podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", "web")
        touched = engine.run(sys.executable, "-c", f"import socket; socket.create_connection(({address!r}, 80), 5)",
                             env=clean_environ())
        assert touched.returncode == 0, touched.stderr
        holder = engine.popen(PYTHON, str(HOLDER), *HOLDER_SPECS, env=clean_environ(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while established_with_owner(engine) < 2:  # the listener's thread has accepted the connection
            assert time.monotonic() < deadline, "the holder's connection was never accepted"
            time.sleep(0.05)
        yield Lab(engine, holder, engine.podman("inspect", "--format", "{{.Id}}", "web"), address,
                  engine.podman("inspect", "--format", "{{.NetworkSettings.MacAddress}}", "web"))
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=10)
        engine.stop()
        shutil.rmtree(resolver, ignore_errors=True)


@dataclass
class Recorded:
    db: SqliteDb | PostgresDb
    first: dict[str, int]
    second: dict[str, int]
    second_log: list[dict]


def run_once(lab: Lab, db, home: Path) -> list[dict]:
    """One ``situation run --once`` in the lab namespace; its JSON log lines."""
    env = clean_environ(HOME=str(home), SITUATION_STATE_DIR=str(home / "state"), SITUATION_AGENT_ID=AGENT_ID)
    for key in [k for k in env if k.startswith("DOCKER_")]:
        del env[key]
    # Lean on time only: snmp would spend ~13 s of timeouts on the container (no SNMP agent), the one
    # module left out; a short ping wait, and tcp-scan probes the container's port alone (it reaches the
    # container, a neighbour: the open port must land on docker's row, not a second one).
    result = lab.engine.run(sys.executable, "-m", "situation", "run", "--once", "--db", db.dsn,
                            "--docker-host", lab.engine.host_url, "--no-module-snmp", "--ping-timeout", "200ms",
                            "--tcp-scan-ports", "80", env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def counts(db) -> dict[str, int]:
    return {table: int(db.query(f"SELECT count(*) FROM {db.table_prefix}{table}")[0][0]) for table in TABLES}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def recorded(request, lab, tmp_path_factory):
    """Two ``run --once`` into a new database of the backend; row counts after each."""
    home = tmp_path_factory.mktemp(f"agent-{request.param}")
    name = None
    if request.param == "sqlite":
        db = SqliteDb(home / "situation.sqlite")
    else:
        cluster = request.getfixturevalue("tls_cluster")
        name = f"apps_{uuid.uuid4().hex[:12]}"
        cluster.create_database(name)
        db = PostgresDb(cluster, name)
    try:
        run_once(lab, db, home)
        first = counts(db)
        second_log = run_once(lab, db, home)
        yield Recorded(db, first, counts(db), second_log)
    finally:
        if name is not None:
            db.cluster.drop_database(name)


def _int(value) -> int | None:
    return None if value is None else int(value)


def host_id(db) -> int:
    [(machine_id,)] = db.query(f"SELECT id FROM {db.table_prefix}machines WHERE agent = '{AGENT_ID}'")
    return int(machine_id)


def holder_endpoints(db, pid: int) -> set[tuple]:
    p = db.table_prefix
    rows = db.query(f"SELECT e.port, e.protocol, e.addr, n.name FROM {p}application_endpoints e "
                    f"JOIN {p}applications a ON a.id = e.application_id "
                    f"LEFT JOIN {p}network_interfaces n ON n.id = e.network_interface_id WHERE a.pid = {pid}")
    return {(int(port), protocol, addr, nic) for port, protocol, addr, nic in rows}


# -- the asserting tests, sharing the lab and each backend's two runs ------------------------------


def test_the_process_and_its_tcp_and_udp_listeners(lab, recorded):
    db, pid = recorded.db, lab.holder.pid
    p = db.table_prefix
    [(name, args, machine_id)] = db.query(f"SELECT name, args, machine_id FROM {p}applications WHERE pid = {pid}")
    assert (name, json.loads(args), int(machine_id)) == (PYTHON, [str(HOLDER), *HOLDER_SPECS], host_id(db))
    endpoints = holder_endpoints(db, pid)
    assert (TCP_PORT, "tcp", "127.0.0.1", "lo") in endpoints
    udp = {(addr, nic) for port, protocol, addr, nic in endpoints if (port, protocol) == (UDP_PORT, "udp")}
    assert ("127.0.0.1", "lo") in udp and len(udp) >= 2  # 0.0.0.0: every IPv4 address of the host, the bridge too
    [(labels,)] = db.query(f"SELECT application_protocols FROM {p}application_endpoints "
                           f"WHERE port = {UDP_PORT} AND protocol = 'udp' AND addr = '127.0.0.1'")
    assert json.loads(labels) == ["mdns"]  # standard-protocol ran after netstat


def test_the_connection_is_an_outgoing_and_an_incoming_flow(lab, recorded):
    db = recorded.db
    p = db.table_prefix
    rows = db.query(f"SELECT a.pid, f.src_addr, e.addr, e.port, e.protocol FROM {p}flows f "
                    f"LEFT JOIN {p}applications a ON a.id = f.src_application_id "
                    f"JOIN {p}application_endpoints e ON e.id = f.dst_endpoint_id WHERE e.port = {TCP_PORT}")
    assert {(_int(pid), src, dst, int(port), protocol) for pid, src, dst, port, protocol in rows} == {
        (lab.holder.pid, "127.0.0.1", "127.0.0.1", TCP_PORT, "tcp"),  # outgoing, from the holder
        (None, "127.0.0.1", "127.0.0.1", TCP_PORT, "tcp"),  # incoming, to its listener
    }


def test_packages_are_dpkgs_and_the_process_links_to_its_package(lab, recorded):
    db = recorded.db
    p = db.table_prefix
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Version}\n"],
                         capture_output=True, text=True, check=True).stdout
    installed = {(name, version) for status, name, version in (line.split("\t") for line in out.splitlines())
                 if status == "installed"}
    stored = db.query(f"SELECT name, version, manager FROM {p}packages WHERE machine_id = {host_id(db)}")
    assert {(name, version) for name, version, _ in stored} == installed
    assert {manager for *_, manager in stored} == {"dpkg"}
    owner = subprocess.run(["dpkg", "-S", PYTHON], capture_output=True, text=True, check=True).stdout
    [(package,)] = db.query(f"SELECT k.name FROM {p}applications a JOIN {p}packages k ON k.id = a.package_id "
                            f"WHERE a.pid = {lab.holder.pid}")
    assert package == owner.split(":", 1)[0].strip()


def test_the_container_is_a_child_machine_with_its_published_port(lab, recorded):
    db = recorded.db
    p = db.table_prefix
    rows = db.query(f"SELECT hostname, host_id, distribution, distribution_version, parent_machine_id "
                    f"FROM {p}machines WHERE platform = 'docker'")
    assert [(name, container, image, tag, _int(parent)) for name, container, image, tag, parent in rows] == [
        ("web", lab.container_id, "localhost:5000/tools/busybox", "1.36", host_id(db))]
    forwards = db.query(
        f"SELECT i.port, i.protocol, o.port, o.protocol, o.addr FROM {p}endpoint_policies f "
        f"JOIN {p}application_endpoints i ON i.id = f.endpoint_id "
        f"JOIN {p}application_endpoints o ON o.id = f.src_endpoint_id WHERE f.action = 'forward'")
    forwarded = {(int(a), b, int(c), d, e) for a, b, c, d, e in forwards}
    assert (80, "tcp", 8080, "tcp", "127.0.0.1") in forwarded
    assert {(inner, outer) for inner, _, outer, _, _ in forwarded} == {(80, 8080)}
    inside = db.query(f"SELECT e.port, e.protocol, e.addr FROM {p}application_endpoints e "
                      f"JOIN {p}network_interfaces n ON n.id = e.network_interface_id "
                      f"JOIN {p}machines m ON m.id = n.machine_id WHERE m.platform = 'docker'")
    assert [(int(port), protocol, addr) for port, protocol, addr in inside] == [(80, "tcp", lab.container_address)]
    nics = db.query(f"SELECT m.platform FROM {p}network_interfaces n LEFT JOIN {p}machines m ON m.id = n.machine_id "
                    f"WHERE n.mac = '{lab.container_mac}'")
    assert nics == [("docker",)]  # one NIC for the container's MAC: the one arp recorded first, adopted
    # The second run's tcp-scan found that port open: one row for it all the same.
    [scanned] = [line for line in recorded.second_log if line.get("event") == "ports scanned"]
    assert (scanned["addresses"], scanned["open"]) == (1, 1)


def test_a_second_run_changes_no_row_count(recorded):
    assert recorded.second == recorded.first
    assert all(recorded.first[t] > 0 for t in ("applications", "application_endpoints", "flows", "packages"))
