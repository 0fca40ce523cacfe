"""One sweep of a set of IPv4 addresses: ICMP echo, plus ARP where the link allows it.

On a network directly attached to an Ethernet-like interface, with
CAP_NET_RAW, ARP goes first and the echo request follows each ARP answer at
once: an address that does not answer ARP on its own link cannot receive an
echo either, and asking the kernel to echo every dead address would make it
resolve each one itself (three broadcasts and a neighbour-table entry per
address, enough to overflow the table on a /20). Hosts that answer ARP but
drop ICMP are found all the same. Elsewhere (no interface given, no
CAP_NET_RAW, targets off the interface's networks) every target gets an echo.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from situation.net import ProbeUnavailable
from situation.net.arp import arp_sweep
from situation.net.icmp import EchoSweep
from situation.net.links import link_named
from situation.net.rate import RateLimiter


@dataclass
class SweepResult:
    icmp: set[IPv4Address] = field(default_factory=set)  # answered the echo
    arp: dict[IPv4Address, str] = field(default_factory=dict)  # answered ARP: address → MAC
    echo_kind: str = ""  # 'raw' or 'datagram'
    arp_skipped: str = ""  # why no ARP sweep ran, when an interface was given

    @property
    def found(self) -> set[IPv4Address]:
        return self.icmp | set(self.arp)


async def sweep(
    targets: Iterable[IPv4Address],
    *,
    timeout: float,
    rate: RateLimiter,
    interface: str | None = None,
) -> SweepResult:
    """Echo (and, on ``interface``, ARP) every target once; raises ProbeUnavailable without either."""
    targets = [IPv4Address(t) for t in targets]
    async with EchoSweep(socket.AF_INET) as echo:
        result = SweepResult(echo_kind=echo.kind)
        link = await asyncio.to_thread(link_named, interface) if interface else None
        on_link = [t for t in targets if link is not None and link.ipv4_network_holding(t)] if echo.kind == "raw" else []
        if interface and not on_link:
            result.arp_skipped = "needs CAP_NET_RAW" if echo.kind != "raw" else "no target on the interface's networks"
        if on_link:
            on_link_set = set(on_link)
            await _arp_then_echo(interface, on_link, echo, result, timeout=timeout, rate=rate)
            await echo.send([t for t in targets if t not in on_link_set], rate)
        else:
            await echo.send(targets, rate)
        result.icmp = await echo.wait(timeout)
    return result


async def _arp_then_echo(
    interface: str, targets: list[IPv4Address], echo: EchoSweep, result: SweepResult, *, timeout: float, rate: RateLimiter
) -> None:
    """ARP sweep on ``interface``; each address that answers gets its echo request right away."""
    answered: asyncio.Queue[IPv4Address | None] = asyncio.Queue()

    async def echo_each_answer() -> None:
        while (address := await answered.get()) is not None:
            await echo.send([address], rate)

    sender = asyncio.create_task(echo_each_answer())
    try:
        try:
            result.arp = await arp_sweep(
                interface, targets, timeout=timeout, rate=rate, on_reply=lambda address, _mac: answered.put_nowait(address)
            )
        except ProbeUnavailable as reason:
            result.arp_skipped = str(reason)
            await echo.send(targets, rate)
    finally:
        answered.put_nowait(None)
        await sender
