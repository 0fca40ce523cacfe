"""The real CLI, run as a subprocess: bad input gets one clear line and a non-zero exit.

Commands that could start a cycle (`run --once`) run inside a test-made network namespace
(test_host, support/netns.py), behind the guard.

No traceback unless ``--log-level debug``; a password, an sslpassword or key
material is never printed, whatever the log level, and ``--help`` never shows a
DSN taken from the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import clean_environ, make_conninfo

REPO = Path(__file__).resolve().parent.parent

ROLE = "cli_checker"
PASSWORD = "S3cr3t-pw"
SSLPASSWORD = "K3y-pass"
OTHER_PASSPHRASE = "cli-Other-Phrase-5"
# Fragments that must never show up in any output.
SECRETS = ("S3cr3t", "K3y-pass")


@pytest.fixture(scope="module")
def checker(tls_cluster):
    tls_cluster.create_role(ROLE, PASSWORD)
    return ROLE


def run_cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m situation ARGS`` with a clean environment (no PG*, no SITUATION_*) and HOME."""
    environ = clean_environ(HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "situation", *args],
        env=environ, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    """Exit status non-zero, nothing on stdout, exactly one ``situation: error:`` line on stderr."""
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("situation: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_no_secret(result: subprocess.CompletedProcess, *extra: str) -> None:
    output = result.stdout + result.stderr
    for secret in (*SECRETS, *extra):
        assert secret not in output, f"{secret!r} was printed:\n{output}"
    assert "PRIVATE KEY" not in output


def good_uri(cluster, certs, **params) -> str:
    params.setdefault("sslmode", "verify-full")
    params.setdefault("sslrootcert", certs.ca_crt)
    return cluster.uri(ROLE, PASSWORD, **params)


# -- bad DSNs --------------------------------------------------------------------------------


def _bad_dsns(certs, tmp_path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (DSN, words the error line must contain)."""
    crt, key = certs.client_cert(ROLE)
    loose_key = tmp_path / "loose.key"
    shutil.copyfile(key, loose_key)
    os.chmod(loose_key, 0o644)
    target = "host=127.0.0.1 port=1 user=nobody dbname=db connect_timeout=2"
    return {
        "sslmode": ("host=127.0.0.1 sslmode=bogus", ("sslmode", "bogus")),
        "port": ("host=127.0.0.1 port=abc", ("port", "abc")),
        "unknown key": ("host=127.0.0.1 colour=blue", ('"colour"', "unknown connection option")),
        "scheme": ("mysql://x", ("mysql://", "scheme")),
        "missing sslrootcert": (
            f"{target} sslmode=verify-full sslrootcert={tmp_path / 'nope.crt'}",
            ("sslrootcert", "nope.crt", "does not exist"),
        ),
        "certificate without key": (
            f"{target} sslmode=require sslcert={crt} sslkey={tmp_path / 'missing.key'}",
            ("sslkey", "missing.key", "does not exist"),
        ),
        "world-readable key": (
            f"{target} sslmode=require sslcert={crt} sslkey={loose_key}",
            ("private key", str(loose_key), "chmod 0600"),
        ),
    }


BAD_DSN_NAMES = (
    "sslmode", "port", "unknown key", "scheme", "missing sslrootcert", "certificate without key", "world-readable key",
)


@pytest.mark.parametrize("name", BAD_DSN_NAMES)
def test_bad_dsn_is_one_clear_line(name, certs, tmp_path):
    dsn, words = _bad_dsns(certs, tmp_path)[name]
    line = assert_one_line_error(run_cli("check", "--db", dsn, home=tmp_path))
    for word in words:
        assert word in line


def test_bad_dsn_from_the_environment_is_one_clear_line(tmp_path):
    line = assert_one_line_error(run_cli("check", home=tmp_path, env={"SITUATION_DB": "host=127.0.0.1 port=abc"}))
    assert "port=abc" in line


# -- secrets never printed -------------------------------------------------------------------


def _secret_dsns(cluster, certs) -> dict[str, str]:
    enc_crt, enc_key = certs.client_cert(ROLE, passphrase=SSLPASSWORD)
    other_crt, other_key = certs.client_cert(ROLE, passphrase=OTHER_PASSPHRASE)
    host, port = cluster.host_port
    return {
        # The client key decrypts; the server certificate is not trusted.
        "wrong CA": cluster.uri(
            ROLE, PASSWORD, sslmode="verify-full", sslrootcert=certs.other_ca_crt,
            sslcert=enc_crt, sslkey=enc_key, sslpassword=SSLPASSWORD,
        ),
        # key=value form, nothing listens on port 1.
        "unreachable": make_conninfo(
            host="127.0.0.1", port=1, user=ROLE, password=PASSWORD, dbname="postgres", sslmode="require",
            sslcert=enc_crt, sslkey=enc_key, sslpassword=SSLPASSWORD, connect_timeout=2,
        ),
        # The sslpassword does not decrypt this key.
        "wrong sslpassword": make_conninfo(
            host=host, port=port, user=ROLE, password=PASSWORD, sslmode="verify-full",
            sslrootcert=certs.ca_crt, sslcert=other_crt, sslkey=other_key, sslpassword=SSLPASSWORD,
        ),
        # Everything right but the password.
        "wrong password": cluster.uri(
            ROLE, PASSWORD + "x", sslmode="verify-full", sslrootcert=certs.ca_crt,
            sslcert=enc_crt, sslkey=enc_key, sslpassword=SSLPASSWORD,
        ),
        # A parse error right after the secrets; the stray word must not be echoed either.
        "parse error": f"host=127.0.0.1 password={PASSWORD} sslpassword={SSLPASSWORD} K3y-pass-tail",
        "unknown key after secrets": f"password={PASSWORD} sslpassword={SSLPASSWORD} colour=blue",
        "bad percent in the URI password": "postgresql://u:S3cr3t%zz@127.0.0.1:1/db",
    }


# case -> what the error line says, so each case fails for the reason it is meant to.
SECRET_CASES = {
    "wrong CA": "is not trusted",
    "unreachable": "cannot reach server at 127.0.0.1:1",
    "wrong sslpassword": "sslpassword does not decrypt",
    "wrong password": f'password authentication failed for role "{ROLE}"',
    "parse error": 'text after the sslpassword value has no "="',
    "unknown key after secrets": 'unknown connection option "colour"',
    "bad percent in the URI password": "invalid percent-encoding in the URI password",
}


@pytest.mark.parametrize("level", ["info", "debug"])
@pytest.mark.parametrize("case", SECRET_CASES)
def test_secrets_are_never_printed(case, level, checker, tls_cluster, certs, tmp_path):
    dsn = _secret_dsns(tls_cluster, certs)[case]
    result = run_cli("--log-level", level, "check", "--db", dsn, home=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith("situation: error: "), result.stderr
    assert SECRET_CASES[case] in last
    if level == "info":
        assert_one_line_error(result)
    assert_no_secret(result, OTHER_PASSPHRASE)


def test_secrets_from_the_environment_are_never_printed(checker, tls_cluster, certs, tmp_path):
    dsn = _secret_dsns(tls_cluster, certs)["wrong CA"]
    result = run_cli("--log-level", "debug", "check", home=tmp_path, env={"SITUATION_DB": dsn})
    assert result.returncode != 0
    assert_no_secret(result)


# -- tracebacks only at debug level ------------------------------------------------------------


def test_traceback_only_with_log_level_debug(tmp_path):
    dsn = "host=127.0.0.1 port=1 user=u dbname=db sslmode=disable connect_timeout=2"
    quiet = run_cli("check", "--db", dsn, home=tmp_path)
    line = assert_one_line_error(quiet)
    assert "cannot reach server at 127.0.0.1:1" in line
    loud = run_cli("--log-level", "debug", "check", "--db", dsn, home=tmp_path)
    assert loud.returncode == quiet.returncode
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.splitlines()[-1] == line


def test_debug_level_from_the_environment_also_shows_the_traceback(tmp_path):
    dsn = "host=127.0.0.1 port=1 user=u dbname=db sslmode=disable connect_timeout=2"
    result = run_cli("check", "--db", dsn, home=tmp_path, env={"SITUATION_LOG_LEVEL": "debug"})
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("situation: error: cannot reach server")


def test_json_log_format_keeps_the_one_line_error(tmp_path):
    dsn = "host=127.0.0.1 port=1 user=u dbname=db sslmode=disable connect_timeout=2"
    line = assert_one_line_error(run_cli("--log-format", "json", "check", "--db", dsn, home=tmp_path))
    assert "cannot reach server" in line


def test_usage_error_does_not_echo_the_dsn(tmp_path):
    dsn = f"postgresql://owner:{PASSWORD}@127.0.0.1:1/db?sslpassword={SSLPASSWORD}"
    result = run_cli("check", "--db", dsn, "--no-such-flag", home=tmp_path)
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result)


def test_invalid_log_level_is_a_usage_error(tmp_path):
    result = run_cli("--log-level", "nope", "check", "--db", "sslmode=disable", home=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "Usage:" in result.stderr
    assert "--log-level" in result.stderr and "nope" in result.stderr


# -- where the DSN comes from -------------------------------------------------------------------


def write_dsn_file(path: Path, dsn: str) -> Path:
    path.write_text(dsn + "\n")
    os.chmod(path, 0o600)
    return path


def assert_checked(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert ROLE in result.stdout
    assert_no_secret(result)


def test_db_file(checker, tls_cluster, certs, tmp_path):
    dsn_file = write_dsn_file(tmp_path / "dsn", good_uri(tls_cluster, certs))
    assert_checked(run_cli("check", "--db-file", str(dsn_file), home=tmp_path))


def test_missing_db_file_is_one_clear_line(tmp_path):
    missing = tmp_path / "no-such-dsn"
    line = assert_one_line_error(run_cli("check", "--db-file", str(missing), home=tmp_path))
    assert str(missing) in line and "does not exist" in line


def test_empty_db_file_is_one_clear_line(tmp_path):
    empty = write_dsn_file(tmp_path / "empty", "")
    line = assert_one_line_error(run_cli("check", "--db-file", str(empty), home=tmp_path))
    assert "empty" in line


def test_situation_db_environment_variable(checker, tls_cluster, certs, tmp_path):
    assert_checked(run_cli("check", home=tmp_path, env={"SITUATION_DB": good_uri(tls_cluster, certs)}))


def test_situation_db_file_environment_variable(checker, tls_cluster, certs, tmp_path):
    dsn_file = write_dsn_file(tmp_path / "dsn", good_uri(tls_cluster, certs))
    assert_checked(run_cli("check", home=tmp_path, env={"SITUATION_DB_FILE": str(dsn_file)}))


def test_db_flag_beats_situation_db_file_in_the_environment(checker, tls_cluster, certs, tmp_path):
    bad_file = write_dsn_file(tmp_path / "bad", "host=127.0.0.1 sslmode=bogus")
    result = run_cli("check", "--db", good_uri(tls_cluster, certs), home=tmp_path, env={"SITUATION_DB_FILE": str(bad_file)})
    assert_checked(result)


def test_db_file_flag_beats_situation_db_in_the_environment(checker, tls_cluster, certs, tmp_path):
    dsn_file = write_dsn_file(tmp_path / "dsn", good_uri(tls_cluster, certs))
    result = run_cli(
        "check", "--db-file", str(dsn_file), home=tmp_path, env={"SITUATION_DB": "host=127.0.0.1 sslmode=bogus"}
    )
    assert_checked(result)


def test_two_dsn_sources_of_one_kind_clash(tmp_path):
    dsn_file = write_dsn_file(tmp_path / "dsn", "host=127.0.0.1 port=1")
    env = {"SITUATION_DB": "host=127.0.0.1 port=1", "SITUATION_DB_FILE": str(dsn_file)}
    line = assert_one_line_error(run_cli("check", home=tmp_path, env=env))
    assert "SITUATION_DB" in line and "keep one" in line


# -- --help never shows a secret from the environment ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["migrate", "--help"], ["check", "--help"], ["grant", "--help"], ["run", "--help"]],
    ids=lambda args: " ".join(args),
)
def test_help_never_shows_a_secret_from_the_environment(args, tmp_path):
    dsn = f"postgresql://owner:{PASSWORD}@db.example.com/situation?sslpassword={SSLPASSWORD}"
    dsn_file = write_dsn_file(tmp_path / "dsn", dsn)
    env = {"SITUATION_DB": dsn, "SITUATION_DB_FILE": str(dsn_file)}
    result = run_cli(*args, home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert_no_secret(result)
    assert "db.example.com" not in result.stdout + result.stderr


# -- situation check -----------------------------------------------------------------------------------


def test_check_reports_tls_verification_role_and_privileges(checker, tls_cluster, certs, tmp_path):
    result = run_cli("check", "--db", good_uri(tls_cluster, certs), home=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TLSv1.3" in out or "TLSv1.2" in out
    assert "chain and host name" in out
    assert ROLE in out
    schema_line = next(line for line in out.splitlines() if line.startswith("schema changes"))
    assert "not allowed" in schema_line
    assert_no_secret(result)


def test_check_json(checker, tls_cluster, certs, tmp_path):
    result = run_cli("check", "--json", "--db", good_uri(tls_cluster, certs), home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tls"] is True
    assert report["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert report["verification"] == "chain and host name"
    assert report["sslmode"] == "verify-full"
    assert report["role"] == ROLE
    assert report["can_change_schema"] is False
    assert report["schema_changes"] == []
    assert_no_secret(result)


def test_check_shows_the_service_and_its_file(checker, tls_cluster, certs, tmp_path):
    services = tmp_path / "services.conf"
    host, port = tls_cluster.host_port
    services.write_text(f"[inventory]\nhost={host}\nport={port}\ndbname=postgres\nuser={ROLE}\n"
                        f"sslmode=verify-full\nsslrootcert={certs.ca_crt}\n")
    env = {"PGSERVICEFILE": str(services), "PGPASSWORD": PASSWORD}
    result = run_cli("check", "--db", "service=inventory", home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert f"service         inventory ({services})" in result.stdout
    report = json.loads(run_cli("check", "--json", home=tmp_path, env={**env, "PGSERVICE": "inventory"}).stdout)
    assert report["service"] == f"inventory ({services})"
    assert_no_secret(result)


# -- a role that was never granted (issue 14, item 7) ----------------------------------------------

UNGRANTED, UNGRANTED_PASSWORD = "never_granted", "Ungr4nted-pw"


@pytest.fixture(scope="module")
def ungranted(tls_cluster):
    tls_cluster.create_role(UNGRANTED, UNGRANTED_PASSWORD)
    return UNGRANTED


def test_a_role_never_granted_is_told_to_get_a_grant(ungranted, test_host, tls_cluster, certs, fresh_database, tmp_path):
    name = fresh_database("ungranted")
    owner = tls_cluster.superuser_dsn(name)
    assert run_cli("migrate", "--db", owner, home=tmp_path).returncode == 0
    over_tls = tls_cluster.uri(UNGRANTED, UNGRANTED_PASSWORD, dbname=name, sslmode="verify-full", sslrootcert=certs.ca_crt)
    explained = f"role {UNGRANTED} has no rights on schema situation; run `situation grant {UNGRANTED}` as the owner"

    check = run_cli("check", "--db", over_tls, home=tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"note            {explained}" in check.stdout.splitlines()
    status = run_cli("migrate", "--status", "--db", over_tls, home=tmp_path)
    assert assert_one_line_error(status) == f"situation: error: {explained}"
    # Whole-cycle runs go inside the isolated host; PostgreSQL is reached over its Unix socket.
    over_socket = owner.replace("postgres@", f"{UNGRANTED}@")
    run = test_host.run(sys.executable, "-m", "situation", "run", "--once", "--no-migration", "--db", over_socket,
                        env=clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state")), timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"situation: error: {explained}"  # after any info log line
    # grant needs the owner: the line says the role running it lacks the owner's rights.
    grant = run_cli("grant", UNGRANTED, "--db", over_tls, home=tmp_path)
    assert assert_one_line_error(grant) == (
        f"situation: error: role {UNGRANTED} lacks the owner's rights on schema situation, so it may not grant; "
        f"run `situation grant {UNGRANTED}` as the owner (the role that ran `situation migrate`)"
    )
    assert run_cli("grant", UNGRANTED, "--db", owner, home=tmp_path).returncode == 0
    assert run_cli("check", "--db", over_tls, home=tmp_path).stdout.count("has no rights") == 0


def test_nul_in_an_sqlite_path_from_a_db_file_is_one_clear_line(test_host, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_bytes(b"/var/lib/situation/agent\0.sqlite\n")
    expected = (f'situation: error: DSN file "{dsn_file}" holds a NUL byte; it must hold one line of text: '
                "the DSN or an SQLite path")
    assert assert_one_line_error(run_cli("migrate", "--db-file", str(dsn_file), home=tmp_path)) == expected
    # Whole-cycle runs go inside the isolated host, even one that fails before its pass.
    run = test_host.run(sys.executable, "-m", "situation", "run", "--once", "--db-file", str(dsn_file),
                        env=clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state")), timeout=60)
    assert assert_one_line_error(run) == expected


# -- module settings checked at start (issue 9) ---------------------------------------------------

# Each case is a CLI start; the other snmp settings are checked in-process in test_snmp.py.
BAD_MODULE_SETTINGS = {
    "tls ports": (["--tls-ports", "443,https"], {}, "--tls-ports: 'https' is not a port, a range or top1000"),
    "tls ports from the environment": ([], {"SITUATION_TLS_PORTS": "0-80"}, "--tls-ports: '0-80' is out of range"),
    "snmp v3 without user": (["--snmp-version", "3"], {}, "--snmp-version 3 needs --snmp-user"),
    "snmp key file": (["--snmp-auth-key-file", "/nonexistent/auth.key"], {},
                      "--snmp-auth-key-file: cannot read /nonexistent/auth.key: No such file or directory"),
    "snmp short key": (["--snmp-version", "3", "--snmp-user", "u"], {"SITUATION_SNMP_AUTH_KEY": "sh0rt"},
                       "SNMPv3 keys must be at least 8 characters long"),
}


@pytest.mark.parametrize("case", BAD_MODULE_SETTINGS)
def test_bad_module_settings_stop_the_agent_at_start(case, test_host, tmp_path):
    # Had the check not stopped it, this would be a whole cycle: it runs inside the isolated host.
    flags, environ, message = BAD_MODULE_SETTINGS[case]
    state = tmp_path / "state"
    run = test_host.run(sys.executable, "-m", "situation", "run", "--once", *flags,
                        env=clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(state), **environ), timeout=60)
    assert assert_one_line_error(run).startswith(f"situation: error: {message}")
    assert not (state / "situation.sqlite").exists()  # before the database, so before any module
    assert_no_secret(run, "sh0rt")
