"""docker: the containers of the local engine as child machines, with their networks and published ports.

Reads the Docker Engine API (:mod:`situation.net.docker_api`; any engine that
speaks it, podman's included). agent-behaviour.md §4.10 with the fixes of
§10.2. Depends on host-network (the host's NICs) and, as in the original (spec
§3.2), tcp-scan.

What is written, in one transaction, for every **running** container (swarm
tasks excepted):

- ``machines``: ``hostname`` = container name, ``host_id`` = container id,
  ``platform`` ``docker``, ``distribution``/``distribution_version`` = image
  name and tag (tag after the last ``:`` following the last ``/``, digest cut),
  ``uptime`` = now − creation (ns), ``parent_machine_id`` = this host,
  ``chassis`` ``container`` (on insert only). Key ``host_id``.
- ``subnetworks``: one per IPAM subnet of each network a running container is
  on, ``tag`` = network id (so every host's 172.17.0.0/16 stays its own), with
  the IPAM gateway. Key ``(network_cidr, tag)``.
- ``network_interfaces``: one per container and network (MAC, IPv4 and global
  IPv6 address, the network's gateway, flags ``{"up": true}``), ``tag`` = the
  **network id** (the original uses the endpoint id, which changes at every
  restart and left a new row each time; podman reports none). Key
  ``(mac, tag, machine_id)``. A NIC without a machine that ping or arp
  recorded for the container's MAC, linked to a subnetwork of the host's
  bridge (they run first: a container that talked to the host is in the
  neighbour table), is adopted: it becomes the container's NIC rather than
  staying beside it.
- ``network_interface_subnets``: each container NIC to the subnetwork(s) its
  addresses are in (``ip`` ``''``, ``mac_subnet`` ``<mac>/<id>``); and the host's
  bridge NIC (named by ``com.docker.network.bridge.name``, else the host NIC
  holding the gateway address) to the same tagged subnetwork, with its address.
  host-network's untagged row for the bridge is left alone (the original
  re-tags it, which collides on every later cycle).
- ``application_endpoints``: each container port on each container NIC, at
  each of the NIC's addresses (``addr`` ``''`` only for a NIC without one;
  the original always uses ``''``, so tcp-scan's finding of the same port
  was a second row); for a published port, on every host NIC, the first
  address matching the binding (``0.0.0.0`` any IPv4, ``::`` any IPv6, no
  address — podman — either, else that address), with the public port.
  De-duplicated in memory: a port published on 0.0.0.0 and :: is one
  container endpoint. Key ``(port, protocol, addr, COALESCE(nic, 0))``.
- ``endpoint_policies``: ``forward`` from each host endpoint to the container
  endpoint (at the container's address of the same family, else its first),
  ``source`` ``docker``; NULL-safe key, one row however often seen.

Containers that are gone (the rule for a container recreated under the same
name, which gets a new id): a container machine of this host whose id the
engine no longer lists at all is deleted, with its NICs, their subnet links,
endpoints and policies, and flows to or from them. One the engine lists but
does not run keeps its rows, with ``uptime`` 0.

No engine at the address: the module is skipped (one info line).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from situation.module import Context, Option, Skip, module
from situation.net.docker_api import (
    DEFAULT_HOST,
    Container,
    DockerClient,
    EngineState,
    EngineUnavailable,
    Network,
    PortBinding,
    engine_address,
    split_image,
)

EndpointKey = tuple[int, str, str, object]  # port, protocol, addr, NIC (host NIC id, or container NIC key)
ContainerNic = tuple[str, str]  # container id, network id


@dataclass(frozen=True)
class HostNic:
    id: int
    name: str | None
    mac: str | None
    ips: tuple[str, ...]


@dataclass(frozen=True)
class NicPlan:
    container_id: str
    network_id: str
    mac: str
    ips: tuple[str, ...]
    gateway: str | None


@dataclass
class Plan:
    machines: dict[str, dict] = field(default_factory=dict)  # container id → machines row (no ids yet)
    subnets: dict[tuple[str, str], dict] = field(default_factory=dict)  # (cidr, tag) → subnetworks row
    nics: dict[ContainerNic, NicPlan] = field(default_factory=dict)
    links: set[tuple[ContainerNic, tuple[str, str]]] = field(default_factory=set)
    bridge_links: set[tuple[int, tuple[str, str], str, str | None]] = field(default_factory=set)  # nic, subnet, ip, mac
    bridges: dict[str, int] = field(default_factory=dict)  # network id → the host's bridge NIC id
    endpoints: set[EndpointKey] = field(default_factory=set)
    policies: set[tuple[EndpointKey, EndpointKey]] = field(default_factory=set)  # (container side, host side)


def machine_row(container: Container, host_id: int, now: float) -> dict:
    distribution, version = split_image(container.image)
    uptime = max(0, int(now) - container.created) * 1_000_000_000 if container.created else 0
    return {
        "hostname": container.name, "host_id": container.id, "arch": "", "platform": "docker",
        "distribution": distribution, "distribution_version": version, "distribution_family": "",
        "uptime": uptime, "cpe": "", "chassis": "container", "parent_machine_id": host_id,
    }


def subnet_row(config, tag: str) -> dict:
    network = config.network
    return {"network_cidr": str(network), "network_addr": str(network.network_address),
            "mask_size": network.prefixlen, "ip_version": network.version, "gateway": config.gateway,
            "vlan_id": 0, "tag": tag}


def binding_addresses(binding: PortBinding, nics: Sequence[HostNic]) -> list[tuple[str, int]]:
    """(address, host NIC id): per NIC, the first address the binding covers (per family when unbound)."""
    found = []
    for nic in nics:
        if binding.host_ip in ("", "0.0.0.0", "::"):
            families = {"": (4, 6), "0.0.0.0": (4,), "::": (6,)}[binding.host_ip]
            for family in families:
                ip = next((ip for ip in nic.ips if (6 if ":" in ip else 4) == family), None)
                if ip is not None:
                    found.append((ip, nic.id))
        elif binding.host_ip in nic.ips:
            found.append((binding.host_ip, nic.id))
    return found


def bridge_nic(network: Network, nics: Sequence[HostNic]) -> HostNic | None:
    if network.bridge_name:
        return next((nic for nic in nics if nic.name == network.bridge_name), None)
    gateways = {config.gateway for config in network.configs if config.gateway}
    return next((nic for nic in nics if gateways & set(nic.ips)), None)


def plan_rows(state: EngineState, host_id: int, nics: Sequence[HostNic], now: float) -> Plan:
    plan = Plan()
    running = {c.id: c for c in state.containers if c.running and not c.swarm_task}
    for network in state.networks:
        attached = [a for a in network.attachments if a.container_id in running and a.mac]
        if not network.configs or not attached:
            continue
        tags = {(str(config.network), network.id): config for config in network.configs}
        plan.subnets.update({key: subnet_row(config, network.id) for key, config in tags.items()})
        bridge = bridge_nic(network, nics)
        if bridge is not None:
            plan.bridges[network.id] = bridge.id
        for key, config in tags.items():
            if bridge is not None:
                ip = next((ip for ip in bridge.ips if ip == config.gateway), "")
                plan.bridge_links.add((bridge.id, key, ip, bridge.mac))
        for attachment in attached:
            container = running[attachment.container_id]
            plan.machines[container.id] = machine_row(container, host_id, now)
            ips = tuple(ip for ip in (attachment.ipv4, attachment.ipv6) if ip)
            v4_gateway = next((c.gateway for c in network.configs if c.gateway and c.network.version == 4), None)
            nic_key = (container.id, network.id)
            plan.nics[nic_key] = NicPlan(container.id, network.id, attachment.mac, ips, v4_gateway)
            for key, config in tags.items():
                if any(_inside(ip, config.network) for ip in ips):
                    plan.links.add((nic_key, key))
            _plan_ports(plan, container, nic_key, ips, nics)
    return plan


def _inside(ip: str, network) -> bool:
    address = ipaddress.ip_address(ip)
    return address.version == network.version and address in network


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _plan_ports(plan: Plan, container: Container, nic_key: ContainerNic, ips: tuple[str, ...],
                nics: Sequence[HostNic]) -> None:
    """Each port at each of the container NIC's addresses ('' when it has none), forwarded from the host's."""
    for binding in container.ports:
        inner = {ip: (binding.private_port, binding.transport, ip, nic_key) for ip in ips or ("",)}
        plan.endpoints.update(inner.values())
        if binding.public_port is None:
            continue
        for ip, nic_id in binding_addresses(binding, nics):
            outer = (binding.public_port, binding.transport, ip, nic_id)
            plan.endpoints.add(outer)
            # To the container's address of the host address's family, else its first.
            target = next((key for address, key in inner.items() if _family(address) == _family(ip)),
                          next(iter(inner.values())))
            plan.policies.add((target, outer))


# -- writing ------------------------------------------------------------------------


async def write_plan(ctx: Context, plan: Plan) -> dict[str, int]:
    containers = sorted(plan.machines)
    machines = await ctx.upsert(
        "machines", [plan.machines[c] for c in containers], key="host_id",
        update=("hostname", "platform", "distribution", "distribution_version", "uptime", "parent_machine_id"),
    )
    machine_ids = dict(zip(containers, machines.ids))
    subnet_keys = sorted(plan.subnets)
    subnets = await ctx.upsert("subnetworks", [plan.subnets[k] for k in subnet_keys], key="cidr_tag",
                               update=("gateway",))
    subnet_ids = dict(zip(subnet_keys, subnets.ids))
    nic_keys = sorted(plan.nics)
    await adopt_neighbour_nics(ctx, plan, nic_keys, machine_ids)
    nics = await ctx.upsert("network_interfaces", [_nic_row(plan.nics[k], machine_ids) for k in nic_keys],
                            key="machine_mac_tag", update=("ip", "gateway", "flags"))
    nic_ids = dict(zip(nic_keys, nics.ids))
    for nic_key, subnet_key in sorted(plan.links):
        subnet_id = subnet_ids[subnet_key]
        ctx.count(await ctx.store.execute("link_interface_subnet", nic_ids[nic_key], subnet_id, "",
                                          f"{plan.nics[nic_key].mac}/{subnet_id}"))
    for nic_id, subnet_key, ip, mac in sorted(plan.bridge_links, key=repr):
        subnet_id = subnet_ids[subnet_key]
        ctx.count(await ctx.store.execute("link_interface_subnet", nic_id, subnet_id, ip,
                                          f"{mac}/{subnet_id}" if mac else None))
    endpoint_ids = await _write_endpoints(ctx, plan.endpoints, nic_ids)
    policies = [
        {"endpoint_id": endpoint_ids[inner], "action": "forward", "src_endpoint_id": endpoint_ids[outer],
         "src_addr": None, "priority": 0, "source": "docker"}
        for inner, outer in sorted(plan.policies, key=repr)
    ]
    await ctx.upsert("endpoint_policies", policies, key="endpoint_action_src", update=())
    return {"containers": len(containers), "interfaces": len(nic_keys), "endpoints": len(endpoint_ids),
            "policies": len(policies)}


async def adopt_neighbour_nics(ctx: Context, plan: Plan, nic_keys: list[ContainerNic],
                               machine_ids: Mapping[str, int]) -> None:
    """A container NIC that ping or arp recorded first (no machine, seen on the host's bridge) becomes docker's.

    arp and ping run before docker; a container that talked to the host is in
    the neighbour table on the first cycle, and would otherwise keep a second NIC.
    """
    for nic_key in nic_keys:
        nic = plan.nics[nic_key]
        bridge = plan.bridges.get(nic.network_id)
        if bridge is not None:
            ctx.count(await ctx.store.execute("docker_adopt_nic", nic.mac, machine_ids[nic.container_id],
                                              nic.network_id, bridge, ctx.agent_id))


def _nic_row(nic: NicPlan, machine_ids: Mapping[str, int]) -> dict:
    return {"name": None, "mac": nic.mac, "ip": list(nic.ips) or None, "gateway": nic.gateway,
            "flags": {"up": True}, "tag": nic.network_id, "machine_id": machine_ids[nic.container_id]}


async def _write_endpoints(ctx: Context, keys: Iterable[EndpointKey], nic_ids: Mapping) -> dict[EndpointKey, int]:
    ordered = sorted(keys, key=repr)
    rows = [{"port": port, "protocol": protocol, "addr": addr,
             "network_interface_id": nic if isinstance(nic, int) else nic_ids[nic]}
            for port, protocol, addr, nic in ordered]
    result = await ctx.upsert("application_endpoints", rows, key="port_protocol_addr_network_interface_id",
                              update=())
    return dict(zip(ordered, result.ids))


_REMOVAL = ("docker_delete_policies", "docker_delete_flows", "docker_delete_endpoints", "docker_delete_links",
            "docker_delete_interfaces")


async def retire_containers(ctx: Context, state: EngineState, host_id: int) -> tuple[int, int]:
    """Delete container machines the engine no longer has; uptime 0 for those it has but does not run."""
    listed = {c.id: c for c in state.containers}
    removed = stopped = 0
    for row in await ctx.store.fetch("docker_container_machines", host_id):
        container = listed.get(row["host_id"])
        if container is None:
            for query in _REMOVAL:
                ctx.count(await ctx.store.execute(query, row["id"]))
            removed += await ctx.store.execute("docker_delete_machine", row["id"], host_id)
        elif not container.running:
            stopped += await ctx.store.execute("docker_mark_stopped", row["id"], ctx.agent_id)
    ctx.count(removed + stopped)
    return removed, stopped


async def load_host_nics(ctx: Context, host_id: int) -> list[HostNic]:
    rows = await ctx.store.fetch("docker_host_nics", host_id)
    return [HostNic(r["id"], r["name"], r["mac"], tuple(r["ip"] or ())) for r in rows]


@module(
    "docker",
    depends=("host-network", "tcp-scan"),
    options=(Option("host", DEFAULT_HOST, "str",
                    "Docker Engine address (unix:///path or tcp://host:port); when left at the default, "
                    "DOCKER_HOST is used if set."),),
)
async def run(ctx: Context) -> None:
    """Containers of the local Docker engine as machines, with their networks and published ports."""
    address = engine_address(ctx.options.get("host", DEFAULT_HOST), os.environ)
    client = DockerClient(address)
    try:
        await client.connect()
        state = await client.state()
    except EngineUnavailable as exc:
        raise Skip(f"no Docker engine at {address.url} ({address.source}): {exc}") from None
    host_id = ctx.host_id()

    async def write() -> tuple[dict[str, int], tuple[int, int]]:
        nics = await load_host_nics(ctx, host_id)
        written = await write_plan(ctx, plan_rows(state, host_id, nics, time.time()))
        return written, await retire_containers(ctx, state, host_id)

    written, (removed, stopped) = await ctx.run_in_transaction(write)
    ctx.log.info("docker engine read", engine=address.url, api=client.version, removed=removed,
                 not_running=stopped, **written)
