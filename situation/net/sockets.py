"""The host's Internet sockets and the processes holding them (psutil; no database code).

Blocking: ``read_sockets`` walks /proc (``psutil.net_connections`` reads
/proc/net/{tcp,udp}{,6} of the caller's network namespace and every
process's ``fd`` directory); call it from a worker thread.

Sockets are sorted into:

- **listeners**: TCP sockets in state LISTEN, and bound UDP sockets with no
  peer (an unconnected UDP socket is how a UDP service waits; /proc never
  shows it as LISTEN, so the original agent missed every one);
- **connections**: TCP sockets in ESTABLISHED, FIN_WAIT1, FIN_WAIT2,
  TIME_WAIT, CLOSE_WAIT, LAST_ACK or CLOSING, and connected UDP sockets
  (which /proc shows as ESTABLISHED).

Others (SYN_SENT, SYN_RECV, CLOSE, unbound sockets) are left out, as are
sockets whose process is unknown (no pid: the socket of another user's
process when not root, or a kernel socket) and those of ``own_pid``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import psutil

CONNECTED_STATES = frozenset(
    {"ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "CLOSING"}
)
WILDCARDS = frozenset({"0.0.0.0", "::"})


class Socket(NamedTuple):  # a tuple: thousands are made per cycle
    """One socket: ``protocol`` is the original's label (``tcp``, ``udp``, ``tcp6``, ``udp6``)."""

    protocol: str
    local_ip: str
    local_port: int
    remote_ip: str | None
    remote_port: int | None
    status: str
    pid: int

    @property
    def transport(self) -> str:
        return self.protocol[:3]


@dataclass(frozen=True)
class ProcessInfo:
    """What the ``applications`` row of a process needs, and its owner."""

    pid: int
    name: str  # resolved executable path, or the kernel's process name when unreadable
    args: tuple[str, ...]  # command line after argv[0], split on NUL only
    uid: int | None  # real uid


@dataclass
class Listing:
    listeners: list[Socket] = field(default_factory=list)
    connections: list[Socket] = field(default_factory=list)
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    unowned: int = 0  # sockets skipped because no process could be named for them


def label(family: int, kind: int) -> str:
    transport = "tcp" if kind == socket.SOCK_STREAM else "udp"
    return transport if family == socket.AF_INET else transport + "6"


def plain_ip(text: str) -> str:
    """``::ffff:a.b.c.d`` (an IPv4 peer of a dual-stack socket) as ``a.b.c.d``; others unchanged."""
    if not text.startswith("::ffff:") or "." not in text:
        return text
    try:
        mapped = ipaddress.IPv6Address(text).ipv4_mapped
    except ValueError:
        return text
    return str(mapped) if mapped is not None else text


def from_psutil(entry) -> Socket | None:
    """A psutil ``sconn`` as a :class:`Socket`; None when it is unbound or has no process."""
    if entry.pid is None or not entry.laddr:
        return None
    remote_ip, remote_port = (plain_ip(entry.raddr.ip), entry.raddr.port) if entry.raddr else (None, None)
    local_ip = plain_ip(entry.laddr.ip)
    # An IPv4 peer of a dual-stack socket is labelled like the IPv4 address now stored.
    family = socket.AF_INET if local_ip != entry.laddr.ip else entry.family
    return Socket(
        protocol=label(family, entry.type),
        local_ip=local_ip,
        local_port=entry.laddr.port,
        remote_ip=remote_ip,
        remote_port=remote_port,
        status=entry.status,
        pid=entry.pid,
    )


def is_listener(sock: Socket) -> bool:
    if sock.transport == "tcp":
        return sock.status == "LISTEN"
    return sock.remote_ip is None


def is_connection(sock: Socket) -> bool:
    if sock.transport == "tcp":
        return sock.status in CONNECTED_STATES and sock.remote_ip is not None
    return sock.remote_ip is not None


def classify(entries: Iterable, own_pid: int) -> Listing:
    """psutil entries as listeners and connections (pids not yet described)."""
    listing = Listing()
    for entry in entries:
        sock = from_psutil(entry)
        if sock is None:
            listing.unowned += entry.pid is None
            continue
        if sock.pid == own_pid:
            continue
        if is_listener(sock):
            listing.listeners.append(sock)
        elif is_connection(sock):
            listing.connections.append(sock)
    return listing


def describe_process(pid: int) -> ProcessInfo | None:
    """Name, arguments and owner of ``pid``; None when it is gone.

    As the original: with a readable command line, the name is the resolved
    executable and the arguments the rest of the command line; otherwise the
    kernel's process name and no arguments.
    """
    try:
        process = psutil.Process(pid)
        uid = _real_uid(process)
        try:
            command = process.cmdline()
            executable = process.exe() if command else ""
        except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
            command, executable = [], ""
        if command and executable:
            return ProcessInfo(pid, executable, tuple(command[1:]), uid)
        return ProcessInfo(pid, process.name(), (), uid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _real_uid(process: psutil.Process) -> int | None:
    try:
        return process.uids().real
    except psutil.AccessDenied:
        return None


def read_sockets(own_pid: int) -> Listing:
    """The namespace's listeners and connections with their processes (blocking)."""
    listing = classify(psutil.net_connections(kind="inet"), own_pid)
    for pid in {s.pid for s in (*listing.listeners, *listing.connections)}:
        info = describe_process(pid)
        if info is not None:
            listing.processes[pid] = info
    # A process that exited between the two reads cannot be named: drop its sockets.
    listing.listeners = [s for s in listing.listeners if s.pid in listing.processes]
    listing.connections = [s for s in listing.connections if s.pid in listing.processes]
    return listing
