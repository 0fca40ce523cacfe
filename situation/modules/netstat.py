"""netstat: processes, their listening endpoints and their connections, as flows.

Passive (agent-behaviour.md §4.18, with the fixes of §10.2): the sockets of the
agent's own network namespace and the processes holding them, read by
:mod:`situation.net.sockets` (psutil, in a worker thread). Nothing is sent.

Depends on local-users (owners), host-network (the host's NICs, to which
endpoints are bound) and, as in the original (spec §3.2), tcp-scan: the
discovery modules finish first, so this cycle's sockets are read after them.

What is written, in one transaction:

- ``applications``: one row per process with a listener or a connection
  (resolved executable path, arguments split on NUL, pid), upserted on
  ``(name, pid, machine_id)``; the arguments are refreshed, ``package_id`` is
  left to the package modules.
- ``user_applications``: the process's real uid, when it is a local user of
  this host (local-users' rows).
- ``application_endpoints`` of listeners: a socket bound to one address gives
  one endpoint per host NIC holding that address; a wildcard socket (``0.0.0.0``
  / ``::``) one per address of the same family on every host NIC.
  Unconnected bound UDP sockets are listeners too.
- Connections, classified as the spec does: **incoming** when a listener of
  the same transport holds the local port (on the local address or a
  wildcard): the local endpoint (owned by the process) and a flow from the
  remote address with no source application. **Outgoing** otherwise: an
  endpoint for the remote address and port (no application; its NIC is the
  one holding that address, the host's first, if any is known) and a flow
  from the process, its NIC and local address. A connection whose local
  address is on no host NIC is left out, as in the original.

Deviations from the original: unconnected UDP listeners are recorded; a
socket bound to one address gives endpoints for that address only (not for
every address of its NIC); an existing endpoint's ``application_id`` follows
its current owner (set on conflict whenever the new row has one); sockets
without a known process and the agent's own are skipped instead of crashing;
``::ffff:a.b.c.d`` is stored as ``a.b.c.d``; arguments are split on NUL only.

Without root only this user's processes can be named: the module then records
those and says so in one log line (the original records nothing).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from situation.module import Context, module
from situation.net.sockets import WILDCARDS, Listing, ProcessInfo, Socket, read_sockets

EndpointKey = tuple[int, str, str, int | None]  # port, protocol, addr, network_interface_id


@dataclass(frozen=True)
class HostNic:
    id: int
    ips: tuple[str, ...]


@dataclass(frozen=True)
class Flow:
    src_pid: int | None
    src_nic: int | None
    src_addr: str
    endpoint: EndpointKey


@dataclass
class Plan:
    """Rows to write, by in-memory keys (pids, endpoint keys) until the ids are known."""

    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    endpoints: dict[EndpointKey, int | None] = field(default_factory=dict)  # → owner pid
    flows: dict[tuple[int | None, str, EndpointKey], Flow] = field(default_factory=dict)

    def endpoint(self, key: EndpointKey, pid: int | None) -> None:
        if self.endpoints.get(key) is None:
            self.endpoints[key] = pid

    def flow(self, flow: Flow) -> None:
        self.flows.setdefault((flow.src_pid, flow.src_addr, flow.endpoint), flow)


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def nics_by_address(nics: Iterable[HostNic]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for nic in nics:
        for ip in nic.ips:
            found.setdefault(ip, []).append(nic.id)
    return found


def bound_addresses(sock: Socket, nics: Sequence[HostNic], local: Mapping[str, list[int]]) -> list[tuple[str, int]]:
    """(address, NIC id) pairs a listener is reachable at."""
    if sock.local_ip in WILDCARDS:
        family = _family(sock.local_ip)
        return [(ip, nic.id) for nic in nics for ip in nic.ips if _family(ip) == family]
    return [(sock.local_ip, nic_id) for nic_id in local.get(sock.local_ip, ())]


def is_incoming(sock: Socket, listening: set[tuple[str, str, int]]) -> bool:
    return any((sock.transport, ip, sock.local_port) in listening for ip in (sock.local_ip, *WILDCARDS))


def plan_rows(listing: Listing, nics: Sequence[HostNic], remote_nics: Mapping[str, int]) -> Plan:
    """Applications, endpoints and flows of a socket listing, on the host's NICs."""
    plan = Plan()
    local = nics_by_address(nics)
    listening: set[tuple[str, str, int]] = set()
    for sock in listing.listeners:
        plan.processes[sock.pid] = listing.processes[sock.pid]
        listening.add((sock.transport, sock.local_ip, sock.local_port))
        for ip, nic_id in bound_addresses(sock, nics, local):
            plan.endpoint((sock.local_port, sock.protocol, ip, nic_id), sock.pid)
    for sock in listing.connections:
        plan.processes[sock.pid] = listing.processes[sock.pid]
        incoming = is_incoming(sock, listening)
        for nic_id in local.get(sock.local_ip, ()):
            if incoming:
                key = (sock.local_port, sock.protocol, sock.local_ip, nic_id)
                plan.endpoint(key, sock.pid)
                plan.flow(Flow(None, None, sock.remote_ip, key))
            else:
                key = (sock.remote_port, sock.protocol, sock.remote_ip, remote_nics.get(sock.remote_ip))
                plan.endpoint(key, None)
                plan.flow(Flow(sock.pid, nic_id, sock.local_ip, key))
    return plan


def remote_addresses(listing: Listing) -> list[str]:
    return sorted({s.remote_ip for s in listing.connections if s.remote_ip})


def pick_remote_nics(rows: Iterable[Mapping], host_id: int) -> dict[str, int]:
    """Address → the NIC holding it: the host's own first, else the oldest row."""
    ranked = sorted(rows, key=lambda r: (r["machine_id"] != host_id, r["id"]))
    found: dict[str, int] = {}
    for row in ranked:
        for ip in row["ip"] or ():
            found.setdefault(ip, row["id"])
    return found


# -- writing ----------------------------------------------------------------------------


def application_row(info: ProcessInfo, machine_id: int) -> dict[str, object]:
    return {
        "name": info.name,
        "args": list(info.args),
        "pid": info.pid,
        "version": "",
        "protocol": "",
        "cpe": "",
        "machine_id": machine_id,
    }


def endpoint_row(key: EndpointKey, application_id: int | None) -> dict[str, object]:
    port, protocol, addr, nic_id = key
    return {"port": port, "protocol": protocol, "addr": addr, "network_interface_id": nic_id,
            "application_id": application_id}


@dataclass
class Written:
    applications: int = 0
    endpoints: int = 0
    flows: int = 0


async def write_plan(ctx: Context, plan: Plan, machine_id: int, users: Mapping[str, int]) -> Written:
    pids = sorted(plan.processes)
    applications = await ctx.upsert(
        "applications", [application_row(plan.processes[p], machine_id) for p in pids],
        key="machine_app_name_pid", update=("args",),
    )
    app_ids = dict(zip(pids, applications.ids))
    owned = [
        {"user_id": users[str(info.uid)], "application_id": app_ids[pid], "linux": ""}
        for pid, info in plan.processes.items()
        if info.uid is not None and str(info.uid) in users
    ]
    await ctx.upsert("user_applications", owned, key="user_application", update=())
    endpoint_ids = await _write_endpoints(ctx, plan.endpoints, app_ids)
    flows = [
        {
            "src_application_id": app_ids.get(flow.src_pid) if flow.src_pid is not None else None,
            "src_network_interface_id": flow.src_nic,
            "src_addr": flow.src_addr,
            "dst_endpoint_id": endpoint_ids[flow.endpoint],
        }
        for flow in plan.flows.values()
    ]
    await ctx.upsert("flows", flows, key="flow_src_dst", update=("src_network_interface_id",))
    return Written(len(pids), len(endpoint_ids), len(flows))


async def _write_endpoints(
    ctx: Context, endpoints: Mapping[EndpointKey, int | None], app_ids: Mapping[int, int]
) -> dict[EndpointKey, int]:
    """Endpoints with an owner take it over on conflict; the others leave the stored owner alone."""
    owned = [k for k, pid in endpoints.items() if pid is not None]
    remote = [k for k, pid in endpoints.items() if pid is None]
    key = "port_protocol_addr_network_interface_id"
    with_owner = await ctx.upsert(
        "application_endpoints", [endpoint_row(k, app_ids[endpoints[k]]) for k in owned],
        key=key, update=("application_id",),
    )
    without = await ctx.upsert(
        "application_endpoints", [endpoint_row(k, None) for k in remote], key=key, update=(),
    )
    return {**dict(zip(owned, with_owner.ids)), **dict(zip(remote, without.ids))}


async def load_host_nics(ctx: Context, machine_id: int) -> list[HostNic]:
    rows = await ctx.store.fetch("netstat_host_nics", machine_id)
    return [HostNic(r["id"], tuple(_valid_ips(r["ip"]))) for r in rows]


def _valid_ips(values) -> list[str]:
    ips = []
    for value in values or ():
        try:
            ips.append(str(ipaddress.ip_address(value)))
        except ValueError:
            continue
    return ips


@module("netstat", depends=("local-users", "host-network", "tcp-scan"))
async def run(ctx: Context) -> None:
    """Processes, listeners (TCP and UDP) and connections as applications, endpoints and flows."""
    machine_id = ctx.host_id()
    if os.geteuid() != 0:
        ctx.log.warning("not running as root: only this user's processes and their sockets are recorded")
    listing = await asyncio.to_thread(read_sockets, os.getpid())

    async def write() -> tuple[Plan, Written]:
        nics = await load_host_nics(ctx, machine_id)
        users = {r["uid"]: r["id"] for r in await ctx.store.fetch("netstat_host_users", machine_id)}
        remotes = remote_addresses(listing)
        remote_rows = await ctx.store.fetch("netstat_nics_with_addresses", remotes) if remotes else []
        plan = plan_rows(listing, nics, pick_remote_nics(remote_rows, machine_id))
        return plan, await write_plan(ctx, plan, machine_id, users)

    plan, written = await ctx.run_in_transaction(write)
    ctx.log.info(
        "netstat scan completed",
        listeners=len(listing.listeners),
        connections=len(listing.connections),
        applications=written.applications,
        endpoints=written.endpoints,
        flows=written.flows,
        unowned_sockets=listing.unowned,
    )
