"""arp: MACs and addresses of the host's neighbours, from the kernel's neighbour table.

Passive (agent-behaviour.md §4.13): one netlink dump, IPv4 and IPv6, nothing
sent. It runs after ``ping``, whose sweep has just refreshed the table.

For every neighbour whose address lies in one of the host's subnetworks:

- a NIC already linked to that subnetwork with the neighbour's MAC, else one
  holding its address and no (or the same) MAC, is that neighbour: it gets
  the MAC, and the address is appended to its ``ip`` list when missing;
- otherwise a new NIC ``{mac, ip: [ip], flags: {up: true}}`` (no name, no
  machine) is created and linked to the subnetwork with
  ``mac_subnet = <mac>/<subnetwork id>``.

Unlike the original, a neighbour is handled once however many host
interfaces see it: the host's subnetworks are taken once each, the table's
entries once per address (the freshest wins), and all addresses of one MAC
(its IPv4 and IPv6 ones) go to one NIC, linked to each subnetwork they lie
in. A NIC holding the address but another MAC is not taken over: the address
has moved to a new device, which gets its own NIC. A known NIC is not linked
to a second subnetwork row of a CIDR it is already linked to (a container NIC
on docker's network-tagged copy of a bridge network stays off host-network's
untagged row of the same bridge).

Under ``situation scan`` (``ctx.discovery.only`` set), only neighbours inside
the targets are recorded. Exclusions do not apply: nothing is sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from situation.errors import SituationError
from situation.module import Context, module
from situation.net.neighbour_table import Neighbour, read_neighbours

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Subnetwork:
    id: int
    network: IpNetwork


@dataclass
class StoredNic:
    id: int
    mac: str | None
    ip: list[str]
    machine_id: int | None
    subnets: set[int] = field(default_factory=set)


@dataclass
class Sighting:
    """One neighbour (one MAC): its addresses and the host subnetworks they lie in."""

    mac: str
    ips: list[str] = field(default_factory=list)
    subnets: list[int] = field(default_factory=list)


@dataclass
class Change:
    """What to write for one sighting: an update of ``nic`` or a new NIC, and the links to add."""

    sighting: Sighting
    nic: StoredNic | None  # None: create
    links: list[int]
    rewrite: bool = False  # the stored NIC's mac or ip list changes


def sightings(entries: Iterable[Neighbour], subnets: Sequence[Subnetwork]) -> list[Sighting]:
    """Neighbour entries grouped by MAC, each address with the host subnetworks holding it."""
    by_mac: dict[str, Sighting] = {}
    for entry in entries:
        inside = [s.id for s in subnets if s.network.version == entry.ip.version and entry.ip in s.network]
        if not inside:
            continue
        sighting = by_mac.setdefault(entry.mac, Sighting(entry.mac))
        sighting.ips.append(str(entry.ip))
        sighting.subnets.extend(s for s in inside if s not in sighting.subnets)
    return list(by_mac.values())


def plan_changes(
    found: Sequence[Sighting], stored: Sequence[StoredNic], host_id: int, subnets: Sequence[Subnetwork] = ()
) -> list[Change]:
    """Match each sighting to a stored NIC on its subnetworks, or plan a new one.

    A stored NIC already linked to a subnetwork (of ``subnets``) gets no link to
    another row of the same CIDR: docker's network-tagged copy of a bridge
    that host-network also records untagged stands for that network for the
    containers docker placed on it.
    """
    changes = []
    neighbours = [nic for nic in stored if nic.machine_id != host_id]
    cidr_of = {subnet.id: subnet.network for subnet in subnets}
    for sighting in found:
        nearby = [nic for nic in neighbours if nic.subnets & set(sighting.subnets)]
        nic = _same_mac(nearby, sighting) or _same_address(nearby, sighting)
        if nic is None:
            changes.append(Change(sighting, None, list(sighting.subnets)))
            continue
        ips = nic.ip + [ip for ip in sighting.ips if ip not in nic.ip]
        rewrite = nic.mac != sighting.mac or ips != nic.ip
        linked = {cidr_of[s] for s in nic.subnets if s in cidr_of}
        links = [s for s in sighting.subnets if s not in nic.subnets and cidr_of.get(s) not in linked]
        nic.mac, nic.ip = sighting.mac, ips  # later sightings see what this one claimed
        nic.subnets.update(links)
        changes.append(Change(sighting, nic, links, rewrite))
    return changes


def _same_mac(nics: Sequence[StoredNic], sighting: Sighting) -> StoredNic | None:
    return next((nic for nic in nics if nic.mac == sighting.mac), None)


def _same_address(nics: Sequence[StoredNic], sighting: Sighting) -> StoredNic | None:
    return next((nic for nic in nics if not nic.mac and set(nic.ip) & set(sighting.ips)), None)


async def load_subnets(ctx: Context, machine_id: int) -> list[Subnetwork]:
    subnets = []
    for row in await ctx.store.fetch("arp_host_subnets", machine_id):
        try:
            subnets.append(Subnetwork(row["id"], ipaddress.ip_network(row["network_cidr"], strict=False)))
        except ValueError:
            ctx.log.debug("unparsable subnetwork skipped", cidr=row["network_cidr"])
    return subnets


async def load_nics(ctx: Context, subnet_ids: Iterable[int]) -> list[StoredNic]:
    """The NICs linked to these subnetworks, each once, with the subnetworks it is linked to."""
    nics: dict[int, StoredNic] = {}
    for subnet_id in subnet_ids:
        for row in await ctx.store.fetch("arp_subnet_nics", subnet_id):
            nic = nics.setdefault(row["id"], _stored(row))
            nic.subnets.add(subnet_id)
    return sorted(nics.values(), key=lambda nic: nic.id)


def _stored(row: dict[str, Any]) -> StoredNic:
    return StoredNic(id=row["id"], mac=row["mac"] or None, ip=list(row["ip"] or []), machine_id=row["machine_id"])


async def apply(ctx: Context, change: Change) -> None:
    mac = change.sighting.mac
    if change.nic is None:
        nic_id = await ctx.store.fetchval("arp_insert_nic", mac, change.sighting.ips, {"up": True}, ctx.agent_id)
        ctx.count(1)
    else:
        nic_id = change.nic.id
        if change.rewrite:
            ctx.count(await ctx.store.execute("arp_update_nic", nic_id, mac, change.nic.ip, ctx.agent_id))
    for subnet_id in change.links:
        ctx.count(await ctx.store.execute("link_interface_subnet", nic_id, subnet_id, "", f"{mac}/{subnet_id}"))


def within(entries: Iterable[Neighbour], targets: Sequence[IpNetwork] | None) -> list[Neighbour]:
    """The entries inside ``targets`` (all of them when there are no targets)."""
    if targets is None:
        return list(entries)
    return [e for e in entries if any(e.ip.version == t.version and e.ip in t for t in targets)]


@module("arp", depends=("ping",))
async def run(ctx: Context) -> None:
    """MACs and addresses of neighbours from the kernel's neighbour table (netlink; sends nothing)."""
    try:
        entries = within(await read_neighbours(), ctx.discovery.only)
    except OSError as exc:
        raise SituationError(f"cannot read the neighbour table over netlink: {exc}") from None
    machine_id = ctx.host_id()

    async def plan(locked: bool) -> list[Change]:
        subnets = await load_subnets(ctx, machine_id)
        found = sightings(entries, subnets)
        subnet_ids = sorted({s for sighting in found for s in sighting.subnets})
        if locked:
            await ctx.store.fetch("lock_subnet_neighbours", subnet_ids)
        return plan_changes(found, await load_nics(ctx, subnet_ids), machine_id, subnets)

    async def write() -> list[Change]:
        changes = await plan(locked=True)
        for change in changes:
            await apply(ctx, change)
        return changes

    # The steady state (every neighbour already stored as seen) writes nothing: found without
    # the subnetwork lock, so that the many agents of one subnetwork do not queue on it each
    # cycle. Nothing is inserted on this path, so it cannot duplicate a neighbour.
    changes = await plan(locked=False)
    if any(change.nic is None or change.rewrite or change.links for change in changes):
        changes = await ctx.run_in_transaction(write)
    ctx.log.info(
        "neighbour table read",
        entries=len(entries),
        neighbours=len(changes),
        new=sum(1 for change in changes if change.nic is None),
    )
