"""A discovery lab: a scanner namespace with a bridge, and host namespaces plugged into it.

    scanner namespace                      host namespaces
    ┌───────────────────────────┐
    │ br0  198.51.100.1/24      │── veth-h0 ═══ eth0  198.51.100.10  (ns <lab>-h0)
    │ (the agent runs here)     │── veth-h1 ═══ eth0  198.51.100.11  (ns <lab>-h1, drops ICMP echo)
    └───────────────────────────┘   …

Every veth pair is created with both ends directly inside their namespaces,
so nothing is ever added to the initial namespace (DEVELOPERS.md, rule 1).
Hosts get a chosen MAC and IPv4 address, optionally IPv6 and an nftables
rule that drops ICMP echo requests. Every host also counts, with nftables
counters on its ingress hook, the probes addressed to it (IPv4 packets to
its address, ARP requests for it), so a test can prove that an excluded host
received nothing. The scanner gets its own /etc/netns/<name>/resolv.conf.
Commands in the scanner run behind the guard (tests/support/isolated_exec.py).
``destroy`` deletes every namespace, whatever happened before.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from support.netns import RUN_MODULE, GuardedNamespace, _ip, netns_available

NFT_COUNTERS = """
table netdev lab {{
    counter probes_ip {{ }}
    counter probes_arp {{ }}
    chain ingress {{
        type filter hook ingress device eth0 priority 0;
        meta protocol ip ip daddr {ip} counter name probes_ip
        meta protocol arp arp operation request arp daddr ip {ip} counter name probes_arp
    }}
}}
"""
NFT_DROP_ECHO = """
table inet lab_drop {
    chain input {
        type filter hook input priority 0;
        icmp type echo-request drop
        icmpv6 type echo-request drop
    }
}
"""


def nft_available() -> bool:
    return shutil.which("nft") is not None


def skip_without_lab() -> None:
    """pytest.skip unless namespaces can be made here and nft is installed (every lab needs both)."""
    import pytest

    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")


@dataclass
class LabHost:
    address: str  # IPv4 interface, e.g. 198.51.100.10/24
    mac: str
    ipv6: str | None = None  # e.g. 2001:db8::10/64
    drops_icmp: bool = False
    namespace: str = ""

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Lab(GuardedNamespace):
    """The scanner namespace (``name``, where the agent runs) and its hosts."""

    scanner_address: str = "198.51.100.1/24"
    scanner_mac: str = "02:1a:b0:00:00:01"
    scanner_ipv6: str | None = None
    hosts: list[LabHost] = field(default_factory=list)
    extra_addresses: tuple[str, ...] = ()  # more addresses on br0 (other attached subnets)
    name: str = field(default_factory=lambda: f"lab-{uuid.uuid4().hex[:6]}")

    @property
    def scanner_ip(self) -> str:
        return self.scanner_address.split("/")[0]

    def create(self) -> Lab:
        try:
            self._create_scanner()
            for index, host in enumerate(self.hosts):
                self._create_host(index, host)
        except BaseException:
            self.destroy()
            raise
        return self

    def _create_scanner(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "set", "lo", "up", namespace=self.name)
        _ip("link", "add", "br0", "type", "bridge", namespace=self.name)
        _ip("link", "set", "br0", "address", self.scanner_mac, namespace=self.name)
        for address in (self.scanner_address, *self.extra_addresses):
            _ip("addr", "add", address, "dev", "br0", namespace=self.name)
        if self.scanner_ipv6:
            _sysctl(self.name, "net.ipv6.conf.br0.accept_dad=0")
            _ip("-6", "addr", "add", self.scanner_ipv6, "dev", "br0", "nodad", namespace=self.name)
        _ip("link", "set", "br0", "up", namespace=self.name)
        resolver = Path("/etc/netns") / self.name
        resolver.mkdir(parents=True, exist_ok=True)
        (resolver / "resolv.conf").write_text(f"nameserver {self.scanner_ip}\noptions timeout:1 attempts:1\n")

    def _create_host(self, index: int, host: LabHost) -> None:
        host.namespace = f"{self.name}-h{index}"
        port = f"veth-h{index}"
        _ip("netns", "add", host.namespace)
        _ip("link", "set", "lo", "up", namespace=host.namespace)
        _ip("link", "add", port, "netns", self.name, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", port, "master", "br0", namespace=self.name)
        _ip("link", "set", port, "up", namespace=self.name)
        _ip("link", "set", "eth0", "address", host.mac, namespace=host.namespace)
        _ip("addr", "add", host.address, "dev", "eth0", namespace=host.namespace)
        if host.ipv6:
            _ip("-6", "addr", "add", host.ipv6, "dev", "eth0", "nodad", namespace=host.namespace)
        _ip("link", "set", "eth0", "up", namespace=host.namespace)
        if nft_available():
            _nft(host.namespace, NFT_COUNTERS.format(ip=host.ip))
            if host.drops_icmp:
                _nft(host.namespace, NFT_DROP_ECHO)
        elif host.drops_icmp:
            raise RuntimeError("nft is missing: apt-get install nftables")

    def destroy(self) -> None:
        for namespace in [self.name, *(host.namespace for host in self.hosts if host.namespace)]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)

    def probes_received(self, host: LabHost) -> int:
        """IPv4 packets and ARP requests addressed to ``host`` since the lab was made."""
        result = subprocess.run(["ip", "netns", "exec", host.namespace, "nft", "-j", "list", "counters"],
                                capture_output=True, text=True, check=True)
        counters = [item["counter"] for item in json.loads(result.stdout)["nftables"] if "counter" in item]
        return sum(counter["packets"] for counter in counters)

    def set_ping_group_range(self, low: int, high: int) -> None:
        """``net.ipv4.ping_group_range`` is per namespace: set the scanner's."""
        _sysctl(self.name, f"net.ipv4.ping_group_range={low} {high}")

    def unprivileged(self, *argv: str, uid: int = 65534, gid: int = 65534) -> list[str]:
        """``argv`` as an unprivileged user without any capability (for the guard to exec)."""
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", *argv]

    def run_module_unprivileged(self, *argv: str, env: dict[str, str], timeout: float = 120):
        """tests/support/run_module.py in the scanner, as :meth:`unprivileged` runs it."""
        return self.run(*self.unprivileged(sys.executable, str(RUN_MODULE), *argv), env=env, timeout=timeout)


def _sysctl(namespace: str, assignment: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", assignment], check=True,
                   capture_output=True)


def _nft(namespace: str, ruleset: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nft in {namespace}: {result.stderr.strip()}")


def make_hosts(network: str, count: int, *, first: int = 10, drops_icmp: tuple[int, ...] = (),
               ipv6_prefix: str | None = None) -> list[LabHost]:
    """``count`` hosts on ``network`` from its ``first``-th address, MACs 02:1a:b0:xx:xx:xx."""
    net = ipaddress.ip_network(network)
    hosts = []
    for index in range(count):
        address = net.network_address + first + index
        mac = "02:1a:b0:{:02x}:{:02x}:{:02x}".format(*int(address).to_bytes(4, "big")[1:])
        ipv6 = f"{ipaddress.ip_network(ipv6_prefix).network_address + first + index}/64" if ipv6_prefix else None
        hosts.append(LabHost(f"{address}/{net.prefixlen}", mac, ipv6=ipv6, drops_icmp=index in drops_icmp))
    return hosts
