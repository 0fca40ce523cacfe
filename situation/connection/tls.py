"""Build an ``ssl.SSLContext`` that verifies the server exactly as libpq would.

asyncpg ignores every SSL option of a DSN once it is handed a context, so the
whole of libpq's policy lives here: which root file counts, when the chain is
verified (``require`` with a root file behaves like ``verify-ca``), CRLs,
protocol bounds, SNI, ALPN, client certificates and libpq's private-key
permission rule. Host names are checked by libpq's rules, not OpenSSL's, by a
``SSLObject`` subclass that runs the check inside the handshake, before any
password leaves the client.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from situation.connection.dsn import ConnectParams
from situation.errors import DsnError

_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

# What the context will check, reported by `situation check`.
VERIFY_NONE = "none"
VERIFY_CHAIN = "chain"
VERIFY_FULL = "chain and host name"


class HostNameMismatch(ssl.SSLCertVerificationError):
    """The server certificate is valid but names another host (verify-full)."""

    def __init__(self, host: str, names: list[str]):
        self.host = host
        self.names = names
        super().__init__(f"server certificate does not match host name {host!r}")


@dataclass(frozen=True)
class ClientCertificate:
    cert: Path
    key: Path


@dataclass
class TlsPolicy:
    """The decisions taken from the DSN, kept for reporting."""

    verify: str
    root: str | None  # file path, "system", or None
    crl: list[str]
    client: ClientCertificate | None


class LibpqSSLObject(ssl.SSLObject):
    """An SSLObject that applies libpq's host-name rules when the handshake ends."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        if not isinstance(context, LibpqSSLContext):
            return
        context.last_peer_certificate = self.getpeercert(binary_form=True)
        expected = getattr(self, "_situation_verify_name", None)
        if context.policy.verify == VERIFY_FULL and expected is not None:
            certificate = self.getpeercert()
            if not peer_name_matches(expected, certificate):
                raise HostNameMismatch(expected, certificate_names(certificate))


class LibpqSSLContext(ssl.SSLContext):
    """Client context carrying libpq's policy; hands out :class:`LibpqSSLObject`."""

    sslobject_class = LibpqSSLObject
    policy: TlsPolicy
    send_sni: bool
    last_peer_certificate: bytes | None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        # SNI carries the host name in clear; libpq lets sslsni=0 turn it off,
        # and never sends it for address literals (Python already skips those).
        sni = server_hostname if self.send_sni else None
        sslobj = super().wrap_bio(incoming, outgoing, server_side, sni, session)
        sslobj._situation_verify_name = server_hostname
        return sslobj


def ssl_context_for(params: ConnectParams) -> LibpqSSLContext | None:
    """The context for ``params``; None when sslmode=disable or every host is a Unix socket.

    libpq never uses TLS on a Unix-domain socket, so sslmode=verify-full without a
    root certificate still connects there: nothing is loaded, nothing is refused.
    """
    if all(endpoint.is_unix_socket for endpoint in params.endpoints):
        return None
    return build_ssl_context(params)


def build_ssl_context(params: ConnectParams) -> LibpqSSLContext | None:
    """The context for ``params``, or None when sslmode=disable."""
    if params.sslmode == "disable":
        return None
    context = LibpqSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.send_sni = params.sslsni
    context.last_peer_certificate = None
    context.minimum_version = _TLS_VERSIONS[params.ssl_min_protocol_version]
    if params.ssl_max_protocol_version:
        context.maximum_version = _TLS_VERSIONS[params.ssl_max_protocol_version]
    context.set_alpn_protocols(["postgresql"])
    root, crl = _load_trust(context, params)
    if root is None:
        verify = VERIFY_NONE
    elif params.sslmode == "verify-full":
        verify = VERIFY_FULL
    else:
        verify = VERIFY_CHAIN
    client = _load_client_certificate(context, params)
    context.policy = TlsPolicy(verify=verify, root=root, crl=crl, client=client)
    return context


def _postgresql_dir(params: ConnectParams) -> Path:
    return Path(params.home) / ".postgresql"


def _load_trust(context: ssl.SSLContext, params: ConnectParams) -> tuple[str | None, list[str]]:
    """Load the root certificates (and CRLs); return what was loaded."""
    if params.sslrootcert == "system":
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        context.verify_mode = ssl.CERT_REQUIRED
        return "system", []
    root = _existing_file(params.sslrootcert, "sslrootcert", _postgresql_dir(params) / "root.crt")
    if root is None:
        if params.sslmode.startswith("verify"):
            default = _postgresql_dir(params) / "root.crt"
            raise DsnError(
                f'sslmode={params.sslmode} needs a root certificate, and "{default}" does not exist; '
                "set sslrootcert to the CA file that signed the server certificate "
                "(or sslrootcert=system for the system's trusted roots)"
            )
        return None, []
    _load_verify_file(context, root, "sslrootcert")
    context.verify_mode = ssl.CERT_REQUIRED
    return str(root), _load_crls(context, params)


def _load_crls(context: ssl.SSLContext, params: ConnectParams) -> list[str]:
    loaded = []
    crl = _existing_file(params.sslcrl, "sslcrl", _postgresql_dir(params) / "root.crl")
    if crl is not None:
        _load_verify_file(context, crl, "sslcrl")
        loaded.append(str(crl))
    if params.sslcrldir:
        if not Path(params.sslcrldir).is_dir():
            raise DsnError(f'sslcrldir "{params.sslcrldir}" is not a directory; fix the path or remove sslcrldir')
        context.load_verify_locations(capath=params.sslcrldir)
        loaded.append(params.sslcrldir)
    if loaded:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    return loaded


def _existing_file(explicit: str | None, key: str, default: Path) -> Path | None:
    """The explicit file (which must exist), else the default when it exists.

    libpq silently ignores a missing explicit file below verify-ca; we refuse it,
    because a typo there would quietly turn verification off.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DsnError(f'{key} file "{explicit}" does not exist; fix the path or remove {key}')
        return path
    return default if default.is_file() else None


def _load_verify_file(context: ssl.SSLContext, path: Path, key: str) -> None:
    try:
        context.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise DsnError(f'{key} file "{path}" could not be loaded ({_reason(exc)}); it must hold PEM data') from None


def _load_client_certificate(context: ssl.SSLContext, params: ConnectParams) -> ClientCertificate | None:
    if params.sslcertmode == "disable":
        return None
    cert = _existing_file(params.sslcert, "sslcert", _postgresql_dir(params) / "postgresql.crt")
    if cert is None:
        return None
    key = _client_key_path(params, cert)
    check_key_permissions(key)
    _load_cert_chain(context, cert, key, params.sslpassword)
    return ClientCertificate(cert=cert, key=key)


def _client_key_path(params: ConnectParams, cert: Path) -> Path:
    if params.sslkey and ":" in params.sslkey[2:]:
        raise DsnError(
            f'sslkey "{params.sslkey}" names an OpenSSL engine key, which situation does not support; '
            "give the path of a PEM key file"
        )
    key = _existing_file(params.sslkey, "sslkey", _postgresql_dir(params) / "postgresql.key")
    if key is None:
        raise DsnError(
            f'client certificate "{cert}" has no private key; set sslkey to its key file '
            f'(default "{_postgresql_dir(params) / "postgresql.key"}")'
        )
    return key


def check_key_permissions(key: Path) -> None:
    """libpq's rule: 0600 at most, or 0640 when the key belongs to root."""
    info = key.stat()
    if not stat.S_ISREG(info.st_mode):
        raise DsnError(f'private key file "{key}" is not a regular file; point sslkey at the key file itself')
    if info.st_uid == 0:
        loose = info.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)
    else:
        loose = info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    if loose:
        raise DsnError(
            f'private key file "{key}" has group or world access (mode {stat.S_IMODE(info.st_mode):04o}); '
            f"run: chmod 0600 {key}  (0640 is allowed when root owns it)"
        )


class _KeyNeedsPassword(Exception):
    pass


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path, password: str | None) -> None:
    def passphrase() -> str:
        # libpq would prompt on the terminal; a daemon must not.
        if not password:
            raise _KeyNeedsPassword
        return password

    try:
        context.load_cert_chain(str(cert), str(key), password=passphrase)
    except _KeyNeedsPassword:
        raise DsnError(f'client key "{key}" is encrypted; give its passphrase as sslpassword') from None
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):
            raise DsnError(
                f'client certificate "{cert}" or key "{key}" cannot be read ({exc.strerror or exc}); '
                "check its owner and permissions"
            ) from None
        if password and ("bad decrypt" in str(exc).lower() or "PEM lib" in str(exc)):
            raise DsnError(f'sslpassword does not decrypt client key "{key}"; check the passphrase') from None
        if "key values mismatch" in str(exc).lower():
            raise DsnError(f'client certificate "{cert}" and key "{key}" do not belong together') from None
        raise DsnError(
            f'client certificate "{cert}" or key "{key}" could not be loaded ({_reason(exc)}); both must be PEM'
        ) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc).splitlines()[0]


# -- libpq's host-name rules (fe-secure-common.c, described in the spec §1.11) --


def peer_name_matches(host: str, certificate: dict) -> bool:
    """True when ``certificate`` names ``host`` by libpq's rules.

    A DNS host is matched against dNSName entries, and against the CN only when
    the certificate has no dNSName. An address is matched against iPAddress
    entries and, as libpq does, dNSName entries too; the CN is consulted only
    when there is no iPAddress entry.
    """
    address = _as_address(host)
    alt_names = certificate.get("subjectAltName", ())
    dns_names = [value for kind, value in alt_names if kind == "DNS"]
    ip_names = [value for kind, value in alt_names if kind == "IP Address"]
    if any(_name_matches(name, host) for name in dns_names):
        return True
    if address is not None and any(_as_address(value) == address for value in ip_names):
        return True
    has_san_of_host_type = bool(ip_names) if address is not None else bool(dns_names)
    if has_san_of_host_type:
        return False
    common_name = _first_common_name(certificate)
    return common_name is not None and _name_matches(common_name, host)


def certificate_names(certificate: dict) -> list[str]:
    names = [value for kind, value in certificate.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    common_name = _first_common_name(certificate)
    if not names and common_name:
        names.append(common_name)
    return names


def _first_common_name(certificate: dict) -> str | None:
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def _as_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().rstrip("\n"))
    except ValueError:
        return None


def _name_matches(pattern: str, host: str) -> bool:
    """Case-insensitive match with one leading ``*.`` wildcard that never spans a dot."""
    if "\x00" in pattern:
        return False
    pattern, host = pattern.lower(), host.lower()
    if pattern == host:
        return True
    if not pattern.startswith("*.") or len(host) < len(pattern):
        return False
    suffix = pattern[1:]
    if not host.endswith(suffix):
        return False
    label = host[: -len(suffix)]
    return bool(label) and "." not in label and "*" not in suffix


def describe_certificate(der: bytes) -> dict:
    """Subject, issuer and expiry of a DER certificate, for `situation check`."""
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }

