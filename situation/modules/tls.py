"""tls: the certificate every TCP endpoint on a TLS port presents, into ``application_endpoints.tls``.

Targets: stored TCP endpoints (of any machine, or none) on a TLS port —
data.json's list by default, ``--tls-ports`` changes it (``443,8443,9000-9010``;
an option of kind ``ports``, so a bad value stops the agent at start).
It runs after tcp-scan and netstat, whose endpoints it visits. With ``--discovery-scope attached``
(the default) only endpoints on this host's NICs, on neighbours sharing one of
its subnetworks, or that its applications talk to (netstat flows); with
``database`` every one, as the original. Addresses excluded by
``--discovery-exclude`` (or outside ``situation scan``'s targets), IPv6
link-local ones (no zone is stored) and unparsable ones are skipped.

Each distinct address and port gets one TLS handshake (no SNI, no
verification, see :mod:`situation.net.tls_capture`; a legacy TLS 1.0 retry
after a TLS-level failure), at most ``CONCURRENCY`` at a time, each attempt
bounded by ``--tls-timeout`` and drawing one token of ``--discovery-rate``.
The leaf certificate becomes the ``tls`` JSON (:mod:`situation.net.certificate`).

Deviation: the original drops certificates without a DNS subjectAltName; we
store them too, with ``"dns_names": []``, because the appliances on a LAN
(printers, BMCs, switches, NAS) mostly present IP-only or CN-only certificates,
and their expiry is what users look for. Failures are logged; the tls an
endpoint had stays. A row is rewritten only when its tls changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from situation.module import Context, Option, Skip, module
from situation.net.certificate import describe_certificate
from situation.net.tcp import parse_ports
from situation.net.tls_capture import Handshake, TlsFailure, Unreachable, handshake

TLS_PORTS = (443, 465, 993, 995, 636, 3269, 990, 989, 853, 4433, 5671, 8883, 6697, 2484)  # data.json
CONCURRENCY = 64
DEFAULT_TIMEOUT = 5.0


@dataclass
class Targets:
    endpoints: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (addr, port) → endpoint ids
    skipped: Counter = field(default_factory=Counter)


def reachable_targets(rows: Sequence[Mapping], allows) -> Targets:
    """Endpoint rows grouped by address and port, without those no packet may go to."""
    targets = Targets()
    for row in rows:
        try:
            address = ipaddress.ip_address(row["addr"])
        except ValueError:
            targets.skipped["unparsable"] += 1
            continue
        if address.is_unspecified or address.is_multicast or (address.version == 6 and address.is_link_local):
            targets.skipped["unroutable"] += 1
        elif not allows(address):
            targets.skipped["excluded"] += 1
        else:
            targets.endpoints.setdefault((str(address), int(row["port"])), []).append(row["id"])
    return targets


async def scope_machine(ctx: Context) -> int | None:
    """The host's machine id under scope attached, None (no restriction) under scope database."""
    if ctx.discovery.scope == "database":
        return None
    if ctx.host.id is None:
        raise Skip("this host has no machine row yet (host-basic did not run), so no attached subnetworks")
    return ctx.host_id()


async def handshake_all(ctx: Context, targets: Targets, timeout: float) -> tuple[dict[tuple[str, int], Handshake], Counter]:
    """One handshake per target, concurrently; the completed ones and a count of outcomes."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    done: dict[tuple[str, int], Handshake] = {}
    outcomes: Counter = Counter()

    async def one(address: str, port: int) -> None:
        async with semaphore:
            try:
                done[(address, port)] = result = await handshake(
                    address, port, timeout, before_connect=lambda: ctx.discovery.rate.acquire())
                outcomes["legacy" if result.legacy else "handshakes"] += 1
            except TimeoutError:
                outcomes["timeout"] += 1
            except Unreachable as exc:
                outcomes["unreachable"] += 1
                ctx.log.debug("no TCP connection", address=address, port=port, reason=str(exc))
            except TlsFailure as exc:
                outcomes["failed"] += 1
                ctx.log.debug("TLS handshake failed", address=address, port=port, reason=str(exc))

    await asyncio.gather(*(one(address, port) for address, port in targets.endpoints))
    return done, outcomes


@module(
    "tls",
    depends=("tcp-scan", "netstat"),
    options=(
        Option("ports", ",".join(map(str, TLS_PORTS)), "ports",
               "TCP ports whose endpoints get a TLS handshake (list and ranges, e.g. 443,8443,9000-9010)."),
        Option("timeout", DEFAULT_TIMEOUT, "duration", "Time allowed for each TLS connection and handshake."),
    ),
)
async def run(ctx: Context) -> None:
    """Certificates of TCP endpoints on TLS ports (subject, issuer, validity, fingerprints, DNS names)."""
    ports = sorted(parse_ports(str(ctx.options.get("ports", ",".join(map(str, TLS_PORTS))))))
    rows = await ctx.store.fetch("tls_targets", ports, await scope_machine(ctx), False)
    targets = reachable_targets(rows, ctx.discovery.allows)
    if not targets.endpoints:
        ctx.log.info("no TLS endpoints to visit", endpoints=len(rows), **targets.skipped)
        return
    done, outcomes = await handshake_all(ctx, targets, float(ctx.options.get("timeout", DEFAULT_TIMEOUT)))
    updates = []
    for key, result in done.items():
        described = describe_certificate(result.certificate) if result.certificate else None
        if not described:
            outcomes["no_certificate" if described is None else "bad_certificate"] += 1
            continue
        updates.extend({"id": endpoint, "tls": described} for endpoint in targets.endpoints[key])
    written = await ctx.store.execute("set_tls", sorted(updates, key=lambda u: u["id"]), ctx.agent_id) if updates else 0
    ctx.count(written)
    ctx.log.info("certificates", endpoints=len(rows), targets=len(targets.endpoints), certificates=len(updates),
                 updated=written, **outcomes, **{f"skipped_{k}": v for k, v in targets.skipped.items()})
