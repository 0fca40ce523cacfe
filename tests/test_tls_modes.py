"""Every sslmode against a TLS-only server and a server without TLS, compared with psql.

Each case connects with situation's own code (DSN → SSLContext → asyncpg) and,
where psql is installed, with psql for the same DSN and environment: both must
succeed or fail alike, and agree on whether the session is encrypted.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.compare import assert_outcome

PASSWORD = "pw-alice-Ω"
ROLE = "sit_alice"


@pytest.fixture(scope="session")
def alice(tls_cluster, plain_cluster):
    for cluster in (tls_cluster, plain_cluster):
        cluster.create_role(ROLE, PASSWORD)
    return ROLE


@dataclass
class Case:
    cluster: object
    certs: object
    home: Path

    def uri(self, host="localhost", **params):
        return self.cluster.uri(ROLE, PASSWORD, host=host, **params)

    def root_crt(self, which="ca"):
        """Install ~/.postgresql/root.crt (libpq's default root file)."""
        directory = self.home / ".postgresql"
        directory.mkdir(exist_ok=True)
        source = self.certs.ca_crt if which == "ca" else self.certs.other_ca_crt
        shutil.copy(source, directory / "root.crt")


@pytest.fixture
def tls_case(alice, tls_cluster, certs, home):
    return Case(tls_cluster, certs, home)


@pytest.fixture
def plain_case(alice, plain_cluster, certs, home):
    return Case(plain_cluster, certs, home)


# -- a server that only accepts TLS (hostssl + hostnossl reject) ---------------------

@pytest.mark.parametrize(
    "mode, ok",
    [("disable", False), ("allow", True), ("prefer", True), ("require", True)],
)
async def test_tls_server_without_root_file(tls_case, mode, ok):
    result = await assert_outcome(tls_case.uri(sslmode=mode), tls_case.home, ok=ok, ssl=True if ok else None)
    if mode == "disable":
        assert "refuses unencrypted connections" in result.detail


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
async def test_verify_modes_need_a_root_file(tls_case, mode):
    result = await assert_outcome(tls_case.uri(sslmode=mode), tls_case.home, ok=False)
    assert "root certificate" in result.detail and "sslrootcert" in result.detail


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
async def test_right_ca_verifies(tls_case, mode):
    await assert_outcome(tls_case.uri(sslmode=mode, sslrootcert=tls_case.certs.ca_crt), tls_case.home, ok=True, ssl=True)


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
async def test_wrong_ca_is_refused(tls_case, mode):
    result = await assert_outcome(
        tls_case.uri(sslmode=mode, sslrootcert=tls_case.certs.other_ca_crt), tls_case.home, ok=False
    )
    assert "not trusted" in result.detail


async def test_missing_explicit_root_file_is_refused_before_connecting(tls_case):
    # Deliberately stricter than libpq, which ignores a missing sslrootcert under
    # `require`: a typo there would silently turn verification off.
    result = await assert_outcome(
        tls_case.uri(sslmode="require", sslrootcert=tls_case.home / "nope.crt"), tls_case.home, ok=False, compare=False
    )
    assert "sslrootcert" in result.detail and "does not exist" in result.detail


async def test_host_name_mismatch_fails_verify_full_only(tls_case):
    ca = tls_case.certs.ca_crt
    await assert_outcome(tls_case.uri(host="127.0.0.1", sslmode="verify-ca", sslrootcert=ca), tls_case.home, ok=True)
    result = await assert_outcome(
        tls_case.uri(host="127.0.0.1", sslmode="verify-full", sslrootcert=ca), tls_case.home, ok=False
    )
    assert "does not match host name '127.0.0.1'" in result.detail


async def test_require_with_default_root_crt_verifies_the_chain(tls_case):
    tls_case.root_crt("other")
    result = await assert_outcome(tls_case.uri(sslmode="require"), tls_case.home, ok=False)
    assert "not trusted" in result.detail
    tls_case.root_crt("ca")
    await assert_outcome(tls_case.uri(sslmode="require"), tls_case.home, ok=True, ssl=True)


async def test_prefer_with_wrong_root_crt_falls_back_to_plaintext_and_is_rejected(tls_case):
    tls_case.root_crt("other")
    result = await assert_outcome(tls_case.uri(sslmode="prefer"), tls_case.home, ok=False)
    assert "unencrypted" in result.detail


async def test_default_root_crt_with_verify_full(tls_case):
    tls_case.root_crt("ca")
    await assert_outcome(tls_case.uri(sslmode="verify-full"), tls_case.home, ok=True, ssl=True)


async def test_default_sslmode_is_prefer(tls_case):
    await assert_outcome(tls_case.uri(), tls_case.home, ok=True, ssl=True)


async def test_pgssl_environment_variables(tls_case):
    dsn = tls_case.cluster.conninfo(user=ROLE, password=PASSWORD)
    env = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(tls_case.certs.ca_crt)}
    await assert_outcome(dsn, tls_case.home, ok=True, ssl=True, env=env)
    env["PGSSLROOTCERT"] = str(tls_case.certs.other_ca_crt)
    await assert_outcome(dsn, tls_case.home, ok=False, env=env)
    # The DSN beats the environment.
    await assert_outcome(dsn + f" sslrootcert='{tls_case.certs.ca_crt}'", tls_case.home, ok=True, env=env)


async def test_key_value_dsn_and_pghost_pgport(tls_case):
    host, port = tls_case.cluster.host_port
    env = {"PGHOST": host, "PGPORT": str(port), "PGUSER": ROLE, "PGPASSWORD": PASSWORD, "PGDATABASE": "postgres"}
    await assert_outcome(
        f"sslmode=verify-full sslrootcert='{tls_case.certs.ca_crt}'", tls_case.home, ok=True, ssl=True, env=env
    )


async def test_pgpass_supplies_the_password(tls_case):
    host, port = tls_case.cluster.host_port
    pgpass = tls_case.home / ".pgpass"
    pgpass.write_text(f"{host}:{port}:*:{ROLE}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    dsn = tls_case.cluster.uri(ROLE, sslmode="verify-full", sslrootcert=tls_case.certs.ca_crt)
    await assert_outcome(dsn, tls_case.home, ok=True)
    pgpass.chmod(0o644)  # ignored by libpq (and by us) when group or others may read it
    result = await assert_outcome(dsn, tls_case.home, ok=False)
    assert "password" in result.detail


async def test_wrong_password(tls_case):
    dsn = tls_case.cluster.uri(ROLE, "not-the-password", sslmode="verify-full", sslrootcert=tls_case.certs.ca_crt)
    result = await assert_outcome(dsn, tls_case.home, ok=False)
    assert "password authentication failed" in result.detail
    assert "not-the-password" not in result.detail


async def test_missing_database_and_role(tls_case):
    ca = tls_case.certs.ca_crt
    result = await assert_outcome(
        tls_case.cluster.uri(ROLE, PASSWORD, dbname="no_such_db", sslmode="verify-full", sslrootcert=ca),
        tls_case.home, ok=False,
    )
    assert 'database "no_such_db" does not exist' in result.detail
    result = await assert_outcome(
        tls_case.cluster.uri("nobody_here", "x", sslmode="verify-full", sslrootcert=ca), tls_case.home, ok=False
    )
    assert "nobody_here" in result.detail


async def test_unreachable_server(home):
    result = await assert_outcome("postgresql://u:p@127.0.0.1:1/db?sslmode=disable", home, ok=False)
    assert "cannot reach server at 127.0.0.1:1" in result.detail


# -- a server without TLS ------------------------------------------------------------

@pytest.mark.parametrize(
    "mode, ok",
    [("disable", True), ("allow", True), ("prefer", True), ("require", False)],
)
async def test_plain_server(plain_case, mode, ok):
    result = await assert_outcome(plain_case.uri(sslmode=mode), plain_case.home, ok=ok, ssl=False if ok else None)
    if not ok:
        assert "does not support TLS" in result.detail


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
async def test_plain_server_with_verify_modes(plain_case, mode):
    result = await assert_outcome(
        plain_case.uri(sslmode=mode, sslrootcert=plain_case.certs.ca_crt), plain_case.home, ok=False
    )
    assert "does not support TLS" in result.detail
