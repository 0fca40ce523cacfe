"""The kernel's neighbour table (ARP for IPv4, NDP for IPv6) read over netlink.

Passive: one ``RTM_GETNEIGH`` dump through pyroute2's asyncio API, no packet
on the wire. Only entries the kernel currently believes in are kept (states
REACHABLE, STALE, DELAY, PROBE) and only addresses a neighbour can own: global
unicast (private ranges included; loopback, link-local, multicast and
unspecified addresses are not), and no IPv4 address ending in .0 or .255.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
KEPT_STATES = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE
# When one address shows up on several interfaces, the freshest entry wins.
_FRESHNESS = {NUD_REACHABLE: 0, NUD_DELAY: 1, NUD_PROBE: 2, NUD_STALE: 3}


@dataclass(frozen=True)
class Neighbour:
    ip: IpAddress
    mac: str  # lowercase, colon separated
    state: int


def is_neighbour_address(address: IpAddress) -> bool:
    """Global unicast in the original's sense (private kept), and not .0/.255 for IPv4."""
    if address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified:
        return False
    if address.version == 4:
        return address.packed[-1] not in (0, 255)
    return not address.ipv4_mapped


def normalize_mac(text: str | None) -> str | None:
    """Lowercase colon form of a 6-byte MAC; None for a missing or all-zero one."""
    if not text:
        return None
    octets = text.lower().split(":")
    if len(octets) != 6 or not all(len(o) == 2 for o in octets):
        return None
    try:
        if not any(int(o, 16) for o in octets):
            return None
    except ValueError:
        return None
    return ":".join(octets)


def neighbour_from(state: int, destination: str | None, lladdr: str | None) -> Neighbour | None:
    """One dumped entry as a Neighbour, or None when it is filtered out."""
    if not state & KEPT_STATES or not destination:
        return None
    mac = normalize_mac(lladdr)
    if mac is None:
        return None
    try:
        address = ipaddress.ip_address(destination.split("%", 1)[0])
    except ValueError:
        return None
    if not is_neighbour_address(address):
        return None
    return Neighbour(address, mac, state)


def freshest(entries: list[Neighbour]) -> list[Neighbour]:
    """One entry per address (the same neighbour seen through two interfaces), in address order."""
    best: dict[IpAddress, Neighbour] = {}
    for entry in entries:
        known = best.get(entry.ip)
        if known is None or _FRESHNESS.get(entry.state, 9) < _FRESHNESS.get(known.state, 9):
            best[entry.ip] = entry
    return sorted(best.values(), key=lambda n: (n.ip.version, n.ip))


async def _dump() -> list[Neighbour]:
    # Imported here, in the worker thread: pyroute2 takes most of a second and ~25 MB to
    # import, which commands that never read the table (version, check, defaults) need not pay.
    from pyroute2 import AsyncIPRoute

    entries = []
    async with AsyncIPRoute() as ipr:
        async for message in await ipr.neigh("dump"):
            entry = neighbour_from(message["state"], message.get("dst"), message.get("lladdr"))
            if entry is not None:
                entries.append(entry)
    return freshest(entries)


def _dump_on_own_loop() -> list[Neighbour]:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(_dump())


async def read_neighbours() -> list[Neighbour]:
    """The usable entries of the neighbour table, IPv4 and IPv6, one per address.

    pyroute2's asyncio socket is a datagram endpoint on an AF_NETLINK socket,
    which uvloop (the agent's loop) cannot open (pyroute2 issue #1335, uvloop
    issue #676). The dump therefore runs on a plain asyncio loop of its own, in
    a worker thread: one short netlink exchange per cycle.
    """
    return await asyncio.to_thread(_dump_on_own_loop)
