"""ICMP echo sweeps, IPv4 and IPv6, on non-blocking sockets driven by the event loop.

Two socket kinds, tried in this order:

- ``raw``: ``SOCK_RAW``/``IPPROTO_ICMP`` (needs CAP_NET_RAW). It sees every
  ICMP packet the host receives, so replies are matched on our echo id, our
  sequence number and a pending source address.
- ``datagram``: the unprivileged ``SOCK_DGRAM``/``IPPROTO_ICMP`` "ping socket",
  allowed when the process's group lies in ``net.ipv4.ping_group_range`` (the
  same sysctl governs ICMPv6). Linux rewrites the echo id to the socket's own
  port and delivers only that socket's replies, so replies are matched on the
  sequence number and the source address, never on the id.

With neither, :class:`~situation.net.ProbeUnavailable` says what would allow it.
Sends are paced by the shared rate limiter; the wait ends ``timeout`` seconds
after the last send, or as soon as every target has answered.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import random
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from situation.net import ProbeUnavailable, set_within
from situation.net.rate import RateLimiter

ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTOCOL = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
PAYLOAD = b"situation"
ALL_NODES = "ff02::1"
# Room for the replies of a whole /20 arriving at once (4094 × ~100 bytes of skb overhead each).
SOCKET_BUFFER = 8 << 20
# Errors that mean "this one target cannot be reached from here" (broadcast address, no route,
# firewall): the target is dropped, the sweep goes on.
_UNREACHABLE = {errno.EACCES, errno.EPERM, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINVAL,
                errno.EADDRNOTAVAIL, errno.EHOSTDOWN}
# Errors worth a short wait and another try: a full queue or neighbour table.
_CONGESTED = {errno.ENOBUFS, errno.ENOMEM}
CONGESTION_PAUSE = 0.02
CONGESTION_RETRIES = 100


@dataclass
class EchoResult:
    """Who answered, and which socket kind asked ('raw' or 'datagram')."""

    found: set
    kind: str


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, sequence: int) -> bytes:
    """An echo request; the checksum is ours for ICMPv4 (the kernel fills it for ICMPv6)."""
    header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, 0, ident, sequence)
    if family == socket.AF_INET:
        header = struct.pack("!BBHHH", ECHO_REQUEST[family], 0, checksum(header + PAYLOAD), ident, sequence)
    return header + PAYLOAD


def open_echo_socket(family: int = socket.AF_INET) -> tuple[socket.socket, str]:
    """A non-blocking ICMP socket and its kind: raw when allowed, else the datagram ping socket."""
    protocol = PROTOCOL[family]
    for kind, sock_type in (("raw", socket.SOCK_RAW), ("datagram", socket.SOCK_DGRAM)):
        try:
            sock = socket.socket(family, sock_type | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, protocol)
        except PermissionError:
            continue
        enlarge_buffers(sock)
        return sock, kind
    version = "ICMPv6" if family == socket.AF_INET6 else "ICMP"
    raise ProbeUnavailable(
        f"{version} echo is not allowed: grant CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW), "
        f"or put group {os.getgid()} inside the sysctl net.ipv4.ping_group_range "
        f"(e.g. sysctl -w net.ipv4.ping_group_range='0 2147483647')"
    )


async def writable(sock: socket.socket) -> None:
    """Until the non-blocking ``sock`` can take another packet."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def send_datagram(sock: socket.socket, packet: bytes, destination: tuple) -> bool:
    """Send one probe on a non-blocking raw or datagram socket; False when it cannot leave.

    A full socket buffer waits until the socket is writable; a full queue or
    neighbour table (ENOBUFS) waits a little and tries again, for about two
    seconds at most; "no route", a firewall or a gone address drop the probe.
    """
    for _ in range(CONGESTION_RETRIES):
        try:
            sock.sendto(packet, destination)
            return True
        except BlockingIOError:
            await writable(sock)
        except OSError as exc:
            if exc.errno in _CONGESTED:
                await asyncio.sleep(CONGESTION_PAUSE)
            elif exc.errno in _UNREACHABLE:
                return False
            else:
                raise
    return False


def enlarge_buffers(sock: socket.socket) -> None:
    for forced, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)  # beyond rmem_max: CAP_NET_ADMIN
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)  # capped at the sysctl maximum


class EchoSweep:
    """One echo socket, its pending targets and who answered.

    ``send`` may be called several times (targets learnt while sweeping);
    ``wait`` then waits ``timeout`` after the last send. Use as an async
    context manager, or call ``close``.
    """

    def __init__(self, family: int = socket.AF_INET, *, accept_any_source: bool = False):
        self.family = family
        self.sock, self.kind = open_echo_socket(family)
        self.ident = random.getrandbits(16)
        self.sequence = random.getrandbits(16)
        self._packet = echo_request(family, self.ident, self.sequence)
        self._accept_any = accept_any_source  # multicast: whoever answers
        self.pending: set[str] = set()
        self.answered: set[str] = set()
        self.unreachable = 0
        self._last_send = time.monotonic()
        self._done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    async def __aenter__(self) -> EchoSweep:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    async def send(self, targets: Iterable, rate: RateLimiter, *, scope_id: int = 0) -> None:
        """One echo request to each target, paced by ``rate``."""
        for target in targets:
            address = str(target)
            if address in self.answered or address in self.pending:
                continue
            if not self._accept_any:
                self.pending.add(address)
                self._done.clear()
            await rate.acquire(1)
            destination = (address, 0) if self.family == socket.AF_INET else (address, 0, 0, scope_id)
            if not await self._send_to(destination):
                self.pending.discard(address)
                self.unreachable += 1
            self._last_send = time.monotonic()
        if not self.pending and not self._accept_any:
            self._done.set()

    async def _send_to(self, destination: tuple) -> bool:
        return await send_datagram(self.sock, self._packet, destination)

    async def wait(self, timeout: float) -> set:
        """Until ``timeout`` after the last send, or until every target answered; who answered."""
        remaining = self._last_send + timeout - time.monotonic()
        if remaining > 0 and not self._done.is_set():
            await set_within(self._done, remaining)
        return {ipaddress.ip_address(address) for address in self.answered}

    def _on_readable(self) -> None:
        # Drain everything queued: one wake-up can carry hundreds of replies.
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket; nothing to read
            self._take_reply(data, source[0].split("%", 1)[0])

    def _take_reply(self, data: bytes, source: str) -> None:
        if self.family == socket.AF_INET and self.kind == "raw":
            data = data[(data[0] & 0x0F) * 4:] if data else data  # raw IPv4 sockets include the IP header
        if len(data) < 8:
            return
        kind, _code, _sum, ident, sequence = struct.unpack_from("!BBHHH", data)
        if kind != ECHO_REPLY[self.family] or sequence != self.sequence:
            return
        if self.kind == "raw" and ident != self.ident:
            return  # someone else's ping (datagram sockets: the kernel rewrote the id, never compare)
        if self._accept_any:
            self.answered.add(source)
        elif source in self.pending:
            self.pending.discard(source)
            self.answered.add(source)
            if not self.pending:
                self._done.set()


async def echo_sweep(targets: Iterable[IPv4Address], *, timeout: float, rate: RateLimiter) -> EchoResult:
    """One ICMP echo request to each IPv4 target; who answered within ``timeout`` of the last send."""
    async with EchoSweep(socket.AF_INET) as sweep:
        await sweep.send(targets, rate)
        found = await sweep.wait(timeout)
        return EchoResult(found=found, kind=sweep.kind)


async def all_nodes_echo(interface: str, *, timeout: float, rate: RateLimiter) -> set[IPv6Address]:
    """One echo request to ff02::1 on ``interface``: the IPv6 addresses that answered.

    Every IPv6 node on the link answers, and the exchange puts it into the
    kernel's neighbour table, where the passive ``arp`` module reads it.
    Our own multicast copy is not looped back, so this host does not answer itself.
    """
    index = socket.if_nametoindex(interface)
    async with EchoSweep(socket.AF_INET6, accept_any_source=True) as sweep:
        sweep.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sweep.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        await sweep.send([ALL_NODES], rate, scope_id=index)
        return await sweep.wait(timeout)
