"""JA4, JA4S and JA4X against every reference vector (spec §4.21.1), and hostile input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from situation.net.ja4 import Malformed, alpn_code, ja4, ja4s, ja4x

LOCAL = Path(__file__).parent / "fixtures" / "ja4_vectors.json"


def _vectors() -> dict:
    return json.loads(LOCAL.read_text())


def _cases(kind: str, field: str):
    return [pytest.param(bytes.fromhex(v[field]), v["fingerprint"], id=f"{v['file']}#{v['index']}")
            for v in _vectors()[kind]]


def test_vector_counts():
    assert {k: len(_vectors()[k]) for k in ("ja4", "ja4s", "ja4x")} == {"ja4": 156, "ja4s": 91, "ja4x": 22}


@pytest.mark.parametrize(("hello", "expected"), _cases("ja4", "client_hello_hex"))
def test_ja4_vector(hello, expected):
    assert ja4(hello) == expected
    assert ja4(bytes.fromhex("160301") + len(hello).to_bytes(2, "big") + hello) == expected  # with a record header


@pytest.mark.parametrize(("hello", "expected"), _cases("ja4s", "server_hello_hex"))
def test_ja4s_vector(hello, expected):
    assert ja4s(hello) == expected


@pytest.mark.parametrize(("der", "expected"), _cases("ja4x", "certificate_der_hex"))
def test_ja4x_vector(der, expected):
    assert ja4x(der) == expected


def _client_hello(version=0x0303, ciphers=(0x1301,), extensions=b"") -> bytes:
    body = (version.to_bytes(2, "big") + bytes(32) + b"\x00"
            + (2 * len(ciphers)).to_bytes(2, "big") + b"".join(c.to_bytes(2, "big") for c in ciphers)
            + b"\x01\x00" + len(extensions).to_bytes(2, "big") + extensions)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def test_foxio_conventions_outside_the_vectors():
    tls10 = _client_hello(version=0x0301)
    assert ja4(tls10).startswith("t10i0100")  # FoxIO's version code; the Go agent writes 12
    assert ja4(_client_hello(version=0x0302)).startswith("t11")
    empty = _client_hello(ciphers=())
    assert ja4(empty) == "t12i000000_000000000000_000000000000"  # FoxIO's zeros for empty lists
    no_signatures = _client_hello(extensions=_extension(0x000A, b"\x00\x02\x00\x17"))
    assert ja4(no_signatures).endswith("_" + hashlib.sha256(b"000a").hexdigest()[:12])  # no trailing "_"


def test_alpn_codes():
    assert alpn_code(b"h2") == "h2"
    assert alpn_code(b"http/1.1") == "h1"
    assert alpn_code(b"h") == "hh"
    assert alpn_code(b"") == "00" and alpn_code(None) == "00"
    assert alpn_code(bytes([0xAB])) == "ab"
    assert alpn_code(bytes([0x30, 0xAB])) == "3b"
    assert alpn_code(bytes([0x30, 0xAB, 0xCD, 0x31])) == "01"


def test_ja4s_extension_count_is_decimal_and_capped():
    extensions = b"".join(_extension(0xFF00 + i, b"") for i in range(12))
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00" + len(extensions).to_bytes(2, "big") + extensions
    hello = b"\x02" + len(body).to_bytes(3, "big") + body
    assert ja4s(hello).startswith("t121200_1301_")  # FoxIO: 12, the Go agent: 0c


def test_truncated_and_hostile_input_is_a_value():
    samples = [_vectors()[kind][0][field] for kind, field in
               (("ja4", "client_hello_hex"), ("ja4s", "server_hello_hex"), ("ja4x", "certificate_der_hex"))]
    functions = (ja4, ja4s, ja4x)
    generator = random.Random(7)
    for function, sample in zip(functions, samples):
        data = bytes.fromhex(sample)
        for cut in range(0, len(data), max(1, len(data) // 60)):
            result = function(data[:cut])
            assert isinstance(result, (str, Malformed))
        for _ in range(300):
            mutated = bytearray(data)
            for _ in range(generator.randint(1, 8)):
                mutated[generator.randrange(len(mutated))] = generator.randrange(256)
            assert isinstance(function(bytes(mutated)), (str, Malformed))
        assert isinstance(function(bytes(generator.randrange(256) for _ in range(2000))), (str, Malformed))
    assert ja4(b"") == Malformed(ja4(b"").reason) and not ja4(b"")
    assert not ja4s(_client_hello())  # a ClientHello is not a ServerHello
    assert not ja4x(b"\x30\x84\xff\xff\xff\xff")  # a length far past the end
