"""The ``application_endpoints.tls`` JSON of a leaf certificate, in the Go agent's formats (spec §1.4, §4.20).

Parsed with ``cryptography.x509``. The certificate is untrusted (any server
chooses it), so the result is bounded and clean whatever it holds:

- ``subject`` / ``issuer``: Go's ``pkix.Name.String()``: the attributes Go
  names (SERIALNUMBER, CN, OU, O, POSTALCODE, STREET, L, ST, C, multi-valued
  ones in reverse) after any other attribute written ``<dotted oid>=#<hex DER>``,
  RFC 4514 escaping as Go does it. One deviation: control characters (NUL
  included), which Go copies raw, are written as RFC 4514 hex escapes
  (``\\00``). Each string is cut at ``MAX_NAME`` characters.
- ``serial_number``, ``sha1_fingerprint``, ``sha256_fingerprint``: lowercase
  hex pairs joined by ``:`` (serial: its magnitude, ``00`` for zero, where Go crashes).
- ``signature_algorithm`` / ``public_key_algorithm``: Go's names; an algorithm
  Go has no name for is written as its dotted OID (Go writes a bare number).
- ``not_before`` / ``not_after``: RFC 3339 UTC.
- ``dns_names``: the DNS names of the subjectAltName, at most ``MAX_DNS_NAMES``;
  a name longer than 253 characters or holding anything but printable ASCII
  (a NUL-truncation trick, say) is dropped. Always present, ``[]`` for a
  certificate with none (IP-only certificates are stored: see the tls module)
  and for one whose extensions cannot be read (not DER, an extension twice):
  the rest of such a certificate is still described.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from situation.net.ja4 import Malformed

MAX_NAME = 1024
MAX_DNS_NAMES = 256
MAX_DNS_NAME = 253

# Go's attribute names, in the order pkix.Name.ToRDNSequence() emits them (the string is written reversed).
_GO_ORDER = (
    (NameOID.COUNTRY_NAME, "C"),
    (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
    (NameOID.LOCALITY_NAME, "L"),
    (NameOID.STREET_ADDRESS, "STREET"),
    (NameOID.POSTAL_CODE, "POSTALCODE"),
    (NameOID.ORGANIZATION_NAME, "O"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
    (NameOID.COMMON_NAME, "CN"),
    (NameOID.SERIAL_NUMBER, "SERIALNUMBER"),
)
_GO_NAMED = {oid for oid, _ in _GO_ORDER}
_GO_SINGLE = {NameOID.COMMON_NAME, NameOID.SERIAL_NUMBER}

_SIGNATURE_NAMES = {
    "1.2.840.113549.1.1.2": "MD2-RSA",
    "1.2.840.113549.1.1.4": "MD5-RSA",
    "1.2.840.113549.1.1.5": "SHA1-RSA",
    "1.3.14.3.2.29": "SHA1-RSA",
    "1.2.840.113549.1.1.11": "SHA256-RSA",
    "1.2.840.113549.1.1.12": "SHA384-RSA",
    "1.2.840.113549.1.1.13": "SHA512-RSA",
    "1.2.840.10040.4.3": "DSA-SHA1",
    "2.16.840.1.101.3.4.3.2": "DSA-SHA256",
    "1.2.840.10045.4.1": "ECDSA-SHA1",
    "1.2.840.10045.4.3.2": "ECDSA-SHA256",
    "1.2.840.10045.4.3.3": "ECDSA-SHA384",
    "1.2.840.10045.4.3.4": "ECDSA-SHA512",
    "1.3.101.112": "Ed25519",
}
_RSA_PSS = "1.2.840.113549.1.1.10"
_PSS_NAMES = {"sha256": "SHA256-RSAPSS", "sha384": "SHA384-RSAPSS", "sha512": "SHA512-RSAPSS"}
_PUBLIC_KEY_NAMES = {
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.10040.4.1": "DSA",
    "1.2.840.10045.2.1": "ECDSA",
    "1.3.101.112": "Ed25519",
}
_PRINTABLE_STRING = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '()+,-./:=?")


def hex_pairs(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def describe_certificate(der: bytes) -> dict[str, Any] | Malformed:
    """The ``tls`` JSON object for a DER certificate, or Malformed when it cannot be parsed."""
    try:
        cert = x509.load_der_x509_certificate(der)
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        serial = cert.serial_number
        described = {
            "subject": go_name_string(cert.subject),
            "issuer": go_name_string(cert.issuer),
            "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "serial_number": hex_pairs(_magnitude(serial)),
            "signature_algorithm": _signature_name(cert),
            "public_key_algorithm": _PUBLIC_KEY_NAMES.get(
                cert.public_key_algorithm_oid.dotted_string, cert.public_key_algorithm_oid.dotted_string),
            "sha1_fingerprint": hex_pairs(hashlib.sha1(der).digest()),
            "sha256_fingerprint": hex_pairs(hashlib.sha256(der).digest()),
        }
    except (ValueError, TypeError, OverflowError) as exc:
        return Malformed(f"certificate: {str(exc)[:200]}")
    described = {key: value for key, value in described.items() if value}
    described["dns_names"] = dns_names(cert)
    return described


def _magnitude(serial: int) -> bytes:
    serial = abs(serial)
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def _signature_name(cert: x509.Certificate) -> str:
    dotted = cert.signature_algorithm_oid.dotted_string
    if dotted == _RSA_PSS:
        try:
            hash_name = cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else ""
        except Exception:  # noqa: BLE001 - unsupported PSS parameters
            hash_name = ""
        return _PSS_NAMES.get(hash_name, dotted)
    return _SIGNATURE_NAMES.get(dotted, dotted)


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = extension.value.get_values_for_type(x509.DNSName)
    except (x509.ExtensionNotFound, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError, TypeError,
            UnicodeError):  # no SAN, or one that cannot be read (not DER, twice, an unknown name type)
        return []
    kept = [n for n in names if isinstance(n, str) and len(n) <= MAX_DNS_NAME and n.isascii() and n.isprintable()]
    return kept[:MAX_DNS_NAMES]


# -- Go's pkix.Name.String() --------------------------------------------------------


def go_name_string(name: x509.Name) -> str:
    """The DN as Go prints it: see the module docstring."""
    sequence: list[list[str]] = []
    attributes = list(name)
    for attribute in attributes:  # non-standard attributes first, so that they end up last
        if attribute.oid not in _GO_NAMED:
            sequence.append([f"{attribute.oid.dotted_string}=#{_value_der(attribute).hex()}"])
    for oid, label in _GO_ORDER:
        values = [a.value for a in attributes if a.oid == oid]
        if values and oid in _GO_SINGLE:
            values = values[-1:]  # Go keeps one CommonName and one SerialNumber: the last
        if values:
            sequence.append([f"{label}={_escape(str(v))}" for v in values])
    text = ",".join("+".join(rdn) for rdn in reversed(sequence))
    return text[:MAX_NAME]


def _escape(value: str) -> str:
    out = []
    last = len(value) - 1
    for index, char in enumerate(value):
        if char in ',+"\\<>;' or (char == " " and index in (0, last)) or (char == "#" and index == 0):
            out.append("\\" + char)
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            out.append("".join(f"\\{b:02x}" for b in char.encode()))
        else:
            out.append(char)
    return "".join(out)


def _value_der(attribute: x509.NameAttribute) -> bytes:
    """The value as Go re-encodes it: PrintableString when it can be one, else UTF8String."""
    value = attribute.value
    if isinstance(value, bytes):  # X500UniqueIdentifier and the like: keep the raw bytes
        return value
    data = value.encode("utf-8", "replace")
    tag = 0x13 if set(value) <= _PRINTABLE_STRING else 0x0C
    return bytes([tag]) + _der_length(len(data)) + data


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([0x80 | size]) + length.to_bytes(size, "big")
