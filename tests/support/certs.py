"""A throwaway PKI for the test suite, made with ``cryptography`` (no openssl CLI).

``make_certs(directory)`` writes two unrelated CAs, a server certificate for
``localhost`` and returns a :class:`Certs` that mints client certificates and
CRLs on demand. Keys are EC P-256: fast to generate and accepted by every
OpenSSL that PostgreSQL and libpq link against.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "situation test CA"
OTHER_CA_NAME = "situation other CA"
SERVER_NAME = "localhost"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "situation tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key, passphrase: str | None = None) -> None:
    if passphrase is None:
        algorithm = serialization.NoEncryption()
    else:
        algorithm = serialization.BestAvailableEncryption(passphrase.encode())
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
    )
    # Create with 0600 from the start; libpq and the server refuse looser keys.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


@dataclass
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def _make_ca(common_name: str) -> _Authority:
    key = _new_key()
    now = _now()
    subject = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return _Authority(key, cert)


def _make_leaf(
    issuer: _Authority,
    common_name: str,
    *,
    usage: x509.ObjectIdentifier,
    dns_names: list[str] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer.ski),
            critical=False,
        )
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
            critical=False,
        )
    return key, builder.sign(issuer.key, hashes.SHA256())


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


@dataclass
class Certs:
    """Paths of the test PKI, plus helpers that mint more of it on demand."""

    directory: Path
    ca_crt: Path
    ca_key: Path
    other_ca_crt: Path
    other_ca_key: Path
    server_crt: Path
    server_key: Path
    _authorities: dict[str, _Authority] = field(repr=False, default_factory=dict)
    _clients: dict[tuple, tuple[Path, Path]] = field(repr=False, default_factory=dict)
    _used_stems: set[str] = field(repr=False, default_factory=set)
    _crl_number: int = field(repr=False, default=0)

    def _authority(self, signer: str) -> _Authority:
        try:
            return self._authorities[signer]
        except KeyError:
            raise ValueError(f"signer must be 'ca' or 'other', not {signer!r}") from None

    def _unique_stem(self, stem: str) -> str:
        candidate, n = stem, 1
        while candidate in self._used_stems:
            n += 1
            candidate = f"{stem}.{n}"
        self._used_stems.add(candidate)
        return candidate

    def client_cert(
        self, cn: str, *, passphrase: str | None = None, signer: str = "ca"
    ) -> tuple[Path, Path]:
        """A client certificate (clientAuth) with subject CN ``cn``: ``(crt, key)``.

        Signed by the test CA, or by the unrelated CA when ``signer="other"``.
        The key is 0600 and, when ``passphrase`` is given, an encrypted PEM.
        The same arguments return the same files. The default variant is named
        ``<cn>.crt``/``<cn>.key``; others get ``.other`` / ``.enc`` in the name.
        """
        cache_key = (cn, passphrase, signer)
        if cache_key in self._clients:
            return self._clients[cache_key]
        issuer = self._authority(signer)
        stem = _file_stem(cn)
        if signer != "ca":
            stem += f".{signer}"
        if passphrase is not None:
            stem += ".enc"
        stem = self._unique_stem(stem)
        key, cert = _make_leaf(issuer, cn, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        crt_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        _write_cert(crt_path, cert)
        _write_key(key_path, key, passphrase)
        self._clients[cache_key] = (crt_path, key_path)
        return crt_path, key_path

    def server_cert(self, signer: str = "other") -> tuple[Path, Path]:
        """A new server certificate for ``localhost`` signed by ``signer``: ``(crt, key)``, for rotations."""
        key, cert = _make_leaf(self._authority(signer), SERVER_NAME, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                               dns_names=[SERVER_NAME])
        stem = self._unique_stem(f"server.{signer}")
        crt_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        _write_cert(crt_path, cert)
        _write_key(key_path, key)
        return crt_path, key_path

    def _write_crl(self, signer: str, serials: list[int], stem: str) -> Path:
        issuer = self._authority(signer)
        now = _now()
        self._crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(now - _dt.timedelta(days=1))
            .next_update(now + _dt.timedelta(days=30))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer.ski),
                critical=False,
            )
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _dt.timedelta(hours=1))
                .build()
            )
        crl = builder.sign(issuer.key, hashes.SHA256())
        path = self.directory / f"{self._unique_stem(stem)}.crl"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.chmod(path, 0o644)
        return path

    def revoke(self, cert_path: Path | str) -> Path:
        """Write a PEM CRL, signed by the CA that issued ``cert_path``, revoking it."""
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        for signer, authority in self._authorities.items():
            if authority.cert.subject == cert.issuer:
                break
        else:
            raise ValueError(f"{cert_path} was not issued by a test CA")
        return self._write_crl(signer, [cert.serial_number], f"revoked-{Path(cert_path).stem}")

    def empty_crl(self, signer: str = "ca") -> Path:
        """A valid PEM CRL of ``signer`` that revokes nothing (the control case)."""
        return self._write_crl(signer, [], f"{signer}-empty")


def make_certs(directory: Path) -> Certs:
    """Create the test PKI in ``directory`` (created if missing) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(CA_NAME)
    other = _make_ca(OTHER_CA_NAME)
    server_key, server_cert = _make_leaf(
        ca, SERVER_NAME, usage=ExtendedKeyUsageOID.SERVER_AUTH, dns_names=[SERVER_NAME]
    )
    paths = {
        "ca_crt": directory / "ca.crt",
        "ca_key": directory / "ca.key",
        "other_ca_crt": directory / "other-ca.crt",
        "other_ca_key": directory / "other-ca.key",
        "server_crt": directory / "server.crt",
        "server_key": directory / "server.key",
    }
    _write_cert(paths["ca_crt"], ca.cert)
    _write_key(paths["ca_key"], ca.key)
    _write_cert(paths["other_ca_crt"], other.cert)
    _write_key(paths["other_ca_key"], other.key)
    _write_cert(paths["server_crt"], server_cert)
    _write_key(paths["server_key"], server_key)
    certs = Certs(directory=directory, **paths)
    certs._authorities.update({"ca": ca, "other": other})
    certs._used_stems.update({"ca", "other-ca", "server"})
    return certs
