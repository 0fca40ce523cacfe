"""This host's live interfaces as the sweeps need them: name, MAC, kind and addresses."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

ARPHRD_ETHER = 1
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class Link:
    name: str
    mac: str | None
    ethernet: bool  # ARPHRD_ETHER with a MAC: ARP works here
    up: bool
    loopback: bool
    enslaved: bool  # a port of a bridge or bond: its master carries the addresses
    ipv4: tuple[ipaddress.IPv4Interface, ...]
    ipv6: tuple[ipaddress.IPv6Interface, ...]

    def ipv4_network_holding(self, address: ipaddress.IPv4Address) -> ipaddress.IPv4Interface | None:
        """Our address on the network of this interface that holds ``address`` (on-link), if any."""
        return next((mine for mine in self.ipv4 if address in mine.network), None)


def _sys_int(name: str, item: str) -> int:
    try:
        return int(Path("/sys/class/net", name, item).read_text().strip(), 0)
    except (OSError, ValueError):
        return 0


def _prefix(netmask: str | None) -> int | None:
    if not netmask:
        return None
    try:
        return bin(int(ipaddress.ip_address(netmask))).count("1")
    except ValueError:
        return None


def read_links() -> list[Link]:
    """Every interface of this network namespace (blocking: run in a thread)."""
    links = []
    for name, addresses in psutil.net_if_addrs().items():
        flags = _sys_int(name, "flags")
        mac = next((a.address.lower() for a in addresses if a.family == psutil.AF_LINK), None)
        if mac and not int(mac.replace(":", "") or "0", 16):
            mac = None
        ipv4, ipv6 = [], []
        for address in addresses:
            prefix = _prefix(address.netmask)
            if address.family == socket.AF_INET and prefix is not None:
                ipv4.append(ipaddress.IPv4Interface(f"{address.address}/{prefix}"))
            elif address.family == socket.AF_INET6 and prefix is not None:
                ipv6.append(ipaddress.IPv6Interface(f"{address.address.split('%', 1)[0]}/{prefix}"))
        links.append(Link(
            name=name,
            mac=mac,
            ethernet=bool(mac) and _sys_int(name, "type") == ARPHRD_ETHER,
            up=bool(flags & IFF_UP),
            loopback=bool(flags & IFF_LOOPBACK),
            enslaved=Path("/sys/class/net", name, "master").exists(),
            ipv4=tuple(ipv4),
            ipv6=tuple(ipv6),
        ))
    return sorted(links, key=lambda link: link.name)


def link_named(name: str) -> Link | None:
    """One interface by name (blocking: run in a thread)."""
    return next((link for link in read_links() if link.name == name), None)
