"""ja4: JA4, JA4S and JA4X fingerprints of the endpoints that have a certificate.

Targets: endpoints with ``tls`` set and no ``fingerprints.ja4`` yet (so each
endpoint is fingerprinted once), within the same scope and exclusions as the
tls module. Each gets one handshake like tls's (no SNI, no verification,
legacy retry; ``--ja4-timeout`` per attempt, one ``--discovery-rate`` token
per connection), with every byte captured (:mod:`situation.net.tls_capture`):

- ``ja4``: our own ClientHello, so nearly constant per OpenSSL build and
  context (modern, or legacy when the server needed it);
- ``ja4s``: the server's ServerHello (which depends on what we offered);
- ``ja4x``: the leaf certificate (depends on the certificate only).

Stored as ``fingerprints = {"ja4": {"ja4", "ja4s", "ja4x"}}``, a key left out
when its input could not be read. FoxIO's conventions, see :mod:`situation.net.ja4`.
"""

from __future__ import annotations

from collections import Counter

from situation.module import Context, Option, module
from situation.modules.tls import DEFAULT_TIMEOUT, handshake_all, reachable_targets, scope_machine
from situation.net.ja4 import ja4, ja4s, ja4x
from situation.net.tls_capture import Handshake


def fingerprints_of(result: Handshake) -> dict[str, str]:
    """The inner ``ja4`` object: each fingerprint that could be computed."""
    found = {
        "ja4": ja4(result.client_hello) if result.client_hello else None,
        "ja4s": ja4s(result.server_hello) if result.server_hello else None,
        "ja4x": ja4x(result.certificate) if result.certificate else None,
    }
    return {name: value for name, value in found.items() if value}


@module(
    "ja4",
    depends=("tls",),
    options=(Option("timeout", DEFAULT_TIMEOUT, "duration", "Time allowed for each TLS connection and handshake."),),
)
async def run(ctx: Context) -> None:
    """JA4 (our ClientHello), JA4S (the ServerHello) and JA4X (the certificate) of TLS endpoints."""
    rows = await ctx.store.fetch("tls_targets", None, await scope_machine(ctx), True)
    targets = reachable_targets(rows, ctx.discovery.allows)
    if not targets.endpoints:
        return
    done, outcomes = await handshake_all(ctx, targets, float(ctx.options.get("timeout", DEFAULT_TIMEOUT)))
    updates = []
    partial: Counter = Counter()
    for key, result in done.items():
        found = fingerprints_of(result)
        partial.update(name for name in ("ja4", "ja4s", "ja4x") if name not in found)
        if found:
            updates.extend({"id": endpoint, "fingerprints": {"ja4": found}} for endpoint in targets.endpoints[key])
    written = await ctx.store.execute("set_fingerprints", sorted(updates, key=lambda u: u["id"]), ctx.agent_id) \
        if updates else 0
    ctx.count(written)
    ctx.log.info("JA4 fingerprints", endpoints=len(rows), targets=len(targets.endpoints), updated=written,
                 **outcomes, **{f"missing_{k}": v for k, v in partial.items()})
