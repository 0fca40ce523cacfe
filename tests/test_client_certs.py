"""Client certificates against ``certdb`` (``cert`` auth) on the TLS cluster, compared with psql.

Every case goes through situation's connection code (DSN -> SSLContext ->
asyncpg) and, when psql is installed, through psql with the same DSN and
environment: both must succeed or fail alike. On ``certdb`` the server accepts
a client only when its certificate's CN is the role it connects as.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.compare import PSQL, Outcome, psql_outcome, situation_outcome

from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.errors import DsnError
from situation.connection.tls import build_ssl_context

CERT_ROLE = "cc_agent"  # logs in to certdb with a certificate, has no password
INTRUDER = "cc_intruder"  # a real role, whose certificate must not open CERT_ROLE
PASSWORD_ROLE = "cc_pw"
PASSWORD = "cc-pw-Ω-41"
PASSPHRASE = "cc-Key-Phrase-93"
WRONG_PASSPHRASE = "cc-Not-The-Phrase-17"


@pytest.fixture(scope="module")
def roles(tls_cluster):
    tls_cluster.create_role(CERT_ROLE)
    tls_cluster.create_role(INTRUDER)
    tls_cluster.create_role(PASSWORD_ROLE, PASSWORD)
    return tls_cluster


@pytest.fixture
def cluster(roles, home):
    return roles


# -- helpers ---------------------------------------------------------------------------


def environ_for(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    return {"HOME": str(home), **(env or {})}


async def assert_outcome(dsn, home, *, ok, ssl=None, env=None, compare=True, psql=None):
    """situation's outcome for ``dsn``, checked against ``ok`` and (when installed) psql's."""
    environ = environ_for(home, env)
    ours = await situation_outcome(dsn, environ)
    assert ours.ok is ok, ours.detail
    if ok and ssl is not None:
        assert ours.detail == f"ssl={ssl}"
    if compare and PSQL:
        theirs = (psql or psql_outcome)(dsn, environ)
        assert theirs.ok is ok, f"psql disagrees: {theirs.detail}"
        if ok:
            assert theirs.detail == ours.detail
    return ours


def psql_without_terminal(dsn: str, environ: dict[str, str]) -> Outcome:
    """Like ``psql_outcome``, but in a new session: OpenSSL cannot open /dev/tty to ask a passphrase."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    result = subprocess.run(
        [PSQL, "-w", "-X", "-A", "-t", "-c", "SELECT 1", dsn],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
        start_new_session=True,
    )
    return Outcome(result.returncode == 0, result.stderr.strip() or result.stdout.strip())


@functools.lru_cache(maxsize=None)
def psql_knows(option: str) -> bool:
    """Whether the installed libpq accepts ``option`` (sslcertmode needs libpq 16)."""
    if not PSQL:
        return False
    result = subprocess.run(
        [PSQL, "-w", "-X", "-c", "SELECT 1", f"host=127.0.0.1 port=1 connect_timeout=2 {option}=disable"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    return "invalid connection option" not in result.stderr


async def session_client_dn(dsn: str, home: Path) -> str | None:
    """The client certificate's DN as the server saw it (None: no certificate was sent)."""
    connection = await connect(parse_dsn(dsn, environ=environ_for(home)))
    try:
        return await connection.fetchval("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await connection.close()


def certdb_uri(cluster, certs, role=CERT_ROLE, **params):
    params.setdefault("sslmode", "verify-full")
    params.setdefault("sslrootcert", certs.ca_crt)
    return cluster.uri(role, dbname="certdb", **params)


def copy_pair(crt: Path, key: Path, directory: Path, stem: str = "client") -> tuple[Path, Path]:
    """A private copy of a certificate and key, so chmod/chown never touch the shared files."""
    directory.mkdir(parents=True, exist_ok=True)
    crt_copy, key_copy = directory / f"{stem}.crt", directory / f"{stem}.key"
    shutil.copyfile(crt, crt_copy)
    shutil.copyfile(key, key_copy)
    os.chmod(key_copy, 0o600)
    return crt_copy, key_copy


def install_default_pair(home: Path, crt: Path, key: Path) -> None:
    """~/.postgresql/postgresql.crt and postgresql.key, libpq's default client files."""
    copy_pair(crt, key, home / ".postgresql", "postgresql")


# -- cert authentication on certdb ------------------------------------------------------


async def test_right_certificate_authenticates_over_tls(cluster, certs, home):
    crt, key = certs.client_cert(CERT_ROLE)
    dsn = certdb_uri(cluster, certs, sslcert=crt, sslkey=key)
    await assert_outcome(dsn, home, ok=True, ssl=True)
    assert f"CN={CERT_ROLE}" in (await session_client_dn(dsn, home) or "")


async def test_certificate_of_another_role_is_refused(cluster, certs, home):
    crt, key = certs.client_cert(INTRUDER)
    result = await assert_outcome(certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=False)
    assert "certificate authentication failed" in result.detail
    assert f'"{CERT_ROLE}"' in result.detail


async def test_certificate_from_an_unrelated_ca_is_refused(cluster, certs, home):
    crt, key = certs.client_cert(CERT_ROLE, signer="other")
    result = await assert_outcome(certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=False)
    assert len(result.detail.splitlines()) == 1


async def test_certificate_from_an_unrelated_ca_is_explained(cluster, certs, home):
    # Under TLS 1.3 the server's alert arrives after the client's handshake, so asyncpg
    # raises ConnectionDoesNotExistError caused by ssl.SSLError(TLSV1_ALERT_UNKNOWN_CA).
    crt, key = certs.client_cert(CERT_ROLE, signer="other")
    result = await assert_outcome(
        certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=False, compare=False
    )
    assert "rejected our client certificate" in result.detail


async def test_no_certificate_is_refused(cluster, certs, home):
    result = await assert_outcome(certdb_uri(cluster, certs), home, ok=False)
    assert "certificate" in result.detail


# -- encrypted keys and sslpassword -------------------------------------------------------


async def test_encrypted_key_with_the_right_sslpassword(cluster, certs, home):
    crt, key = certs.client_cert(CERT_ROLE, passphrase=PASSPHRASE)
    dsn = certdb_uri(cluster, certs, sslcert=crt, sslkey=key, sslpassword=PASSPHRASE)
    await assert_outcome(dsn, home, ok=True, ssl=True)


async def test_encrypted_key_with_a_wrong_sslpassword(cluster, certs, home):
    crt, key = certs.client_cert(CERT_ROLE, passphrase=PASSPHRASE)
    dsn = certdb_uri(cluster, certs, sslcert=crt, sslkey=key, sslpassword=WRONG_PASSPHRASE)
    result = await assert_outcome(dsn, home, ok=False)
    assert "sslpassword" in result.detail
    assert WRONG_PASSPHRASE not in result.detail
    assert PASSPHRASE not in result.detail


async def test_encrypted_key_without_sslpassword_is_refused(cluster, certs, home):
    # libpq would prompt on the terminal; psql runs without one here and fails too.
    crt, key = certs.client_cert(CERT_ROLE, passphrase=PASSPHRASE)
    dsn = certdb_uri(cluster, certs, sslcert=crt, sslkey=key)
    result = await assert_outcome(dsn, home, ok=False, psql=psql_without_terminal)
    assert "encrypted" in result.detail and "sslpassword" in result.detail
    assert len(result.detail.splitlines()) == 1
    with pytest.raises(DsnError):  # refused while building the context, before any connection
        build_ssl_context(parse_dsn(dsn, environ=environ_for(home)))


# -- libpq's private key permission rule ----------------------------------------------------


async def test_world_readable_key_is_refused(cluster, certs, home, tmp_path):
    crt, key = copy_pair(*certs.client_cert(CERT_ROLE), tmp_path / "loose")
    os.chmod(key, 0o644)
    result = await assert_outcome(certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=False)
    assert "chmod 0600" in result.detail
    assert str(key) in result.detail


async def test_group_readable_key_owned_by_root_is_accepted(cluster, certs, home, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the key must be owned by root")
    crt, key = copy_pair(*certs.client_cert(CERT_ROLE), tmp_path / "rootkey")
    os.chmod(key, 0o640)
    assert key.stat().st_uid == 0
    await assert_outcome(certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=True, ssl=True)


async def test_group_readable_key_owned_by_someone_else_is_refused(cluster, certs, home, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the key to another user")
    crt, key = copy_pair(*certs.client_cert(CERT_ROLE), tmp_path / "otherkey")
    os.chmod(key, 0o640)
    os.chown(key, 65534, 65534)  # nobody: only a root-owned key may be 0640
    result = await assert_outcome(certdb_uri(cluster, certs, sslcert=crt, sslkey=key), home, ok=False)
    assert "chmod 0600" in result.detail


# -- a certificate without its key ------------------------------------------------------------


async def test_certificate_with_a_missing_explicit_key_is_refused_before_connecting(cluster, certs, home, tmp_path):
    crt, _key = certs.client_cert(CERT_ROLE)
    missing = tmp_path / "missing.key"
    dsn = certdb_uri(cluster, certs, sslcert=crt, sslkey=missing)
    result = await assert_outcome(dsn, home, ok=False)
    assert "sslkey" in result.detail and str(missing) in result.detail
    with pytest.raises(DsnError, match="sslkey"):
        build_ssl_context(parse_dsn(dsn, environ=environ_for(home)))


async def test_certificate_without_any_key_is_refused_before_connecting(cluster, certs, home):
    crt, _key = certs.client_cert(CERT_ROLE)
    dsn = certdb_uri(cluster, certs, sslcert=crt)  # and no ~/.postgresql/postgresql.key
    result = await assert_outcome(dsn, home, ok=False)
    assert "no private key" in result.detail and "sslkey" in result.detail
    with pytest.raises(DsnError):
        build_ssl_context(parse_dsn(dsn, environ=environ_for(home)))


# -- libpq's default files in ~/.postgresql ---------------------------------------------------


async def test_default_client_files_are_picked_up(cluster, certs, home):
    install_default_pair(home, *certs.client_cert(CERT_ROLE))
    dsn = certdb_uri(cluster, certs)
    await assert_outcome(dsn, home, ok=True, ssl=True)
    assert f"CN={CERT_ROLE}" in (await session_client_dn(dsn, home) or "")


async def test_default_certificate_without_default_key_is_refused(cluster, certs, home):
    crt, _key = certs.client_cert(CERT_ROLE)
    (home / ".postgresql").mkdir()
    shutil.copyfile(crt, home / ".postgresql" / "postgresql.crt")
    result = await assert_outcome(certdb_uri(cluster, certs), home, ok=False)
    assert "postgresql.key" in result.detail


async def test_sslcertmode_disable_does_not_send_the_default_certificate(cluster, certs, home):
    install_default_pair(home, *certs.client_cert(CERT_ROLE))
    await assert_outcome(certdb_uri(cluster, certs), home, ok=True, ssl=True)
    result = await assert_outcome(
        certdb_uri(cluster, certs, sslcertmode="disable"), home, ok=False, compare=psql_knows("sslcertmode")
    )
    assert "certificate" in result.detail


# -- CRLs for the server certificate ------------------------------------------------------------


@pytest.fixture(scope="module")
def crls(certs):
    return {"revoked": certs.revoke(certs.server_crt), "empty": certs.empty_crl()}


def password_uri(cluster, **params):
    return cluster.uri(PASSWORD_ROLE, PASSWORD, **params)


async def test_crl_revoking_the_server_certificate_fails_verify_ca(cluster, certs, crls, home):
    dsn = password_uri(cluster, sslmode="verify-ca", sslrootcert=certs.ca_crt, sslcrl=crls["revoked"])
    result = await assert_outcome(dsn, home, ok=False)
    assert "revoked" in result.detail


async def test_empty_crl_lets_verify_ca_pass(cluster, certs, crls, home):
    dsn = password_uri(cluster, sslmode="verify-ca", sslrootcert=certs.ca_crt, sslcrl=crls["empty"])
    await assert_outcome(dsn, home, ok=True, ssl=True)


async def test_default_root_crl_is_used(cluster, certs, crls, home):
    directory = home / ".postgresql"
    directory.mkdir()
    shutil.copyfile(certs.ca_crt, directory / "root.crt")
    shutil.copyfile(crls["revoked"], directory / "root.crl")
    await assert_outcome(password_uri(cluster, sslmode="verify-ca"), home, ok=False)
    shutil.copyfile(crls["empty"], directory / "root.crl")
    await assert_outcome(password_uri(cluster, sslmode="verify-ca"), home, ok=True, ssl=True)


# -- a client certificate on a database that uses passwords -----------------------------------


async def test_password_role_with_its_certificate_on_a_scram_database(cluster, certs, home):
    crt, key = certs.client_cert(PASSWORD_ROLE)
    dsn = password_uri(cluster, sslmode="verify-full", sslrootcert=certs.ca_crt, sslcert=crt, sslkey=key)
    await assert_outcome(dsn, home, ok=True, ssl=True)
    assert f"CN={PASSWORD_ROLE}" in (await session_client_dn(dsn, home) or "")


async def test_certificate_is_sent_and_ignored_by_scram(cluster, certs, home):
    # The CN names another role: scram does not look at it, the password decides.
    install_default_pair(home, *certs.client_cert(INTRUDER))
    dsn = password_uri(cluster, sslmode="verify-full", sslrootcert=certs.ca_crt)
    await assert_outcome(dsn, home, ok=True, ssl=True)
    assert f"CN={INTRUDER}" in (await session_client_dn(dsn, home) or "")
    wrong = cluster.uri(PASSWORD_ROLE, "not-" + PASSWORD, sslmode="verify-full", sslrootcert=certs.ca_crt)
    result = await assert_outcome(wrong, home, ok=False)
    assert "password authentication failed" in result.detail
