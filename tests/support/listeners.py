"""TCP listeners inside a lab host's namespace, and nftables rules that make its ports silent.

``start_listeners(namespace, ports)`` starts one small Python process in the
namespace that listens on every port given (IPv4 and IPv6), accepts and
closes each connection, and says "ready" once all are bound; ``stop`` ends it.
``filter_tcp(namespace)`` drops every incoming TCP segment there (no RST, no
ICMP): the ports look filtered, as behind a firewall.
"""

from __future__ import annotations

import subprocess
import sys

from support.lab import _nft

SERVER = r"""
import asyncio, socket, sys

async def main(ports):
    async def close(reader, writer):
        writer.close()
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        await asyncio.start_server(close, sock=sock, backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main([int(p) for p in sys.argv[1:]]))
"""

DROP_TCP = """
table inet lab_filter {
    chain input {
        type filter hook input priority 0;
        meta l4proto tcp drop
    }
}
"""


def start_listeners(namespace: str, ports: list[int]) -> subprocess.Popen:
    process = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", SERVER, *map(str, ports)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"listeners in {namespace} did not start: {process.stderr.read()}")
    return process


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def filter_tcp(namespace: str) -> None:
    _nft(namespace, DROP_TCP)
