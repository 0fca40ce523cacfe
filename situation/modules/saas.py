"""saas: which endpoints belong to a SaaS provider (spec §4.22), from their certificate names and address.

Sends nothing: the store's endpoints and the detectors of spec data.json
(situation/data/saas_detectors.py). Every endpoint whose ``saas`` is NULL is
examined on every run, in id order, a page at a time (``--saas-max-endpoints``
endpoints per page), so none waits behind a fixed window; an endpoint no
detector claims stays NULL and is examined again next run.

Order of the tests, first match wins (the original's was random):

1. the DNS suffixes of every detector, against the ``dns_names`` of the
   endpoint's TLS certificate: a name matches a suffix when it equals it or
   ends with it at a label boundary (``.github.com`` matches ``github.com`` and
   ``api.github.com``; ``discord.com`` does not match ``notdiscord.com``, which
   the original's plain ``endswith`` did); case is ignored, a wildcard's ``*.`` is
   a label like any other;
2. the networks of every provider but Google, in data.json's order;
3. Google's networks, last, since they overlap Sentry's, Elastic's and
   Datadog's; named ``GMail`` on 993/995/465/587, ``Google DNS`` on 53,
   ``Google`` elsewhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from situation.data.saas_detectors import DETECTORS, GOOGLE_PORT_NAMES
from situation.module import Context, Option, module

GOOGLE = "Google"
DEFAULT_PAGE = 256


@dataclass(frozen=True)
class Detector:
    name: str
    suffixes: tuple[str, ...]  # lowercase, without a leading dot


class NetworkIndex:
    """Which detector's networks hold an address: one dict lookup per prefix length present.

    Among overlapping networks the detector listed first wins.
    """

    def __init__(self, networks: Iterable[tuple[int, str]]):
        self._by_length: dict[tuple[int, int], dict[int, int]] = {}
        for rank, text in networks:
            network = ipaddress.ip_network(text, strict=False)
            table = self._by_length.setdefault((network.version, network.prefixlen), {})
            key = int(network.network_address) >> (network.max_prefixlen - network.prefixlen)
            table[key] = min(rank, table.get(key, rank))

    def lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
        value, width = int(address), address.max_prefixlen
        ranks = [table.get(value >> (width - length)) for (version, length), table in self._by_length.items()
                 if version == address.version]
        found = [rank for rank in ranks if rank is not None]
        return min(found) if found else None


class Detectors:
    def __init__(self, entries: Sequence[tuple[str, Sequence[str], Sequence[str]]] = DETECTORS):
        self.detectors = [Detector(name, tuple(s.lower().lstrip(".") for s in suffixes)) for name, suffixes, _ in entries]
        specific = [(rank, c) for rank, (name, _, cidrs) in enumerate(entries) if name != GOOGLE for c in cidrs]
        google = [(rank, c) for rank, (name, _, cidrs) in enumerate(entries) if name == GOOGLE for c in cidrs]
        self.specific, self.google = NetworkIndex(specific), NetworkIndex(google)

    def label(self, port: int, addr: str, dns_names: Sequence[str]) -> str | None:
        """The SaaS name for an endpoint, or None."""
        names = [n.lower().rstrip(".") for n in dns_names if isinstance(n, str)]
        for detector in self.detectors:
            if any(_under(name, suffix) for suffix in detector.suffixes for name in names):
                return detector.name
        try:
            address = ipaddress.ip_address(addr)
        except ValueError:
            return None
        rank = self.specific.lookup(address)
        if rank is not None:
            return self.detectors[rank].name
        if self.google.lookup(address) is not None:
            return GOOGLE_PORT_NAMES.get(port, GOOGLE)
        return None


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def dns_names(tls: Any) -> list[str]:
    if isinstance(tls, Mapping) and isinstance(tls.get("dns_names"), list):
        return tls["dns_names"]
    return []


@module(
    "saas",
    depends=("tls", "ja4"),
    options=(Option("max-endpoints", DEFAULT_PAGE, "int",
                    "Endpoints read per page; every unlabelled endpoint is examined each run"),),
)
async def run(ctx: Context) -> None:
    """SaaS names of endpoints, from certificate DNS names and provider networks (sends nothing)."""
    detectors = Detectors()
    page = max(1, int(ctx.options.get("max-endpoints", DEFAULT_PAGE)))
    after, examined, labelled = 0, 0, 0
    while rows := await ctx.store.fetch("saas_unlabelled_endpoints", after, page):
        after = rows[-1]["id"]
        examined += len(rows)
        labels = [(name, row["id"]) for row in rows
                  if (name := detectors.label(row["port"], row["addr"] or "", dns_names(row["tls"])))]
        if labels:
            labelled += await ctx.run_in_transaction(lambda labels=labels: label_endpoints(ctx, labels))
    ctx.log.info("endpoints examined", examined=examined, labelled=labelled)


async def label_endpoints(ctx: Context, labels: Sequence[tuple[str, int]]) -> int:
    written = 0
    for name, endpoint_id in labels:
        written += await ctx.store.execute("saas_label_endpoint", name, endpoint_id, ctx.agent_id)
    ctx.count(written)
    return written
