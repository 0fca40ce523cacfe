"""libpq's host-name rules, applied to certificates as ssl.getpeercert() reports them."""

import pytest

from situation.connection.tls import peer_name_matches


def cert(cn=None, dns=(), ips=()):
    subject = ((("commonName", cn),),) if cn else ()
    sans = tuple(("DNS", d) for d in dns) + tuple(("IP Address", i) for i in ips)
    return {"subject": subject, "subjectAltName": sans} if sans else {"subject": subject}


@pytest.mark.parametrize(
    "host, certificate, expected",
    [
        ("localhost", cert("x", dns=["localhost"]), True),
        ("LocalHost", cert("x", dns=["localhost"]), True),
        ("db.example.com", cert("db.example.com", dns=["other.example.com"]), False),  # CN ignored: a DNS SAN exists
        ("db.example.com", cert("db.example.com"), True),  # no SAN: CN used
        ("db.example.com", cert(dns=["*.example.com"]), True),
        ("a.db.example.com", cert(dns=["*.example.com"]), False),  # a wildcard never spans a dot
        ("example.com", cert(dns=["*.example.com"]), False),
        ("db.example.com", cert(dns=["d*.example.com"]), False),  # partial wildcards are not supported
        ("127.0.0.1", cert("localhost", dns=["localhost"]), False),
        ("127.0.0.1", cert("127.0.0.1", dns=["localhost"]), True),  # libpq falls back to the CN: no IP SAN
        ("127.0.0.1", cert("127.0.0.1", dns=["localhost"], ips=["10.0.0.1"]), False),
        ("127.0.0.1", cert("x", ips=["127.0.0.1"]), True),
        ("127.0.0.1", cert("x", dns=["127.0.0.1"]), True),  # libpq compares dNSName with an address too
        ("::1", cert("x", ips=["0:0:0:0:0:0:0:1"]), True),
        ("evil.com", cert("evil.com\x00.example.com"), False),
    ],
)
def test_peer_name_rules(host, certificate, expected):
    assert peer_name_matches(host, certificate) is expected
