"""TCP port scans: a SYN scan on a raw socket with CAP_NET_RAW, else a connect scan.

Both scan the same way, in at most two rounds: every probe goes out once,
paced by the shared rate limiter; the ports that stayed silent ``timeout``
after the last send of a round are probed once more. A filtered host (one
that drops the probes) therefore costs one timeout per round, however many of
its ports are silent, instead of one per port.

- ``syn``: one raw ``IPPROTO_TCP`` socket per address family sends bare SYNs
  from one source port of ours, and reads every TCP segment the host
  receives: a SYN-ACK acknowledging our sequence number means open, a RST
  closed. The kernel, which knows of no connection on that port, answers each
  SYN-ACK with a RST itself, so no handshake is ever completed. The source
  port is held by an ordinary bound (never listening) TCP socket for the
  whole scan, so that no other program of this host is given it meanwhile.
  Probes in flight (sent, unanswered, younger than the timeout) are bounded.
- ``connect``: one non-blocking ``connect()`` per probe with
  ``loop.sock_connect`` under ``asyncio.timeout``, from a bounded pool of
  workers; every socket is closed with an immediate RST (``SO_LINGER`` 0), so
  open ports leave no TIME_WAIT behind.

Nothing here knows about the database, scopes or exclusions: the caller hands
in the addresses it may probe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import resource
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Union

from situation.data.tcp_ports import TOP_1000
from situation.net import ProbeUnavailable, set_within
from situation.net.icmp import checksum, enlarge_buffers, send_datagram
from situation.net.rate import RateLimiter

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Probe = tuple[IPAddress, int]

ROUNDS = 2  # a port silent in the first round is probed once more
SYN_IN_FLIGHT = 4096  # unanswered SYNs younger than the timeout
CONNECT_IN_FLIGHT = 512  # simultaneous connect() calls (one file descriptor each)
FILE_RESERVE = 64  # descriptors left to the rest of the agent (store, logs, other modules)

SYN, RST, ACK = 0x02, 0x04, 0x10
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460, as a real stack would offer
WINDOW = 1024
IPV6_CHECKSUM = getattr(socket, "IPV6_CHECKSUM", 7)
_SO_LINGER_RESET = struct.pack("ii", 1, 0)


# -- which ports ----------------------------------------------------------------------------


def parse_ports(text: str) -> tuple[int, ...]:
    """``top1000``, a list (``22,80,443``), ranges (``1-1024``) or a mix; ValueError names the bad item.

    The order is kept (top1000 in nmap's order of frequency), each port once.
    """
    ports: dict[int, None] = {}
    items = [item for item in text.replace(" ", ",").split(",") if item]
    if not items:
        raise ValueError("no port given; use top1000, a list such as 22,80,443 or a range such as 1-1024")
    for item in items:
        if item.lower() == "top1000":
            ports.update(dict.fromkeys(TOP_1000))
            continue
        low, dash, high = item.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(f"{item!r} is not a port, a range or top1000; write e.g. top1000, 22,80,443 "
                             f"or 1-1024") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{item!r} is out of range; ports go from 1 to 65535, a range as low-high")
        ports.update(dict.fromkeys(range(first, last + 1)))
    return tuple(ports)


# -- results --------------------------------------------------------------------------------


@dataclass
class PortScan:
    method: str  # 'syn' or 'connect'
    open: set[Probe] = field(default_factory=set)
    closed: int = 0
    silent: set[Probe] = field(default_factory=set)  # no answer in any round (filtered, or host gone)
    unreachable: int = 0  # probes that could not be sent (no route, local firewall)
    sent: int = 0


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def syn_scan_allowed() -> bool:
    """May this process open a raw TCP socket (CAP_NET_RAW)?"""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_TCP).close()
    except PermissionError:
        return False
    return True


async def tcp_scan(
    addresses: Sequence[IPAddress],
    ports: Sequence[int],
    *,
    timeout: float,
    rate: RateLimiter,
    method: str | None = None,
    in_flight: int | None = None,
) -> PortScan:
    """Every port of every address, in at most two rounds; ``method`` None picks syn when allowed."""
    method = method or ("syn" if syn_scan_allowed() else "connect")
    if method == "syn":
        scanner = SynScanner(addresses, timeout=timeout, rate=rate, in_flight=in_flight or SYN_IN_FLIGHT)
        try:
            return await scanner.scan(ports)
        finally:
            scanner.close()
    if method == "connect":
        return await connect_scan(addresses, ports, timeout=timeout, rate=rate, in_flight=in_flight or CONNECT_IN_FLIGHT)
    raise ValueError(f"unknown scan method {method!r}")


def _probes(addresses: Sequence[IPAddress], ports: Sequence[int]) -> Iterator[Probe]:
    """Port by port across the hosts: no host sees a burst of its own."""
    for port in ports:
        for address in addresses:
            yield address, port


# -- connect scan ---------------------------------------------------------------------------

OPEN, CLOSED, SILENT, UNREACHABLE = "open", "closed", "silent", "unreachable"


async def connect_once(address: IPAddress, port: int, timeout: float) -> str:
    """One TCP connect: open, closed (refused), silent (timed out) or unreachable."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError:  # out of descriptors or buffers for a moment: the next round retries it
        return SILENT
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RESET)
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
        return OPEN
    except ConnectionRefusedError:
        return CLOSED
    except TimeoutError:
        return SILENT
    except OSError:
        return UNREACHABLE
    finally:
        sock.close()


async def connect_scan(
    addresses: Sequence[IPAddress], ports: Sequence[int], *, timeout: float, rate: RateLimiter, in_flight: int
) -> PortScan:
    result = PortScan("connect")
    probes: Iterable[Probe] = _probes(addresses, ports)
    for _ in range(ROUNDS):
        silent: set[Probe] = set()
        pending = iter(probes)  # shared by the workers: each probe is taken once

        async def worker() -> None:
            for address, port in pending:
                await rate.acquire(1)
                result.sent += 1
                state = await connect_once(address, port, timeout)
                if state == OPEN:
                    result.open.add((address, port))
                elif state == CLOSED:
                    result.closed += 1
                elif state == SILENT:
                    silent.add((address, port))
                else:
                    result.unreachable += 1

        await asyncio.gather(*(worker() for _ in range(max(1, in_flight))))
        probes = sorted(silent, key=lambda probe: (probe[1], probe[0].version, probe[0]))
        if not probes:
            break
    result.silent = set(probes)
    return result


# -- SYN scan -------------------------------------------------------------------------------


def syn_segment(source_port: int, port: int, sequence: int, pseudo_header: bytes | None) -> bytes:
    """A TCP SYN with an MSS option; the checksum is filled when the pseudo-header is given (IPv4)."""
    header = struct.pack("!HHIIBBHHH", source_port, port, sequence, 0, (6 << 4), SYN, WINDOW, 0, 0) + MSS_OPTION
    if pseudo_header is None:
        return header  # IPv6: the kernel fills it (IPV6_CHECKSUM)
    total = checksum(pseudo_header + header)
    return header[:16] + struct.pack("!H", total) + header[18:]


def ipv4_pseudo_header(source: bytes, destination: bytes, length: int) -> bytes:
    return source + destination + struct.pack("!BBH", 0, socket.IPPROTO_TCP, length)


def parse_segment(data: bytes, *, ipv4_header: bool) -> tuple[int, int, int, int] | None:
    """(source port, destination port, acknowledgement, flags) of a received segment, or None."""
    if ipv4_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 20:
        return None
    source_port, destination_port, _sequence, acknowledgement, _offset, flags = struct.unpack_from("!HHIIBB", data)
    return source_port, destination_port, acknowledgement, flags


def source_address_for(address: IPAddress) -> bytes:
    """The address this host sends from towards ``address`` (a routing lookup; nothing is sent)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((str(address), 9))
        return ipaddress.ip_address(probe.getsockname()[0]).packed


def reserve_port() -> socket.socket:
    """A bound, never listening TCP socket: its port is ours for the scan, on IPv4 and IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return sock
    except OSError:  # no IPv6 in this kernel
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(("0.0.0.0", 0))
        return sock


class SynScanner:
    """Raw SYN probes from one reserved port, and what came back."""

    def __init__(self, addresses: Sequence[IPAddress], *, timeout: float, rate: RateLimiter, in_flight: int):
        self.addresses = list(addresses)
        self.timeout = timeout
        self.rate = rate
        self.in_flight = max(1, in_flight)
        self.sequence = random.getrandbits(32)
        self.result = PortScan("syn")
        self._loop = asyncio.get_running_loop()
        self._targets = {str(address) for address in self.addresses}
        self._pending: dict[tuple[str, int], float] = {}  # probe → when sent (oldest first)
        self._silent: set[tuple[str, int]] = set()
        self._open: set[tuple[str, int]] = set()
        self._answered = asyncio.Event()
        self._sockets: dict[int, socket.socket] = {}
        self._sources: dict[str, bytes] = {}
        self._guard = reserve_port()
        self.port = self._guard.getsockname()[1]
        try:
            for version in sorted({address.version for address in self.addresses}):
                self._open_socket(socket.AF_INET6 if version == 6 else socket.AF_INET)
        except BaseException:
            self.close()
            raise

    def _open_socket(self, family: int) -> None:
        try:
            sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 socket.IPPROTO_TCP)
        except PermissionError:
            raise ProbeUnavailable("a SYN scan needs CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW)") from None
        except OSError:  # the family is not supported here (IPv6 disabled): its probes cannot be sent
            return
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 16)  # offset of the TCP checksum
        enlarge_buffers(sock)
        self._sockets[family] = sock
        self._loop.add_reader(sock.fileno(), self._on_readable, sock, family == socket.AF_INET)

    def close(self) -> None:
        for sock in self._sockets.values():
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._sockets.clear()
        self._guard.close()

    async def scan(self, ports: Sequence[int]) -> PortScan:
        probes: Iterable[Probe] = _probes(self.addresses, ports)
        by_text = {str(address): address for address in self.addresses}
        for round_number in range(ROUNDS):
            if round_number:
                probes = [(by_text[a], p) for a, p in sorted(self._silent, key=lambda probe: (probe[1], probe[0]))]
                if not probes:
                    break
                self._silent.clear()
            last_send = await self._send_all(probes)
            await self._wait_answers(last_send)
            self._silent.update(self._pending)
            self._pending.clear()
        self.result.silent = {(by_text[a], p) for a, p in self._silent}
        return self.result

    async def _send_all(self, probes: Iterable[Probe]) -> float:
        last_send = time.monotonic()
        for address, port in probes:
            if len(self._pending) >= self.in_flight:
                await self._make_room()
            await self.rate.acquire(1)
            if await self._send(address, port):
                self._pending[(str(address), port)] = last_send = time.monotonic()
                self.result.sent += 1
            else:
                self.result.unreachable += 1
        return last_send

    async def _make_room(self) -> None:
        """Wait until a probe in flight is answered or has waited the whole timeout (then it is silent)."""
        while len(self._pending) >= self.in_flight:
            probe, sent = next(iter(self._pending.items()))
            remaining = sent + self.timeout - time.monotonic()
            if remaining <= 0:
                del self._pending[probe]
                self._silent.add(probe)
                continue
            self._answered.clear()
            await set_within(self._answered, remaining)

    async def _wait_answers(self, last_send: float) -> None:
        while self._pending:
            remaining = last_send + self.timeout - time.monotonic()
            if remaining <= 0:
                return
            self._answered.clear()
            if not await set_within(self._answered, remaining):
                return

    async def _send(self, address: IPAddress, port: int) -> bool:
        text = str(address)
        if address.version == 4:
            source = self._sources.get(text)
            if source is None:
                try:
                    source = self._sources[text] = source_address_for(address)
                except OSError:
                    return False
            packet = syn_segment(self.port, port, self.sequence, ipv4_pseudo_header(source, address.packed, 24))
            sock, destination = self._sockets.get(socket.AF_INET), (text, 0)
        else:
            packet = syn_segment(self.port, port, self.sequence, None)
            sock, destination = self._sockets.get(socket.AF_INET6), (text, 0, 0, 0)
        if sock is None:
            return False
        return await send_datagram(sock, packet, destination)

    def _on_readable(self, sock: socket.socket, ipv4_header: bool) -> None:
        while True:  # drain: one wake-up may carry hundreds of answers
            try:
                data, source = sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._take(data, source[0].split("%", 1)[0], ipv4_header)

    def _take(self, data: bytes, source: str, ipv4_header: bool) -> None:
        segment = parse_segment(data, ipv4_header=ipv4_header)
        if segment is None or source not in self._targets:
            return
        port, our_port, acknowledgement, flags = segment
        if our_port != self.port or acknowledgement != (self.sequence + 1) & 0xFFFFFFFF:
            return  # not an answer to one of our SYNs
        probe = (source, port)
        if flags & (SYN | ACK) == SYN | ACK:
            if probe not in self._open:
                self._open.add(probe)
                self.result.open.add((ipaddress.ip_address(source), port))
        elif flags & RST:
            if probe in self._pending or probe in self._silent:
                self.result.closed += 1
        else:
            return
        self._silent.discard(probe)
        if self._pending.pop(probe, None) is not None:
            self._answered.set()
