"""tcp-scan: the open TCP ports of the neighbours (spec §4.17), as endpoints.

- Targets: every address of every neighbour NIC — with scope ``attached``
  (default), the NICs with or without a machine, other than this host's,
  linked to one of this host's subnetworks (the original's choice); with scope
  ``database`` or under ``situation scan``, such NICs on any stored
  subnetwork that is not a docker network. Every address the discovery policy
  allows (``--discovery-exclude``, a scan's targets) is probed, except this
  host's own, loopback, multicast, unspecified and IPv6 link-local ones (those
  need a zone the store does not know). An address held by several NICs is
  probed once and its ports recorded on the newest NIC (highest id).
- Ports: ``--tcp-scan-ports`` (``top1000``, the default, nmap's top 1000; a
  list ``22,80,443``; ranges ``1-1024``; or a mix).
- Probes (situation/net/tcp.py): with CAP_NET_RAW a SYN scan, else a connect
  scan; each probe draws one packet from ``--discovery-rate``; a port silent
  after ``--tcp-scan-timeout`` (default 200ms, after the last probe of a round)
  is probed once more. RLIMIT_NOFILE is raised first for the connect scan.
- Writes: one endpoint per open port ``{port, protocol 'tcp', addr, NIC}``
  without an application, inserted when new (ON CONFLICT DO NOTHING on the
  endpoint key); closed ports delete nothing. A second run writes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from situation.errors import ConfigError
from situation.module import Context, Option, module
from situation.net.tcp import (
    CONNECT_IN_FLIGHT,
    FILE_RESERVE,
    IPAddress,
    parse_ports,
    raise_open_file_limit,
    syn_scan_allowed,
    tcp_scan,
)

DEFAULT_TIMEOUT = 0.2
DEFAULT_PORTS = "top1000"


def probe_addresses(nics: Iterable[Mapping[str, Any]], own: set[str], allows) -> dict[IPAddress, int]:
    """Address → the NIC its ports are recorded on, for every address that may be probed."""
    targets: dict[IPAddress, int] = {}
    for nic in nics:  # in id order: a later (newer) NIC holding the same address wins
        for text in nic["ip"] or []:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if text in own or not probeable(address) or not allows(address):
                continue
            targets[address] = nic["id"]
    return targets


def probeable(address: IPAddress) -> bool:
    if address.is_loopback or address.is_multicast or address.is_unspecified:
        return False
    return not (address.version == 6 and address.is_link_local)


def endpoint_rows(open_ports: Iterable[tuple[IPAddress, int]], nic_of: Mapping[IPAddress, int]) -> list[dict]:
    return [
        {"port": port, "protocol": "tcp", "addr": str(address), "tls": None, "fingerprints": None,
         "application_protocols": None, "saas": None, "application_id": None, "network_interface_id": nic_of[address]}
        for address, port in sorted(open_ports, key=lambda probe: (probe[0].version, probe[0], probe[1]))
    ]


async def load_targets(ctx: Context) -> dict[IPAddress, int]:
    host_id = ctx.host_id()
    widely = ctx.discovery.only is not None or ctx.discovery.scope == "database"
    nics = await ctx.store.fetch("tcp_scan_linked_nics" if widely else "attached_neighbour_nics", host_id)
    own = {ip for row in await ctx.store.fetch("tcp_scan_host_addresses", host_id) for ip in row["ip"] or []}
    return probe_addresses(nics, own, ctx.discovery.allows)


@module(
    "tcp-scan",
    depends=("arp",),
    options=(
        Option("timeout", DEFAULT_TIMEOUT, "duration",
               "How long a round waits for answers after its last probe; silent ports get one more round"),
        Option("ports", DEFAULT_PORTS, "ports", "Ports to probe: top1000 (nmap's), a list 22,80,443, ranges 1-1024"),
    ),
    timeout=3600.0,
)
async def run(ctx: Context) -> None:
    """Open TCP ports of the neighbours (SYN scan with CAP_NET_RAW, else connect scan), as endpoints."""
    try:
        ports = parse_ports(str(ctx.options.get("ports", DEFAULT_PORTS)))
    except ValueError as exc:
        raise ConfigError(f"--tcp-scan-ports: {exc}") from None
    timeout = float(ctx.options.get("timeout", DEFAULT_TIMEOUT))
    targets = await load_targets(ctx)
    if not targets:
        ctx.log.warning("no neighbour to scan")
        return
    files = raise_open_file_limit(CONNECT_IN_FLIGHT * 4)
    method, in_flight = "syn", None
    if not syn_scan_allowed():
        method, in_flight = "connect", min(CONNECT_IN_FLIGHT, files - FILE_RESERVE)
    result = await tcp_scan(list(targets), ports, timeout=timeout, rate=ctx.discovery.rate, method=method,
                            in_flight=in_flight)
    written = await ctx.upsert("application_endpoints", endpoint_rows(result.open, targets),
                               key="port_protocol_addr_network_interface_id", update=())
    ctx.log.info(
        "ports scanned",
        method=result.method,
        addresses=len(targets),
        ports=len(ports),
        open=len(result.open),
        closed=result.closed,
        silent=len(result.silent),
        unreachable=result.unreachable,
        new_endpoints=written.written,
    )
