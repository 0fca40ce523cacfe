"""The tls and ja4 modules against TLS servers in a namespace lab (DEVELOPERS.md, rule 1), on both backends.

The lab (support/lab.py) has four hosts, each serving a certificate the test
made: DNS names (RSA); IP addresses only (EC); a NUL byte and a 2,000-character
subject; and TLS 1.0 only (when this OpenSSL can serve it). fingerprint,
host-basic, host-network and ping record the host and its neighbours; the
endpoints are then seeded as tcp-scan leaves them (machine-less NIC, protocol
``tcp``), and tls then ja4 run behind the guard. Nothing is sent from the
initial namespace: the servers run in their own namespaces, and the openssl
commands the results are checked against only read certificate files.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from support.cluster import clean_environ
from support.lab import Lab, make_hosts, nft_available
from support.neighbour_table import database  # noqa: F401  (fixture)
from support.netns import netns_available
from support.tls_servers import make_certificate, serve, tls10_supported

from situation.net.ja4 import ja4x

LAN = "198.51.100.0/24"
DISCOVER = ("fingerprint", "host-basic", "host-network", "ping")
LONG_ORG = "o" * 2000
NUL_NAME = "evil\x00.example.com"


@pytest.fixture
def tls_lab(tmp_path):
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    if not nft_available():
        pytest.skip("nft is missing (apt-get install nftables)")
    certs = {
        "dns": make_certificate(tmp_path, "dns", rsa=True, dns_names=("www.example.test", "example.test"),
                                subject=[(NameOID.COUNTRY_NAME, "US"), (NameOID.ORGANIZATION_NAME, "Example, Inc."),
                                         (NameOID.COMMON_NAME, "www.example.test")]),
        "ip": make_certificate(tmp_path, "ip", ip_addresses=("198.51.100.11",)),
        "hostile": make_certificate(tmp_path, "hostile", dns_names=("ok.example.test",),
                                    subject=[(NameOID.ORGANIZATION_NAME, LONG_ORG), (NameOID.COMMON_NAME, NUL_NAME)]),
        "tls10": make_certificate(tmp_path, "tls10", rsa=True, dns_names=("old.example.test",)),
    }
    legacy = tls10_supported(*certs["tls10"])
    lab = Lab(hosts=make_hosts(LAN, 4 if legacy else 3)).create()
    servers = []
    try:
        for host, kind in zip(lab.hosts, ("dns", "ip", "hostile", "tls10")):
            servers.append(serve(host.namespace, *certs[kind], (443, 8443), tls10_only=kind == "tls10"))
        yield lab, certs, legacy
    finally:
        for server in servers:
            server.kill()
            server.wait()
        lab.destroy()


def env() -> dict[str, str]:
    return clean_environ(PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def run_modules(lab: Lab, db: str, *modules: str, extra: tuple[str, ...] = ()) -> tuple[dict, str]:
    result = lab.run_module("--db", db, "--host-lookup", *extra, *modules, env=env())
    assert result.returncode == 0, result.stdout + result.stderr
    *logs, report = result.stdout.splitlines()
    return json.loads(report), "\n".join(logs) + result.stderr


def seed_endpoints(db, lab: Lab, ports=(443, 993)) -> None:
    """What tcp-scan leaves: an endpoint per open port on each neighbour NIC (993 is closed everywhere)."""
    prefix = db.table_prefix
    rows = db.query(f"SELECT id, {db.ip_json} FROM {prefix}network_interfaces WHERE machine_id IS NULL")
    nic_of = {json.loads(ips)[0]: int(nic) for nic, ips in rows}
    values = ", ".join(f"({port}, 'tcp', '{host.ip}', {nic_of[host.ip]})" for host in lab.hosts for port in ports)
    db.execute(f"INSERT INTO {prefix}application_endpoints (port, protocol, addr, network_interface_id) "
               f"VALUES {values}, (8443, 'tcp', '{lab.hosts[0].ip}', {nic_of[lab.hosts[0].ip]})")


def endpoints(db) -> dict[tuple[str, int], tuple[dict | None, dict | None]]:
    rows = db.query(f"SELECT addr, port, tls::text, fingerprints::text FROM {db.table_prefix}application_endpoints"
                    if db.table_prefix else "SELECT addr, port, tls, fingerprints FROM application_endpoints")
    return {(addr, int(port)): (json.loads(tls) if tls else None, json.loads(fp) if fp else None)
            for addr, port, tls, fp in rows}


def snapshot(db) -> list[tuple]:
    return db.query(f"SELECT id, tls::text, fingerprints::text, updated_at FROM {db.table_prefix}application_endpoints "
                    "ORDER BY id" if db.table_prefix else
                    "SELECT id, tls, fingerprints, updated_at FROM application_endpoints ORDER BY id")


def openssl_view(crt: Path) -> dict:
    """What `openssl x509` says about a certificate file, in the tls JSON's formats."""
    def run(*args: str) -> str:
        return subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    serial = run("-serial").split("=", 1)[1].lower()
    serial = serial if len(serial) % 2 == 0 else "0" + serial
    text = run("-text")
    alternatives = run("-ext", "subjectAltName")
    return {
        "serial_number": ":".join(re.findall("..", serial)),
        "sha1_fingerprint": run("-fingerprint", "-sha1").split("=", 1)[1].lower(),
        "sha256_fingerprint": run("-fingerprint", "-sha256").split("=", 1)[1].lower(),
        "subject": run("-subject", "-nameopt", "RFC2253").split("=", 1)[1],
        "signature_algorithm": re.search(r"Signature Algorithm: (\S+)", text).group(1),
        "public_key_algorithm": re.search(r"Public Key Algorithm: (\S+)", text).group(1),
        "dns_names": re.findall(r"DNS:([^,\s]+)", alternatives),
        "dates": run("-dates"),
    }


GO_SIGNATURE = {"sha256WithRSAEncryption": "SHA256-RSA", "ecdsa-with-SHA256": "ECDSA-SHA256"}
GO_KEY = {"rsaEncryption": "RSA", "id-ecPublicKey": "ECDSA"}


def _openssl_date(text: str) -> str:
    import datetime as dt
    return dt.datetime.strptime(text, "%b %d %H:%M:%S %Y GMT").strftime("%Y-%m-%dT%H:%M:%SZ")


def assert_matches_openssl(tls: dict, crt: Path) -> None:
    view = openssl_view(crt)
    for key in ("serial_number", "sha1_fingerprint", "sha256_fingerprint", "dns_names"):
        assert tls[key] == view[key], key
    assert tls["signature_algorithm"] == GO_SIGNATURE[view["signature_algorithm"]]
    assert tls["public_key_algorithm"] == GO_KEY[view["public_key_algorithm"]]
    before, after = (line.split("=", 1)[1] for line in view["dates"].splitlines())
    assert (tls["not_before"], tls["not_after"]) == (_openssl_date(before), _openssl_date(after))


def test_certificates_and_fingerprints_of_lab_servers(tls_lab, database, tmp_path):
    lab, certs, legacy = tls_lab
    run_modules(lab, database.dsn, *DISCOVER)
    seed_endpoints(database, lab)
    excluded = lab.hosts[1]
    probes = lab.probes_received(excluded)
    report, _ = run_modules(lab, database.dsn, "tls", "ja4", extra=("--exclude", f"{excluded.ip}/32"))
    assert lab.probes_received(excluded) == probes  # not one packet to an excluded host
    assert endpoints(database)[(excluded.ip, 443)] == (None, None)
    assert endpoints(database)[(lab.hosts[0].ip, 443)][0] is not None
    report, logs = run_modules(lab, database.dsn, "tls", "ja4")
    assert report["skipped"] == {}
    found = endpoints(database)
    dns_host, ip_host, hostile_host = (host.ip for host in lab.hosts[:3])

    tls, fingerprints = found[(dns_host, 443)]
    assert_matches_openssl(tls, certs["dns"][0])
    assert tls["subject"] == tls["issuer"] == openssl_view(certs["dns"][0])["subject"] == \
        r"CN=www.example.test,O=Example\, Inc.,C=US"
    assert found[(dns_host, 8443)] == (None, None)  # not a TLS port by default
    der = _der(certs["dns"][0])
    assert fingerprints["ja4"]["ja4x"] == ja4x(der)
    assert re.fullmatch(r"t1[32][di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}", fingerprints["ja4"]["ja4"])
    assert re.fullmatch(r"t1[32]\d{2}[0-9a-z]{2}_[0-9a-f]{4}_[0-9a-f]{12}", fingerprints["ja4"]["ja4s"])

    tls, fingerprints = found[(ip_host, 443)]  # IP-only: stored (deviation from the original, documented)
    assert_matches_openssl(tls, certs["ip"][0])
    assert tls["dns_names"] == [] and tls["subject"] == "CN=ip"
    assert fingerprints["ja4"]["ja4x"] == ja4x(_der(certs["ip"][0]))

    tls, _ = found[(hostile_host, 443)]
    assert_matches_openssl(tls, certs["hostile"][0])
    assert tls["subject"].startswith(r"CN=evil\00.example.com,O=oooo") and len(tls["subject"]) == 1024
    assert "\x00" not in json.dumps(tls)

    if legacy:
        tls, fingerprints = found[(lab.hosts[3].ip, 443)]
        assert_matches_openssl(tls, certs["tls10"][0])
        assert fingerprints["ja4"]["ja4s"].startswith("t10")  # FoxIO's version code for TLS 1.0
        assert "legacy=1" in logs

    assert all(found[(host.ip, 993)] == (None, None) for host in lab.hosts)  # closed port: nothing
    before = snapshot(database)
    report, _ = run_modules(lab, database.dsn, "tls", "ja4")
    assert report["rows"] == {"tls": 0, "ja4": 0}
    assert snapshot(database) == before  # second run: not one row rewritten

    report, _ = run_modules(lab, database.dsn, "tls", extra=("--option", "tls.ports=8000-8999"))
    assert report["rows"] == {"tls": 1}
    assert endpoints(database)[(dns_host, 8443)][0] == found[(dns_host, 443)][0]


def _der(crt: Path) -> bytes:
    import ssl
    return ssl.PEM_cert_to_DER_cert(crt.read_text())
