"""The tls JSON of a certificate (Go's formats, bounded) and the record reassembly, without any network."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.tls_servers import broken_certificate

from situation.errors import ConfigError
from situation.config import convert, module_settings
from situation.module import REGISTRY
from situation.modules.tls import TLS_PORTS, reachable_targets
from situation.net.certificate import _magnitude, describe_certificate, go_name_string, hex_pairs
from situation.net.ja4 import Malformed
from situation.net.tls_capture import first_handshake_message


def _name(*pairs) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in pairs])


def _certificate(subject: x509.Name, *, serial=1, alternatives=()) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(serial)
               .not_valid_before(dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))
               .not_valid_after(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)))
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alternatives)), critical=False)
    return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def test_go_dn_order_multi_values_unknown_attributes_and_escaping():
    name = _name((NameOID.EMAIL_ADDRESS, "x@y.z"), (NameOID.COUNTRY_NAME, "US"), (NameOID.COMMON_NAME, "first"),
                 (NameOID.ORGANIZATIONAL_UNIT_NAME, "a"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "b"),
                 (NameOID.ORGANIZATION_NAME, ' #x, "y" <z>; '), (NameOID.COMMON_NAME, "last"),
                 (NameOID.DOMAIN_COMPONENT, "example"))
    assert go_name_string(name) == (
        r'CN=last,OU=a+OU=b,O=\ #x\, \"y\" \<z\>\;\ ,C=US,'
        "0.9.2342.19200300.100.1.25=#13076578616d706c65,1.2.840.113549.1.9.1=#0c057840792e7a")


def test_certificate_json_shape_and_bounds():
    subject = _name((NameOID.ORGANIZATION_NAME, "o" * 2000), (NameOID.COMMON_NAME, "a\x00b\x1bc"))
    names = [x509.DNSName("ok.example"), x509.DNSName("bad\x00.example"), x509.DNSName("x" * 300),
             x509.IPAddress(__import__("ipaddress").ip_address("192.0.2.1"))]
    described = describe_certificate(_certificate(subject, serial=0x01FF, alternatives=names))
    assert described["subject"].startswith(r"CN=a\00b\1bc,O=ooo") and len(described["subject"]) == 1024
    assert described["serial_number"] == "01:ff"
    assert described["signature_algorithm"] == "ECDSA-SHA384" and described["public_key_algorithm"] == "ECDSA"
    assert (described["not_before"], described["not_after"]) == ("2025-01-02T03:04:05Z", "2026-01-02T03:04:05Z")
    assert described["dns_names"] == ["ok.example"]
    assert len(described["sha256_fingerprint"]) == 95 and described["sha1_fingerprint"].count(":") == 19
    assert list(described) == ["subject", "issuer", "not_before", "not_after", "serial_number", "signature_algorithm",
                               "public_key_algorithm", "sha1_fingerprint", "sha256_fingerprint", "dns_names"]


def test_empty_subject_is_omitted_and_zero_serial_written():
    described = describe_certificate(_certificate(_name(), serial=5))
    assert "subject" not in described and "issuer" not in described
    assert described["serial_number"] == "05" and described["dns_names"] == []
    assert hex_pairs(_magnitude(0)) == "00" and hex_pairs(_magnitude(-258)) == "01:02"  # Go crashes on 0


@pytest.mark.parametrize("duplicated", [False, True], ids=["SAN not DER", "SAN twice"])
def test_unreadable_extensions_cost_the_dns_names_only(tmp_path, duplicated):
    crt, _ = broken_certificate(tmp_path, "broken", duplicated=duplicated)
    described = describe_certificate(ssl.PEM_cert_to_DER_cert(crt.read_text()))
    assert described["dns_names"] == [] and described["subject"] == "CN=broken"
    assert described["sha256_fingerprint"] and described["not_after"]


def test_garbage_is_malformed():
    assert isinstance(describe_certificate(b"\x30\x03\x02\x01\x01"), Malformed)
    assert isinstance(describe_certificate(b""), Malformed)


def test_handshake_reassembled_from_records():
    message = b"\x02\x00\x00\x06" + b"abcdef"
    stream = b"\x16\x03\x03\x00\x04" + message[:4] + b"\x16\x03\x03\x00\x06" + message[4:] + b"\x14\x03\x03\x00\x01\x01"
    assert first_handshake_message(stream, 0x02) == message
    assert first_handshake_message(stream, 0x01) is None
    assert first_handshake_message(stream[:12], 0x02) is None  # cut short
    assert first_handshake_message(b"\x15\x03\x03\x00\x02\x02\x28", 0x02) is None  # an alert
    assert first_handshake_message(b"", 0x02) is None


def test_ports_option_is_checked_at_start():
    [setting] = [s for s in module_settings(REGISTRY) if s.key == "modules.tls.ports"]
    assert convert(setting, None) == ",".join(map(str, TLS_PORTS))
    assert convert(setting, "443, 8443,9000-9002") == "443, 8443,9000-9002"
    for bad in ("https", "0", "70000", "9-3", ""):
        with pytest.raises(ConfigError, match="^--tls-ports: "):
            convert(setting, bad)


def test_targets_grouped_and_filtered():
    rows = [{"id": 1, "addr": "192.0.2.1", "port": 443}, {"id": 2, "addr": "192.0.2.1", "port": 443},
            {"id": 3, "addr": "fe80::1", "port": 443}, {"id": 4, "addr": "", "port": 443},
            {"id": 5, "addr": "192.0.2.9", "port": 443}]
    targets = reachable_targets(rows, lambda address: str(address) != "192.0.2.9")
    assert targets.endpoints == {("192.0.2.1", 443): [1, 2]}
    assert dict(targets.skipped) == {"unroutable": 1, "unparsable": 1, "excluded": 1}
