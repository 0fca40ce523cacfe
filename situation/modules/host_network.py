"""host-network: the host's interfaces, their subnetworks and the links between them.

Sources, all files read through the module's :class:`~situation.hostroot.HostRoot`:

- ``/sys/class/net/<if>``: the interfaces. ``flags`` holds the IFF_* bits
  (IFF_UP 0x1, BROADCAST 0x2, LOOPBACK 0x8, POINTOPOINT 0x10, RUNNING 0x40,
  MULTICAST 0x1000); ``address`` the hardware address and ``type`` the ARPHRD
  type. An all-zero address (lo) or none (wg0, tun0) means no MAC, and so
  does the IPv4/IPv6 address that IP-in-IP and GRE tunnels expose there.
- Addresses with their prefix length: ``psutil.net_if_addrs()`` on the live
  system; under a fixture root the JSON file ``/situation-test/addresses.json``
  (``{"eth0": ["192.168.1.10/24", "fe80::1/64"], ...}``). Both feed the same
  :class:`Interface` objects.
- Default routes: ``/proc/net/route`` (IPv4) and ``/proc/net/ipv6_route``
  (IPv6), lowest metric wins.

Rules (agent-behaviour.md §4.11, with the fixes of §10.2):

- Interfaces that are administratively up are kept, except ``veth*`` and names
  containing ``qemu``. The loopback interface is recorded, as the original
  does (its addresses go into ``ip``, but it gets no subnetwork).
- ``ip`` is the current, de-duplicated list of addresses (no prefix), NULL when
  empty; ``mac`` is lowercase or NULL; ``flags`` always has ``up`` and the other
  keys only when set.
- ``gateway`` is set only on the interface a default route leaves through (the
  IPv4 gateway, else the IPv6 one) instead of on every NIC.
- Every address that is neither loopback nor link-local gives a subnetwork (its
  strict CIDR, tag ``''``, the default gateway when it lies inside) and a link
  ``(nic, subnetwork, ip)`` whose ``mac_subnet`` is ``<mac>/<subnetwork id>``, or
  NULL for a NIC without MAC.
- Interfaces sharing a MAC (a bridge and its port, a bond and its slaves, VLAN
  sub-interfaces) are one row, since ``(mac, tag, machine_id)`` is unique: the
  interface with the default route, else one with addresses, else the shortest
  name gives the row its name and flags; the addresses of all are merged.

Matching on re-runs: a NIC with a MAC is the existing row of this machine with
that MAC (upsert on ``machine_mac_tag``); a NIC without MAC is the row with its
name (upsert on ``machine_nic_name``), so MAC-less NICs never merge. Before the
upserts, a stored row that holds a name now claimed by another row (renamed or
replaced NICs) has its name cleared, so no unique key is violated mid-batch.
Links of NICs that moved off a subnet are not removed (as in the original).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from situation.hostroot import HostRoot, host_int, lines, parse_source, read_text_or_none
from situation.module import Context, module

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ADDRESSES_FIXTURE = "/situation-test/addresses.json"

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_MULTICAST = 0x1000
_OPTIONAL_FLAGS = (
    ("broadcast", IFF_BROADCAST),
    ("loopback", IFF_LOOPBACK),
    ("point_to_point", IFF_POINTOPOINT),
    ("multicast", IFF_MULTICAST),
    ("running", IFF_RUNNING),
)

# ARPHRD types whose "hardware address" is an IP address (ipip, ip6ip6, sit, ip6gre, gre).
_TUNNEL_TYPES = frozenset({768, 769, 776, 778, 823})

RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_REJECT = 0x200


@dataclass(frozen=True)
class Interface:
    """One OS interface as read from the host."""

    name: str
    mac: str | None
    flags: int
    addresses: tuple[IpInterface, ...] = ()

    @property
    def is_up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class DefaultRoute:
    interface: str
    gateway: IpAddress
    metric: int


@dataclass(frozen=True)
class Subnet:
    network_cidr: str
    network_addr: str
    mask_size: int
    ip_version: int
    gateway: str = ""
    tag: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "network_cidr": self.network_cidr,
            "network_addr": self.network_addr,
            "mask_size": self.mask_size,
            "ip_version": self.ip_version,
            "gateway": self.gateway,
            "vlan_id": 0,
            "tag": self.tag,
        }


@dataclass(frozen=True)
class Link:
    """The NIC (by its name in the snapshot) has ``ip`` on subnetwork ``network_cidr``."""

    nic: str
    network_cidr: str
    ip: str


@dataclass(frozen=True)
class Nic:
    """One ``network_interfaces`` row to write (possibly several interfaces sharing a MAC)."""

    name: str
    mac: str | None
    ip: tuple[str, ...]
    gateway: str | None
    flags: dict[str, bool]
    members: tuple[str, ...] = ()

    def as_row(self, machine_id: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac": self.mac,
            "ip": list(self.ip) or None,
            "gateway": self.gateway,
            "flags": dict(self.flags),
            "tag": "",
            "machine_id": machine_id,
        }


@dataclass
class NetworkSnapshot:
    nics: list[Nic] = field(default_factory=list)
    subnets: list[Subnet] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


@dataclass(frozen=True)
class StoredNic:
    id: int
    name: str | None
    mac: str | None
    tag: str = ""


@dataclass
class WritePlan:
    """How current NICs map onto stored rows: names to clear first, then two upsert batches."""

    release_names: list[int] = field(default_factory=list)  # row ids whose name is cleared
    with_mac: list[Nic] = field(default_factory=list)  # upsert on machine_mac_tag
    without_mac: list[Nic] = field(default_factory=list)  # upsert on machine_nic_name


# -- reading the host ----------------------------------------------------------------


def read_text(path: Path) -> str | None:
    text = read_text_or_none(path)
    return None if text is None else text.strip()


def parse_flags(text: str | None) -> int:
    """``0x1003`` (sysfs ``flags``) → 4099; 0 when unreadable."""
    try:
        return int(text, 16) if text else 0
    except ValueError:
        return 0


def decode_flags(bits: int) -> dict[str, bool]:
    """The stored flags object: ``up`` always, the others only when set."""
    flags = {"up": bool(bits & IFF_UP)}
    for key, bit in _OPTIONAL_FLAGS:
        if bits & bit:
            flags[key] = True
    return flags


def normalize_mac(text: str | None, arp_type: int | None = None) -> str | None:
    """Lowercase colon form; None for empty, all-zero or tunnel (IP-as-address) addresses."""
    if not text or arp_type in _TUNNEL_TYPES:
        return None
    mac = text.strip().lower()
    octets = mac.split(":")
    try:
        values = [int(octet, 16) for octet in octets]
    except ValueError:
        return None
    if len(octets) < 2 or not any(values):
        return None
    return mac


def parse_address(text: str, netmask: str | None = None) -> IpInterface | None:
    """``192.168.1.10/24``, or an address plus a netmask (``fe80::1%eth0``, ``ffff:ffff::``)."""
    address = text.split("%", 1)[0]
    try:
        if netmask is None:
            return ipaddress.ip_interface(address)
        prefix = bin(int(ipaddress.ip_address(netmask))).count("1")
        return ipaddress.ip_interface(f"{address}/{prefix}")
    except ValueError:
        return None


def read_live_addresses() -> dict[str, list[IpInterface]]:
    """Addresses per interface from ``psutil.net_if_addrs()`` (live system only)."""
    import psutil

    addresses: dict[str, list[IpInterface]] = {}
    for name, entries in psutil.net_if_addrs().items():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            parsed = parse_address(entry.address, entry.netmask)
            if parsed is not None:
                addresses.setdefault(name, []).append(parsed)
    return addresses


def read_fixture_addresses(root: HostRoot) -> dict[str, list[IpInterface]]:
    """Addresses per interface from the fixture file ``/situation-test/addresses.json``."""
    path = root.path(ADDRESSES_FIXTURE)
    text = read_text(path)
    if not text:
        return {}
    return parse_source(path, lambda: parse_fixture_addresses(text), {})


def parse_fixture_addresses(text: str) -> dict[str, list[IpInterface]]:
    document = json.loads(text)
    if not isinstance(document, dict) or not all(isinstance(v, list) for v in document.values()):
        raise ValueError("not an object of address lists")
    addresses: dict[str, list[IpInterface]] = {}
    for name, entries in document.items():
        parsed = (parse_address(str(entry)) for entry in entries)
        addresses[name] = [address for address in parsed if address is not None]
    return addresses


def read_addresses(root: HostRoot) -> dict[str, list[IpInterface]]:
    return read_live_addresses() if root.is_live else read_fixture_addresses(root)


def read_interface(net_dir: Path, name: str, addresses: Sequence[IpInterface]) -> Interface:
    interface_dir = net_dir / name
    arp_type = host_int(read_text(interface_dir / "type"))
    return Interface(
        name=name,
        mac=normalize_mac(read_text(interface_dir / "address"), arp_type),
        flags=parse_flags(read_text(interface_dir / "flags")),
        addresses=tuple(addresses),
    )


def read_interfaces(root: HostRoot) -> list[Interface]:
    """Every interface of ``/sys/class/net``, by name, with its addresses."""
    net_dir = root.path("/sys/class/net")
    try:
        names = sorted(entry.name for entry in net_dir.iterdir())
    except OSError:
        return []
    addresses = read_addresses(root)
    return [read_interface(net_dir, name, addresses.get(name, ())) for name in names]


def is_collected(interface: Interface) -> bool:
    """Administratively up, and neither a veth pair end nor a qemu tap."""
    return interface.is_up and not interface.name.startswith("veth") and "qemu" not in interface.name


def _little_endian_ipv4(hex_text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(struct.pack("<I", int(hex_text, 16)))


def parse_ipv4_routes(text: str) -> list[DefaultRoute]:
    """Default routes (destination and mask 0, up, via a gateway) of ``/proc/net/route``."""
    routes = []
    for line in lines(text)[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        interface, destination, gateway, flags, metric, mask = (
            fields[0], fields[1], fields[2], int(fields[3], 16), int(fields[6]), fields[7],
        )
        if int(destination, 16) or int(mask, 16):
            continue
        if flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY or flags & RTF_REJECT:
            continue
        routes.append(DefaultRoute(interface, _little_endian_ipv4(gateway), metric))
    return routes


def parse_ipv6_routes(text: str) -> list[DefaultRoute]:
    """Default routes (``::/0``, up, via a next hop, not rejecting) of ``/proc/net/ipv6_route``."""
    routes = []
    for line in lines(text):
        fields = line.split()
        if len(fields) < 10:
            continue
        destination, prefix, next_hop, metric, flags, interface = (
            fields[0], int(fields[1], 16), fields[4], int(fields[5], 16), int(fields[8], 16), fields[9],
        )
        if int(destination, 16) or prefix or not int(next_hop, 16):
            continue
        if not flags & RTF_UP or flags & RTF_REJECT or interface == "lo":
            continue
        routes.append(DefaultRoute(interface, ipaddress.IPv6Address(bytes.fromhex(next_hop)), metric))
    return routes


def best_route(routes: Iterable[DefaultRoute]) -> DefaultRoute | None:
    """The default route the kernel prefers: lowest metric (first listed on a tie)."""
    best = None
    for route in routes:
        if best is None or route.metric < best.metric:
            best = route
    return best


def read_default_routes(root: HostRoot) -> list[DefaultRoute]:
    """The IPv4 default route, then the IPv6 one, each when present."""
    routes = []
    for name, parse in (("/proc/net/route", parse_ipv4_routes), ("/proc/net/ipv6_route", parse_ipv6_routes)):
        path = root.path(name)
        text = read_text(path) or ""
        route = best_route(parse_source(path, lambda: parse(text), []))
        if route is not None:
            routes.append(route)
    return routes


# -- building rows ---------------------------------------------------------------------


def subnet_for(address: IpInterface, gateways: Iterable[IpAddress] = ()) -> Subnet | None:
    """The strict network of an address; None for loopback and link-local addresses."""
    if address.ip.is_loopback or address.ip.is_link_local:
        return None
    network = address.network
    gateway = next((str(gw) for gw in gateways if gw.version == network.version and gw in network), "")
    return Subnet(
        network_cidr=str(network),
        network_addr=str(network.network_address),
        mask_size=network.prefixlen,
        ip_version=network.version,
        gateway=gateway,
    )


def interface_gateway(name: str, routes: Sequence[DefaultRoute]) -> str | None:
    """The gateway of the first default route (IPv4 before IPv6) leaving through ``name``."""
    return next((str(route.gateway) for route in routes if route.interface == name), None)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _primary_order(interface: Interface, routes: Sequence[DefaultRoute]) -> tuple:
    has_route = any(route.interface == interface.name for route in routes)
    return (not has_route, not interface.addresses, len(interface.name), interface.name)


def build_nics(interfaces: Sequence[Interface], routes: Sequence[DefaultRoute]) -> list[Nic]:
    """One :class:`Nic` per MAC (interfaces sharing one are merged) and per MAC-less interface."""
    groups: dict[str, list[Interface]] = {}
    for interface in interfaces:
        group_key = f"mac:{interface.mac}" if interface.mac else f"name:{interface.name}"
        groups.setdefault(group_key, []).append(interface)
    nics = []
    for members in groups.values():
        members = sorted(members, key=lambda member: _primary_order(member, routes))
        primary = members[0]
        gateway = next((gw for gw in (interface_gateway(m.name, routes) for m in members) if gw), None)
        nics.append(
            Nic(
                name=primary.name,
                mac=primary.mac,
                ip=_unique(str(address.ip) for member in members for address in member.addresses),
                gateway=gateway,
                flags=decode_flags(primary.flags),
                members=tuple(member.name for member in members),
            )
        )
    return sorted(nics, key=lambda nic: nic.name)


def build_snapshot(interfaces: Sequence[Interface], routes: Sequence[DefaultRoute]) -> NetworkSnapshot:
    """NICs, their subnetworks (one per CIDR) and the NIC ↔ subnetwork links."""
    collected = [interface for interface in interfaces if is_collected(interface)]
    nics = build_nics(collected, routes)
    nic_of_member = {member: nic.name for nic in nics for member in nic.members}
    gateways = [route.gateway for route in routes]
    subnets: dict[str, Subnet] = {}
    links: dict[tuple[str, str, str], Link] = {}
    for interface in collected:
        for address in interface.addresses:
            subnet = subnet_for(address, gateways)
            if subnet is None:
                continue
            subnets.setdefault(subnet.network_cidr, subnet)
            link = Link(nic_of_member[interface.name], subnet.network_cidr, str(address.ip))
            links.setdefault((link.nic, link.network_cidr, link.ip), link)
    return NetworkSnapshot(nics=nics, subnets=list(subnets.values()), links=list(links.values()))


def collect_network(root: HostRoot) -> NetworkSnapshot:
    """Everything host-network writes, read from the host (blocking: run in a thread)."""
    return build_snapshot(read_interfaces(root), read_default_routes(root))


def mac_subnet(mac: str | None, subnet_id: int) -> str | None:
    """``aa:bb:cc:dd:ee:ff/12``; None for a NIC without MAC (never ``/12``)."""
    return f"{mac}/{subnet_id}" if mac else None


# -- matching against stored rows -----------------------------------------------------


def plan_writes(nics: Sequence[Nic], stored: Sequence[StoredNic]) -> WritePlan:
    """Which stored row each NIC lands on, and which stored names must be cleared first.

    A NIC with a MAC lands on the untagged row with that MAC (or a new row); a
    NIC without MAC on the row with its name, unless that row now belongs to a
    current MAC. Any other stored row holding a name that some NIC claims has
    its name cleared, so renamed, swapped or replaced NICs never collide on
    ``machine_nic_name`` during the upserts.
    """
    current_macs = {nic.mac for nic in nics if nic.mac}
    by_mac = {row.mac: row for row in stored if row.mac and row.tag == ""}
    by_name = {row.name: row for row in stored if row.name is not None}
    name_of_row: dict[int, str] = {}
    plan = WritePlan()
    for nic in nics:
        if nic.mac:
            plan.with_mac.append(nic)
            row = by_mac.get(nic.mac)
            if row is not None:
                name_of_row[row.id] = nic.name
    for nic in nics:
        if nic.mac:
            continue
        plan.without_mac.append(nic)
        row = by_name.get(nic.name)
        if row is not None and row.id not in name_of_row and row.mac not in current_macs:
            name_of_row[row.id] = nic.name
    claimed = {nic.name for nic in nics}
    plan.release_names = sorted(
        row.id for row in stored if row.name in claimed and name_of_row.get(row.id) != row.name
    )
    return plan


def _stored_nic(row: Mapping[str, Any]) -> StoredNic:
    return StoredNic(id=row["id"], name=row["name"], mac=row["mac"], tag=row.get("tag") or "")


# -- writing ---------------------------------------------------------------------------


async def write_subnets(ctx: Context, subnets: Sequence[Subnet]) -> dict[str, int]:
    """Upsert on ``cidr_tag``; a known gateway refreshes the stored one, an unknown one keeps it."""
    ids: dict[str, int] = {}
    with_gateway = [subnet for subnet in subnets if subnet.gateway]
    without_gateway = [subnet for subnet in subnets if not subnet.gateway]
    for batch, update in ((with_gateway, ("gateway",)), (without_gateway, ())):
        if not batch:
            continue
        result = await ctx.upsert("subnetworks", [s.as_row() for s in batch], key="cidr_tag", update=update)
        ids.update({subnet.network_cidr: row_id for subnet, row_id in zip(batch, result.ids)})
    return ids


async def write_nics(ctx: Context, plan: WritePlan, machine_id: int) -> dict[str, int]:
    """Clear colliding names, then upsert NICs with a MAC and NICs without; ids by NIC name."""
    for row_id in plan.release_names:
        ctx.count(await ctx.store.execute("release_interface_name", row_id, ctx.agent_id))
    ids: dict[str, int] = {}
    batches = (
        (plan.with_mac, "machine_mac_tag", ("name", "ip", "gateway", "flags")),
        (plan.without_mac, "machine_nic_name", ("mac", "ip", "gateway", "flags")),
    )
    for nics, key, update in batches:
        if not nics:
            continue
        result = await ctx.upsert("network_interfaces", [nic.as_row(machine_id) for nic in nics], key=key, update=update)
        ids.update({nic.name: row_id for nic, row_id in zip(nics, result.ids)})
    return ids


async def write_links(
    ctx: Context, snapshot: NetworkSnapshot, nic_ids: Mapping[str, int], subnet_ids: Mapping[str, int]
) -> int:
    """``link_interface_subnet`` (INSERT … ON CONFLICT DO NOTHING) for every link; rows added."""
    mac_of = {nic.name: nic.mac for nic in snapshot.nics}
    added = 0
    for link in snapshot.links:
        subnet_id = subnet_ids[link.network_cidr]
        added += await ctx.store.execute(
            "link_interface_subnet",
            nic_ids[link.nic],
            subnet_id,
            link.ip,
            mac_subnet(mac_of[link.nic], subnet_id),
        )
    return added


@module("host-network", depends=("host-basic",))
async def run(ctx: Context) -> None:
    """Network interfaces of the host, their subnetworks and links (/sys/class/net, routes)."""
    snapshot = await asyncio.to_thread(collect_network, ctx.root)
    if not snapshot.nics:
        ctx.log.info("no network interface is up")
        return
    machine_id = ctx.host_id()

    async def write_all() -> tuple[dict[str, int], int]:
        stored = [_stored_nic(row) for row in await ctx.store.fetch("host_network_interfaces", machine_id)]
        plan = plan_writes(snapshot.nics, stored)
        subnet_ids = await write_subnets(ctx, snapshot.subnets)
        nic_ids = await write_nics(ctx, plan, machine_id)
        return subnet_ids, await write_links(ctx, snapshot, nic_ids, subnet_ids)

    subnet_ids, added = await ctx.run_in_transaction(write_all)
    ctx.count(added)
    if not snapshot.links:
        ctx.log.warning("no subnetwork link: no interface has a routable address")
    ctx.log.debug(
        "network stored", interfaces=len(snapshot.nics), subnetworks=len(subnet_ids), links_added=added
    )
