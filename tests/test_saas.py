"""The saas module on seeded endpoints, SQLite and PostgreSQL (it sends nothing: no lab needed).

Endpoints are made the way tcp-scan and tls leave them: an address, a port,
and for some a ``tls`` document with ``dns_names``. Labels come from DNS
suffixes first, then provider networks, Google's last; every unlabelled
endpoint is examined, however many there are, and a second run writes nothing.
"""

from __future__ import annotations

import structlog
from support.stores import AGENT, raw_rows
from support.stores import backend_store as store  # noqa: F401  (a fixture)

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine, load_builtin_modules
from situation.modules.saas import Detectors


def tls(*names: str) -> dict:
    return {"subject": "CN=x", "not_before": "2025-01-01T00:00:00Z", "not_after": "2026-01-01T00:00:00Z",
            "dns_names": list(names)}


SEEDED = [  # (addr, port, tls, expected label)
    ("192.0.2.10", 443, tls("api.github.com", "github.com"), "GitHub"),
    ("192.0.2.11", 443, tls("*.Sentry.IO"), "Sentry"),  # wildcard, upper case
    ("192.0.2.12", 443, tls("notdiscord.com"), None),  # no label boundary: no match (the original matched)
    ("192.0.2.13", 443, tls("discord.com"), "Discord"),
    ("160.79.104.9", 443, None, "Anthropic"),  # by network
    ("2607:6bc0::7", 443, None, "Anthropic"),  # IPv6 network
    ("35.186.247.156", 443, None, "Sentry"),  # inside Google's ranges too: the specific provider wins
    ("8.8.8.8", 53, None, "Google DNS"),
    ("8.8.4.4", 993, None, "GMail"),
    ("8.8.4.4", 8443, None, "Google"),
    ("8.8.8.8", 443, tls("x.sharepoint.com"), "SharePoint"),  # a name beats a network
    ("198.51.100.7", 22, None, None),
    ("", 8080, None, None),  # a container-side endpoint: no address
]


async def seed(store, rows) -> None:
    await store.upsert("application_endpoints", [
        {"port": port, "protocol": "tcp", "addr": addr, "tls": document, "fingerprints": None,
         "application_protocols": None, "saas": None, "application_id": None, "network_interface_id": None}
        for addr, port, document, _ in rows], key="port_protocol_addr_network_interface_id")


async def run_saas(store, **options) -> Context:
    load_builtin_modules()
    ctx = Context(store=store, log=structlog.get_logger(), agent_id=AGENT, options=options, root=HostRoot(),
                  host=HostMachine())
    await REGISTRY["saas"].run(ctx)
    return ctx


async def labels(store) -> dict[tuple[str, int], str | None]:
    return {(r["addr"], r["port"]): r["saas"]
            for r in await raw_rows(store, "SELECT addr, port, saas FROM application_endpoints")}


async def test_endpoints_are_labelled_by_name_then_network_google_last(store):
    await seed(store, SEEDED)
    first = await run_saas(store)
    assert await labels(store) == {(addr, port): label for addr, port, _, label in SEEDED}
    assert first.rows_written == sum(1 for *_, label in SEEDED if label)
    before = await raw_rows(store, "SELECT id, saas, updated_at FROM application_endpoints ORDER BY id")
    second = await run_saas(store)
    assert second.rows_written == 0
    assert await raw_rows(store, "SELECT id, saas, updated_at FROM application_endpoints ORDER BY id") == before


async def test_every_unlabelled_endpoint_is_reached_past_the_page_size(store):
    # 600 endpoints nobody claims come first; the original's unordered 256-row window kept
    # re-reading such rows and never reached the ones after them.
    unclaimed = [(f"198.51.100.{i % 250}", 1000 + i, None, None) for i in range(600)]
    await seed(store, unclaimed)
    await seed(store, [("160.79.104.1", 443, None, "Anthropic"), ("8.8.8.8", 443, None, "Google")])
    ctx = await run_saas(store, **{"max-endpoints": 256})
    assert ctx.rows_written == 2
    found = await labels(store)
    assert found[("160.79.104.1", 443)] == "Anthropic" and found[("8.8.8.8", 443)] == "Google"


def test_detectors_cover_data_json_and_ignore_hostile_input():
    detectors = Detectors()
    assert [d.name for d in detectors.detectors][-1] == "Windows Update"
    assert detectors.label(443, "not an address", ["\x00", 7, ""]) is None
    assert detectors.label(443, "151.101.1.91", []) == "Flathub"
    assert detectors.label(443, "10.0.0.1", ["download.windowsupdate.com."]) == "Windows Update"


def test_saas_depends_on_tls_and_ja4():
    load_builtin_modules()
    assert REGISTRY["saas"].depends == ("tls", "ja4")
