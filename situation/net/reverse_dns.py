"""Reverse name lookups: the hosts file first, then PTR queries to the configured DNS servers.

Queries go to the name servers of the resolver file, never to the address
being named. Names are untrusted (anyone controlling a reverse zone chooses
them), so a name is kept only when it is a plain host name:

- the trailing dot removed, lowercased (DNS names are case-insensitive, and one
  spelling per host lets equal names meet);
- at most 253 characters, labels of 1–63 letters, digits, ``-`` or ``_``
  (seen in real PTR records), not starting or ending with ``-``;
- internationalised names stay in the ASCII form DNS carries (``xn--…``); raw
  non-ASCII bytes, spaces, escapes and control characters reject the name;
- not an IP address and not ``localhost…`` (which names no neighbour).

A rejected name is reported as such and stored nowhere.

dnspython is imported on first use: it adds about 6 MB to the process, which an
agent whose cycle never needs a PTR query should not carry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

MAX_HOSTNAME = 253
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

# Outcomes of one lookup, as counted in the module's log line.
NAMED, REJECTED, NO_NAME, TIMEOUT, FAILED = "named", "rejected", "no_name", "timeout", "failed"


def clean_hostname(labels: Iterable[str | bytes]) -> str | None:
    """The host name made of ``labels`` (the root label may end them), or None when it is not one."""
    parts = []
    for label in labels:
        if isinstance(label, bytes):
            if not label.isascii():
                return None
            label = label.decode("ascii")
        parts.append(label.lower())
    if parts and parts[-1] == "":
        parts.pop()  # the trailing dot
    name = ".".join(parts)
    if not parts or len(name) > MAX_HOSTNAME or not all(_LABEL.fullmatch(p) for p in parts):
        return None
    if parts[0].startswith("localhost") or _is_address(name):
        return None
    return name


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_hosts(text: str) -> dict[str, str | None]:
    """address → its canonical (first) name in a hosts file; None when that name is not acceptable.

    The first line for an address wins, as in the C library's reverse lookup.
    Addresses are normalised (``::0001`` is ``::1``).
    """
    names: dict[str, str | None] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        if address not in names:
            names[address] = clean_hostname(fields[1].split("."))
    return names


def read_hosts(path: Path) -> dict[str, str | None]:
    """``parse_hosts`` of a file (blocking); a missing or unreadable file names nothing."""
    try:
        return parse_hosts(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def make_resolver(resolv_conf: Path) -> dns.asyncresolver.Resolver | None:
    """A resolver configured from ``resolv_conf`` (blocking: reads the file); None without name servers."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        try:
            return dns.asyncresolver.Resolver(filename=str(resolv_conf))
        except dns.exception.DNSException as exc:
            if isinstance(exc, dns.resolver.NoResolverConfiguration):
                raise
            # dnspython derives a default search domain from the host name and fails
            # when that is no valid DNS name (too long a label, odd bytes). PTR names
            # are absolute, so the domain does not matter: build it with a plain one.
            with _host_name_for_dnspython("localhost"):
                return dns.asyncresolver.Resolver(filename=str(resolv_conf))
    except dns.resolver.NoResolverConfiguration:
        return None


class _SocketWithHostName:
    """The socket module, but for the host name it reports."""

    def __init__(self, host_name: str):
        self._host_name = host_name

    def gethostname(self) -> str:
        return self._host_name

    def __getattr__(self, name: str):
        return getattr(socket, name)


_dnspython_socket_lock = threading.Lock()


@contextmanager
def _host_name_for_dnspython(host_name: str):
    import dns.resolver

    with _dnspython_socket_lock:
        dns.resolver.socket = _SocketWithHostName(host_name)
        try:
            yield
        finally:
            dns.resolver.socket = socket


@dataclass
class Lookups:
    names: dict[str, str] = field(default_factory=dict)  # address → acceptable name
    outcomes: Counter = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)  # what was refused, escaped, for a debug line


async def reverse_names(
    addresses: Iterable[str],
    hosts: Mapping[str, str | None],
    resolver: dns.asyncresolver.Resolver | None,
    *,
    timeout: float,
    concurrency: int,
) -> Lookups:
    """Names for ``addresses``: from ``hosts`` when listed there, else PTR records.

    At most ``concurrency`` queries are in flight; each lookup gets ``timeout``
    seconds in all (every name server and retry included).
    """
    result = Lookups()
    pending = []
    for address in addresses:
        if address in hosts:
            _record(result, address, hosts[address], repr_of=None)
        elif resolver is not None:
            pending.append(address)
        else:
            result.outcomes[NO_NAME] += 1
    gate = asyncio.Semaphore(concurrency)

    async def one(address: str) -> None:
        async with gate:
            outcome, name, raw = await _ptr(resolver, address, timeout)
        if outcome == NAMED:
            _record(result, address, name, repr_of=raw)
        else:
            result.outcomes[outcome] += 1

    await asyncio.gather(*(one(a) for a in pending))
    return result


def _record(result: Lookups, address: str, name: str | None, repr_of: str | None) -> None:
    if name is None:
        result.outcomes[REJECTED] += 1
        if repr_of is not None:
            result.rejected.append(repr_of[:120])
        return
    result.outcomes[NAMED] += 1
    result.names[address] = name


async def _ptr(resolver: dns.asyncresolver.Resolver, address: str, timeout: float) -> tuple[str, str | None, str]:
    """(outcome, acceptable name or None, the name as DNS escapes it)."""
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve_address(address, lifetime=timeout)
    except dns.exception.Timeout:
        return TIMEOUT, None, ""
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return NO_NAME, None, ""
    except dns.exception.DNSException:
        return FAILED, None, ""
    target = answer[0].target  # the first name, as the original takes it
    return NAMED, clean_hostname(target.labels), target.to_text()
