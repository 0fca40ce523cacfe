"""TCP keepalives notice a dead path to PostgreSQL, and the agent's store reconnects.

The server runs in one test-made namespace, the client in another, joined by a
veth pair (support/netns.py). nftables rules, only ever inside the server's
namespace, then drop the connection's packets silently, like a stateful
firewall that forgot the flow: without keepalives the idle connection would
look alive for hours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.cluster import Cluster, clean_environ
from support.netns import IsolatedHost, netns_available

PROBE = Path(__file__).with_name("support") / "keepalive_probe.py"
ROLE, PASSWORD = "ka_agent", "ka-pw"
IDLE, INTERVAL, COUNT = 2, 1, 3  # dead after about IDLE + INTERVAL * COUNT seconds


class LinkCluster(Cluster):
    """A plain cluster listening on the peer namespace's veth address."""

    def __init__(self, *args, address: str, network: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.listen_addresses = [address]
        self.network = network

    def _hba(self) -> str:
        return f"local all all trust\nhost all all {self.network} scram-sha-256\n"


@pytest.fixture
def link():
    if not netns_available() or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables")
    host = IsolatedHost().create()
    server_ip = host.peer_address.split("/")[0]
    cluster = LinkCluster(Path(tempfile.mkdtemp(prefix="sit-pg-ka-", dir="/tmp")), tls=False, name="ka",
                          namespace=host.peer, address=server_ip, network=host.peer_address)
    try:
        cluster.start()
        cluster.create_role(ROLE, PASSWORD)
        cluster.create_database("inventory", owner=ROLE)
        yield host, cluster, server_ip
    finally:
        cluster.destroy()
        host.destroy()


def nft(namespace: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=script, text=True, check=True)


def drop_port(namespace: str, port: int) -> None:
    nft(namespace, f"""
table inet situation_test {{
    chain in {{ type filter hook input priority 0; tcp dport {port} drop; }}
    chain out {{ type filter hook output priority 0; tcp sport {port} drop; }}
}}
""")


def heal(namespace: str) -> None:
    nft(namespace, "delete table inet situation_test\n")


def test_dead_path_is_noticed_within_the_keepalive_settings_and_the_store_reconnects(link):
    host, cluster, server_ip = link
    dsn = (f"postgresql://{ROLE}:{PASSWORD}@{server_ip}:{cluster.port}/inventory?sslmode=disable"
           f"&keepalives_idle={IDLE}&keepalives_interval={INTERVAL}&keepalives_count={COUNT}"
           "&connect_timeout=5")
    env = clean_environ(PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    probe = host.popen(sys.executable, str(PROBE), dsn, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)

    def receive() -> dict:
        line = probe.stdout.readline()
        assert line, f"the probe ended: {probe.stderr.read()}"
        return json.loads(line)

    def send(word: str) -> None:
        probe.stdin.write(word + "\n")
        probe.stdin.flush()

    try:
        first_pid = receive()["ready"]
        drop_port(host.peer, cluster.port)
        send("dropped")
        dead_after = receive()["dead_after"]
        assert dead_after is not None, "the dead connection was never noticed"
        # The kernel gives up after IDLE + INTERVAL * COUNT seconds; allow for scheduling.
        assert IDLE <= dead_after <= IDLE + INTERVAL * COUNT + 10
        heal(host.peer)
        send("healed")
        assert receive()["reconnected"] != first_pid
        assert probe.wait(timeout=30) == 0, probe.stderr.read()
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
