"""Faults under PostgreSQL: an agent killed inside a unit; the server restarted, the
network to it cut and its certificates rotated while the agent runs; the network cut
when the agent starts.

The agent runs whole cycles, so it runs inside a test-made network namespace
(support/netns.py), behind the guard that refuses the machine's own. The server
runs in the peer namespace and listens on the veth address there, with TLS and
client-certificate authentication; the network cut is an nftables table added
inside that peer namespace only. Cycles skip discovery and the package
modules: these tests are about the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from support.cluster import Cluster, clean_environ
from support.fault_agent import NAME_PREFIX, kill_inside_the_unit
from support.netns import IsolatedHost, netns_available
from support.notify_socket import NotifySocket

FAULT_AGENT = Path(__file__).with_name("support") / "fault_agent.py"
ROLE = "faultagent"
QUICK = ("--no-module-ping", "--no-module-tcp-scan", "--no-module-netstat")  # the store, not discovery
UNIT_ROWS = 200
# Short network timeouts, as docs/security.md advises for agents but shorter: a dead path is noticed
# in seconds, and the server ends the session a cut left inside a transaction after 5 s, not 1 min.
TIMEOUTS = ("connect_timeout=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=1000 "
            "options='-c idle_in_transaction_session_timeout=5s'")


class PeerCluster(Cluster):
    """A TLS cluster in the peer namespace, on its veth address, with client-certificate logins."""

    def __init__(self, *args, address: str, network: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.listen_addresses = [address]
        self.network = network

    def _hba(self) -> str:
        return f"local all all trust\nhostssl all all {self.network} cert\n"

    def trust_client_cas(self, bundle: str) -> None:
        self._write_file(self.data_dir / "root.crt", bundle, 0o644)
        self.psql("SELECT pg_reload_conf()")

    def serve_certificate(self, cert: Path, key: Path) -> None:
        self._write_file(self.data_dir / "server.crt", cert.read_text(), 0o644)
        self._write_file(self.data_dir / "server.key", key.read_text(), 0o600)
        self.psql("SELECT pg_reload_conf()")


class Lab:
    """The agent's host, the server in its peer namespace, and the agent's TLS files."""

    def __init__(self, host: IsolatedHost, cluster: PeerCluster, client_dir: Path):
        self.host, self.cluster, self.client_dir = host, cluster, client_dir
        self.server_ip = host.peer_address.split("/")[0]

    def database(self) -> str:
        name = f"faults_{uuid.uuid4().hex[:10]}"
        self.cluster.create_database(name, owner=ROLE)
        return name

    def dsn(self, database: str) -> str:
        files = self.client_dir
        return (f"host=localhost hostaddr={self.server_ip} port={self.cluster.port} dbname={database} user={ROLE} "
                f"sslmode=verify-full sslrootcert={files / 'root.crt'} sslcert={files / 'agent.crt'} "
                f"sslkey={files / 'agent.key'} {TIMEOUTS}")

    def install_client_files(self, root: str, cert: Path, key: Path) -> None:
        """Replace the agent's files as a rotation tool does: write aside, then rename over."""
        for text, name, mode in ((root, "root.crt", 0o644), (cert.read_text(), "agent.crt", 0o644),
                                 (key.read_text(), "agent.key", 0o600)):
            staged = self.client_dir / f".{name}.new"
            staged.write_text(text)
            os.chmod(staged, mode)
            os.replace(staged, self.client_dir / name)

    def sql(self, database: str, query: str) -> str:
        return self.cluster.psql(query, dbname=database)

    def cut(self) -> None:
        """Drop every packet to and from the server's port, inside the peer namespace."""
        script = f"""table inet situation_fault {{
    chain in {{ type filter hook input priority 0; tcp dport {self.cluster.port} drop; }}
    chain out {{ type filter hook output priority 0; tcp sport {self.cluster.port} drop; }}
}}
"""
        subprocess.run(["ip", "netns", "exec", self.host.peer, "nft", "-f", "-"], input=script, text=True, check=True)

    def heal(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.host.peer, "nft", "delete", "table", "inet", "situation_fault"],
                       check=True)


@pytest.fixture(scope="module")
def lab(certs):
    if not netns_available() or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables")
    host = IsolatedHost().create()
    server_ip = host.peer_address.split("/")[0]
    base = Path(tempfile.mkdtemp(prefix="sit-pg-faults-", dir="/tmp"))
    cluster = PeerCluster(base, tls=True, certs=certs, name="faults", namespace=host.peer, address=server_ip,
                          network=host.peer_address)
    client_dir = Path(tempfile.mkdtemp(prefix="sit-faults-tls-"))
    try:
        cluster.start()
        cluster.create_role(ROLE)
        lab = Lab(host, cluster, client_dir)
        lab.install_client_files(certs.ca_crt.read_text(), *certs.client_cert(ROLE))
        yield lab
    finally:
        cluster.destroy()
        host.destroy()
        shutil.rmtree(client_dir, ignore_errors=True)


class Daemon:
    """``situation run`` (or the fault agent) as a daemon in the lab, with its log, health and sd_notify."""

    def __init__(self, lab: Lab, tmp_path: Path, database: str, *, program: tuple[str, ...] = ("-m", "situation"),
                 **env: str):
        self.lab, self.tmp_path = lab, tmp_path
        self.notify_dir = Path(tempfile.mkdtemp(dir="/tmp"))  # short: a socket path has ~107 bytes
        self.notify = NotifySocket(self.notify_dir)
        self.env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"),
                                 NOTIFY_SOCKET=str(self.notify.path), **env)
        self.log_path = tmp_path / "agent.log"
        with self.log_path.open("w") as log:
            self.process = lab.host.popen(sys.executable, *program, "run", "--interval", "1s", *QUICK,
                                          "--db", lab.dsn(database), env=self.env, stdout=subprocess.DEVNULL,
                                          stderr=log)

    def events(self) -> list[dict]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def wait_for_event(self, event: str, timeout: float, after: int = 0) -> int:
        """How many log events there are up to the first ``event`` from index ``after`` on."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            for index in range(after, len(events)):
                if events[index].get("event") == event:
                    return index + 1
            assert self.process.poll() is None, f"the agent ended ({self.process.returncode}):\n{self.log_text()}"
            assert time.monotonic() < deadline, f"no {event!r} in the agent's log:\n{self.log_text()}"
            time.sleep(0.1)

    def wait_for_status(self, wanted, timeout: float, after: int = 0) -> int:
        """The sd_notify messages up to the first STATUS= (from ``after`` on) that is ``wanted``."""
        def status(message: str) -> bool:
            return any(line.startswith("STATUS=") and wanted(line[7:]) for line in message.splitlines())

        seen = self.notify.wait_until(status, timeout, after)
        assert seen is not None, f"no such STATUS among {self.notify.messages}\n{self.log_text()}"
        return seen

    def health(self, database: str) -> subprocess.CompletedProcess:
        """`situation health`, once the health record says the database is ``database`` ("up" or "down")."""
        record = self.tmp_path / "state" / "health.json"

        def written() -> bool:
            try:
                return json.loads(record.read_text())["database"] == database
            except (OSError, ValueError):
                return False

        wait_until(written, 30, f"a health record with the database {database}")
        return self.lab.host.run(sys.executable, "-m", "situation", "health", env=self.env, timeout=60)

    def log_text(self) -> str:
        return self.log_path.read_text()[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()
        shutil.rmtree(self.notify_dir, ignore_errors=True)


def agent_sessions(lab: Lab, database: str) -> str:
    return lab.sql(database, f"SELECT string_agg(state, ',' ORDER BY state) FROM pg_stat_activity "
                             f"WHERE usename = '{ROLE}' AND datname = current_database()")


def unit_rows(lab: Lab, database: str) -> int:
    return int(lab.sql(database, f"SELECT count(*) FROM situation.packages WHERE name LIKE '{NAME_PREFIX}%'"))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kill_9_inside_a_unit_leaves_nothing_of_it_and_the_next_cycle_succeeds(lab, tmp_path):
    database = lab.database()
    marker = tmp_path / "inside-the-unit"
    env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"),
                        SITUATION_TEST_UNIT_MARKER=str(marker), SITUATION_TEST_UNIT_ROWS=str(UNIT_ROWS))
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = lab.host.popen(sys.executable, str(FAULT_AGENT), "run", "--once", *QUICK, "--db", lab.dsn(database),
                                 env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def inside() -> None:  # the first half is on the server, in a transaction still open
        assert "idle in transaction" in agent_sessions(lab, database)

    kill_inside_the_unit(process, marker, inside, log)
    wait_until(lambda: agent_sessions(lab, database) == "", 30, "the server to end the killed agent's sessions")
    assert unit_rows(lab, database) == 0

    rerun = lab.host.run(sys.executable, "-m", "situation", "run", "--once", *QUICK, "--db", lab.dsn(database),
                         env=clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state")))
    assert rerun.returncode == 0, rerun.stderr
    assert unit_rows(lab, database) == 0
    assert lab.sql(database, "SELECT count(*) FROM situation.machines") == "1"
    assert int(lab.sql(database, "SELECT count(*) FROM situation.users")) > 0


def unhealthy(status: str) -> bool:
    return "database unreachable" in status


def healthy(status: str) -> bool:
    return "rows written" in status and not unhealthy(status)


@pytest.mark.parametrize("fault", ["restart", "network cut"])
def test_database_lost_mid_cycle_is_reported_and_the_daemon_recovers(fault, lab, tmp_path):
    database = lab.database()
    marker, release = tmp_path / "inside-the-unit", tmp_path / "release"
    daemon = Daemon(lab, tmp_path, database, program=(str(FAULT_AGENT),), SITUATION_TEST_UNIT_MARKER=str(marker),
                    SITUATION_TEST_UNIT_RELEASE=str(release), SITUATION_TEST_UNIT_ROWS=str(UNIT_ROWS))
    broken = False
    try:
        wait_until(lambda: marker.exists(), 60, "the unit's first half")
        # Mid-cycle, inside a unit: the database goes away, and the unit goes on.
        lab.cluster.stop() if fault == "restart" else lab.cut()
        broken = True
        release.touch()
        seen = daemon.wait_for_event("database unreachable, retrying with backoff", 90)
        down = daemon.wait_for_status(unhealthy, 30)
        result = daemon.health("down")
        assert result.returncode != 0 and "cannot reach its database" in result.stderr, result.stderr

        lab.cluster.start() if fault == "restart" else lab.heal()
        broken = False
        seen = daemon.wait_for_event("database reachable again", 90, after=seen)
        daemon.wait_for_status(healthy, 60, after=down)
        assert daemon.health("up").returncode == 0
        assert daemon.process.poll() is None  # recovered without a restart
        # The unit ran whole once the database was back.
        assert unit_rows(lab, database) == 2 * UNIT_ROWS
        assert lab.sql(database, "SELECT count(*) FROM situation.machines") == "1"
    finally:
        if broken:
            lab.cluster.start() if fault == "restart" else lab.heal()
        daemon.stop()
    unreachable = [e for e in daemon.events() if e.get("event") == "database unreachable, retrying with backoff"]
    assert len(unreachable) == 1  # once per outage, not once per retry


def test_database_cut_off_at_start_is_reported_until_it_answers(lab, tmp_path):
    database = lab.database()
    state = tmp_path / "state"
    state.mkdir()
    # A record of an earlier run, fresh and healthy, must not speak for this one.
    (state / "health.json").write_text(json.dumps({"next_cycle_before": time.time() + 3600, "database": "up"}))
    lab.cut()
    cut, daemon = True, None
    try:
        daemon = Daemon(lab, tmp_path, database)
        daemon.wait_for_status(unhealthy, 60)
        assert daemon.health("down").returncode != 0
        lab.heal()
        cut = False
        daemon.wait_for_event("database reachable again", 60)
        daemon.wait_for_event("cycle finished", 60)
        assert daemon.health("up").returncode == 0
    finally:
        if cut:
            lab.heal()
        if daemon is not None:
            daemon.stop()


def serials(lab: Lab, database: str) -> set[int]:
    """The serial numbers of the client certificates of the agent's open sessions."""
    text = lab.sql(database, f"SELECT s.client_serial FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                             f"WHERE a.usename = '{ROLE}' AND a.datname = current_database()")
    return {int(line) for line in text.split()}


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_rotated_certificates_are_used_by_new_connections_without_a_restart(lab, certs, tmp_path):
    database = lab.database()
    daemon = Daemon(lab, tmp_path, database)
    try:
        daemon.wait_for_event("cycle finished", 60)
        old_serial = serial_of(lab.client_dir / "agent.crt")
        assert serials(lab, database) <= {old_serial}
        # A new CA signs the server's and the agent's certificates. In the order that leaves no gap:
        # the server trusts both CAs for client certificates; the agent gets its new certificate and
        # trusts both CAs for the server's; the server then presents its new certificate, which a
        # context still holding only the old CA would refuse.
        both = certs.ca_crt.read_text() + certs.other_ca_crt.read_text()
        lab.cluster.trust_client_cas(both)
        client_cert, client_key = certs.client_cert(ROLE, signer="other")
        lab.install_client_files(both, client_cert, client_key)
        lab.cluster.serve_certificate(*certs.server_cert(signer="other"))
        # The agent's open sessions end; the pool opens new ones, which must use the new files.
        lab.sql(database, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
        new_serial = serial_of(client_cert)
        wait_until(lambda: new_serial in serials(lab, database), 60, "a session with the new client certificate")
        assert old_serial not in serials(lab, database)
        daemon.wait_for_event("cycle finished", 60, after=len(daemon.events()))
        assert daemon.health("up").returncode == 0
        assert not [e for e in daemon.events() if e.get("status") == "failed"], daemon.log_text()
    finally:
        daemon.stop()
