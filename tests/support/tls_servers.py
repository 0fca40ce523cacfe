"""TLS servers for the tls/ja4 tests and bench: certificates the test makes, served from host namespaces.

``make_certificate(directory, stem, ...)`` writes ``<stem>.crt``/``<stem>.key``
(self-signed; RSA or EC; DNS names, IP addresses, any subject, including a
NUL byte or a 2,000-character value, which ``cryptography`` only writes with
its validation off). ``serve(namespace, cert, key, ports, tls10_only=...)``
starts this file as a script inside a host namespace: a threaded server that
completes handshakes on each port and closes, until killed. A TLS 1.0-only
server needs security level 0, which this OpenSSL may refuse: ``tls10_supported``.
``broken_certificate`` makes certificates whose subjectAltName no parser reads.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from pathlib import Path

HERE = Path(__file__)


def make_certificate(directory: Path, stem: str, *, subject: list[tuple] | None = None,
                     dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = (),
                     rsa: bool = False, days: int = 30) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import NameOID

    key = rsa_keys.generate_private_key(65537, 2048) if rsa else ec.generate_private_key(ec.SECP256R1())
    attributes = subject or [(NameOID.COMMON_NAME, stem)]
    name = x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in attributes])
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1)).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    alternatives = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    crt, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return crt, key_path


def broken_certificate(directory: Path, stem: str, *, duplicated: bool) -> tuple[Path, Path]:
    """A self-signed certificate whose subjectAltName is not DER, or (``duplicated``) present twice.

    OpenSSL refuses to load either into an ``ssl`` context: serve them with
    ``openssl s_server``. The duplicate is made after signing, by renaming an
    unknown extension's OID (1.2.3.4) to the subjectAltName's (2.5.29.17):
    the signature no longer matches, which no client here checks.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(days=1))
               .not_valid_after(now + _dt.timedelta(days=30)))
    if duplicated:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("one.example")]), critical=False)
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x30\x00"),
                                        critical=False)
    else:  # GeneralNames whose one dNSName claims 255 bytes and has none
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x82\xff\x00"), critical=False)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if duplicated:
        der = der.replace(bytes.fromhex("06032a0304"), bytes.fromhex("0603551d11"))
    crt, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return crt, key_path


def server_context(cert: Path, key: Path, *, tls10_only: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls10_only:
        context.set_ciphers("ALL:@SECLEVEL=0")
        _only_tls10(context)
    context.load_cert_chain(cert, key)
    return context


def _only_tls10(context: ssl.SSLContext) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1


def tls10_supported(cert: Path, key: Path) -> bool:
    """Can this OpenSSL serve (and so reach) TLS 1.0? Tried over a socketpair, nothing on any network."""
    server_side, client_side = socket.socketpair()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.set_ciphers("ALL:@SECLEVEL=0")
    _only_tls10(client)
    try:
        server = server_context(cert, key, tls10_only=True).wrap_socket(server_side, server_side=True,
                                                                         do_handshake_on_connect=False)
        worker = threading.Thread(target=_quiet_handshake, args=(server,), daemon=True)
        worker.start()
        with client.wrap_socket(client_side) as tls:
            return tls.version() == "TLSv1"
    except (ssl.SSLError, OSError):
        return False
    finally:
        server_side.close()
        client_side.close()


def _quiet_handshake(tls: ssl.SSLSocket) -> None:
    try:
        tls.do_handshake()
    except (ssl.SSLError, OSError):
        pass


def serve(namespace: str, cert: Path, key: Path, ports: tuple[int, ...], *, tls10_only: bool = False,
          address: str = "0.0.0.0") -> subprocess.Popen:
    """This file as a TLS server inside ``namespace``; returns once every port listens."""
    argv = ["ip", "netns", "exec", namespace, sys.executable, str(HERE), "--cert", str(cert), "--key", str(key),
            "--address", address, *(["--tls10-only"] if tls10_only else []), *map(str, ports)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"TLS server in {namespace} did not start: {line}{process.stderr.read()}")
    return process


def _handle(context: ssl.SSLContext, connection: socket.socket) -> None:
    connection.settimeout(10)
    try:
        with context.wrap_socket(connection, server_side=True) as tls:
            tls.settimeout(1)
            try:
                tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
    except (OSError, ssl.SSLError):
        pass
    finally:
        connection.close()


def _listen(context: ssl.SSLContext, address: str, port: int) -> socket.socket:
    listener = socket.create_server((address, port), backlog=256, reuse_port=False)
    threading.Thread(target=_accept, args=(context, listener), daemon=True).start()
    return listener


def _accept(context: ssl.SSLContext, listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_handle, args=(context, connection), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--tls10-only", action="store_true")
    parser.add_argument("ports", nargs="+", type=int)
    arguments = parser.parse_args()
    context = server_context(Path(arguments.cert), Path(arguments.key), tls10_only=arguments.tls10_only)
    listeners = [_listen(context, arguments.address, port) for port in arguments.ports]
    print("ready", flush=True)
    threading.Event().wait()
    del listeners


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
