"""snmp: what the SNMP agents of neighbour machines say about themselves (agent-behaviour.md §4.16).

Targets: the NICs of other machines, or of no machine yet, that share a
subnetwork with this host's NICs; each of their
addresses that is not loopback, link-local, multicast or unspecified and that
``ctx.discovery`` allows. At most ``PROBES`` targets are probed and
``CONCURRENCY`` answering devices walked at once,
through one client (:mod:`situation.net.snmp`), every packet drawn from the shared rate limit;
each device is written, in a transaction of its own, as soon as it has
answered, and may send at most ``--snmp-max-rows`` rows (its walks stop
there), so a huge or slow device cannot cost the others their rows.
A target first gets ``GET 0.0``; without an answer (``--snmp-timeout`` per
try, 3 retries) nothing more is sent to it. Bad credentials (a v3 report) are
logged as a warning, and nothing is recorded for that target.

Deviation: the original skips NICs without a machine, those reverse-lookup
could not name, so a switch without a PTR record was never asked. Here such a
NIC is asked too; when its device answers with a sysName, the NIC joins the
machine of that name that already holds one of the device's interface MACs
(an earlier run's record), else a new machine named so; a device without a
sysName is left alone. A name alone never merges devices: factory names
(``OpenWrt``, ``switch``) are shared by unrelated ones.

What an answering device gives (see :mod:`situation.net.snmp`): interfaces
with a real MAC and an IPv4 gateway become NICs of the target's machine,
matched to its stored NICs by MAC or name (name and gateway filled when
empty, flags overwritten, missing addresses appended), else created; each of
their subnetworks is linked unless the NIC is already linked to one with that
CIDR (whose empty gateway is then filled). An endpoint ``{161, <transport>,
address, NIC}`` records the agent. The system group updates the machine
(host name, uptime, platform, distribution, arch, chassis), unless the
machine runs an agent of its own, which reports itself.

SNMPv3 (the original has no credential options): ``--snmp-version 3`` with
``--snmp-user``, ``--snmp-auth-protocol``/``--snmp-priv-protocol`` and the
keys from ``SITUATION_SNMP_AUTH_KEY``/``SITUATION_SNMP_PRIV_KEY`` or from
``--snmp-auth-key-file``/``--snmp-priv-key-file``: secrets are never options,
so they appear in no flag listing, ``defaults`` output or log line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from situation.discovery import neighbour_addresses
from situation.errors import ConfigError
from situation.module import Context, Option, module
from situation.modules.reverse_lookup import plan_attachments
from situation.net.snmp import (
    MAX_DEVICE_ROWS,
    Credentials,
    Device,
    DeviceNic,
    NoAnswer,
    Refused,
    SnmpClient,
    chassis_from_services,
    check_credentials,
    device_nics,
    read_device,
    system_facts,
)

CONCURRENCY = 32  # devices walked at once
PROBES = 256  # targets probed at once: a silent one costs a timeout per try and nothing else
RETRIES = 3  # fixed, as in the original
MACHINE_COLUMNS = ("hostname", "platform", "distribution", "distribution_family", "arch", "uptime", "chassis")

OPTIONS = (
    Option("version", 1, "int", "SNMP version by the original's codes: 0 = v1, 1 = v2c, 3 = v3."),
    Option("community", "public", "str", "Community string (v1, v2c)."),
    Option("timeout", 3.0, "duration", "Wait for each answer (each of the 3 retries waits as long)."),
    Option("transport", "udp", "str", "Transport: udp (the only one supported)."),
    Option("port", 161, "int", "UDP port of the agents."),
    Option("user", "", "str", "SNMPv3 USM user name."),
    Option("auth-protocol", "sha", "str", "SNMPv3 authentication: md5, sha, sha224, sha256, sha384 or sha512."),
    Option("auth-key-file", "", "str", "File holding the SNMPv3 authentication passphrase "
                                       "(or set SITUATION_SNMP_AUTH_KEY)."),
    Option("priv-protocol", "aes", "str", "SNMPv3 privacy: des, 3des, aes, aes192 or aes256."),
    Option("priv-key-file", "", "str", "File holding the SNMPv3 privacy passphrase (or set SITUATION_SNMP_PRIV_KEY)."),
    Option("max-rows", MAX_DEVICE_ROWS, "int", "Rows one device may send per cycle, all its tables together; "
                                              "its walks stop there and what it said so far is recorded."),
)


@dataclass(frozen=True)
class Target:
    nic_id: int
    machine_id: int | None  # None: a neighbour no machine holds yet (reverse-lookup found no name)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


def _secret(environment: str, path: str, option: str) -> str | None:
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--snmp-{option}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return text.rstrip("\r\n")
    return os.environ.get(environment) or None


def read_credentials(options: Mapping[str, Any]) -> Credentials:
    """Credentials from the options and the environment; ConfigError (one line) when unusable."""
    if options["transport"] != "udp":
        raise ConfigError(f"--snmp-transport {options['transport']!r} is not supported; use udp")
    if not 0 < options["port"] < 65536:
        raise ConfigError(f"--snmp-port {options['port']} is not a port number (1-65535)")
    if options["max-rows"] < 1:
        raise ConfigError(f"--snmp-max-rows {options['max-rows']} must be at least 1 (default {MAX_DEVICE_ROWS})")
    credentials = Credentials(
        version=options["version"],
        community=options["community"],
        user=options["user"],
        auth_protocol=options["auth-protocol"].lower(),
        auth_key=_secret("SITUATION_SNMP_AUTH_KEY", options["auth-key-file"], "auth-key-file"),
        priv_protocol=options["priv-protocol"].lower(),
        priv_key=_secret("SITUATION_SNMP_PRIV_KEY", options["priv-key-file"], "priv-key-file"),
    )
    problem = check_credentials(credentials)
    if problem:
        raise ConfigError(problem)
    return credentials


async def query_and_record(ctx: Context, client: SnmpClient, targets: Sequence[Target]) -> tuple[int, int]:
    """Query every target, ``CONCURRENCY`` at a time, and write each device as soon as it has answered.

    Each device is written on its own, one at a time (its machine found or
    made, then its rows, in transactions of their own): a device that is still
    being walked when the module's time runs out loses only its own rows.
    Returns how many targets answered, and how many of those were left without a machine.
    """
    probing, walking, writing = asyncio.Semaphore(PROBES), asyncio.Semaphore(CONCURRENCY), asyncio.Lock()

    async def one(target: Target) -> tuple[bool, bool]:
        async with probing:
            device = await query(ctx, client, target, walking)
        if device is None:
            return False, False
        if device.over_budget:
            ctx.log.warning("SNMP agent sent more rows than its budget; keeping what it said so far",
                            address=str(target.address), max_rows=client.max_rows)
        async with writing:
            placed, unplaced = await give_machines(ctx, [(target, device)])
            for placed_target, placed_device in placed:
                await ctx.run_in_transaction(lambda: record(ctx, placed_target, placed_device))
        return True, unplaced > 0

    try:
        async with asyncio.TaskGroup() as group:  # a failed write cancels the rest
            tasks = [group.create_task(one(t)) for t in targets]
    except* Exception as failed:
        raise failed.exceptions[0] from None  # the store's own error, not a group around it
    outcomes = [task.result() for task in tasks]
    return sum(answered for answered, _ in outcomes), sum(unplaced for _, unplaced in outcomes)


async def query(ctx: Context, client: SnmpClient, target: Target, walking: asyncio.Semaphore) -> Device | None:
    """What one target says, or None (no answer, refused, or a malformed exchange: this target only)."""
    try:
        return await read_device(client, target.address, walking)
    except Refused as exc:
        ctx.log.warning("SNMP agent refused the request", address=str(target.address), reason=str(exc))
    except NoAnswer:
        pass
    except Exception as exc:  # a socket error, or pysnmp (v3) raising on a malformed exchange
        ctx.log.warning("SNMP query failed", address=str(target.address), error=str(exc))
    return None


# -- writing ---------------------------------------------------------------------------


async def record(ctx: Context, target: Target, device: Device) -> None:
    """Everything one device said, written for the target's machine."""
    transport, port = ctx.options["transport"], ctx.options["port"]
    nics = await ctx.store.fetch("snmp_machine_nics", target.machine_id)
    links = await ctx.store.fetch("snmp_machine_links", target.machine_id)
    for found in device_nics(device):
        await record_nic(ctx, target.machine_id, found, nics, links)
    await ctx.upsert("application_endpoints", [{
        "port": port, "protocol": transport, "addr": str(target.address), "network_interface_id": target.nic_id,
    }], key="port_protocol_addr_network_interface_id", update=[])
    await record_system(ctx, target.machine_id, device)


async def record_nic(ctx: Context, machine_id: int, found: DeviceNic, nics: list[dict], links: list[dict]) -> None:
    stored = next((n for n in nics if n["mac"] == found.mac or (found.name and n["name"] == found.name)), None)
    taken = {n["name"] for n in nics if n is not stored and n["name"]}
    name = found.name if found.name and found.name not in taken else None
    if stored is None:
        result = await ctx.upsert("network_interfaces", [{
            "name": name, "mac": found.mac, "ip": found.ips, "gateway": found.gateway, "flags": found.flags,
            "tag": "", "machine_id": machine_id,
        }], key="machine_mac_tag", update=[])
        nic_id, linked = result.ids[0], {}
        nics.append({"id": nic_id, "name": name, "mac": found.mac, "ip": found.ips, "gateway": found.gateway,
                     "flags": found.flags})
    else:
        nic_id = stored["id"]
        linked = {link["network_cidr"]: link for link in links if link["network_interface_id"] == nic_id}
        ips = list(stored["ip"] or [])
        ips += [ip for ip in found.ips if ip not in ips]
        new = (stored["name"] or name, stored["gateway"] or found.gateway, ips, found.flags)
        if new != (stored["name"], stored["gateway"], stored["ip"], stored["flags"]):
            ctx.count(await ctx.store.execute("snmp_update_nic", nic_id, *new, ctx.agent_id))
            stored.update(name=new[0], gateway=new[1], ip=ips, flags=found.flags)
    if nic_id is None:
        return
    for subnet in found.subnets:
        cidr = str(subnet.network)
        if cidr in linked:
            if subnet.gateway and not linked[cidr]["gateway"]:
                ctx.count(await ctx.store.execute("snmp_fill_subnet_gateway", linked[cidr]["id"], subnet.gateway,
                                                  ctx.agent_id))
            continue
        result = await ctx.upsert("subnetworks", [{
            "network_cidr": cidr, "network_addr": str(subnet.network.network_address),
            "mask_size": subnet.network.prefixlen, "ip_version": subnet.network.version,
            "gateway": subnet.gateway, "vlan_id": 0, "tag": "",
        }], key="cidr_tag", update=[])
        subnet_id = result.ids[0]
        if subnet.gateway:
            ctx.count(await ctx.store.execute("snmp_fill_subnet_gateway", subnet_id, subnet.gateway, ctx.agent_id))
        ctx.count(await ctx.store.execute("link_interface_subnet", nic_id, subnet_id, subnet.address,
                                          f"{found.mac}/{subnet_id}"))


async def record_system(ctx: Context, machine_id: int, device: Device) -> None:
    machine = await ctx.store.fetchrow("snmp_machine", machine_id)
    if machine is None or machine["agent"]:
        return  # an agent reports its own machine
    facts = system_facts(device.system)
    updated = {column: facts.get(column, machine[column]) for column in MACHINE_COLUMNS}
    if not updated["chassis"] and "services" in facts:
        updated["chassis"] = chassis_from_services(facts["services"])
    if any(updated[c] != machine[c] for c in MACHINE_COLUMNS):
        ctx.count(await ctx.store.execute("snmp_update_machine", machine_id,
                                          *(updated[c] for c in MACHINE_COLUMNS), ctx.agent_id))


# -- neighbours without a machine ------------------------------------------------------


@dataclass
class Claim:
    """A machine-less NIC whose device answered: the name it gave and the MACs of its interfaces."""

    nic: Mapping[str, Any]
    name: str
    macs: frozenset[str]


def claims_of(answered: Sequence[tuple[Target, Device]], current: Mapping[int, Mapping]) -> list[Claim]:
    """One claim per NIC still without a machine whose device gave a sysName (its first answering address)."""
    claims: dict[int, Claim] = {}
    for target, device in answered:
        row = current.get(target.nic_id)
        name = system_facts(device.system).get("hostname", "").lower()
        if row is None or row["machine_id"] is not None or not name or target.nic_id in claims:
            continue
        macs = frozenset(i.mac for i in device.interfaces.values() if i.mac)
        claims[target.nic_id] = Claim(row, name, macs)
    return list(claims.values())


def same_device(macs: frozenset[str], held: Sequence[Mapping], machine_id: int) -> bool:
    return any(row["machine_id"] == machine_id and row["mac"] in macs for row in held)


async def place_claims(ctx: Context, claims: Sequence[Claim]) -> dict[int, int]:
    """NIC id → machine: a machine with the device's name that already holds one of its MACs, else a new one.

    A name alone never joins two devices: factory sysNames ("OpenWrt",
    "switch") are shared by unrelated devices.
    """
    chosen: dict[int, int] = {}

    async def work() -> None:
        chosen.clear()
        names = sorted({claim.name for claim in claims})
        await ctx.store.fetch("lock_hostnames", names)
        # reverse-lookup (or another agent) may have given some of them a machine since they were read
        free = {row["id"] for row in await ctx.store.fetch("still_machineless", [c.nic["id"] for c in claims])}
        open_claims = [claim for claim in claims if claim.nic["id"] in free]
        named: dict[str, list[int]] = {}
        for row in await ctx.store.fetch("machines_named", names):
            named.setdefault(row["hostname"], []).append(row["id"])
        held = await ctx.store.fetch("nics_with_mac_on_machines", sorted({i for ids in named.values() for i in ids}))
        made: list[tuple[Claim, int]] = []  # machines created in this run, for a device seen twice
        for claim in open_claims:
            known = [m for m in named.get(claim.name, []) if same_device(claim.macs, held, m)]
            known += [m for c, m in made if c.name == claim.name and c.macs & claim.macs]
            if known:
                chosen[claim.nic["id"]] = known[0]
                continue
            [row] = await ctx.store.fetch("create_named_machines", [claim.name], ctx.agent_id)
            ctx.count(1)
            chosen[claim.nic["id"]] = row["id"]
            made.append((claim, row["id"]))
        held = await ctx.store.fetch("nics_with_mac_on_machines", sorted(set(chosen.values())))
        plan = plan_attachments([claim.nic for claim in open_claims], chosen, held)
        if plan.attach:
            ids, machines = zip(*plan.attach)
            ctx.count(await ctx.store.execute("attach_nics", list(ids), list(machines), ctx.agent_id))
        for nic_id, addresses in sorted(plan.addresses.items()):
            ctx.count(await ctx.store.execute("set_nic_addresses", addresses, nic_id, ctx.agent_id))

    await ctx.run_in_transaction(work)
    return chosen


async def give_machines(ctx: Context, answered: list[tuple[Target, Device]]) -> tuple[list[tuple[Target, Device]], int]:
    """The answering targets with the machine each is recorded on, and how many have none.

    A target whose NIC had no machine (reverse-lookup found no name) gets one
    from its device's sysName (:func:`place_claims`), unless it got one while
    the devices were asked (reverse-lookup runs alongside), which it keeps. A
    device without a sysName is left alone.
    """
    if all(target.machine_id is not None for target, _ in answered):
        return answered, 0
    current = {row["id"]: row for row in await ctx.store.fetch("attached_neighbour_nics", ctx.host_id())}
    claims = claims_of(answered, current)
    chosen = await place_claims(ctx, claims) if claims else {}
    if any(claim.nic["id"] not in chosen for claim in claims):  # named by reverse-lookup meanwhile
        current = {row["id"]: row for row in await ctx.store.fetch("attached_neighbour_nics", ctx.host_id())}
    placed, unplaced = [], 0
    for target, device in answered:
        machine_id = target.machine_id or chosen.get(target.nic_id)
        if machine_id is None and target.nic_id in current:
            machine_id = current[target.nic_id]["machine_id"]
        if machine_id is None:
            unplaced += 1
        else:
            placed.append((replace(target, machine_id=machine_id), device))
    return placed, unplaced


@module("snmp", depends=("arp",), options=OPTIONS, check=read_credentials)
async def run(ctx: Context) -> None:
    """Interfaces, addresses, routes and system group of neighbour machines over SNMP (v1, v2c, v3)."""
    options = ctx.options
    credentials = await asyncio.to_thread(read_credentials, options)
    rows = await ctx.store.fetch("attached_neighbour_nics", ctx.host_id())
    targets = [Target(row["id"], row["machine_id"], address)
               for row in rows for address in neighbour_addresses(row["ip"], ctx.discovery.allows)]
    if not targets:
        ctx.log.info("no SNMP target", neighbour_nics=len(rows))
        return
    client = SnmpClient(credentials, port=options["port"], timeout=options["timeout"], retries=RETRIES,
                        rate=ctx.discovery.rate, max_rows=options["max-rows"])
    try:
        answered, unplaced = await query_and_record(ctx, client, targets)
    finally:
        client.close()
    ctx.log.info("SNMP agents queried", targets=len(targets), answered=answered,
                 machineless=sum(1 for t in targets if t.machine_id is None), left_without_machine=unplaced)
