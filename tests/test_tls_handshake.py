"""What our SSLContext sends and checks during a real TLS handshake (SNI, ALPN, host names).

A small TLS server on loopback records what the client offered; PostgreSQL 15 has
no direct TLS, so ALPN and SNI are observed here rather than through a server.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from situation.connection.dsn import parse_dsn
from situation.connection.tls import HostNameMismatch, build_ssl_context


@pytest.fixture
async def tls_server(certs):
    seen: list[dict] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_crt, certs.server_key)
    context.set_alpn_protocols(["postgresql"])

    def remember_sni(sslobject, server_name, _context):
        seen.append({"sni": server_name})

    context.sni_callback = remember_sni

    async def handle(reader, writer):
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield port, seen
    server.close()
    await server.wait_closed()


async def handshake(port, host, dsn_options, home):
    params = parse_dsn(f"host={host} port={port} user=u dbname=d {dsn_options}", environ={"HOME": str(home)})
    context = build_ssl_context(params)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    context.negotiated_alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    writer.close()
    return context


async def test_sni_and_alpn_are_sent(tls_server, certs, home):
    port, seen = tls_server
    context = await handshake(port, "localhost", f"sslmode=verify-full sslrootcert={certs.ca_crt}", home)
    assert seen[-1] == {"sni": "localhost"}
    assert context.negotiated_alpn == "postgresql"  # needed by PostgreSQL 17's direct TLS


async def test_sslsni_0_sends_no_server_name(tls_server, certs, home):
    port, seen = tls_server
    await handshake(port, "localhost", f"sslmode=verify-full sslsni=0 sslrootcert={certs.ca_crt}", home)
    assert seen[-1]["sni"] is None  # the name is still checked, only not sent


async def test_host_name_is_checked_inside_the_handshake(tls_server, certs, home):
    port, _seen = tls_server
    with pytest.raises(HostNameMismatch):
        await handshake(port, "127.0.0.1", f"sslmode=verify-full sslrootcert={certs.ca_crt}", home)
    context = await handshake(port, "127.0.0.1", f"sslmode=verify-ca sslrootcert={certs.ca_crt}", home)
    assert context.last_peer_certificate  # kept for `situation check`


async def test_protocol_bounds(tls_server, certs, home):
    port, _seen = tls_server
    options = f"sslmode=verify-full sslrootcert={certs.ca_crt} ssl_min_protocol_version=TLSv1.3"
    context = await handshake(port, "localhost", options, home)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    capped = build_ssl_context(parse_dsn("host=localhost sslmode=require ssl_max_protocol_version=TLSv1.2", environ={"HOME": str(home)}))
    assert capped.maximum_version == ssl.TLSVersion.TLSv1_2 and capped.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_direct_negotiation_starts_with_tls_and_offers_alpn(certs, home):
    """sslnegotiation=direct: the first bytes on the wire are a TLS ClientHello offering ALPN
    "postgresql", not an SSLRequest. PostgreSQL 17 is not installed here, so a small server
    speaking TLS directly stands in for it and closes after the handshake."""
    from situation.connection.connect import connect
    from situation.errors import ConnectError

    seen = {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_crt, certs.server_key)
    context.set_alpn_protocols(["postgresql"])

    async def handle(reader, writer):
        first = await reader.readexactly(1)
        seen["first_byte"] = first[0]  # 0x16: a TLS handshake record; an SSLRequest starts with 0x00
        writer.close()

    plain = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = plain.sockets[0].getsockname()[1]
    params = parse_dsn(
        f"host=localhost port={port} user=u dbname=d sslmode=verify-full sslnegotiation=direct "
        f"sslrootcert={certs.ca_crt} connect_timeout=5",
        environ={"HOME": str(home)},
    )
    try:
        with pytest.raises(ConnectError):
            await connect(params)
    finally:
        plain.close()
        await plain.wait_closed()
    assert seen["first_byte"] == 0x16

    async def record_alpn(reader, writer):
        seen["alpn"] = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()

    tls_server = await asyncio.start_server(record_alpn, "127.0.0.1", 0, ssl=context)
    port = tls_server.sockets[0].getsockname()[1]
    params = parse_dsn(
        f"host=localhost port={port} user=u dbname=d sslmode=verify-full sslnegotiation=direct "
        f"sslrootcert={certs.ca_crt} connect_timeout=5",
        environ={"HOME": str(home)},
    )
    tls = build_ssl_context(params)
    try:
        with pytest.raises(ConnectError):
            await connect(params, tls=tls)  # the server hangs up after the handshake
    finally:
        tls_server.close()
        await tls_server.wait_closed()
    assert tls.last_peer_certificate  # the handshake completed (and the host name matched)
    assert seen["alpn"] == "postgresql"
