"""Open the TCP socket for asyncpg ourselves, the way libpq does.

asyncpg dials ``loop.create_connection(factory, host, port)`` and has no hook
for the socket. Two libpq behaviours need one: ``hostaddr`` (dial this address,
while TLS checks and SNI still use ``host``) and TCP keepalives, which libpq
sets right after ``socket()``, before the start-up packet. So asyncpg gets a
thin stand-in for the event loop whose ``create_connection`` resolves, creates
the socket, sets its options, connects, and hands the connected socket to the
real loop. Everything else is the real loop's.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from situation.dsn import Endpoint, Keepalives


def apply_keepalives(sock: socket.socket, keepalives: Keepalives) -> None:
    """libpq's keepalive options on a TCP socket (values left None keep the system's)."""
    if not keepalives.enabled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", keepalives.idle),
        ("TCP_KEEPINTVL", keepalives.interval),
        ("TCP_KEEPCNT", keepalives.count),
        ("TCP_USER_TIMEOUT", keepalives.user_timeout),
    ):
        if value is not None and hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class DialingLoop:
    """The running loop, except that TCP connections are dialled by :meth:`create_connection`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint, keepalives: Keepalives,
                 shuffle: bool = False):
        self._loop = loop
        self._endpoint = endpoint
        self._keepalives = keepalives
        self._shuffle = shuffle  # load_balance_hosts=random also shuffles a name's addresses
        self.peer: tuple[str, int] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    # asyncpg keeps this object as the connection's loop (its cancel requests then go
    # through the same dialling) and asks asyncio.current_task(loop), which looks the
    # loop up in a dict: compare and hash like the real loop.
    def __eq__(self, other: object) -> bool:
        return other is self or other is self._loop

    def __hash__(self) -> int:
        return hash(self._loop)

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None,
                                server_hostname=None, **kwargs):
        if host is None or "sock" in kwargs:
            return await self._loop.create_connection(
                protocol_factory, host, port, ssl=ssl, server_hostname=server_hostname, **kwargs)
        sock = await self._open_socket(self._endpoint.hostaddr or host, port)
        if ssl is not None and server_hostname is None:
            server_hostname = host  # direct TLS: the name to check, never the dialled address
        try:
            return await self._loop.create_connection(
                protocol_factory, sock=sock, ssl=ssl, server_hostname=server_hostname, **kwargs)
        except BaseException:
            sock.close()
            raise

    async def _open_socket(self, target: str, port: int) -> socket.socket:
        """Try each address of ``target`` in turn, as libpq does; raise the last error."""
        infos = await self._loop.getaddrinfo(target, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        if self._shuffle:
            random.shuffle(infos)
        last_error: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                apply_keepalives(sock, self._keepalives)
                await self._loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            self.peer = sock.getpeername()[:2]
            return sock
        raise last_error or OSError(f"no address found for {target}")
