"""fingerprint: decide which existing ``machines`` row is this host, before anything writes.

An agent may start on a host that its neighbours already discovered (by ARP,
ping, SNMP, reverse DNS), or that it described before under a wiped state
directory. Creating a new row then would duplicate the host, so the row is
found, in this order:

1. the row carrying this agent's id;
2. the row with this host's ``host_id`` (system UUID), whoever's it is;
3. a weighted match on what neighbours could have seen of this host: MAC
   addresses (0.4 per matching NIC), addresses (0.2 per NIC sharing one),
   hostname (0.2) and open ports (0.1 each, at most 0.3). The best machine
   scoring 0.3 or more, with no agent of its own and at least one of our MACs,
   is chosen; a lone machine-less NIC with one of our MACs and addresses gets a
   machine of its own.

The row found is only a proposal (``ctx.host.id``): host-basic writes the host's
row and takes it over, under a lock, by the rules of situation/host_row.py (one
row per host whatever the agent ids, cloned agent ids kept apart). Only the
lone-NIC adoption writes here, under the same lock.

The original agent wrote the weighted match but never called it, checked the
host_id before its own agent id, and inserted a second machine when both
existed; none of that is kept. Nothing found is not an error: host-basic
creates the row.

Reading this host never fails the module: a host file that cannot be parsed
only weakens the match (hostroot.parse_source), and should reading the
identity fail anyway, nothing is chosen and host-basic records the host under
its agent id. A failing fingerprint would block every other module, while the
only cost of skipping the match is a possible duplicate of a row neighbours
left. Database errors still fail it: host-basic could not write either.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from situation.host_row import lock_host_identity
from situation.hostroot import HostRoot, lines, parse_source, read_text
from situation.module import Context, module
from situation.modules.host_basic import read_host_id, read_hostname
from situation.modules.host_network import read_interfaces

CLAIM_THRESHOLD = 0.3
MAC_WEIGHT, IP_WEIGHT, HOSTNAME_WEIGHT, PORT_WEIGHT, PORT_CAP = 0.4, 0.2, 0.2, 0.1, 0.3


@dataclass(frozen=True)
class LocalInterface:
    mac: str
    addresses: tuple[str, ...]


@dataclass
class Identity:
    host_id: str | None
    hostname: str
    interfaces: list[LocalInterface] = field(default_factory=list)
    listening_ports: set[int] = field(default_factory=set)

    @property
    def macs(self) -> list[str]:
        return sorted({i.mac for i in self.interfaces})

    @property
    def addresses(self) -> list[str]:
        return sorted({a for i in self.interfaces for a in i.addresses})


def is_identifying(address: str) -> bool:
    """Addresses a neighbour could have seen: not loopback, not link-local."""
    parsed = ipaddress.ip_address(address)
    return not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified)


def collect_identity(root: HostRoot) -> Identity:
    interfaces = []
    for interface in read_interfaces(root):
        addresses = tuple(str(a.ip) for a in interface.addresses if is_identifying(str(a.ip)))
        if interface.mac and addresses:
            interfaces.append(LocalInterface(interface.mac, addresses))
    try:
        hostname = read_hostname(root)
    except OSError:
        hostname = ""  # host-basic reports it; here it only weighs in the match
    return Identity(
        host_id=read_host_id(root),
        hostname=hostname,
        interfaces=interfaces,
        listening_ports=read_listening_ports(root),
    )


def read_listening_ports(root: HostRoot) -> set[int]:
    """TCP ports in LISTEN state, from /proc/net/tcp{,6} (readable without privileges)."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = root.path(name)
        try:
            text = read_text(path)
        except OSError:
            continue
        ports |= parse_source(path, lambda: parse_listening_ports(text), set())
    return ports


def parse_listening_ports(text: str) -> set[int]:
    """Local ports of the LISTEN rows of a /proc/net/tcp{,6} table (header line first)."""
    ports = set()
    for line in lines(text)[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Candidate:
    machine_id: int
    agent: str | None
    score: float = 0.0
    mac_matches: int = 0


def score_machines(
    identity: Identity,
    mac_nics: Iterable[Mapping],
    ip_nics: Iterable[Mapping],
    same_hostname: Iterable[Mapping],
    ports: Mapping[int, int],
) -> list[Candidate]:
    """The weighted match, best first; rows are NICs / machines as the named queries return them."""
    candidates: dict[int, Candidate] = {}

    def candidate(row: Mapping) -> Candidate:
        return candidates.setdefault(row["machine_id"], Candidate(row["machine_id"], row.get("agent")))

    for row in mac_nics:
        candidate(row).score += MAC_WEIGHT
        candidate(row).mac_matches += 1
    for row in ip_nics:
        candidate(row).score += IP_WEIGHT
    for row in same_hostname:
        candidate(row).score += HOSTNAME_WEIGHT
    for machine_id, count in ports.items():
        if machine_id in candidates:
            candidates[machine_id].score += min(PORT_WEIGHT * count, PORT_CAP)
    return sorted(candidates.values(), key=lambda c: (-c.score, c.machine_id))


@module("fingerprint")
async def run(ctx: Context) -> None:
    """Find this host's machine row (by agent id, host_id, then MAC/IP/hostname)."""
    mine = await ctx.store.fetchrow("machine_by_agent", ctx.agent_id)
    if mine is not None:  # every cycle after the first: no need to look at the host
        ctx.host.id = mine["id"]
        return
    try:
        identity = await asyncio.to_thread(collect_identity, ctx.root)
    except Exception as exc:  # noqa: BLE001 - see below
        # Matching only avoids a duplicate of a row neighbours left; host-basic records
        # this host under its agent id without it. Failing here would block every module.
        ctx.log.warning("this host's identity could not be read; no existing row is claimed",
                        error=f"{type(exc).__name__}: {exc}")
        return
    if identity.host_id:
        row = await ctx.store.fetchrow("machine_by_host_id", identity.host_id)
        if row is not None:  # the host's one row, whoever holds it: host-basic takes it over
            _choose(ctx, row["id"], reason="host_id", agent=row["agent"])
            return
    if await _choose_by_traces(ctx, identity):
        return
    ctx.log.info("no existing machine row matches this host; host-basic will create it")


async def _choose_by_traces(ctx: Context, identity: Identity) -> bool:
    """Steps 3: a machine (or a lone NIC) left by neighbours that observed this host."""
    if not identity.interfaces:
        return False
    store = ctx.store
    mac_nics = await _fetch_all(store, "nics_by_mac", identity.macs)
    ip_nics = await _fetch_all(store, "nics_with_address", identity.addresses)
    hostname = identity.hostname.lower()
    same_hostname = await store.fetch("machines_by_hostname", hostname) if hostname else []
    candidates = score_machines(
        identity,
        [r for r in mac_nics if r["machine_id"] is not None],
        _one_per_nic(r for r in ip_nics if r["machine_id"] is not None),
        same_hostname,
        await _matching_ports(ctx, identity, [r["machine_id"] for r in [*mac_nics, *ip_nics, *same_hostname]]),
    )
    for best in candidates[:1]:
        # Addresses, hostnames and ports repeat across sites sharing private ranges:
        # without one of our MACs on it, a row is never taken.
        if best.mac_matches and best.score >= CLAIM_THRESHOLD - 1e-9 and best.agent is None:
            _choose(ctx, best.machine_id, reason=f"traces (score {best.score:.1f})", agent=None)
            return True
    return await _adopt_lone_nic(ctx, identity, mac_nics)


async def _adopt_lone_nic(ctx: Context, identity: Identity, mac_nics: list[dict]) -> bool:
    """Exactly one machine-less NIC with one of our MACs and one of our addresses: it is us."""
    ours = {(i.mac, a) for i in identity.interfaces for a in i.addresses}
    lone = [r for r in mac_nics if r["machine_id"] is None and any((r["mac"], a) in ours for a in r["ip"] or ())]
    if len(lone) != 1:
        return False

    async def adopt() -> int | None:
        # Under host-basic's lock, so that agents starting together on this host adopt once.
        await lock_host_identity(ctx.store, ctx.agent_id, identity.host_id)
        if await ctx.store.fetchrow("machine_by_agent", ctx.agent_id) or (
                identity.host_id and await ctx.store.fetchrow("machine_by_host_id", identity.host_id)):
            return None  # a row appeared meanwhile (this id's, or this host_id's): host-basic decides
        created = await ctx.upsert("machines", [{"agent": ctx.agent_id}], key="agent")
        if not await ctx.store.execute("attach_nic_to_machine", created.ids[0], lone[0]["id"], ctx.agent_id):
            raise _AlreadyAdopted
        ctx.count(1)
        return created.ids[0]

    try:
        adopted = await ctx.run_in_transaction(adopt)
    except _AlreadyAdopted:  # another agent of this host attached the NIC first (rolled back)
        return False
    if adopted is None:
        return False
    ctx.host.id = adopted
    ctx.log.info("claimed a network interface discovered by a neighbour", nic_id=lone[0]["id"])
    return True


class _AlreadyAdopted(Exception):
    """The lone NIC got a machine meanwhile: undo the machine created for it."""


def _choose(ctx: Context, machine_id: int, *, reason: str, agent: str | None) -> None:
    ctx.host.id = machine_id
    ctx.log.info("found this host's existing machine row; host-basic takes it over", machine_id=machine_id,
                 by=reason, agent=agent)


async def _fetch_all(store, query: str, values: list[str]) -> list[dict]:
    rows = []
    for value in values:
        rows.extend(await store.fetch(query, value))
    unique = {r["id"]: r for r in rows}
    return list(unique.values())


def _one_per_nic(rows: Iterable[Mapping]) -> list[Mapping]:
    return list({r["id"]: r for r in rows}.values())


async def _matching_ports(ctx: Context, identity: Identity, machine_ids: list[int | None]) -> dict[int, int]:
    """How many of this host's listening TCP ports each candidate machine is known to expose."""
    counts: dict[int, int] = {}
    if not identity.listening_ports:
        return counts
    for machine_id in sorted({m for m in machine_ids if m is not None}):
        ports = {r["port"] for r in await ctx.store.fetch("machine_ports", machine_id)}
        counts[machine_id] = len(ports & identity.listening_ports)
    return counts
