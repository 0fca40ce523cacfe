"""Where active discovery may send packets: scope, exclusions, rate and sweep widths.

Shared by every active module (ping, arp sweep, tcp-scan, tls, snmp …) through
``ctx.discovery``. The policy is decided once per agent from the settings
``--discovery-scope``, ``--discovery-exclude`` and ``--discovery-rate``; a
one-off ``situation scan`` adds ``only``, the targets it was given.

Width rules (spec §4.12): a prefix wider than /20 is not swept; a non-public
prefix narrower than /24 is swept as its /24 (the stored subnetwork row stays
as it is).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Union

from situation.net.rate import RateLimiter

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

SCOPES = ("attached", "database")
DEFAULT_SCOPE = "attached"
DEFAULT_RATE = 2000.0  # packets per second for the whole agent
MAX_RATE = 1_000_000.0
WIDEST_PREFIX = 20
SWEEP_PREFIX = 24


@dataclass(frozen=True)
class Discovery:
    scope: str = DEFAULT_SCOPE
    exclude: tuple[IPNetwork, ...] = ()
    rate: RateLimiter = field(default_factory=lambda: RateLimiter(DEFAULT_RATE), compare=False)
    only: tuple[IPNetwork, ...] | None = None  # `situation scan`: nothing outside these

    def allows(self, address: IPAddress | str) -> bool:
        """May any packet be sent to ``address``?"""
        address = ipaddress.ip_address(address)
        if any(address in network for network in self.exclude if network.version == address.version):
            return False
        if self.only is not None:
            return any(address in network for network in self.only if network.version == address.version)
        return True


def neighbour_addresses(texts, allows) -> list[IPAddress]:
    """Stored addresses worth a query, parsed, once each, in stored order: not loopback,
    link-local, multicast or unspecified, and allowed by ``allows`` (the policy)."""
    found: list[IPAddress] = []
    for text in texts or ():
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
            continue
        if allows(address) and address not in found:
            found.append(address)
    return found


def sweep_network(network: ipaddress.IPv4Network) -> ipaddress.IPv4Network | None:
    """The network a sweep covers for a stored subnetwork, or None when it is too wide."""
    if network.prefixlen < WIDEST_PREFIX:
        return None
    if network.prefixlen > SWEEP_PREFIX and not network.is_global:
        return network.supernet(new_prefix=SWEEP_PREFIX)
    return network


def parse_networks(text: str, *, what: str, strict: bool = False) -> tuple[IPNetwork, ...]:
    """``CIDR[,CIDR…]`` (plain addresses allowed) as networks; ValueError names the bad item.

    ``strict`` refuses a CIDR with host bits set (``10.0.0.5/24``): it is not
    clear whether the address or its whole network was meant.
    """
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not an address or a network; write e.g. 192.0.2.0/24") from None
        if strict and not _is_strict_network(item):
            address = item.split("/")[0]
            raise ValueError(f"{what}: {item!r} is not a network (host bits set); write {network} for the "
                             f"network or {address} for the one address")
        networks.append(network)
    return tuple(networks)


def _is_strict_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return True
