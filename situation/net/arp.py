"""ARP sweep: who-has requests on one Ethernet-like interface, replies read on the event loop.

An AF_PACKET socket (needs CAP_NET_RAW) bound to the interface and to the ARP
ethertype sends one broadcast request per target, from the interface's MAC
and its own address on the target's network; targets off the interface's
networks are not asked (no answer could come). Frames go straight to the
wire: the kernel's neighbour table is neither filled nor consulted, so a
sweep of a /20 cannot overflow it. A host that drops ICMP echo still answers.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from situation.net import ProbeUnavailable, set_within
from situation.net.links import link_named
from situation.net.rate import RateLimiter

ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST = b"\xff" * 6
MIN_FRAME = 60  # Ethernet minimum without the FCS
SOCKET_BUFFER = 4 << 20

ReplyCallback = Callable[[IPv4Address, str], None]


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{octet:02x}" for octet in raw)


def arp_request(source_mac: bytes, source_ip: IPv4Address, target: IPv4Address) -> bytes:
    """A broadcast who-has frame for ``target``, padded to the Ethernet minimum."""
    ethernet = BROADCAST + source_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARP_REQUEST) + source_mac + source_ip.packed + bytes(6) + target.packed
    return (ethernet + arp).ljust(MIN_FRAME, b"\0")


def parse_arp_reply(frame: bytes) -> tuple[IPv4Address, str] | None:
    """(sender address, sender MAC) of an ARP reply frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    hardware, protocol, hlen, plen, operation = struct.unpack_from("!HHBBH", frame, 14)
    if (hardware, protocol, hlen, plen, operation) != (1, 0x0800, 6, 4, ARP_REPLY):
        return None
    return IPv4Address(frame[28:32]), mac_text(frame[22:28])


def open_arp_socket(interface: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.htons(ETH_P_ARP))
    except PermissionError:
        raise ProbeUnavailable(
            "the ARP sweep needs CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW); ICMP echo alone is used"
        ) from None
    try:
        sock.bind((interface, ETH_P_ARP))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    except OSError:
        sock.close()
        raise
    return sock


async def arp_sweep(
    interface: str,
    targets: Iterable[IPv4Address],
    *,
    timeout: float,
    rate: RateLimiter,
    on_reply: ReplyCallback | None = None,
) -> dict[IPv4Address, str]:
    """Ask every on-link target for its MAC on ``interface``: answered address → lowercase MAC.

    ``on_reply(address, mac)`` is called on the event loop as each target
    first answers (the ping module sends its echo request then). The wait
    ends ``timeout`` after the last request, or when every target answered.
    """
    link = await asyncio.to_thread(link_named, interface)
    if link is None or not link.ethernet or not link.ipv4:
        raise ProbeUnavailable(f"no ARP sweep on {interface}: not an Ethernet-like interface with an IPv4 address")
    requests = {}
    for target in map(IPv4Address, targets):
        mine = link.ipv4_network_holding(target)
        if mine is not None and target != mine.ip:
            requests[target] = arp_request(mac_bytes(link.mac), mine.ip, target)
    sock = open_arp_socket(interface)
    loop = asyncio.get_running_loop()
    pending, found = set(requests), {}
    all_answered = asyncio.Event()

    def on_readable() -> None:
        while True:
            try:
                frame = sock.recv(128)
            except (BlockingIOError, InterruptedError):
                return
            reply = parse_arp_reply(frame)
            if reply is None or reply[0] not in pending:
                continue
            pending.discard(reply[0])
            found[reply[0]] = reply[1]
            if on_reply is not None:
                on_reply(*reply)
            if not pending:
                all_answered.set()

    loop.add_reader(sock.fileno(), on_readable)
    try:
        last_send = time.monotonic()
        for target, frame in requests.items():
            if target not in pending:
                continue  # it answered someone else's request meanwhile
            await rate.acquire(1)
            await loop.sock_sendall(sock, frame)
            last_send = time.monotonic()
        if pending:
            await set_within(all_answered, last_send + timeout - time.monotonic())
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return found

