"""Isolated test hosts: network namespaces joined by a veth pair.

DEVELOPERS.md, rule 1: active discovery never touches this machine's real
network. A whole agent cycle therefore runs only inside a namespace made
here: ``<name>`` (the agent's host, with a veth of known MAC and address) and
``<name>-peer`` (its one neighbour). Both veth ends are created directly inside
the namespaces, so nothing is ever added to the initial namespace. Each gets
its own resolver file under /etc/netns/<name>/. PostgreSQL is reached over its
Unix socket, which crosses namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

GUARD = Path(__file__).with_name("isolated_exec.py")
RUN_MODULE = Path(__file__).with_name("run_module.py")


def home_namespace() -> int:
    """The network namespace the test runner started in: the machine's real network."""
    return os.stat("/proc/self/ns/net").st_ino


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"sit-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", "-n", namespace, *args] if namespace else ["ip", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


class GuardedNamespace:
    """Running commands inside the namespace ``self.name``, always behind the guard."""

    name: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the agent's namespace, behind a guard that refuses the initial one."""
        return ["ip", "netns", "exec", self.name, sys.executable, str(GUARD), *argv]

    def run(self, *argv: str, env: dict[str, str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*argv), env=_guarded(env), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def run_module(self, *argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        """tests/support/run_module.py inside the agent's namespace (modules run once, in order)."""
        return self.run(sys.executable, str(RUN_MODULE), *argv, env=env, timeout=timeout)

    def popen(self, *argv: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(*argv), env=_guarded(env), text=True, **kwargs)


@dataclass
class IsolatedHost(GuardedNamespace):
    """A namespace with ``eth0`` (``mac``, ``address``) whose neighbour is ``peer_address``."""

    name: str = field(default_factory=lambda: f"sit-{uuid.uuid4().hex[:8]}")
    mac: str = "02:5a:00:00:00:02"
    address: str = "10.231.7.2/24"
    peer_mac: str = "02:5a:00:00:00:01"
    peer_address: str = "10.231.7.1/24"

    @property
    def peer(self) -> str:
        return f"{self.name}-peer"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def create(self) -> IsolatedHost:
        for namespace in (self.name, self.peer):
            _ip("netns", "add", namespace)
            _ip("link", "set", "lo", "up", namespace=namespace)
        _ip("link", "add", "eth0", "netns", self.name, "type", "veth", "peer", "name", "eth0", "netns", self.peer)
        for namespace, mac, address in ((self.name, self.mac, self.address), (self.peer, self.peer_mac, self.peer_address)):
            _ip("link", "set", "eth0", "address", mac, namespace=namespace)
            _ip("addr", "add", address, "dev", "eth0", namespace=namespace)
            _ip("link", "set", "eth0", "up", namespace=namespace)
        _ip("route", "add", "default", "via", self.peer_address.split("/")[0], namespace=self.name)
        resolver = Path("/etc/netns") / self.name
        resolver.mkdir(parents=True, exist_ok=True)
        (resolver / "resolv.conf").write_text(f"nameserver {self.peer_address.split('/')[0]}\noptions timeout:1 attempts:1\n")
        return self

    def destroy(self) -> None:
        for namespace in (self.name, self.peer):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)



def isolated_host_or_skip():
    """A generator for a pytest fixture of any scope: an IsolatedHost, destroyed afterwards;
    the test is skipped where namespaces cannot be made."""
    import pytest

    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    host = IsolatedHost().create()
    try:
        yield host
    finally:
        host.destroy()


# Every neighbour in a test namespace is asked over SNMP, and most run no agent: each
# would hold a whole cycle for the default timeout and 3 retries (12 s). Tests of
# snmp itself pass their own --snmp-timeout (a flag beats this).
QUICK_SNMP = {"SITUATION_SNMP_TIMEOUT": "100ms"}


def _guarded(env: dict[str, str]) -> dict[str, str]:
    return {**QUICK_SNMP, **env, "SITUATION_TEST_HOME_NETNS": str(home_namespace())}
