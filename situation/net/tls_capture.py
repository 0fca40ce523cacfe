"""A TLS client handshake that keeps the raw bytes: our ClientHello, the ServerHello, the leaf certificate.

The handshake runs in memory (``ssl.SSLObject`` over two ``ssl.MemoryBIO``,
public API) on a non-blocking socket, so every byte written and read passes
through here. Certificates are collected, not trusted: verification is off
and no SNI is sent (targets are IP addresses).

Two client contexts: ``modern`` (OpenSSL's defaults, TLS 1.2+) is tried first;
when that handshake fails at the TLS level (not a timeout or a refused
connection), ``legacy`` retries with TLS 1.0 as the floor, every cipher this
OpenSSL build has, security level 0 and legacy renegotiation allowed, which
reaches old appliances where this OpenSSL still can. The ClientHello, hence
our JA4, is that of the context that succeeded.

Record parsing (:func:`first_handshake_message`) is pure and returns ``None``
for anything it cannot read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache

HANDSHAKE = 22
RECORD_HEADER = 5
MAX_CAPTURE = 64 * 1024  # bytes of each direction kept: enough for the hellos, bounded against floods
RECEIVE_SIZE = 16 * 1024


class TlsFailure(Exception):
    """A handshake that did not complete; the message says why, in a few words."""


class Unreachable(TlsFailure):
    """The TCP connection itself failed (refused, unreachable): no TLS retry is worth it."""


@dataclass(frozen=True)
class Handshake:
    client_hello: bytes | None  # the handshake message (type byte onwards), or None if unreadable
    server_hello: bytes | None
    certificate: bytes | None  # the leaf, DER
    version: str | None  # negotiated, e.g. "TLSv1.3"
    cipher: str | None
    legacy: bool  # the legacy context was needed


@cache
def client_context(legacy: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        with warnings.catch_warnings():  # TLS 1.0 is deprecated: reaching old servers is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("ALL:COMPLEMENTOFDEFAULT:@SECLEVEL=0")
        context.options |= getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0)
    return context


def first_handshake_message(stream: bytes, expected: int) -> bytes | None:
    """The first handshake message of a TLS byte stream if it has type ``expected``, reassembled from records.

    Stops at the first record that is not a handshake record; returns None when
    the stream ends first, or holds anything else.
    """
    fragments = bytearray()
    at = 0
    while at + RECORD_HEADER <= len(stream):
        kind, length = stream[at], int.from_bytes(stream[at + 3 : at + 5], "big")
        body = stream[at + RECORD_HEADER : at + RECORD_HEADER + length]
        if kind != HANDSHAKE or len(body) < length:
            return None
        fragments += body
        at += RECORD_HEADER + length
        if len(fragments) >= 4:
            if fragments[0] != expected:
                return None
            size = 4 + int.from_bytes(fragments[1:4], "big")
            if len(fragments) >= size:
                return bytes(fragments[:size])
    return None


async def _nothing() -> None:
    return None


async def handshake(
    address: str, port: int, timeout: float, *, before_connect: Callable[[], Awaitable[None]] = _nothing
) -> Handshake:
    """Handshake with ``address:port`` (modern context, then legacy).

    Raises TlsFailure (Unreachable when TCP failed) or TimeoutError; ``timeout``
    bounds each attempt, connection included. ``before_connect`` is awaited
    before each TCP connection (a rate limiter's token).
    """
    try:
        await before_connect()
        return await _attempt(address, port, timeout, legacy=False)
    except Unreachable:
        raise
    except TlsFailure as modern:
        try:
            await before_connect()
            return await _attempt(address, port, timeout, legacy=True)
        except TlsFailure:
            raise modern from None


async def _attempt(address: str, port: int, timeout: float, *, legacy: bool) -> Handshake:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            try:
                await loop.sock_connect(sock, (address, port))
            except OSError as exc:
                raise Unreachable(exc.strerror or type(exc).__name__) from None
            return await _converse(loop, sock, client_context(legacy), legacy)
    finally:
        sock.close()


async def _converse(loop, sock: socket.socket, context: ssl.SSLContext, legacy: bool) -> Handshake:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    written, read = bytearray(), bytearray()
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            await _flush(loop, sock, outgoing, written)  # the alert, politely
            raise TlsFailure(exc.reason or exc.__class__.__name__) from None
        await _flush(loop, sock, outgoing, written)
        if done:
            break
        try:
            chunk = await loop.sock_recv(sock, RECEIVE_SIZE)
        except OSError as exc:
            raise TlsFailure(exc.strerror or type(exc).__name__) from None
        if not chunk:
            raise TlsFailure("connection closed during the handshake")
        if len(read) < MAX_CAPTURE:
            read += chunk[: MAX_CAPTURE - len(read)]
        incoming.write(chunk)
    cipher = tls.cipher()
    return Handshake(
        client_hello=first_handshake_message(bytes(written), 0x01),
        server_hello=first_handshake_message(bytes(read), 0x02),
        certificate=tls.getpeercert(binary_form=True),
        version=tls.version(),
        cipher=cipher[0] if cipher else None,
        legacy=legacy,
    )


async def _flush(loop, sock: socket.socket, outgoing: ssl.MemoryBIO, written: bytearray) -> None:
    data = outgoing.read()
    if not data:
        return
    if len(written) < MAX_CAPTURE:
        written += data[: MAX_CAPTURE - len(written)]
    try:
        await loop.sock_sendall(sock, data)
    except OSError as exc:
        raise TlsFailure(exc.strerror or type(exc).__name__) from None
