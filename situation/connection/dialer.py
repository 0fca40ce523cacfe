"""Open the TCP socket for asyncpg ourselves, the way libpq does.

asyncpg dials ``loop.create_connection(factory, host, port)`` and has no hook
for the socket. Two libpq behaviours need one: ``hostaddr`` (dial this address,
while TLS checks and SNI still use ``host``) and TCP keepalives, which libpq
sets right after ``socket()``, before the start-up packet. So asyncpg gets a
thin stand-in for the event loop whose ``create_connection`` resolves, creates
the socket, sets its options, connects, and hands the connected socket to the
real loop. Everything else is the real loop's.

With ``require_auth`` the stand-in also wraps asyncpg's protocol, to read the
server's first authentication request before asyncpg answers it, and to hang
up (before any password leaves) when the method is not one the DSN allows.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import Any

from asyncpg.protocol import Protocol as AsyncpgProtocol

from situation.connection.dsn import Endpoint, Keepalives, RequireAuth

# AuthenticationRequest codes (protocol message 'R') and the require_auth method each one means.
_AUTH_METHODS = {0: "none", 3: "password", 5: "md5", 7: "gss", 9: "sspi", 10: "scram-sha-256"}


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
                 shuffle: bool = False, require_auth: RequireAuth | None = None):
        self._loop = loop
        self._endpoint = endpoint
        self._keepalives = keepalives
        self._shuffle = shuffle  # load_balance_hosts=random also shuffles a name's addresses
        self._require_auth = require_auth
        self.peer: tuple[str, int] | None = None
        self.refused_method: str | None = None  # set when require_auth made us hang up

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
            transport, protocol = await self._loop.create_connection(
                lambda: self._guard(protocol_factory()), sock=sock, ssl=ssl, server_hostname=server_hostname,
                **kwargs)
        except BaseException:
            sock.close()
            raise
        if isinstance(protocol, _AuthGuard):
            protocol = protocol.inner
        return self._watched(transport), protocol

    async def start_tls(self, transport, protocol, sslcontext, **kwargs):
        if isinstance(transport, _WatchedTransport):
            transport = transport.real
        return self._watched(await self._loop.start_tls(transport, protocol, sslcontext, **kwargs))

    def _guard(self, protocol, transport=None):
        if self._require_auth is None or not isinstance(protocol, AsyncpgProtocol):
            return protocol
        return _AuthGuard(protocol, self, transport)

    def _watched(self, transport):
        # asyncpg hands its protocol to the transport after the STARTTLS exchange
        # (set_protocol): the guard must be put in front of it there too.
        return transport if self._require_auth is None else _WatchedTransport(transport, self)

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


class _WatchedTransport:
    """A transport that puts the auth guard in front of the protocol asyncpg sets on it."""

    def __init__(self, real, dialer: DialingLoop):
        self.real = real
        self._dialer = dialer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def set_protocol(self, protocol) -> None:
        self.real.set_protocol(self._dialer._guard(protocol, self.real))


class _AuthGuard(asyncio.Protocol):
    """Reads the server's messages up to its first authentication request, then
    lets asyncpg have them, or hangs up when require_auth forbids the method."""

    def __init__(self, inner, dialer: DialingLoop, transport=None):
        self.inner = inner
        self._dialer = dialer
        self._buffer = b""
        self._decided = False
        self._transport = transport

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._decided:
            self.inner.data_received(data)
            return
        self._buffer += data
        method = _first_auth_method(self._buffer)
        if method is None:
            return  # the request has not fully arrived yet
        self._decided = True
        buffered, self._buffer = self._buffer, b""
        if method and not self._dialer._require_auth.allows(method):
            self._dialer.refused_method = method
            self._transport.abort()
            return
        self.inner.data_received(buffered)

    def connection_lost(self, exc) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _first_auth_method(data: bytes) -> str | None:
    """The method of the first AuthenticationRequest in ``data``; "" when an error or
    another message comes first (asyncpg reports those); None while it is incomplete."""
    offset = 0
    while len(data) - offset >= 5:
        kind = data[offset:offset + 1]
        length = struct.unpack_from("!i", data, offset + 1)[0]
        end = offset + 1 + length
        if kind != b"R":
            if kind == b"v" and len(data) >= end:  # NegotiateProtocolVersion precedes the request
                offset = end
                continue
            return ""
        if len(data) < offset + 9:
            return None
        code = struct.unpack_from("!i", data, offset + 5)[0]
        if code == 10 and len(data) >= end:
            mechanisms = data[offset + 9:end].split(b"\0")
            return "scram-sha-256" if b"SCRAM-SHA-256" in mechanisms else "sasl"
        if code == 10:
            return None
        return _AUTH_METHODS.get(code, f"method {code}")
    return None
