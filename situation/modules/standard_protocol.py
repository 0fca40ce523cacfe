"""standard-protocol: label endpoints on well-known ports with their application protocol.

Pure SQL (agent-behaviour.md §4.19): one UPDATE per transport over every
endpoint in the database whose ``application_protocols`` is NULL and whose port
is in the map (``situation.net.standard_protocols``, the original's two maps),
setting ``["<name>"]``. Labels set earlier, by this module or another, are
never overwritten.

Deviation: endpoints stored as ``tcp6``/``udp6`` (netstat's IPv6 sockets) are
labelled too, with the TCP and UDP maps; the original labels only ``tcp`` and
``udp``.
"""

from __future__ import annotations

from situation.module import Context, module
from situation.net.standard_protocols import TCP, UDP

MAPS = (("tcp", "tcp6", TCP), ("udp", "udp6", UDP))


@module("standard-protocol", depends=("netstat",))
async def run(ctx: Context) -> None:
    """Application protocols of endpoints on well-known ports (SQL only)."""
    labelled = {}
    for transport, transport6, ports in MAPS:
        by_port = {str(port): name for port, name in ports.items()}
        count = await ctx.store.execute("label_standard_protocols", transport, transport6, by_port, ctx.agent_id)
        ctx.count(count)
        labelled[transport] = count
    ctx.log.info("standard protocols labelled", **labelled)
