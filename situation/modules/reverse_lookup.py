"""reverse-lookup: names for machine-less NICs, and the machines they belong to.

Which NICs: those without a machine (as ping and arp leave them). With
``--discovery-scope attached`` (the default) only those sharing a subnetwork
with this host's NICs; with ``database`` every one, as the original. Their
addresses that parse, are not loopback, link-local, multicast or unspecified,
and are not excluded by ``--discovery-exclude`` (or outside ``situation scan``'s
targets) are named: from the hosts file first (``/etc/hosts`` through the host
root), else by a PTR query to the name servers of ``/etc/resolv.conf`` (also
through the host root). Queries go to those servers, never to the address
itself; at most ``CONCURRENCY`` are in flight, each bounded by
``--reverse-lookup-timeout``. Names are untrusted: see
:mod:`situation.net.reverse_dns` for what is kept. A NIC's name is that of its
first address (in stored order) that has one.

Machines, per distinct name (compared without case):

- exactly one machine has that host name: the NIC joins it;
- none: one new machine ``{hostname}`` is created for the name, however many
  NICs carry it;
- several: the name is ambiguous; nothing is created and the NICs stay
  machine-less (logged).

Agents sharing a PostgreSQL take a transaction lock per name first, so two
agents never both create a machine for one name.

NICs are never deleted (the original deleted same-key duplicates, losing their
addresses, and failed on PostgreSQL when they still had subnet links). The key
(mac, tag, machine_id) allows one NIC per MAC on a machine, so a NIC whose MAC
the machine already has (or gets from another NIC in this run, lowest id
first) is not attached: its addresses are merged into that NIC's list
instead, unless the machine runs an agent (which reports its own addresses),
and it stays machine-less, with its subnet links.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from situation.discovery import neighbour_addresses
from situation.module import Context, Option, Skip, module
from situation.net.reverse_dns import make_resolver, read_hosts, reverse_names

CONCURRENCY = 32


def nameable_addresses(ips: Iterable[str] | None, allows) -> list[str]:
    """The addresses of a NIC worth naming, normalised, in stored order."""
    return [str(address) for address in neighbour_addresses(ips, allows)]


@dataclass
class Attachments:
    attach: list[tuple[int, int]] = field(default_factory=list)  # (NIC id, machine id)
    addresses: dict[int, list[str]] = field(default_factory=dict)  # NIC id → its merged address list
    kept_apart: int = 0  # NICs left machine-less because their MAC is already on the machine


def plan_attachments(
    nics: Sequence[Mapping], machine_of_nic: Mapping[int, int], held: Sequence[Mapping]
) -> Attachments:
    """Which NICs join which machine, and whose address lists grow instead.

    ``nics`` are the machine-less NICs (id, mac, tag, ip); ``machine_of_nic``
    their target machines; ``held`` the NICs with a MAC the target machines
    already have (id, mac, tag, ip, machine_id, agent).
    """
    plan = Attachments()
    holders: dict[tuple, dict] = {}
    for row in held:
        holders[(row["machine_id"], row["mac"], row["tag"])] = {
            "id": row["id"], "ip": list(row["ip"] or []), "agent": row["agent"]}
    original = {h["id"]: list(h["ip"]) for h in holders.values()}
    for nic in sorted(nics, key=lambda n: n["id"]):
        machine = machine_of_nic.get(nic["id"])
        if machine is None:
            continue
        if nic["mac"] is None:  # MAC-less NICs never collide on the key
            plan.attach.append((nic["id"], machine))
            continue
        key = (machine, nic["mac"], nic["tag"])
        holder = holders.get(key)
        if holder is None:
            holders[key] = {"id": nic["id"], "ip": list(nic["ip"] or []), "agent": None}
            original[nic["id"]] = list(nic["ip"] or [])
            plan.attach.append((nic["id"], machine))
            continue
        plan.kept_apart += 1
        if holder["agent"] is None:
            holder["ip"] += [ip for ip in nic["ip"] or [] if ip not in holder["ip"]]
    plan.addresses = {h["id"]: h["ip"] for h in holders.values() if h["ip"] != original[h["id"]]}
    return plan


@dataclass
class Outcome:
    created: int = 0
    reused: int = 0
    ambiguous: list[str] = field(default_factory=list)
    attached: int = 0
    merged: int = 0
    kept_apart: int = 0


async def attach_by_name(ctx: Context, nics: Sequence[Mapping], names: Mapping[int, str]) -> Outcome:
    """Give the NICs in ``names`` (NIC id → host name) their machines, in one transaction."""
    wanted = sorted(set(names.values()))
    outcome = Outcome()
    if not wanted:
        return outcome

    async def work() -> None:
        nonlocal outcome
        outcome = Outcome()
        await ctx.store.fetch("lock_hostnames", wanted)
        # snmp (or another agent) may have given some of them a machine since they were read
        free = {row["id"] for row in await ctx.store.fetch("still_machineless", sorted(names))}
        names_now = {nic: name for nic, name in names.items() if nic in free}
        needed = sorted(set(names_now.values()))
        machines: dict[str, list[int]] = {}
        for row in await ctx.store.fetch("machines_named", needed):
            machines.setdefault(row["hostname"], []).append(row["id"])
        outcome.ambiguous = sorted(n for n, ids in machines.items() if len(ids) > 1)
        machine_of_name = {n: ids[0] for n, ids in machines.items() if len(ids) == 1}
        outcome.reused = len(machine_of_name)
        missing = [n for n in needed if n not in machines]
        if missing:
            created = await ctx.store.fetch("create_named_machines", missing, ctx.agent_id)
            machine_of_name.update((row["hostname"], row["id"]) for row in created)
            outcome.created = len(created)
            ctx.count(len(created))
        machine_of_nic = {nic: machine_of_name[n] for nic, n in names_now.items() if n in machine_of_name}
        held = await ctx.store.fetch("nics_with_mac_on_machines", sorted(set(machine_of_nic.values())))
        plan = plan_attachments(nics, machine_of_nic, held)
        outcome.kept_apart = plan.kept_apart
        if plan.attach:
            ids, targets = zip(*plan.attach)
            outcome.attached = await ctx.store.execute("attach_nics", list(ids), list(targets), ctx.agent_id)
            ctx.count(outcome.attached)
        for nic_id, addresses in sorted(plan.addresses.items()):
            outcome.merged += await ctx.store.execute("set_nic_addresses", addresses, nic_id, ctx.agent_id)
        ctx.count(outcome.merged)

    await ctx.run_in_transaction(work)
    return outcome


async def machineless_nics(ctx: Context) -> list[dict]:
    if ctx.discovery.scope == "database":
        return await ctx.store.fetch("machineless_nics")
    if ctx.host.id is None:
        raise Skip("this host has no machine row yet (host-basic did not run), so no attached subnetworks")
    nics = await ctx.store.fetch("attached_neighbour_nics", ctx.host_id())
    return [nic for nic in nics if nic["machine_id"] is None]


def first_names(nics: Sequence[Mapping], addresses_of: Mapping[int, list[str]], named: Mapping[str, str]) -> dict[int, str]:
    """NIC id → the name of its first address that has one."""
    names = {}
    for nic in nics:
        for address in addresses_of[nic["id"]]:
            if address in named:
                names[nic["id"]] = named[address]
                break
    return names


@module(
    "reverse-lookup",
    depends=("arp",),
    options=(Option("timeout", 0.5, "duration", "Time allowed for each reverse lookup (e.g. 500ms)."),),
)
async def run(ctx: Context) -> None:
    """Host names of neighbour NICs (hosts file, then PTR), as machines."""
    nics = await machineless_nics(ctx)
    addresses_of = {nic["id"]: nameable_addresses(nic["ip"], ctx.discovery.allows) for nic in nics}
    addresses = sorted({a for found in addresses_of.values() for a in found})
    if not addresses:
        return
    hosts, resolver = await asyncio.gather(
        asyncio.to_thread(read_hosts, ctx.root.path("/etc/hosts")),
        asyncio.to_thread(make_resolver, ctx.root.path("/etc/resolv.conf")),
    )
    if resolver is None:
        ctx.log.warning("no name server in resolv.conf: names come from the hosts file only")
    lookups = await reverse_names(
        addresses, hosts, resolver, timeout=float(ctx.options.get("timeout", 0.5)), concurrency=CONCURRENCY
    )
    if lookups.rejected:
        ctx.log.debug("names refused (not plain host names)", names=lookups.rejected[:10])
    outcome = await attach_by_name(ctx, nics, first_names(nics, addresses_of, lookups.names))
    if outcome.ambiguous:
        ctx.log.warning("host names shared by several machines: their NICs stay unattached",
                        names=outcome.ambiguous[:10], count=len(outcome.ambiguous))
    ctx.log.info(
        "reverse lookups",
        nics=len(nics), addresses=len(addresses), **dict(lookups.outcomes),
        machines_created=outcome.created, machines_reused=outcome.reused, attached=outcome.attached,
        merged=outcome.merged, kept_apart=outcome.kept_apart,
    )
