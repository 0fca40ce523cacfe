"""Smoke tests of the cluster fixtures themselves, through the psql client only."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from support.cluster import Cluster, PsqlError, make_conninfo

PASSWORD = "s3cret pass'word"


def run_psql(cluster: Cluster, home: Path, sql: str = "select current_user", **params) -> subprocess.CompletedProcess:
    """psql over TCP with a bare environment: HOME is empty, no PG* variables."""
    params.setdefault("host", "localhost")
    params.setdefault("port", cluster.port)
    params.setdefault("dbname", "postgres")
    params.setdefault("connect_timeout", 10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["HOME"] = str(home)
    return subprocess.run(
        [str(cluster.psql_path), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", make_conninfo(**params), "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def smoke_role(tls_cluster: Cluster) -> str:
    # Roles are cluster-wide and the cluster is shared by the whole session: use our own name.
    name = "alice_smoke"
    tls_cluster.create_role(name, PASSWORD)
    yield name
    tls_cluster.drop_role(name)


@pytest.fixture(scope="module")
def plain_role(plain_cluster: Cluster) -> str:
    name = "bob_smoke"
    plain_cluster.create_role(name, PASSWORD)
    yield name
    plain_cluster.drop_role(name)


# ---------------------------------------------------------------------------- PKI


def test_certs_layout(certs):
    from cryptography import x509

    server = x509.load_pem_x509_certificate(certs.server_crt.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert stat.S_IMODE(certs.server_key.stat().st_mode) == 0o600

    crt, key = certs.client_cert("carol_smoke", passphrase="pw")
    assert certs.client_cert("carol_smoke", passphrase="pw") == (crt, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    other_crt, _ = certs.client_cert("carol_smoke", signer="other")
    assert other_crt != crt
    issuer = x509.load_pem_x509_certificate(other_crt.read_bytes()).issuer
    assert issuer == x509.load_pem_x509_certificate(certs.other_ca_crt.read_bytes()).subject


# ---------------------------------------------------------------------------- TLS cluster


def test_tls_cluster_basics(tls_cluster):
    assert tls_cluster.is_running()
    assert tls_cluster.host_port == ("localhost", tls_cluster.port)
    assert tls_cluster.psql("show ssl") == "on"
    assert tls_cluster.psql("select count(*) from pg_database where datname = 'certdb'") == "1"
    assert tls_cluster.superuser_dsn("a b") == (
        f"postgresql://postgres@/a%20b?host={str(tls_cluster.socket_dir).replace('/', '%2F')}"
        f"&port={tls_cluster.port}"
    )
    assert len(str(tls_cluster.socket_dir / f".s.PGSQL.{tls_cluster.port}")) < 100
    with pytest.raises(PsqlError, match="division by zero"):
        tls_cluster.psql("select 1/0")


def test_password_over_verify_full(tls_cluster, certs, smoke_role, home):
    result = run_psql(
        tls_cluster, home,
        "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()",
        user=smoke_role, password=PASSWORD, sslmode="verify-full", sslrootcert=certs.ca_crt,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{smoke_role}|t"


def test_verify_full_by_ip_fails_on_host_name(tls_cluster, certs, smoke_role, home):
    result = run_psql(
        tls_cluster, home, host="127.0.0.1",
        user=smoke_role, password=PASSWORD, sslmode="verify-full", sslrootcert=certs.ca_crt,
    )
    assert result.returncode != 0
    assert "does not match host name" in result.stderr


def test_other_ca_fails_verification(tls_cluster, certs, smoke_role, home):
    result = run_psql(
        tls_cluster, home,
        user=smoke_role, password=PASSWORD, sslmode="verify-ca", sslrootcert=certs.other_ca_crt,
    )
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr


def test_wrong_password_rejected(tls_cluster, certs, smoke_role, home):
    result = run_psql(
        tls_cluster, home,
        user=smoke_role, password="nope", sslmode="verify-full", sslrootcert=certs.ca_crt,
    )
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr


def test_plaintext_rejected(tls_cluster, smoke_role, home):
    result = run_psql(tls_cluster, home, user=smoke_role, password=PASSWORD, sslmode="disable")
    assert result.returncode != 0
    # The explicit hostnossl reject row, not a missing row.
    assert "pg_hba.conf rejects connection" in result.stderr
    assert "no encryption" in result.stderr


def test_crl_revoking_server_cert(tls_cluster, certs, smoke_role, home):
    common = dict(user=smoke_role, password=PASSWORD, sslmode="verify-full", sslrootcert=certs.ca_crt)
    ok = run_psql(tls_cluster, home, sslcrl=certs.empty_crl(), **common)
    assert ok.returncode == 0, ok.stderr
    revoked = run_psql(tls_cluster, home, sslcrl=certs.revoke(certs.server_crt), **common)
    # libpq only says "certificate verify failed"; the empty-CRL run above shows
    # that the revocation is what makes the difference.
    assert revoked.returncode != 0
    assert "certificate verify failed" in revoked.stderr


def test_client_certificate_auth(tls_cluster, certs, home):
    role = "dave_smoke"
    tls_cluster.create_role(role)
    try:
        crt, key = certs.client_cert(role)
        result = run_psql(
            tls_cluster, home, dbname="certdb", user=role,
            sslmode="verify-full", sslrootcert=certs.ca_crt, sslcert=crt, sslkey=key,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == role

        # An encrypted key, unlocked with sslpassword.
        crt, key = certs.client_cert(role, passphrase="hunter2")
        result = run_psql(
            tls_cluster, home, dbname="certdb", user=role, sslpassword="hunter2",
            sslmode="verify-full", sslrootcert=certs.ca_crt, sslcert=crt, sslkey=key,
        )
        assert result.returncode == 0, result.stderr

        # A certificate from the unrelated CA is refused by the server.
        crt, key = certs.client_cert(role, signer="other")
        result = run_psql(
            tls_cluster, home, dbname="certdb", user=role,
            sslmode="verify-full", sslrootcert=certs.ca_crt, sslcert=crt, sslkey=key,
        )
        assert result.returncode != 0

        # No certificate at all: certdb demands one.
        result = run_psql(
            tls_cluster, home, dbname="certdb", user=role,
            sslmode="verify-full", sslrootcert=certs.ca_crt,
        )
        assert result.returncode != 0
        assert "certificate" in result.stderr
    finally:
        tls_cluster.drop_role(role)


def test_fresh_database(tls_cluster, fresh_database):
    name = fresh_database("smoke")
    assert name.startswith("smoke_")
    assert tls_cluster.psql("select current_database()", dbname=name) == name
    assert fresh_database() != fresh_database()


# ---------------------------------------------------------------------------- plain cluster


def test_plain_cluster_accepts_disable(plain_cluster, plain_role, home):
    result = run_psql(plain_cluster, home, "show ssl", user=plain_role, password=PASSWORD, sslmode="disable")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "off"


def test_plain_cluster_rejects_require(plain_cluster, plain_role, home):
    result = run_psql(plain_cluster, home, user=plain_role, password=PASSWORD, sslmode="require")
    assert result.returncode != 0
    assert "server does not support SSL" in result.stderr


def test_plain_cluster_restart(plain_cluster):
    port = plain_cluster.port
    plain_cluster.restart()
    assert plain_cluster.is_running()
    assert plain_cluster.port == port
    assert plain_cluster.psql("select 1") == "1"


def test_home_fixture(home, monkeypatch):
    assert os.environ["HOME"] == str(home)
    assert not list(home.iterdir())
    assert not [k for k in os.environ if k.startswith(("PG", "SITUATION_"))]
