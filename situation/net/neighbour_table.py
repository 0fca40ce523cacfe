"""The kernel's neighbour table (ARP for IPv4, NDP for IPv6) read over netlink.

Passive: one ``RTM_GETNEIGH`` dump on an ``AF_NETLINK`` socket, no packet on
the wire. Only entries the kernel currently believes in are kept (states
REACHABLE, STALE, DELAY, PROBE) and only addresses a neighbour can own: global
unicast (private ranges included; loopback, link-local, multicast and
unspecified addresses are not), and no IPv4 address ending in .0 or .255.

Why the netlink exchange is written here with the standard library rather than
through pyroute2 (the developers' guide prefers a library): memory. Importing
pyroute2 costs the daemon 8.5 MB for its whole life (184 modules, unittest,
multiprocessing and pickle among them), an eighth of its 60 MB idle budget
(bench/README.md, soak.py), for this one dump per cycle; and its asyncio socket
cannot run on uvloop, so it needed an event loop of its own in a thread. The
request is a fixed 28 bytes and the reply three structures (``nlmsghdr``,
``ndmsg``, ``rtattr``, see netlink(7) and rtnetlink(7)), read in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import socket
import struct
from dataclasses import dataclass


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# netlink(7), rtnetlink(7), <linux/neighbour.h>
NLMSG_ERROR, NLMSG_DONE, RTM_NEWNEIGH, RTM_GETNEIGH = 2, 3, 28, 30
NLM_F_REQUEST, NLM_F_DUMP = 0x01, 0x300
NDA_DST, NDA_LLADDR = 1, 2
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NDMSG = struct.Struct("=BxxxiHBB")  # family, (padding), interface index, state, flags, type
RTATTR = struct.Struct("=HH")  # length, type
ERRNO = struct.Struct("=i")
RECEIVE_BYTES = 65536  # the kernel fills a dump datagram up to 32 KiB
TIMEOUT_SECONDS = 5.0
ADDRESS_BYTES = {socket.AF_INET: 4, socket.AF_INET6: 16}
_sequences = itertools.count(1)

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


def dump_neighbours() -> list[Neighbour]:
    """The usable entries, from one ``RTM_GETNEIGH`` dump (blocking). OSError: netlink failed or answered nonsense."""
    sequence = next(_sequences)
    request = NLMSGHDR.pack(NLMSGHDR.size + NDMSG.size, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
    request += NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    entries: list[Neighbour] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(TIMEOUT_SECONDS)
        sock.bind((0, 0))
        sock.sendto(request, (0, 0))
        while True:
            done = False
            for kind, payload in _messages(sock.recv(RECEIVE_BYTES), sequence):
                if kind == NLMSG_DONE:
                    done = True
                elif kind == NLMSG_ERROR:
                    _raise_error(payload)
                elif kind == RTM_NEWNEIGH:
                    entry = _neighbour(payload)
                    if entry is not None:
                        entries.append(entry)
            if done:
                return freshest(entries)


def _messages(datagram: bytes, sequence: int) -> list[tuple[int, memoryview]]:
    """(type, payload) of each netlink message of one datagram that answers ``sequence``."""
    found = []
    view = memoryview(datagram)
    offset = 0
    while offset + NLMSGHDR.size <= len(view):
        length, kind, _flags, seq, _port = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size or offset + length > len(view):
            raise OSError("malformed netlink reply (a message overruns its datagram)")
        if seq == sequence:
            found.append((kind, view[offset + NLMSGHDR.size:offset + length]))
        offset += (length + 3) & ~3
    return found


def _raise_error(payload: memoryview) -> None:
    if len(payload) < ERRNO.size:
        raise OSError("malformed netlink reply (a short error message)")
    error = -ERRNO.unpack_from(payload)[0]
    if error:  # 0 is an acknowledgement, which a dump does not ask for
        raise OSError(error, f"RTM_GETNEIGH: {os.strerror(error)}")


def _neighbour(payload: memoryview) -> Neighbour | None:
    """One ``RTM_NEWNEIGH`` message as neighbour_from sees an entry (address and MAC as text)."""
    if len(payload) < NDMSG.size:
        return None
    family, _index, state, _flags, _type = NDMSG.unpack_from(payload)
    attributes = _attributes(payload[NDMSG.size:])
    raw_destination, lladdr = attributes.get(NDA_DST), attributes.get(NDA_LLADDR)
    destination = None
    if raw_destination is not None and len(raw_destination) == ADDRESS_BYTES.get(family):
        destination = socket.inet_ntop(family, raw_destination)
    mac = ":".join(f"{octet:02x}" for octet in lladdr) if lladdr else None
    return neighbour_from(state, destination, mac)


def _attributes(data: memoryview) -> dict[int, bytes]:
    """The ``rtattr`` list of a message: type → value (the last one of a repeated type)."""
    found = {}
    offset = 0
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > len(data):
            break
        found[kind] = bytes(data[offset + RTATTR.size:offset + length])
        offset += (length + 3) & ~3
    return found


async def read_neighbours() -> list[Neighbour]:
    """The usable entries of the neighbour table, IPv4 and IPv6, one per address (the dump runs in a thread)."""
    return await asyncio.to_thread(dump_neighbours)
