"""JA4 (ClientHello), JA4S (ServerHello) and JA4X (certificate) fingerprints, as pure functions over bytes.

Inputs are untrusted (a hostile server chooses its ServerHello and its
certificate), so every parser reads through bounds-checked cursors and each
public function returns either the fingerprint string or a :class:`Malformed`
value saying why not; no exception escapes.

Conventions: FoxIO's (technical_details/JA4.md, JA4S.md, JA4X.md) where the
Go agent deviates from them (spec §4.21.1):

- the version is the highest ``supported_versions`` entry, else the hello's
  legacy version, mapped ``13``/``12``/``11``/``10``/``s3``/``s2``/``d1``/``d2``/``d3``
  (unknown: ``00``); the Go agent maps every non-1.3 version to ``12``;
- counts are two decimal digits capped at ``99`` (the Go agent writes the JA4S
  extension count in hex and never caps);
- an empty list hashes to ``000000000000`` (the Go agent hashes the empty
  string); JA4 part c drops the ``_`` when there are no signature algorithms;
- the ALPN code is the first and last character of the first ALPN value; when
  either byte is not an ASCII letter or digit, the first and last characters of
  the value's hex form instead (a one-byte ``h`` gives ``hh``; the Go agent
  gives ``00``).

All 156 JA4, 91 JA4S and 22 JA4X reference vectors pass under these rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

EMPTY_HASH = "000000000000"
HANDSHAKE_RECORD = 0x16
CLIENT_HELLO, SERVER_HELLO = 0x01, 0x02
EXT_SNI, EXT_ALPN, EXT_SIGNATURE_ALGORITHMS, EXT_SUPPORTED_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B

_VERSIONS = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
    0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
}


@dataclass(frozen=True)
class Malformed:
    """Why no fingerprint could be computed: a value, never raised."""

    reason: str

    def __bool__(self) -> bool:
        return False


class _Short(Exception):
    """Internal: the input ended (or a length pointed) past its end."""


class _Cursor:
    """Reads big-endian fields from ``data[start:end]``; running past ``end`` raises _Short."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None):
        self.data, self.at = data, start
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.at

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > self.end:
            raise _Short(f"needs {size} bytes at offset {self.at}, {max(self.end - self.at, 0)} left")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sub(self, length_size: int) -> _Cursor:
        """A cursor over the next length-prefixed field, skipped in this one."""
        length = self.number(length_size)
        start = self.at
        self.take(length)
        return _Cursor(self.data, start, start + length)


def is_grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _hex4(values: list[int]) -> list[str]:
    return [f"{v:04x}" for v in values]


def _hash12(items: list[str]) -> str:
    """First 12 hex digits of SHA-256 of the comma-joined items; zeros for an empty list."""
    if not items:
        return EMPTY_HASH
    return hashlib.sha256(",".join(items).encode()).hexdigest()[:12]


def _count(n: int) -> str:
    return f"{min(n, 99):02d}"


def _version_code(version: int) -> str:
    return _VERSIONS.get(version, "00")


def alpn_code(value: bytes | None) -> str:
    """Two characters for the first ALPN protocol name (FoxIO's rule)."""
    if not value:
        return "00"
    first, last = value[0], value[-1]
    if _alphanumeric(first) and _alphanumeric(last):
        return chr(first) + chr(last)
    text = value.hex()
    return text[0] + text[-1]


def _alphanumeric(byte: int) -> bool:
    return 0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A


def _first_alpn(body: _Cursor) -> bytes:
    names = body.sub(2)
    if names.remaining() == 0:
        return b""
    name = names.sub(1)
    return name.take(name.remaining())


def _handshake_body(data: bytes, expected: int) -> _Cursor:
    """The body of the handshake message at the start of ``data`` (record header skipped if present)."""
    reader = _Cursor(data)
    if data[:1] == bytes([HANDSHAKE_RECORD]):
        reader.take(5)
    kind = reader.number(1)
    if kind != expected:
        raise _Short(f"handshake type {kind:#04x}, expected {expected:#04x}")
    length = reader.number(3)
    start = reader.at
    # A message cut short by the capture is still read as far as it goes, but never past the data.
    return _Cursor(data, start, min(start + length, len(data)))


def _hello(data: bytes, expected: int) -> tuple[_Cursor, int]:
    """A hello's legacy version, and a cursor past its random and session id."""
    reader = _handshake_body(data, expected)
    legacy = reader.number(2)
    reader.take(32)
    reader.sub(1)  # session id
    return reader, legacy


@dataclass
class _Extensions:
    types: list[int]
    sni: bool = False
    alpn: bytes | None = None
    signature_algorithms: list[int] | None = None
    supported_versions: list[int] | None = None


def _walk_extensions(reader: _Cursor, *, client: bool) -> _Extensions:
    found = _Extensions(types=[])
    if reader.remaining() < 2:
        return found
    block = reader.sub(2)
    while block.remaining() >= 4:
        kind = block.number(2)
        body = block.sub(2)
        found.types.append(kind)
        if kind == EXT_SNI:
            found.sni = True
        elif kind == EXT_ALPN and found.alpn is None:
            found.alpn = _first_alpn(body)
        elif kind == EXT_SIGNATURE_ALGORITHMS and client:
            algorithms = body.sub(2)
            found.signature_algorithms = [algorithms.number(2) for _ in range(algorithms.remaining() // 2)]
        elif kind == EXT_SUPPORTED_VERSIONS:
            if client:
                versions = body.sub(1)
                found.supported_versions = [versions.number(2) for _ in range(versions.remaining() // 2)]
            else:
                found.supported_versions = [body.number(2)]
    return found


def _negotiated_version(legacy: int, extensions: _Extensions) -> int:
    offered = [v for v in extensions.supported_versions or () if not is_grease(v)]
    return max(offered) if offered else legacy


def ja4(client_hello: bytes, transport: str = "t") -> str | Malformed:
    """JA4 of a ClientHello (handshake message, optionally with its record header)."""
    try:
        reader, legacy = _hello(client_hello, CLIENT_HELLO)
        suites = reader.sub(2)
        ciphers = [suites.number(2) for _ in range(suites.remaining() // 2)]
        reader.sub(1)  # compression methods
        extensions = _walk_extensions(reader, client=True)
    except _Short as short:
        return Malformed(f"ClientHello: {short}")
    ciphers = [c for c in ciphers if not is_grease(c)]
    types = [t for t in extensions.types if not is_grease(t)]
    version = _version_code(_negotiated_version(legacy, extensions))
    part_a = (f"{transport}{version}{'d' if extensions.sni else 'i'}"
              f"{_count(len(ciphers))}{_count(len(types))}{alpn_code(extensions.alpn)}")
    hashed = sorted(t for t in types if t not in (EXT_SNI, EXT_ALPN))
    algorithms = [a for a in extensions.signature_algorithms or () if not is_grease(a)]
    return f"{part_a}_{_hash12(_hex4(sorted(ciphers)))}_{_extensions_hash(hashed, algorithms)}"


def _extensions_hash(extensions: list[int], algorithms: list[int]) -> str:
    if not extensions:
        return EMPTY_HASH
    text = ",".join(_hex4(extensions))
    if algorithms:
        text += "_" + ",".join(_hex4(algorithms))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ja4s(server_hello: bytes, transport: str = "t") -> str | Malformed:
    """JA4S of a ServerHello (handshake message, optionally with its record header)."""
    try:
        reader, legacy = _hello(server_hello, SERVER_HELLO)
        cipher = reader.number(2)
        reader.take(1)  # compression method
        extensions = _walk_extensions(reader, client=False)
    except _Short as short:
        return Malformed(f"ServerHello: {short}")
    version = _version_code(_negotiated_version(legacy, extensions))
    part_a = f"{transport}{version}{_count(len(extensions.types))}{alpn_code(extensions.alpn)}"
    return f"{part_a}_{cipher:04x}_{_hash12(_hex4(extensions.types))}"


# -- JA4X: a minimal DER walk over the certificate -----------------------------------

_SEQUENCE, _SET, _OID = 0x30, 0x31, 0x06
_VERSION_TAG, _EXTENSIONS_TAG = 0xA0, 0xA3


def _der_element(reader: _Cursor) -> tuple[int, _Cursor]:
    """The next TLV: its tag and a cursor over its value (definite lengths only, as DER requires)."""
    tag = reader.number(1)
    if tag & 0x1F == 0x1F:
        raise _Short("multi-byte DER tags are not used in certificates")
    length = reader.number(1)
    if length & 0x80:
        size = length & 0x7F
        if size == 0 or size > 4:
            raise _Short("indefinite or oversized DER length")
        length = reader.number(size)
    start = reader.at
    reader.take(length)
    return tag, _Cursor(reader.data, start, start + length)


def _expect(reader: _Cursor, tag: int, what: str) -> _Cursor:
    found, value = _der_element(reader)
    if found != tag:
        raise _Short(f"{what}: DER tag {found:#04x}, expected {tag:#04x}")
    return value


def _name_oids(name: _Cursor) -> list[str]:
    """Attribute type OIDs of every RDN of a Name, in DER order, as hex of their content bytes."""
    oids = []
    while name.remaining():
        rdn = _expect(name, _SET, "RDN")
        while rdn.remaining():
            attribute = _expect(rdn, _SEQUENCE, "attribute")
            oids.append(_content_hex(_expect(attribute, _OID, "attribute type")))
    return oids


def _extension_oids(tbs: _Cursor) -> list[str]:
    """Extension OIDs in certificate order (none before X.509 v3)."""
    while tbs.remaining():
        tag, value = _der_element(tbs)
        if tag == _EXTENSIONS_TAG:
            extensions = _expect(value, _SEQUENCE, "extensions")
            oids = []
            while extensions.remaining():
                extension = _expect(extensions, _SEQUENCE, "extension")
                oids.append(_content_hex(_expect(extension, _OID, "extension id")))
            return oids
    return []


def _content_hex(cursor: _Cursor) -> str:
    return cursor.take(cursor.remaining()).hex()


def ja4x(certificate_der: bytes) -> str | Malformed:
    """JA4X of a DER certificate: issuer, subject and extension OIDs, each hashed in DER order."""
    try:
        certificate = _expect(_Cursor(certificate_der), _SEQUENCE, "certificate")
        tbs = _expect(certificate, _SEQUENCE, "tbsCertificate")
        if tbs.data[tbs.at : tbs.at + 1] == bytes([_VERSION_TAG]):
            _der_element(tbs)
        _der_element(tbs)  # serial number
        _expect(tbs, _SEQUENCE, "signature algorithm")
        issuer = _name_oids(_expect(tbs, _SEQUENCE, "issuer"))
        _expect(tbs, _SEQUENCE, "validity")
        subject = _name_oids(_expect(tbs, _SEQUENCE, "subject"))
        _expect(tbs, _SEQUENCE, "subject public key info")
        extensions = _extension_oids(tbs)
    except _Short as short:
        return Malformed(f"certificate: {short}")
    return "_".join(_hash12(oids) for oids in (issuer, subject, extensions))
