"""ping: which addresses of the host's subnetworks are alive (ICMP echo, ARP, IPv6 all-nodes).

Spec §4.12 with the fixes of §10, and the discovery policy (``ctx.discovery``):

- Targets: scope ``attached`` (default) takes the IPv4 subnetworks linked to
  this host's NICs; scope ``database`` every IPv4 subnetwork stored. A prefix
  wider than /20 is skipped with a warning; a non-public prefix narrower than
  /24 is swept as its /24 (the stored row is unchanged, and what is found is
  linked to it). Every address of the swept network is probed, the network
  address included, except those whose last byte is 255, those the policy
  refuses (``--discovery-exclude``, a scan's targets) and this host's own
  addresses (already known from host-network; nothing to learn).
- Probes (situation/net/sweep.py): ICMP echo on a raw socket with CAP_NET_RAW,
  else on the unprivileged datagram socket (``net.ipv4.ping_group_range``);
  with neither the module is skipped with one line saying so. On a subnetwork
  directly attached to one of this host's Ethernet-like interfaces, with
  CAP_NET_RAW, ARP goes first and each ARP answer gets its echo at once, so
  hosts dropping ICMP are found too. Each attached interface with IPv6 gets
  one echo to ff02::1, which puts the IPv6 neighbours into the kernel's
  neighbour table for the ``arp`` module (nothing IPv6 is stored here).
- ``--ping-timeout`` (default 1s) is the wait after the last probe. The
  original documented 300ms and waited 1 s; 1 s keeps power-saving Wi-Fi
  clients, which answer late, in the results.
- Storage, per stored subnetwork: an address already on a NIC linked to that
  subnetwork (in its ``ip`` list or as the link's address) — or whose ARP MAC
  is such a NIC's MAC — is known: nothing is written, except the ARP MAC on a
  machine-less NIC that had none. Any other address becomes a NIC
  ``{ip: [ip], flags: {up, running}}`` without machine or name (with the ARP
  MAC when there is one) and a link ``(nic, subnetwork, ip)`` whose
  ``mac_subnet`` is NULL. The ``arp`` module later finds these NICs by MAC or
  address on the subnetwork, so it completes them instead of adding others.
  A second run writes nothing new. A failing subnetwork is logged; the module
  succeeds.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from situation.discovery import Discovery, sweep_network
from situation.module import Context, Option, Skip, module
from situation.net import ProbeUnavailable
from situation.net.icmp import ALL_NODES, all_nodes_echo, open_echo_socket
from situation.net.links import Link, read_links
from situation.net.sweep import SweepResult, sweep

DEFAULT_TIMEOUT = 1.0
PARALLEL_SWEEPS = 4
NEIGHBOUR_FLAGS = {"up": True, "running": True}


@dataclass
class Sweep:
    """One network to sweep, and the stored subnetworks (ids) whose sweep it is."""

    network: IPv4Network
    subnet_ids: list[int] = field(default_factory=list)
    interface: str | None = None  # an attached Ethernet-like interface: ARP is possible there


@dataclass
class Tally:
    icmp: int = 0
    arp: int = 0
    arp_only: int = 0
    new_nics: int = 0
    ipv6: int = 0
    failed: int = 0


# -- choosing targets ---------------------------------------------------------------------


def plan_sweeps(rows: Iterable[Mapping], links: Sequence[Link], log) -> list[Sweep]:
    """Stored subnetwork rows → networks to sweep (each once), wide ones skipped with a warning."""
    sweeps: dict[IPv4Network, Sweep] = {}
    for row in rows:
        try:
            stored = ipaddress.IPv4Network(row["network_cidr"], strict=False)
        except ValueError:
            log.warning("ignoring network (not an IPv4 network)", network=row["network_cidr"])
            continue
        swept = sweep_network(stored)
        if swept is None:
            log.warning("ignoring network (too wide)", network=str(stored), widest="/20")
            continue
        plan = sweeps.setdefault(swept, Sweep(swept, interface=attached_interface(stored, links)))
        plan.subnet_ids.append(row["id"])
    return list(sweeps.values())


async def scan_target_rows(ctx: Context, targets: Iterable) -> list[dict]:
    """Under `situation scan`, each IPv4 target is swept as given (the policy keeps probes inside it).

    What it finds is stored against the narrowest stored subnetwork holding the
    target, else against a new subnetwork row for the target itself.
    """
    stored = []
    for row in await ctx.store.fetch("ping_all_ipv4_subnets"):
        try:
            stored.append((ipaddress.IPv4Network(row["network_cidr"], strict=False), row["id"]))
        except ValueError:
            continue
    rows, unheld = [], []
    for target in (t for t in targets if t.version == 4):
        holders = [(network, row_id) for network, row_id in stored if target.subnet_of(network)]
        if holders:
            rows.append({"id": max(holders, key=lambda h: h[0].prefixlen)[1], "network_cidr": str(target)})
        else:
            unheld.append(target)
    if unheld:
        result = await ctx.upsert("subnetworks", [target_subnet_row(t) for t in unheld], key="cidr_tag", update=())
        rows += [{"id": row_id, "network_cidr": str(t)} for t, row_id in zip(unheld, result.ids)]
    return rows


def target_subnet_row(network: IPv4Network) -> dict:
    return {"network_cidr": str(network), "network_addr": str(network.network_address),
            "mask_size": network.prefixlen, "ip_version": 4, "gateway": "", "vlan_id": 0, "tag": ""}


def attached_interface(network: IPv4Network, links: Sequence[Link]) -> str | None:
    """The Ethernet-like interface up on ``network`` (one of its addresses overlaps it), if any."""
    for link in links:
        if link.up and link.ethernet and any(mine.network.overlaps(network) for mine in link.ipv4):
            return link.name
    return None


def sweep_addresses(network: IPv4Network, discovery: Discovery, own: set[IPv4Address]) -> list[IPv4Address]:
    """Addresses probed in ``network``: not ending in .255, allowed by the policy, not ours."""
    return [
        address
        for address in network
        if address.packed[-1] != 255 and address not in own and discovery.allows(address)
    ]


def own_addresses(links: Sequence[Link]) -> set:
    return {mine.ip for link in links for mine in (*link.ipv4, *link.ipv6)}


# -- storing ------------------------------------------------------------------------------


async def store_found(ctx: Context, subnet_id: int, found: Mapping[IPv4Address, str | None]) -> int:
    """Neighbour NICs and links for what answered on one stored subnetwork; NICs created."""

    async def work() -> int:
        await ctx.store.fetch("lock_subnet_neighbours", [subnet_id])
        nics = await ctx.store.fetch("ping_subnet_nics", subnet_id)
        by_ip, by_mac = {}, {}
        for nic in nics:
            for ip in [*(nic["ip"] or []), nic["link_ip"]]:
                by_ip.setdefault(ip, nic)
            if nic["mac"]:
                by_mac.setdefault(nic["mac"], nic)
        created = 0
        for address, mac in sorted(found.items()):
            ip = str(address)
            nic = by_ip.get(ip) or (by_mac.get(mac) if mac else None)
            if nic is None:
                nic_id = await ctx.store.fetchval(
                    "ping_insert_neighbour_nic", [ip], mac, NEIGHBOUR_FLAGS, ctx.agent_id
                )
                ctx.count(1 + await ctx.store.execute("link_interface_subnet", nic_id, subnet_id, ip, None))
                created += 1
                by_ip[ip] = {"id": nic_id, "mac": mac}
            elif mac and nic["mac"] is None:
                ctx.count(await ctx.store.execute("ping_set_neighbour_mac", nic["id"], mac, ctx.agent_id))
        return created

    return await ctx.run_in_transaction(work)


# -- the module ---------------------------------------------------------------------------


async def sweep_and_store(ctx: Context, plan: Sweep, own: set, timeout: float, tally: Tally) -> None:
    targets = sweep_addresses(plan.network, ctx.discovery, own)
    if not targets:
        return
    try:
        result: SweepResult = await sweep(targets, timeout=timeout, rate=ctx.discovery.rate, interface=plan.interface)
        found: dict[IPv4Address, str | None] = {address: None for address in result.icmp}
        found.update(result.arp)
        for subnet_id in plan.subnet_ids:
            tally.new_nics += await store_found(ctx, subnet_id, found)
    except Exception as exc:  # one subnetwork failing does not stop the others (spec §4.12)
        tally.failed += 1
        ctx.log.warning("sweep failed", network=str(plan.network), error=str(exc) or type(exc).__name__)
        return
    tally.icmp += len(result.icmp)
    tally.arp += len(result.arp)
    tally.arp_only += len(set(result.arp) - result.icmp)
    ctx.log.debug("network swept", network=str(plan.network), icmp=len(result.icmp), arp=len(result.arp),
                  arp_skipped=result.arp_skipped or None)


async def echo_all_nodes(ctx: Context, links: Sequence[Link], own: set, timeout: float, tally: Tally) -> None:
    """ff02::1 on every attached interface with IPv6, at once: neighbours enter the kernel's table."""
    if not ctx.discovery.allows(ALL_NODES):
        return

    async def echo(link: Link) -> None:
        try:
            answered = await all_nodes_echo(link.name, timeout=timeout, rate=ctx.discovery.rate)
        except (ProbeUnavailable, OSError) as exc:
            ctx.log.debug("no IPv6 all-nodes echo", interface=link.name, reason=str(exc))
            return
        tally.ipv6 += len(answered - own)

    await asyncio.gather(*(echo(link) for link in links if link.up and link.ipv6 and not (link.loopback or link.enslaved)))


def probe_kind() -> str:
    """'raw' or 'datagram'; ProbeUnavailable says what would allow either."""
    sock, kind = open_echo_socket()
    sock.close()
    return kind


@module(
    "ping",
    depends=("host-network",),
    options=(
        Option("timeout", DEFAULT_TIMEOUT, "duration",
               "how long to wait for echo and ARP replies after the last probe is sent"),
    ),
    timeout=600.0,
)
async def run(ctx: Context) -> None:
    """Live addresses on the host's IPv4 subnetworks (ICMP echo, ARP, IPv6 all-nodes echo)."""
    try:
        kind = probe_kind()
    except ProbeUnavailable as reason:
        raise Skip(str(reason)) from None
    timeout = float(ctx.options.get("timeout", DEFAULT_TIMEOUT))
    if ctx.discovery.only is not None:
        rows = await scan_target_rows(ctx, ctx.discovery.only)
    elif ctx.discovery.scope == "database":
        rows = await ctx.store.fetch("ping_all_ipv4_subnets")
    else:
        rows = await ctx.store.fetch("ping_host_ipv4_subnets", ctx.host_id())
    links = await asyncio.to_thread(read_links)
    own = own_addresses(links)
    sweeps = plan_sweeps(rows, links, ctx.log)
    tally = Tally()
    limit = asyncio.Semaphore(PARALLEL_SWEEPS)

    async def bounded(plan: Sweep) -> None:
        async with limit:
            await sweep_and_store(ctx, plan, own, timeout, tally)

    await asyncio.gather(echo_all_nodes(ctx, links, own, timeout, tally), *map(bounded, sweeps))
    ctx.log.info(
        "hosts found",
        networks=len(sweeps),
        icmp=tally.icmp,
        arp=tally.arp,
        arp_only=tally.arp_only,
        ipv6=tally.ipv6,
        new_interfaces=tally.new_nics,
        socket=kind,
        failed=tally.failed,
        **({} if kind == "raw" else {"arp_skipped": "needs CAP_NET_RAW"}),
    )
