"""libpq habits beyond sslmode, compared with psql (the machine's libpq) as the oracle.

Each case connects with situation's code and with psql for the same DSN and
environment: both must succeed or fail alike (support/compare.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from support.compare import PSQL, assert_outcome, psql_outcome

from situation.connection.connect import connect, create_pool
from situation.connection.dsn import parse_dsn
from situation.store import is_postgres_dsn

PASSWORD = "pw-habits"
ROLE = "sit_habits"


@pytest.fixture(scope="session")
def habits_role(tls_cluster, plain_cluster):
    for cluster in (tls_cluster, plain_cluster):
        cluster.create_role(ROLE, PASSWORD)
    return ROLE


# -- target_session_attrs: a server of the wrong kind is skipped ----------------------


@pytest.fixture
def read_only_plain(habits_role, plain_cluster):
    """The plain server's sessions for ROLE are read-only; the TLS server's are not."""
    plain_cluster.psql(f"ALTER ROLE {ROLE} SET default_transaction_read_only = on;")
    yield
    plain_cluster.psql(f"ALTER ROLE {ROLE} RESET default_transaction_read_only;")


def two_hosts(first, second, **params):
    hosts = ",".join(f"localhost:{cluster.port}" for cluster in (first, second))
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"postgresql://{ROLE}:{PASSWORD}@{hosts}/postgres?{query}"


@pytest.mark.parametrize(
    "attrs, ssl",
    [("read-write", True), ("any", False), ("primary", False), ("prefer-standby", False)],
)
async def test_target_session_attrs_moves_on_to_the_next_host(
    read_only_plain, plain_cluster, tls_cluster, home, attrs, ssl
):
    # The plain server (listed first) is read-only: read-write must reach the TLS server.
    result = await assert_outcome(
        two_hosts(plain_cluster, tls_cluster, sslmode="prefer", target_session_attrs=attrs), home, ok=True
    )
    assert result.detail == f"ssl={ssl}"


async def test_target_session_attrs_read_only_skips_a_writable_first_host(
    read_only_plain, plain_cluster, tls_cluster, home
):
    dsn = two_hosts(tls_cluster, plain_cluster, sslmode="prefer", target_session_attrs="read-only")
    result = await assert_outcome(dsn, home, ok=True)
    assert result.detail == "ssl=False"


async def test_target_session_attrs_without_a_match_names_the_requirement(
    read_only_plain, plain_cluster, home
):
    dsn = two_hosts(plain_cluster, plain_cluster, sslmode="disable", target_session_attrs="read-write")
    result = await assert_outcome(dsn, home, ok=False)
    assert "target_session_attrs=read-write" in result.detail and "read-only" in result.detail


async def test_standby_wanted_and_only_primaries(habits_role, plain_cluster, home):
    dsn = two_hosts(plain_cluster, plain_cluster, sslmode="disable", target_session_attrs="standby")
    result = await assert_outcome(dsn, home, ok=False)
    assert "a primary" in result.detail


# -- Unix sockets never use TLS ------------------------------------------------------


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
async def test_unix_socket_ignores_sslmode(tls_cluster, home, mode):
    # No root certificate anywhere: libpq still connects over the socket, in plaintext.
    dsn = f"host={tls_cluster.socket_dir} port={tls_cluster.port} user=postgres dbname=postgres"
    result = await assert_outcome(dsn, home, ok=True, env={"PGSSLMODE": mode})
    assert result.detail == "ssl=False"


async def test_tls_settings_are_still_checked_for_a_tcp_host_after_a_socket(tls_cluster, home):
    dsn = f"host=/nonexistent/sock,localhost port={tls_cluster.port} user={ROLE} dbname=postgres sslmode=verify-full"
    result = await assert_outcome(dsn, home, ok=False)
    assert "root certificate" in result.detail


# -- DSN kind --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    ["service=inventory", "servicefile=/etc/x.conf service=a", "hostaddr=192.0.2.1", "options='-c jit=off'",
     "keepalives_idle=30", "load_balance_hosts=random", "target_session_attrs=read-write",
     "application_name = agent", "passfile=/x sslrootcert=/y"],
)
def test_any_libpq_keyword_means_postgresql(dsn):
    assert is_postgres_dsn(dsn)


@pytest.mark.parametrize("path", ["inventory", "/var/lib/situation/db", "data=1.sqlite", "./x=y"])
def test_paths_stay_sqlite(path):
    assert not is_postgres_dsn(path)


# -- service files ---------------------------------------------------------------------


def write_service(path, name, **settings):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"[{name}]", *(f"{key}={value}" for key, value in settings.items())]
    with open(path, "a") as handle:
        handle.write("# written by the test\n" + "\n".join(lines) + "\n\n")
    return path


@pytest.fixture
def service_target(habits_role, tls_cluster, certs):
    """A verify-full service entry for the TLS cluster."""
    return {"host": "localhost", "port": tls_cluster.port, "dbname": "postgres", "user": ROLE,
            "password": PASSWORD, "sslmode": "verify-full", "sslrootcert": certs.ca_crt}


async def test_service_in_the_home_file(service_target, home):
    write_service(home / ".pg_service.conf", "inventory", **service_target)
    result = await assert_outcome("service=inventory", home, ok=True)
    assert result.detail == "ssl=True"
    await assert_outcome("", home, ok=True, env={"PGSERVICE": "inventory"})


async def test_service_in_pgservicefile(service_target, home, tmp_path):
    path = write_service(tmp_path / "elsewhere.conf", "inventory", **service_target)
    await assert_outcome("service=inventory", home, ok=True, env={"PGSERVICEFILE": str(path)})


async def test_service_in_the_system_file(service_target, home, tmp_path):
    write_service(tmp_path / "etc" / "pg_service.conf", "inventory", **service_target)
    await assert_outcome("service=inventory", home, ok=True, env={"PGSYSCONFDIR": str(tmp_path / "etc")})


async def test_user_file_beats_the_system_file(service_target, home, tmp_path):
    write_service(home / ".pg_service.conf", "inventory", **{**service_target, "password": "wrong-one"})
    write_service(tmp_path / "etc" / "pg_service.conf", "inventory", **service_target)
    env = {"PGSYSCONFDIR": str(tmp_path / "etc")}
    result = await assert_outcome("service=inventory", home, ok=False, env=env)
    assert "password authentication failed" in result.detail
    # A service missing from the user file is looked up in the system file.
    write_service(tmp_path / "etc" / "pg_service.conf", "other", **service_target)
    await assert_outcome("service=other", home, ok=True, env=env)


async def test_pgservicefile_replaces_the_home_file(service_target, home, tmp_path):
    write_service(home / ".pg_service.conf", "inventory", **service_target)
    path = write_service(tmp_path / "elsewhere.conf", "inventory", **{**service_target, "password": "wrong-one"})
    await assert_outcome("service=inventory", home, ok=False, env={"PGSERVICEFILE": str(path)})


async def test_dsn_beats_service_beats_environment(service_target, home, certs):
    write_service(home / ".pg_service.conf", "inventory", **{**service_target, "sslrootcert": certs.other_ca_crt})
    # The service's wrong CA beats PGSSLROOTCERT ...
    env = {"PGSSLROOTCERT": str(certs.ca_crt)}
    result = await assert_outcome("service=inventory", home, ok=False, env=env)
    assert "not trusted" in result.detail
    # ... and the DSN beats the service.
    await assert_outcome(f"service=inventory sslrootcert={certs.ca_crt}", home, ok=True)
    await assert_outcome(f"postgresql:///?service=inventory&sslrootcert={certs.ca_crt}", home, ok=True)


async def test_missing_service_names_the_files_searched(home, tmp_path):
    env = {"PGSYSCONFDIR": str(tmp_path / "etc")}
    result = await assert_outcome("service=nowhere", home, ok=False, env=env)
    assert 'service nowhere is not defined in "' in result.detail
    assert str(home / ".pg_service.conf") in result.detail
    assert str(tmp_path / "etc" / "pg_service.conf") in result.detail


async def test_servicefile_option(service_target, home, tmp_path):
    # libpq 18 keyword; psql 15 does not know it.
    path = write_service(tmp_path / "own.conf", "inventory", **service_target)
    await assert_outcome(f"service=inventory servicefile={path}", home, ok=True, compare=False)


async def test_bad_service_file_lines(home, tmp_path):
    path = tmp_path / "bad.conf"
    for body, words in [
        ("[s]\nhost\n", ('"=" is missing', "line 2")),
        ("[s]\nhots=x\n", ('unknown connection option "hots"', 'did you mean "host"')),
        ("[s]\nservice=t\n", ("cannot be nested",)),
        ("[s]\nhost=x\nservicefile=t\n", ("cannot be nested", "line 3")),
    ]:
        path.write_text(body)
        result = await assert_outcome("service=s", home, ok=False, env={"PGSERVICEFILE": str(path)})
        for word in words:
            assert word in result.detail, result.detail


# -- hostaddr ------------------------------------------------------------------------------


@pytest.fixture
def tls_target(habits_role, tls_cluster, certs):
    def dsn(**params):
        merged = {"port": tls_cluster.port, "dbname": "postgres", "user": ROLE, "password": PASSWORD,
                  "sslrootcert": certs.ca_crt, **params}
        return " ".join(f"{key}={value}" for key, value in merged.items())
    return dsn


async def test_hostaddr_with_the_certificate_name_passes_verify_full(tls_target, home):
    await assert_outcome(tls_target(host="localhost", hostaddr="127.0.0.1", sslmode="verify-full"), home, ok=True)


async def test_hostaddr_checks_the_host_name_not_the_address(tls_target, home):
    # The name is never resolved: only hostaddr is dialled.
    dsn = tls_target(host="db.invalid", hostaddr="127.0.0.1", sslmode="verify-full")
    result = await assert_outcome(dsn, home, ok=False)
    assert "does not match host name 'db.invalid'" in result.detail and "hostaddr 127.0.0.1" in result.detail
    await assert_outcome(tls_target(host="db.invalid", hostaddr="127.0.0.1", sslmode="verify-ca"), home, ok=True)


async def test_hostaddr_without_host_cannot_be_verified_by_name(tls_target, home):
    result = await assert_outcome(tls_target(hostaddr="127.0.0.1", sslmode="verify-full"), home, ok=False)
    assert "host=NAME" in result.detail
    await assert_outcome(tls_target(hostaddr="127.0.0.1", sslmode="verify-ca"), home, ok=True)


async def test_hostaddr_lists_pair_with_host_and_port_lists(tls_target, tls_cluster, home):
    dsn = tls_target(host="db.invalid,localhost", hostaddr="127.0.0.1,127.0.0.1",
                     port=f"1,{tls_cluster.port}", sslmode="verify-full")
    await assert_outcome(dsn, home, ok=True)
    result = await assert_outcome(tls_target(host="a,b", hostaddr="127.0.0.1", sslmode="verify-ca"), home, ok=False)
    assert "2 host names" in result.detail and "1 hostaddr values" in result.detail
    # An empty hostaddr in the list means: dial that host's name.
    await assert_outcome(tls_target(host="db.invalid,localhost", hostaddr="127.0.0.1,",
                                    port=f"1,{tls_cluster.port}", sslmode="verify-full"), home, ok=True)


@pytest.mark.parametrize("line_host, dsn_host, ok", [
    ("localhost", "host=localhost", True),  # .pgpass matches host ...
    ("127.0.0.1", "host=localhost", False),  # ... never hostaddr when host is given
    ("127.0.0.1", "", False),  # libpq 15 matches neither host nor hostaddr without a host ...
    ("localhost", "", True),  # ... but its default, localhost
])
async def test_pgpass_uses_host_before_hostaddr(habits_role, tls_cluster, certs, home, line_host, dsn_host, ok):
    pgpass = home / ".pgpass"
    pgpass.write_text(f"{line_host}:{tls_cluster.port}:postgres:{ROLE}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    dsn = (f"{dsn_host} hostaddr=127.0.0.1 port={tls_cluster.port} dbname=postgres user={ROLE} "
           f"sslmode=verify-ca sslrootcert={certs.ca_crt}")
    await assert_outcome(dsn, home, ok=ok)


async def test_pghostaddr(tls_target, home):
    await assert_outcome(tls_target(host="localhost", sslmode="verify-full"), home, ok=True,
                         env={"PGHOSTADDR": "127.0.0.1"})
    result = await assert_outcome(tls_target(host="localhost", sslmode="verify-full"), home, ok=False,
                                  env={"PGHOSTADDR": "127.0.0.1,127.0.0.1"})
    assert "PGHOSTADDR" in result.detail


async def test_cancel_goes_through_the_same_dialler(tls_target, home):
    params = parse_dsn(tls_target(host="db.invalid", hostaddr="127.0.0.1", sslmode="verify-ca"),
                       {"HOME": str(home)})
    connection = await connect(params)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await connection.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        assert await connection.fetchval("SELECT 1") == 1  # the cancel request reached the server
    finally:
        await connection.close()


# -- keepalives ----------------------------------------------------------------------------


def _socket_options(connection):
    sock = connection._transport.get_extra_info("socket")
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


@pytest.mark.parametrize("sslmode", ["disable", "verify-full"])
async def test_keepalive_options_reach_the_socket(habits_role, plain_cluster, tls_cluster, home, sslmode):
    cluster = plain_cluster if sslmode == "disable" else tls_cluster  # disable never reads sslrootcert
    dsn = (f"host=localhost port={cluster.port} dbname=postgres user={ROLE} password={PASSWORD} "
           f"sslmode={sslmode} sslrootcert={cluster.ca_file or '/nonexistent'} "
           "keepalives_idle=7 keepalives_interval=3 keepalives_count=4 tcp_user_timeout=19000")
    await assert_outcome(dsn, home, ok=True)  # psql takes the same options
    connection = await connect(parse_dsn(dsn, {"HOME": str(home)}))
    try:
        assert _socket_options(connection) == (1, 7, 3, 4, 19000)
    finally:
        await connection.close()
    connection = await connect(parse_dsn(dsn + " keepalives=0", {"HOME": str(home)}))
    try:
        assert _socket_options(connection)[0] == 0
    finally:
        await connection.close()


# -- options -------------------------------------------------------------------------------


async def shown_settings(dsn, environ, names):
    """SHOW each setting through situation's connection code and through psql."""
    connection = await connect(parse_dsn(dsn, environ))
    try:
        ours = [await connection.fetchval(f"SHOW {name}") for name in names]
    finally:
        await connection.close()
    if not PSQL:
        return ours, ours
    query = " UNION ALL ".join(f"SELECT current_setting('{name}')" for name in names)
    result = subprocess.run([PSQL, "-w", "-X", "-A", "-t", "-c", query, dsn],
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ},
                            capture_output=True, text=True, timeout=30, check=True)
    return ours, result.stdout.splitlines()


async def test_options_reach_the_server_like_psql(tls_target, home):
    dsn = tls_target(host="localhost", sslmode="verify-full",
                     options=r"'-c statement_timeout=1234 --lock-timeout=2s -c DateStyle=SQL,\\ DMY'")
    ours, theirs = await shown_settings(dsn, {"HOME": str(home)}, ["statement_timeout", "lock_timeout", "DateStyle"])
    assert ours == theirs == ["1234ms", "2s", "SQL, DMY"]


async def test_pgoptions(tls_target, home):
    environ = {"HOME": str(home), "PGOPTIONS": "-c work_mem=9MB"}
    ours, theirs = await shown_settings(tls_target(host="localhost", sslmode="verify-full"), environ, ["work_mem"])
    assert ours == theirs == ["9MB"]


async def test_unknown_setting_in_options_fails_like_psql(tls_target, home):
    result = await assert_outcome(tls_target(host="localhost", sslmode="verify-full", options="-cno_such_setting=1"),
                                  home, ok=False)
    assert "no_such_setting" in result.detail


async def test_options_beat_the_pools_defaults_but_not_search_path(tls_target, home):
    params = parse_dsn(tls_target(host="localhost", sslmode="verify-full", options="'-c jit=on -c work_mem=7MB'"),
                       {"HOME": str(home)})
    pool = await create_pool(params)
    try:
        async with pool.acquire() as connection:
            row = await connection.fetchrow("SELECT current_setting('jit') AS jit, current_setting('work_mem') AS wm,"
                                            " current_setting('search_path') AS sp")
    finally:
        await pool.close()
    assert dict(row) == {"jit": "on", "wm": "7MB", "sp": "situation"}


# -- load_balance_hosts (libpq 16; psql 15 does not know it) ---------------------------------


async def test_load_balance_hosts_random_reaches_every_host(habits_role, plain_cluster, tls_cluster, home):
    seen = set()
    for _ in range(40):
        result = await assert_outcome(
            two_hosts(plain_cluster, tls_cluster, sslmode="prefer", load_balance_hosts="random"), home, ok=True,
            compare=False)
        seen.add(result.detail)
        if len(seen) == 2:
            break
    assert seen == {"ssl=False", "ssl=True"}


async def test_load_balance_hosts_disable_keeps_the_order(habits_role, plain_cluster, tls_cluster, home):
    for _ in range(5):
        result = await assert_outcome(
            two_hosts(plain_cluster, tls_cluster, sslmode="prefer", load_balance_hosts="disable"), home, ok=True,
            compare=False)
        assert result.detail == "ssl=False"


# -- channel_binding and require_auth (libpq 16; psql 15 knows only channel_binding) ---------


@pytest.mark.parametrize("value", ["disable", "prefer"])
async def test_channel_binding_disable_and_prefer_connect_like_psql(tls_target, home, value):
    await assert_outcome(tls_target(host="localhost", sslmode="verify-full", channel_binding=value), home, ok=True)


async def test_channel_binding_require_is_refused(tls_target, home):
    # psql connects (the server offers SCRAM-SHA-256-PLUS over TLS); asyncpg cannot do it.
    result = await assert_outcome(tls_target(host="localhost", sslmode="verify-full", channel_binding="require"),
                                  home, ok=False, compare=False)
    assert "SCRAM-SHA-256-PLUS" in result.detail


@pytest.mark.parametrize("sslmode", ["verify-full", "disable"])
@pytest.mark.parametrize("require_auth, ok", [
    ("scram-sha-256", True), ("password,scram-sha-256", True), ("!md5,!password", True),
    ("password", False), ("md5,none", False), ("!scram-sha-256", False),
])
async def test_require_auth_against_scram_servers(habits_role, tls_cluster, plain_cluster, certs, home,
                                                  sslmode, require_auth, ok):
    cluster = tls_cluster if sslmode == "verify-full" else plain_cluster
    dsn = cluster.uri(ROLE, PASSWORD, sslmode=sslmode, sslrootcert=certs.ca_crt, require_auth=require_auth)
    result = await assert_outcome(dsn, home, ok=ok, compare=False)
    if not ok:
        assert result.detail.startswith("server at localhost:") and "asked for scram-sha-256 authentication" in result.detail
        assert f"require_auth={require_auth} does not allow" in result.detail


class FakeServer:
    """Answers every start-up packet with one authentication request, and records what it receives."""

    def __init__(self, request: bytes):
        self.request = request
        self.received = b""

    async def handle(self, reader, writer):
        length = struct.unpack("!i", await reader.readexactly(4))[0]
        await reader.readexactly(length - 4)
        writer.write(self.request)
        await writer.drain()
        self.received += await reader.read(1000)
        writer.close()


@pytest.mark.parametrize("request_bytes, method", [
    (b"R\x00\x00\x00\x08\x00\x00\x00\x03", "password"),
    (b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt", "md5"),
    (b"R\x00\x00\x00\x08\x00\x00\x00\x00", "no"),
])
async def test_require_auth_hangs_up_before_sending_anything(home, request_bytes, method):
    fake = FakeServer(request_bytes)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dsn = f"host=127.0.0.1 port={port} user=u dbname=d password={PASSWORD} sslmode=disable require_auth=scram-sha-256"
        result = await assert_outcome(dsn, home, ok=False, compare=False)
    finally:
        server.close()
        await server.wait_closed()
    assert f"asked for {method} authentication" in result.detail and "no credentials were sent" in result.detail
    assert PASSWORD.encode() not in fake.received and b"p" not in fake.received[:1]


# -- the documented deviations and examples ---------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def doc_blocks(path, lang):
    text = (REPO / path).read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(rf"^\s*```{lang}\n(.*?)^\s*```", text, re.MULTILINE | re.DOTALL)]


async def test_tilde_in_file_options_is_the_home_directory(tls_target, certs, home):
    shutil.copy(certs.ca_crt, home / "ca.crt")
    dsn = tls_target(host="localhost", sslmode="verify-full", sslrootcert="~/ca.crt")
    await assert_outcome(dsn, home, ok=True, compare=False)  # libpq looks for a file named "~/ca.crt"


async def test_the_documented_service_entry_works_like_psql(habits_role, tls_cluster, certs, home, tmp_path):
    [entry] = [b for b in doc_blocks("docs/security.md", "ini") if "pg_service.conf" in b.splitlines()[0]]
    site = {"host=db.example.net": "host=localhost", "port=5432": f"port={tls_cluster.port}",
            "dbname=situation": "dbname=postgres", "sslrootcert=/etc/situation/ca.crt": f"sslrootcert={certs.ca_crt}"}
    for documented, here in site.items():
        assert documented in entry
        entry = entry.replace(documented, here)
    (tmp_path / "pg_service.conf").write_text(entry)
    env = {"PGSYSCONFDIR": str(tmp_path), "PGPASSWORD": PASSWORD}
    result = await assert_outcome(f"service=situation user={ROLE}", home, ok=True, env=env)
    assert result.detail == "ssl=True"


def test_every_documented_dsn_is_accepted(tmp_path):
    examples = [b.strip() for b in doc_blocks("docs/security.md", "text") if b.lstrip().startswith("host=")]
    examples += re.findall(r"postgresql://[^\s\"'<]+", (REPO / "README.md").read_text(encoding="utf-8"))
    assert len(examples) >= 3
    for example in examples:
        params = parse_dsn(example.replace("$DB_HOST", "db").replace("$DB_PORT", "5432"), {"HOME": str(tmp_path)})
        assert params.endpoints


@pytest.mark.parametrize("key", ["sslrootcert", "sslcert", "sslcrl"])
async def test_missing_explicit_files_are_refused_where_libpq_goes_on(tls_target, certs, home, key):
    # libpq connects without them (sslmode=require, no root file needed); situation stops.
    params = {"sslrootcert": certs.ca_crt, key: home / "missing.pem"}
    dsn = tls_target(host="localhost", sslmode="require", **params)
    result = await assert_outcome(dsn, home, ok=False, compare=False)
    assert key in result.detail and "does not exist" in result.detail
    if PSQL:
        assert psql_outcome(dsn, {"HOME": str(home)}).ok
