"""macvendor: the vendor of every NIC's MAC, from the full IEEE registries.

Selects NICs of any machine (or none) that have a MAC and no ``mac_vendor``,
finds each MAC's longest registered prefix (MA-S 36 bits, MA-M 28, MA-L 24)
and stores the organisation in one bulk UPDATE.

Where the registries come from (see :mod:`situation.net.oui`): the
``--macvendor-registry`` directory when given, else Debian's ``ieee-data``
(MA-L, MA-M, MA-S and IAB; ``/var/lib/ieee-data`` first, which
``update-ieee-data`` refreshes), else the MA-L and IAB listings bundled with
the ``netaddr`` package. The original agent carried a generated subset of
MA-L only.

- Locally administered MACs (second hex digit 2, 6, A or E) have no vendor:
  the selection leaves them out, so they stay NULL and are never looked up.
- A MAC whose prefix no registry lists stays NULL (logged at debug), so a
  refreshed registry can fill it in later; it costs an in-memory probe per cycle.
- A MAC too short for a prefix length matches nothing at that length.

The index is built on first use, in a thread, and kept (about 2 MB) until the
listing files change.
"""

from __future__ import annotations

import asyncio

from situation.module import Context, Option, Skip, module
from situation.net.oui import load_index


@module(
    "macvendor",
    depends=("arp",),
    options=(
        Option("registry", "", "str",
               "Directory with the IEEE listings oui.txt, mam.txt, oui36.txt, iab.txt "
               "(default: Debian's ieee-data, else netaddr's copy of MA-L and IAB)."),
    ),
)
async def run(ctx: Context) -> None:
    """MAC vendors from the IEEE registries (MA-L, MA-M, MA-S)."""
    nics = await ctx.store.fetch("nics_without_vendor")
    if not nics:
        return
    index = await asyncio.to_thread(load_index, ctx.options.get("registry", ""))
    if index is None:
        raise Skip("no IEEE MAC registry found: install Debian's ieee-data or give --macvendor-registry DIR")
    found = {nic["id"]: vendor for nic in nics if (vendor := index.lookup(nic["mac"]))}
    unknown = len(nics) - len(found)
    if unknown:
        ctx.log.debug("MAC prefixes in no registry", count=unknown, source=index.source)
    if found:
        ids = sorted(found)
        ctx.count(await ctx.store.execute("set_mac_vendors", ids, [found[i] for i in ids], ctx.agent_id))
