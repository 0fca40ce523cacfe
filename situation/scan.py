"""`situation scan CIDR…`: one discovery pass over chosen networks, and a table of what was found.

The command runs the discovery modules through the normal scheduler with a
:class:`~situation.discovery.Discovery` whose ``only`` holds the targets, so no
module sends a packet outside them (or to an excluded address), and writes to
the same store as ``situation run``. This module holds what is particular to
the command: checking the targets, choosing the modules, reading back and
printing what the store knows about addresses inside the targets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from situation.discovery import WIDEST_PREFIX, IPNetwork, parse_networks
from situation.errors import ConfigError
from situation.logs import terminal_text
from situation.module import ModuleSpec

# What a scan runs, when registered, with everything these depend on. tls, ja4 and saas join
# once they exist; until then their columns of the table stay blank.
DISCOVERY_MODULES = ("host-network", "ping", "arp", "macvendor", "reverse-lookup", "tcp-scan", "tls", "ja4", "saas")
# IPv6 is never swept address by address (only the neighbour table and the all-nodes
# multicast find IPv6 hosts), so an IPv6 target may be as wide as one link's /64.
WIDEST_IPV6_PREFIX = 64


def scan_targets(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The targets as networks; ConfigError names the first bad or too-wide one."""
    targets: list[IPNetwork] = []
    for text in texts:
        try:
            networks = parse_networks(text, what="situation scan")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for network in networks:
            widest = WIDEST_PREFIX if network.version == 4 else WIDEST_IPV6_PREFIX
            if network.prefixlen < widest:
                raise ConfigError(
                    f"situation scan: {network} is wider than /{widest}; scan at most a /{widest} "
                    f"({2 ** (network.max_prefixlen - widest)} addresses) per target, e.g. split it into /{widest}s"
                )
            if network not in targets:
                targets.append(network)
    if not targets:
        raise ConfigError("situation scan: no target; give one or more addresses or networks, e.g. 192.0.2.0/24")
    return tuple(targets)


def scan_registry(registry: Mapping[str, ModuleSpec]) -> dict[str, ModuleSpec]:
    """The registered discovery modules and, transitively, their dependencies."""
    chosen: dict[str, ModuleSpec] = {}
    pending = [name for name in DISCOVERY_MODULES if name in registry]
    while pending:
        name = pending.pop()
        if name in chosen or name not in registry:
            continue
        chosen[name] = registry[name]
        pending.extend(registry[name].depends)
    return chosen


@dataclass(frozen=True)
class Found:
    address: str
    mac: str
    vendor: str
    name: str
    how: str
    ports: str = ""  # open TCP ports, comma-separated
    expires: str = ""  # the earliest not_after of the certificates served, as a date
    saas: str = ""


@dataclass
class Services:
    """What the endpoints of one address say: open ports, certificate expiry, SaaS names."""

    ports: set[int]
    expiries: set[str]
    saas: set[str]

    def cells(self) -> tuple[str, str, str]:
        return (",".join(map(str, sorted(self.ports))), min(self.expiries, default=""),
                ", ".join(sorted(self.saas)))


def _expiry(tls) -> str:
    """The date part of the certificate's not_after (RFC 3339 text), or ''."""
    not_after = tls.get("not_after") if isinstance(tls, Mapping) else None
    return not_after[:10] if isinstance(not_after, str) else ""


async def services_of(store, nic_ids) -> dict[str, Services]:
    """Address → what its endpoints on these NICs say."""
    found: dict[str, Services] = {}
    for nic_id in nic_ids:
        for row in await store.fetch("scan_nic_endpoints", nic_id):
            services = found.setdefault(row["addr"], Services(set(), set(), set()))
            if row["protocol"] == "tcp":
                services.ports.add(row["port"])
            if expiry := _expiry(row["tls"]):
                services.expiries.add(expiry)
            if row["saas"]:
                services.saas.add(row["saas"])
    return found


def _inside(address: str, targets: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == t.version and ip in t for t in targets)


def _overlaps(cidr: str, targets: Sequence[IPNetwork]) -> bool:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return any(network.version == t.version and network.overlaps(t) for t in targets)


def _how_found(row: Mapping, address: str, host_id: int | None, pinged: set[tuple[int, str]]) -> str:
    if host_id is not None and row["machine_id"] == host_id:
        return "this host"
    ways = []
    if (row["id"], address) in pinged:
        ways.append("ping")
    if row["mac"]:
        ways.append("arp")
    return "+".join(ways) or "stored"


async def found_hosts(store, agent_id: str, targets: Sequence[IPNetwork]) -> list[Found]:
    """Every stored address inside the targets, on NICs linked to subnetworks overlapping them."""
    host_id = await store.fetchval("machine_by_agent", agent_id)
    subnets = [row["id"] for row in await store.fetch("scan_subnetworks") if _overlaps(row["network_cidr"], targets)]
    rows: dict[int, dict] = {}
    pinged: set[tuple[int, str]] = set()  # ping links a NIC with the address that answered
    for subnet_id in subnets:
        for row in await store.fetch("scan_subnet_nics", subnet_id):
            rows.setdefault(row["id"], row)
            if row["link_ip"]:
                pinged.add((row["id"], row["link_ip"]))
    services = await services_of(store, rows)
    found = {}
    for row in rows.values():
        for address in row["ip"] or []:
            if _inside(address, targets) and address not in found:
                extra = services[address].cells() if address in services else ("", "", "")
                found[address] = Found(address, row["mac"] or "", row["mac_vendor"] or "", row["hostname"] or "",
                                       _how_found(row, address, host_id, pinged), *extra)
    return sorted(found.values(), key=lambda f: (ipaddress.ip_address(f.address).version, ipaddress.ip_address(f.address)))


HEADERS = ("ADDRESS", "MAC", "VENDOR", "NAME", "FOUND BY", "OPEN TCP PORTS", "CERT EXPIRES", "SAAS")


def _cell(text: str) -> str:
    """Names and vendors come from the network: no control characters on the terminal."""
    return terminal_text(text, replacement="?", width=60)


def format_table(found: Sequence[Found], targets: Sequence[IPNetwork]) -> str:
    cells = [HEADERS] + [
        (*(_cell(v) for v in (f.address, f.mac, f.vendor, f.name, f.how)), f.ports,
         _cell(f.expires), _cell(f.saas))
        for f in found
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    where = ", ".join(str(t) for t in targets)
    lines.append(f"{len(found)} address{'es' if len(found) != 1 else ''} found in {where}")
    return "\n".join(lines)
