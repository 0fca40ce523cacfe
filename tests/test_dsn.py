"""Unit tests for situation.connection.dsn: libpq-compatible DSN parsing, validation, .pgpass, redaction."""

from __future__ import annotations

import os
import pwd

import pytest

from situation.connection import dsn as dsn_module
from situation.connection.dsn import (
    SSLMODES,
    UNSUPPORTED_LIBPQ_OPTIONS,
    ConnectParams,
    Endpoint,
    parse_dsn,
    password_for,
    pgpass_password,
    redact_dsn,
)
from situation.errors import ConfigError, DsnError

SECRET = "hunter2-s3cret"


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def env(fake_home):
    """A minimal, explicit environment so the real one never leaks into a test."""
    return {"HOME": str(fake_home), "PGUSER": "alice"}


@pytest.fixture(scope="module")
def socket_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sockets"))


@pytest.fixture(autouse=True)
def socket_dirs(socket_dir, monkeypatch):
    """Make the default-host rule deterministic: a missing directory, then an existing one."""
    monkeypatch.setattr(dsn_module, "DEFAULT_SOCKET_DIRS", ("/nonexistent/situation-test", socket_dir))
    return socket_dir


def parse(text, env, **extra):
    return parse_dsn(text, {**env, **extra})


def error_of(text, env, **extra) -> str:
    with pytest.raises(DsnError) as info:
        parse(text, env, **extra)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert SECRET not in message
    return message


def hosts(params: ConnectParams) -> list[tuple[str, int]]:
    return [(e.host, e.port) for e in params.endpoints]


# --------------------------------------------------------------------------- URI form


def test_uri_with_every_part(env):
    p = parse(f"postgresql://bob:{SECRET}@db.example.com:6432/inventory?sslmode=verify-full&application_name=agent",
              env)
    assert hosts(p) == [("db.example.com", 6432)]
    assert (p.user, p.password, p.database) == ("bob", SECRET, "inventory")
    assert p.sslmode == "verify-full"
    assert p.application_name == "agent"


def test_postgres_scheme_is_accepted(env):
    assert parse("postgres://h/d", env).database == "d"


def test_uri_percent_decoding_in_every_part(env):
    p = parse("postgresql://us%40er:p%3Aw%2Fd@h%2Dx/my%20db?application_name=a%26b%3Dc", env)
    assert (p.user, p.password, p.database) == ("us@er", "p:w/d", "my db")
    assert hosts(p) == [("h-x", 5432)]
    assert p.application_name == "a&b=c"


def test_uri_ipv6_host_without_brackets(env):
    p = parse("postgresql://[::1]:5433,[2001:db8::7]/db", env)
    assert hosts(p) == [("::1", 5433), ("2001:db8::7", 5432)]
    assert not p.endpoints[0].is_unix_socket


def test_uri_percent_encoded_socket_directory(env):
    p = parse("postgresql://%2Fvar%2Frun%2Fpostgresql:5433/db", env)
    assert hosts(p) == [("/var/run/postgresql", 5433)]
    assert p.endpoints[0].is_unix_socket


def test_uri_query_host_and_port_override_authority(env):
    p = parse("postgresql://ignored:1111/db?host=/tmp&port=6000", env)
    assert hosts(p) == [("/tmp", 6000)]


def test_uri_without_host_uses_query_host(env):
    assert hosts(parse("postgresql:///db?host=%2Fsock", env)) == [("/sock", 5432)]


def test_uri_multi_host_ports(env):
    assert hosts(parse("postgresql://a:1,b:2/db", env)) == [("a", 1), ("b", 2)]
    assert hosts(parse("postgresql://a:1,b/db", env)) == [("a", 1), ("b", 5432)]
    assert hosts(parse("postgresql://a,b:2/db", env)) == [("a", 5432), ("b", 2)]
    assert hosts(parse("postgresql://a,b/db?port=7", env)) == [("a", 7), ("b", 7)]


def test_uri_ssl_true_is_jdbc_spelling_of_require(env):
    assert parse("postgresql://h/db?ssl=true", env).sslmode == "require"


def test_empty_uri_means_defaults(env, socket_dirs):
    p = parse("postgresql://", env)
    assert hosts(p) == [(socket_dirs, 5432)]
    assert (p.user, p.database) == ("alice", "alice")


def test_uri_empty_user_and_password_are_unset(env):
    p = parse("postgresql://:@h/db", env, PGPASSWORD="frompg")
    assert (p.user, p.password) == ("alice", "frompg")


@pytest.mark.parametrize("uri", ["mysql://h/db", "http://h/", "jdbc:postgresql://h/db"])
def test_unsupported_scheme(env, uri):
    message = error_of(uri, env)
    assert "unsupported scheme" in message and "postgresql://" in message
    assert uri.split("//")[0] in message


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://h/d%zz", "percent-encoding"),
        ("postgresql://h/d%00x", "%00"),
        ("postgresql://h/%ff", "UTF-8"),
        ("postgresql://[::1:5432/db", '"]"'),
        ("postgresql://[]/db", "[]"),
        ("postgresql://[::1]x/db", "after the IPv6"),
        ("postgresql://h/db?sslmode", 'no "="'),
        ("postgresql://h/db?options=-c%20a=b", "second"),
        ("postgresql://h:abc/db", "port"),
    ],
)
def test_uri_syntax_errors(env, uri, expected):
    assert expected in error_of(uri, env)


def test_uri_bad_percent_in_password_is_not_echoed(env):
    message = error_of("postgresql://u:hunter2-s3%zzcret@h/db", env)
    assert "password" in message and "s3" not in message


# --------------------------------------------------------------------------- key=value form


def test_keyword_value_basic_with_spaces_around_equals(env):
    p = parse("host = db.example.com   port= 6432 dbname =inv user=bob", env)
    assert hosts(p) == [("db.example.com", 6432)]
    assert (p.user, p.database) == ("bob", "inv")


def test_keyword_value_quoting_and_escapes(env):
    p = parse(r"password='it\'s a \\ secret' application_name='two words' dbname=a\ b", env)
    assert p.password == "it's a \\ secret"
    assert p.application_name == "two words"
    assert p.database == "a b"


def test_keyword_value_empty_quoted_value(env, socket_dirs):
    p = parse("host='' dbname=x", env, PGHOST="envhost")
    assert hosts(p) == [(socket_dirs, 5432)]  # an explicit empty value hides PGHOST, like libpq


def test_duplicate_keys_last_wins(env):
    assert parse("sslmode=disable sslmode=verify-ca", env).sslmode == "verify-ca"
    assert parse("postgresql://h/db?sslmode=disable&sslmode=require", env).sslmode == "require"


def test_keyword_value_multi_host(env):
    assert hosts(parse("host=a,b port=1,2", env)) == [("a", 1), ("b", 2)]
    assert hosts(parse("host=a,b,c port=9", env)) == [("a", 9), ("b", 9), ("c", 9)]
    assert hosts(parse("host=a,,b port=1,,3", env))[1][1] == 5432


def test_keyword_value_bracketed_ipv6_is_unbracketed(env):
    assert hosts(parse("host=[::1] port=5", env)) == [("::1", 5)]


def test_port_count_mismatch(env):
    message = error_of("host=a,b port=1,2,3", env)
    assert "port=1,2,3" in message and "3 ports for 2 hosts" in message


def test_missing_equals(env):
    message = error_of("host=a stray", env)
    assert 'missing "=" after "stray"' in message


def test_unquoted_password_with_space_is_not_echoed(env):
    message = error_of(f"password=hunter2 {SECRET.split('-')[1]} host=x", env)
    assert "s3cret" not in message and "quote" in message


def test_unterminated_quote_does_not_echo_value(env):
    message = error_of(f"host=x password='{SECRET}", env)
    assert "unterminated" in message and "password" in message


@pytest.mark.parametrize("text", ["localhost", "db.example.com:5432/db", "mydb"])
def test_neither_form(env, text):
    message = error_of(text, env)
    assert "postgresql://" in message and "key=value" in message
    assert text not in message


def test_empty_or_blank_dsn_uses_environment(env):
    for text in (None, "", "   "):
        p = parse(text, env, PGHOST="envhost", PGPORT="7000", PGDATABASE="envdb")
        assert hosts(p) == [("envhost", 7000)] and p.database == "envdb"


# --------------------------------------------------------------------------- option names


@pytest.mark.parametrize("key", UNSUPPORTED_LIBPQ_OPTIONS)
def test_libpq_options_we_do_not_support(env, key):
    message = error_of(f"host=h {key}={SECRET}", env)
    assert message == f"{key} is a libpq option situation does not support; remove it"


def test_unknown_option_names_key_not_value_and_suggests(env):
    message = error_of(f"host=h pasword={SECRET}", env)
    assert message.startswith('unknown connection option "pasword"; did you mean "password"?')
    assert "libpq options: host, hostaddr, port" in message


def test_unknown_option_alias_hint(env):
    assert 'did you mean "dbname"' in error_of("postgresql://h/?database=x", env)


def test_requiressl(env):
    assert parse("requiressl=1", env).sslmode == "require"
    assert parse("requiressl=0", env).sslmode == "prefer"
    assert parse("requiressl=1 sslmode=disable", env).sslmode == "disable"
    assert "requiressl=yes" in error_of("requiressl=yes", env)


def test_fallback_application_name(env):
    assert parse("fallback_application_name=fb", env).application_name == "fb"
    assert parse("fallback_application_name=fb", env, PGAPPNAME="envapp").application_name == "envapp"
    assert parse("application_name=a fallback_application_name=fb", env).application_name == "a"


def test_client_encoding(env):
    parse("client_encoding=UTF8", env)
    parse("client_encoding=utf-8", env)
    message = error_of("client_encoding=LATIN1", env)
    assert "client_encoding=LATIN1" in message and "UTF8" in message
    assert "PGCLIENTENCODING=SQL_ASCII" in error_of("", env, PGCLIENTENCODING="SQL_ASCII")


def test_gssencmode(env):
    parse("gssencmode=disable", env)
    parse("gssencmode=prefer", env)
    assert "GSSAPI" in error_of("gssencmode=require", env)
    assert "gssencmode=maybe" in error_of("gssencmode=maybe", env)


def test_sslcertmode(env):
    assert parse("", env).sslcertmode == "allow"
    assert parse("sslcertmode=disable", env).sslcertmode == "disable"
    assert "not supported" in error_of("sslcertmode=require", env)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("sslmode=bogus", ["sslmode=bogus", "verify-full"]),
        ("sslmode=''", ["sslmode=", "verify-full"]),
        ("sslmode=VERIFY-FULL", ["sslmode=VERIFY-FULL"]),
        ("port=abc", ["port=abc", "65535"]),
        ("port=0", ["port=0", "65535"]),
        ("port=70000", ["port=70000"]),
        ("sslnegotiation=fast", ["sslnegotiation=fast", "postgres, direct"]),
        ("sslsni=yes", ["sslsni=yes", "0, 1"]),
        ("ssl_min_protocol_version=TLSv9", ["ssl_min_protocol_version=TLSv9", "TLSv1.3"]),
        ("ssl_max_protocol_version=SSLv3", ["ssl_max_protocol_version=SSLv3"]),
        ("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
         ["invalid SSL protocol version range"]),
        ("connect_timeout=abc", ["connect_timeout=abc", "seconds"]),
        ("connect_timeout=2.5", ["connect_timeout=2.5"]),
        ("target_session_attrs=master", ["target_session_attrs=master", "prefer-standby"]),
        ("sslcertmode=maybe", ["sslcertmode=maybe", "disable, allow"]),
    ],
)
def test_validation_errors(env, text, names):
    message = error_of(f"host=h password={SECRET} {text}", env)
    for name in names:
        assert name in message


def test_dsn_error_is_a_config_error():
    assert issubclass(DsnError, ConfigError)


def test_protocol_versions_are_case_insensitive_and_canonical(env):
    p = parse("ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSV1.3", env)
    assert (p.ssl_min_protocol_version, p.ssl_max_protocol_version) == ("TLSv1.3", "TLSv1.3")
    assert parse("ssl_min_protocol_version=''", env).ssl_min_protocol_version == "TLSv1.2"


@pytest.mark.parametrize(("value", "expected"), [("10", 10.0), (" 3 ", 3.0), ("1", 2.0), ("0", None), ("-5", None)])
def test_connect_timeout(env, value, expected):
    assert parse(f"connect_timeout='{value}'", env).connect_timeout == expected


def test_target_session_attrs_and_sslsni(env):
    assert parse("target_session_attrs=read-write", env).target_session_attrs == "read-write"
    assert parse("", env).target_session_attrs is None
    assert parse("sslsni=0", env).sslsni is False
    assert parse("", env).sslsni is True


# --------------------------------------------------------------------------- environment


def test_environment_fills_unset_options_and_dsn_wins(env):
    environ = {**env, "PGHOST": "envhost", "PGPORT": "7000", "PGDATABASE": "envdb", "PGUSER": "envuser",
               "PGPASSWORD": "envpw", "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "9"}
    p = parse_dsn("host=dsnhost dbname=dsndb sslmode=verify-ca", environ)
    assert hosts(p) == [("dsnhost", 7000)]
    assert (p.database, p.user, p.password) == ("dsndb", "envuser", "envpw")
    assert (p.sslmode, p.connect_timeout) == ("verify-ca", 9.0)


def test_empty_environment_values_count_as_unset(env, socket_dirs):
    p = parse("", env, PGHOST="", PGSSLMODE="", PGPORT="", PGHOSTADDR="", PGSERVICE="")
    assert hosts(p) == [(socket_dirs, 5432)] and p.sslmode == "prefer"


def test_every_pgssl_variable(env):
    p = parse("", env, PGSSLMODE="verify-ca", PGSSLNEGOTIATION="direct", PGSSLROOTCERT="/ca.pem",
              PGSSLCERT="/c.pem", PGSSLKEY="/k.pem", PGSSLCRL="/crl.pem", PGSSLCRLDIR="/crls",
              PGSSLSNI="0", PGSSLCERTMODE="disable", PGSSLMINPROTOCOLVERSION="tlsv1.2",
              PGSSLMAXPROTOCOLVERSION="TLSv1.3", PGTARGETSESSIONATTRS="primary", PGAPPNAME="app",
              PGPASSFILE="/pgpass")
    assert (p.sslmode, p.sslnegotiation, p.sslrootcert, p.sslcert, p.sslkey) == (
        "verify-ca", "direct", "/ca.pem", "/c.pem", "/k.pem")
    assert (p.sslcrl, p.sslcrldir, p.sslsni, p.sslcertmode) == ("/crl.pem", "/crls", False, "disable")
    assert (p.ssl_min_protocol_version, p.ssl_max_protocol_version) == ("TLSv1.2", "TLSv1.3")
    assert (p.target_session_attrs, p.application_name, p.passfile) == ("primary", "app", "/pgpass")


def test_env_validation_names_the_variable(env):
    message = error_of("", env, PGSSLMODE="bogus")
    assert message.startswith("PGSSLMODE=bogus: invalid sslmode")
    assert error_of("", env, PGPORT="x").startswith("PGPORT=x:")
    assert error_of("", env, PGSSLSNI="2").startswith("PGSSLSNI=2:")


def test_pgrequiressl(env):
    assert parse("", env, PGREQUIRESSL="1").sslmode == "require"
    assert parse("", env, PGREQUIRESSL="0").sslmode == "prefer"
    assert parse("", env, PGREQUIRESSL="1", PGSSLMODE="verify-ca").sslmode == "verify-ca"
    assert parse("sslmode=disable", env, PGREQUIRESSL="1").sslmode == "disable"
    assert "PGREQUIRESSL=true" in error_of("", env, PGREQUIRESSL="true")


@pytest.mark.parametrize("var", ["PGSSLCOMPRESSION",
                                 "PGKRBSRVNAME"])
def test_unsupported_environment_variables(env, var):
    message = error_of("host=h", env, **{var: "x"})
    assert message.startswith(f"{var} is set") and f"unset {var}" in message


def test_password_sources(env):
    assert parse("", env, PGPASSWORD="envpw").password == "envpw"
    assert parse(f"password={SECRET}", env, PGPASSWORD="envpw").password == SECRET
    assert parse("password=''", env, PGPASSWORD="envpw").password is None  # explicit empty hides PGPASSWORD
    assert parse("", env).password is None


# --------------------------------------------------------------------------- defaults


def test_defaults(env, fake_home, socket_dirs):
    p = parse("", env)
    assert hosts(p) == [(socket_dirs, 5432)] and p.endpoints[0].is_unix_socket
    assert (p.user, p.database, p.password) == ("alice", "alice", None)
    assert (p.sslmode, p.sslnegotiation, p.sslrootcert, p.sslcert, p.sslkey) == ("prefer", "postgres", None, None, None)
    assert (p.ssl_min_protocol_version, p.ssl_max_protocol_version) == ("TLSv1.2", None)
    assert (p.connect_timeout, p.application_name, p.target_session_attrs) == (None, None, None)
    assert p.home == str(fake_home)
    assert p.passfile == os.path.join(str(fake_home), ".pgpass")


def test_default_host_is_localhost_without_socket_dirs(env, monkeypatch, tmp_path):
    monkeypatch.setattr(dsn_module, "DEFAULT_SOCKET_DIRS", (str(tmp_path / "nope"),))
    assert hosts(parse("", env)) == [("localhost", 5432)]


def test_default_user_and_home_from_passwd():
    account = pwd.getpwuid(os.getuid())
    p = parse_dsn("host=h", {})
    assert (p.user, p.database, p.home) == (account.pw_name, account.pw_name, account.pw_dir)


def test_passfile_option_beats_pgpassfile(env):
    assert parse("passfile=/a", env, PGPASSFILE="/b").passfile == "/a"


def test_environ_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("PGHOST", "from-os-environ")
    monkeypatch.setenv("PGUSER", "u")
    assert hosts(parse_dsn(None))[0][0] == "from-os-environ"


# --------------------------------------------------------------------------- sslrootcert=system, direct TLS


def test_sslrootcert_system_defaults_to_verify_full(env):
    p = parse("host=h sslrootcert=system", env)
    assert (p.sslmode, p.sslrootcert) == ("verify-full", "system")
    assert parse("", env, PGSSLROOTCERT="system").sslmode == "verify-full"
    assert parse("sslrootcert=system sslmode=verify-full", env).sslmode == "verify-full"


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_sslrootcert_system_refuses_weaker_modes(env, mode):
    message = error_of(f"sslrootcert=system sslmode={mode}", env)
    assert message.startswith(f'weak sslmode "{mode}" may not be used with sslrootcert=system (use "verify-full")')


def test_sslrootcert_system_with_env_mode_names_variable(env):
    assert "PGSSLMODE" in error_of("sslrootcert=system", env, PGSSLMODE="require")
    assert "weak sslmode" in error_of("requiressl=1 sslrootcert=system", env)


def test_sslrootcert_system_file_spelling_is_a_file(env):
    assert parse("sslrootcert=./system", env).sslmode == "prefer"


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_direct_negotiation_allowed_with_strict_modes(env, mode):
    assert parse(f"sslnegotiation=direct sslmode={mode}", env).sslnegotiation == "direct"


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_direct_negotiation_refused_with_lax_modes(env, mode):
    message = error_of(f"sslnegotiation=direct sslmode={mode}", env)
    assert "sslnegotiation=direct" in message and mode in message and "plaintext" in message


def test_direct_negotiation_from_env_with_default_mode(env):
    assert "sslnegotiation=direct" in error_of("", env, PGSSLNEGOTIATION="direct")


# --------------------------------------------------------------------------- .pgpass


@pytest.fixture
def pgpass(tmp_path):
    def write(*lines, mode=0o600):
        path = tmp_path / "pgpass"
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(mode)
        return str(path)

    return write


def params_with(env, passfile, text="host=db port=5432 dbname=app user=bob"):
    return parse(text, env, PGPASSFILE=passfile)


def test_pgpass_exact_match(env, pgpass):
    p = params_with(env, pgpass("other:5432:app:bob:no", "db:5432:app:bob:yes"))
    assert pgpass_password(p, p.endpoints[0]) == "yes"


def test_pgpass_first_match_wins_and_comments_ignored(env, pgpass):
    p = params_with(env, pgpass("#db:5432:app:bob:comment", "", "db:5432", "*:*:*:*:first", "db:5432:app:bob:second"))
    assert pgpass_password(p, p.endpoints[0]) == "first"


def test_pgpass_wildcards_per_field(env, pgpass):
    path = pgpass("db:*:app:eve:no", "*:5432:*:bob:port-and-user")
    p = params_with(env, path)
    assert pgpass_password(p, p.endpoints[0]) == "port-and-user"
    assert pgpass_password(p, Endpoint("db", 6543)) is None


def test_pgpass_escapes(env, pgpass):
    path = pgpass(r"db:5432:a\:b:bob:pa\:ss\\word:ignored")
    p = params_with(env, path, "host=db dbname=a:b user=bob")
    assert pgpass_password(p, p.endpoints[0]) == "pa:ss\\word"


def test_pgpass_escaped_star_is_literal(env, pgpass):
    path = pgpass(r"db:5432:\*:bob:star")
    p = params_with(env, path)
    assert pgpass_password(p, p.endpoints[0]) is None
    p = params_with(env, path, "host=db dbname=* user=bob")
    assert pgpass_password(p, p.endpoints[0]) == "star"


def test_pgpass_unix_socket_matches_localhost_and_path(env, pgpass):
    p = params_with(env, pgpass("localhost:5432:app:bob:local"), "host=/run/pg dbname=app user=bob")
    assert pgpass_password(p, p.endpoints[0]) == "local"
    p = params_with(env, pgpass("/run/pg:5432:app:bob:bypath"), "host=/run/pg dbname=app user=bob")
    assert pgpass_password(p, p.endpoints[0]) == "bypath"
    p = params_with(env, pgpass("localhost:5432:app:bob:tcp"), "host=db dbname=app user=bob")
    assert pgpass_password(p, p.endpoints[0]) is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610])
def test_pgpass_ignored_when_group_or_world_has_access(env, pgpass, mode):
    p = params_with(env, pgpass("*:*:*:*:pw", mode=mode))
    assert pgpass_password(p, p.endpoints[0]) is None


def test_pgpass_missing_or_not_a_file(env, tmp_path):
    for path in (str(tmp_path / "absent"), str(tmp_path)):
        p = params_with(env, path)
        assert pgpass_password(p, p.endpoints[0]) is None


def test_pgpass_default_location_under_home(env, tmp_path):
    (tmp_path / ".pgpass").write_text("*:*:*:*:homepw\n")
    (tmp_path / ".pgpass").chmod(0o600)
    p = parse("host=db", env, HOME=str(tmp_path))
    assert pgpass_password(p, p.endpoints[0]) == "homepw"


def test_password_for_prefers_explicit_password(env, pgpass):
    path = pgpass("*:*:*:*:frompgpass")
    p = params_with(env, path, f"host=db password={SECRET}")
    assert password_for(p, p.endpoints[0]) == SECRET
    p = params_with(env, path)
    assert password_for(p, p.endpoints[0]) == "frompgpass"


# --------------------------------------------------------------------------- redaction


def test_repr_and_str_hide_secrets(env):
    p = parse(f"host=h password={SECRET} sslpassword={SECRET}x", env)
    assert SECRET not in repr(p) and SECRET not in str(p)
    assert "sslpassword" not in repr(p) and "password=" not in repr(p)


def test_redacted_shows_stars_and_never_sslpassword(env):
    p = parse(f"host=h,/run/pg port=1,2 password={SECRET} sslpassword={SECRET} sslmode=require", env)
    text = p.redacted()
    assert SECRET not in text and "sslpassword" not in text
    assert text.startswith("postgresql://alice:***@h:1,%2Frun%2Fpg:2/alice?sslmode=require")
    assert ":***@" not in parse("host=h", env).redacted()


def test_redacted_round_trips(env):
    p = parse("postgresql://bob@[::1]:5,%2Fsock/my%20db?sslmode=verify-full&sslrootcert=/ca%20dir/ca.pem"
              "&sslsni=0&sslnegotiation=direct&ssl_max_protocol_version=TLSv1.3&connect_timeout=7"
              "&application_name=a%26b&target_session_attrs=read-only&sslcertmode=disable", env)
    assert parse(p.redacted(), env) == p


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://bob:{SECRET}@h/db",
        f"postgres://bob:{SECRET}@h1:1,h2:2/db?sslmode=require",
        f"postgresql://h/db?password={SECRET}&sslpassword={SECRET}",
        f"postgresql://h/db?pass%77ord={SECRET}",
        f"postgresql://bob:{SECRET}/x@h/db",
        f"postgresql://bob:{SECRET}?x@h/db",
        f"host=h password={SECRET} dbname=d",
        f"host=h password = '{SECRET} with spaces' dbname=d",
        f"host=h password='{SECRET}",
        f"host=h sslpassword={SECRET}",
        f"host=h pasword={SECRET}",
        f"host=h password {SECRET}",
        rf"password=x\ {SECRET}",
    ],
)
def test_redact_dsn_hides_secrets(text):
    redacted = redact_dsn(text)
    assert SECRET not in redacted
    assert "***" in redacted


def test_redact_dsn_keeps_harmless_parts():
    assert redact_dsn("postgresql://bob:pw@h:5/db?sslmode=require") == "postgresql://bob:***@h:5/db?sslmode=require"
    assert redact_dsn("host=h password='a b' passfile=/p") == "host=h password=*** passfile=/p"
    assert redact_dsn("postgresql://h:5432/db?application_name=me@corp") == (
        "postgresql://h:5432/db?application_name=me@corp")


@pytest.mark.parametrize("garbage", [None, b"bytes", "", "'", "=", "postgresql://", "postgresql://:@[", "%", 42,
                                     "password", "\x00\n\t", "a=" * 50])
def test_redact_dsn_never_raises(garbage):
    assert isinstance(redact_dsn(garbage), str)


def test_sslmodes_constant():
    assert SSLMODES == ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


# --------------------------------------------------------------------------- service files


def test_service_settings_fill_the_gaps_and_are_reported(env, tmp_path):
    services = tmp_path / "services.conf"
    services.write_text("[other]\nhost=nope\n\n  # comment\n[inv]\n  host=svc-host \nport=6000\nport=7000\n"
                        "requiressl=1\n[after]\nuser=nope\n")
    p = parse("service=inv dbname=d", env, PGSERVICEFILE=str(services), PGPORT="9")
    assert hosts(p) == [("svc-host", 6000)]  # first value in a section wins, the service beats PGPORT
    assert (p.user, p.database, p.sslmode) == ("alice", "d", "require")
    assert (p.service, p.service_file) == ("inv", str(services))
    assert parse("host=h", env).service is None


def test_bad_service_values_name_the_file_and_line(env, tmp_path):
    services = tmp_path / "services.conf"
    services.write_text("[inv]\nsslmode=bogus\n")
    message = error_of("service=inv", env, PGSERVICEFILE=str(services))
    assert message.startswith(f'sslmode (service file "{services}" line 2)=bogus: invalid sslmode')


def test_system_service_file_default_location(env, monkeypatch, tmp_path):
    monkeypatch.setattr(dsn_module, "DEFAULT_SYSCONFDIR", str(tmp_path))
    (tmp_path / "pg_service.conf").write_text("[sys]\nhost=from-system\n")
    assert hosts(parse("service=sys", env)) == [("from-system", 5432)]


# --------------------------------------------------------------------------- hostaddr and keepalives


def test_hostaddr_pairs_with_hosts_and_ports(env):
    p = parse("host=a,b hostaddr=192.0.2.1,2001:db8::1 port=1,2", env)
    assert [(e.host, e.port, e.hostaddr) for e in p.endpoints] == [("a", 1, "192.0.2.1"), ("b", 2, "2001:db8::1")]
    assert not any(e.is_unix_socket for e in p.endpoints)
    alone = parse("hostaddr=192.0.2.1", env)
    assert [(e.host, e.hostaddr, e.name) for e in alone.endpoints] == [("", "192.0.2.1", "192.0.2.1")]
    assert parse(p.redacted(), env).endpoints == p.endpoints


def test_hostaddr_must_be_numeric(env):
    message = error_of("host=a hostaddr=db.example.com", env)
    assert message.startswith("hostaddr=db.example.com: db.example.com is not a numeric IP address")


def test_keepalives_default_on_and_parsed(env):
    default = parse("host=h", env).keepalives
    assert default.enabled and default.idle is None and default.user_timeout is None
    k = parse("host=h keepalives_idle=10 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=25000",
              env).keepalives
    assert (k.enabled, k.idle, k.interval, k.count, k.user_timeout) == (True, 10, 5, 3, 25000)
    assert parse("host=h keepalives=0", env).keepalives.enabled is False
    assert parse("host=h keepalives=2", env).keepalives.enabled is True
    assert "keepalives_idle=10" in parse("host=h keepalives_idle=10", env).redacted()


@pytest.mark.parametrize("text, words", [
    ("keepalives=yes", ("keepalives=yes", "1 (on")),
    ("keepalives_idle=0", ("keepalives_idle=0", "1 to 32767")),
    ("keepalives_count=500", ("keepalives_count=500", "1 to 127")),
    ("tcp_user_timeout=-1", ("tcp_user_timeout=-1", "milliseconds")),
])
def test_keepalive_errors(env, text, words):
    message = error_of(f"host=h {text}", env)
    assert all(word in message for word in words), message


# --------------------------------------------------------------------------- options


def test_options_are_split_like_the_server_does(env):
    # Two levels of backslashes: the key=value quoting, then the server's word splitting.
    p = parse(r"options='-c statement_timeout=5s -cwork_mem=8MB --lock-timeout=2s -c application_name=a\\ b\\\\c'",
              env)
    assert p.server_options == (("statement_timeout", "5s"), ("work_mem", "8MB"), ("lock_timeout", "2s"),
                                ("application_name", "a b\\c"))
    assert parse(p.redacted(), env).server_options == p.server_options
    assert parse("", env, PGOPTIONS="-c jit=on").server_options == (("jit", "on"),)
    assert parse("options=-c\\ jit=on", env).server_options == (("jit", "on"),)


@pytest.mark.parametrize("options, words", [
    ("-B 100", ("-B is not a setting", "-c name=value")),
    ("-c work_mem", ("has no value",)),
    ("-c", ("-c is not a setting",)),
    ("-c search_path=public", ("situation sets search_path to situation itself", "remove -c search_path")),
    ("--search-path=public", ("search_path",)),
])
def test_bad_options(env, options, words):
    message = error_of(f"host=h options='{options}'", env)
    assert message.startswith("options="), message
    assert all(word in message for word in words), message


def test_load_balance_hosts(env):
    assert parse("host=a,b", env).load_balance_hosts == "disable"
    assert parse("host=a,b load_balance_hosts=random", env).load_balance_hosts == "random"
    assert parse("host=a,b", env, PGLOADBALANCEHOSTS="random").load_balance_hosts == "random"
    assert "load_balance_hosts=random" in parse("host=a,b load_balance_hosts=random", env).redacted()
    assert "use one of disable, random" in error_of("load_balance_hosts=round-robin", env)


# --------------------------------------------------------------------------- channel_binding, require_auth


def test_channel_binding(env):
    parse("host=h channel_binding=disable", env)
    parse("host=h channel_binding=prefer", env, PGCHANNELBINDING="require")  # the DSN wins
    message = error_of("host=h channel_binding=require", env)
    assert "SCRAM-SHA-256-PLUS" in message and "verify-full" in message and "client certificate" in message
    assert error_of("host=h", env, PGCHANNELBINDING="require").startswith("PGCHANNELBINDING=require:")
    assert "use one of disable, prefer" in error_of("host=h channel_binding=maybe", env)


def test_require_auth(env):
    assert parse("host=h", env).require_auth is None
    allowed = parse("host=h require_auth=scram-sha-256,none", env).require_auth
    assert allowed.allows("scram-sha-256") and allowed.allows("none") and not allowed.allows("md5")
    forbidden = parse("host=h", env, PGREQUIREAUTH="!password,!md5").require_auth
    assert forbidden.allows("scram-sha-256") and not forbidden.allows("password")
    redacted = parse("host=h require_auth=!password,!md5", env).redacted()
    assert parse(redacted, env).require_auth == forbidden


@pytest.mark.parametrize("value, words", [
    ("scram-sha-256,!md5", ("cannot be mixed",)),
    ("kerberos", ("invalid require_auth method kerberos",)),
    ("md5,md5", ("listed twice",)),
])
def test_require_auth_errors(env, value, words):
    message = error_of(f"host=h require_auth={value}", env)
    assert all(word in message for word in words), message
