"""libpq-compatible connection strings, turned into validated, frozen settings.

``parse_dsn`` accepts the two forms libpq accepts -- a ``postgresql://`` URI or
whitespace-separated ``key=value`` pairs -- fills unset options from the PG*
environment variables, applies libpq's defaults and cross-option rules, and
returns a :class:`ConnectParams`. Nothing here touches the network.

Every problem is reported as a one-line :class:`~situation.errors.DsnError`
that names the option (or environment variable), the bad value and the fix.
Password and sslpassword values never appear in messages, ``repr`` or logs.

Deliberate departures from libpq, all in the direction of failing loudly:
options libpq knows but we do not implement are refused instead of ignored,
empty environment variables count as unset, ``requiressl``/``PGREQUIRESSL``
accept only 0 and 1, and ``sslsni`` only 0 and 1.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import pwd
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

import structlog

from situation.errors import DsnError
from situation.logs import terminal_text

log = structlog.get_logger("situation.dsn")

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSLNEGOTIATIONS = ("postgres", "direct")
SSLCERTMODES = ("disable", "allow")
LOAD_BALANCE_HOSTS = ("disable", "random")
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
GSSENCMODES_ACCEPTED = ("disable", "prefer")

DEFAULT_PORT = 5432
DEFAULT_MIN_TLS_VERSION = "TLSv1.2"
# Where libpq builds on Debian/Red Hat/upstream put the server socket; the first that exists wins.
DEFAULT_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")
# Where the system-wide pg_service.conf lives unless PGSYSCONFDIR says otherwise
# (`pg_config --sysconfdir` of Debian's libpq).
DEFAULT_SYSCONFDIR = "/etc/postgresql-common"

# Supported options and the environment variable that fills each one when the DSN leaves it unset.
_OPTION_ENV_VARS: dict[str, str | None] = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "fallback_application_name": None,
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "sslmode": "PGSSLMODE",
    "requiressl": None,  # rewritten to sslmode while parsing; PGREQUIRESSL is handled with sslmode
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslpassword": None,  # libpq has no environment variable for it
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcertmode": "PGSSLCERTMODE",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "client_encoding": "PGCLIENTENCODING",
    "gssencmode": "PGGSSENCMODE",
    "service": "PGSERVICE",
    "servicefile": "PGSERVICEFILE",
    "options": "PGOPTIONS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "channel_binding": "PGCHANNELBINDING",
    "require_auth": "PGREQUIREAUTH",
    "keepalives": None,  # libpq has no environment variables for the keepalive options
    "keepalives_idle": None,
    "keepalives_interval": None,
    "keepalives_count": None,
    "tcp_user_timeout": None,
}
SUPPORTED_OPTIONS = tuple(_OPTION_ENV_VARS)

# Options libpq accepts that we refuse rather than silently ignore.
UNSUPPORTED_LIBPQ_OPTIONS = (
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "requirepeer",
    "sslcompression",
    "sslkeylogfile",
    "min_protocol_version",
    "max_protocol_version",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
)

# Every keyword libpq knows: what tells a key=value PostgreSQL DSN from an SQLite path.
LIBPQ_OPTIONS = frozenset(SUPPORTED_OPTIONS) | frozenset(UNSUPPORTED_LIBPQ_OPTIONS)

# Environment variables libpq would act on but we cannot honour, with the option each one sets.
_UNSUPPORTED_ENV_VARS = {
    "PGSSLCOMPRESSION": "sslcompression",
    "PGKRBSRVNAME": "krbsrvname",
    "PGGSSLIB": "gsslib",
    "PGGSSDELEGATION": "gssdelegation",
    "PGREQUIREPEER": "requirepeer",
    "PGMINPROTOCOLVERSION": "min_protocol_version",
    "PGMAXPROTOCOLVERSION": "max_protocol_version",
}

# Names people reach for that libpq spells differently.
_OPTION_ALIASES = {
    "database": "dbname",
    "db": "dbname",
    "username": "user",
    "hostname": "host",
    "pass": "password",
    "passwd": "password",
    "ssl_mode": "sslmode",
    "timeout": "connect_timeout",
}

_SECRET_OPTIONS = frozenset({"password", "sslpassword"})
_TLS_VERSION_BY_LOWER = {version.lower(): version for version in TLS_VERSIONS}
_URI_SCHEMES = ("postgresql", "postgres")
# Scheme-like prefix; ':' is allowed so "jdbc:postgresql://" is reported as a scheme too.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-:]*)://")
_INTEGER_RE = re.compile(r"\s*[+-]?\d+\s*")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ACCEPTED_FORMS = (
    "use a URI like postgresql://user@host:5432/dbname?sslmode=verify-full "
    "or key=value pairs like 'host=db.example.com dbname=situation'"
)


@dataclass(frozen=True)
class Endpoint:
    """One server to try: a host name, an IP literal (no brackets) or a Unix-socket directory.

    ``hostaddr``, when set, is the IP address actually dialled; ``host`` is then
    only the name that TLS host-name checks and ``.pgpass`` use (it may be empty).
    """

    host: str
    port: int
    hostaddr: str | None = None

    @property
    def is_unix_socket(self) -> bool:
        # libpq: an absolute path is a socket directory, "@name" a Linux abstract socket.
        return self.hostaddr is None and self.host.startswith(("/", "@"))

    @property
    def name(self) -> str:
        """The host's name in messages and TLS checks: host, else hostaddr."""
        return self.host or self.hostaddr or ""


@dataclass(frozen=True)
class RequireAuth:
    """libpq's require_auth: the methods the server may ask for (or, negated, may not)."""

    methods: frozenset[str]
    negated: bool = False

    def allows(self, method: str) -> bool:
        return (method in self.methods) != self.negated

    def __str__(self) -> str:
        return ",".join(("!" if self.negated else "") + method for method in sorted(self.methods))


@dataclass(frozen=True)
class Keepalives:
    """TCP keepalive settings for the socket; None leaves the system's value."""

    enabled: bool = True  # libpq's default
    idle: int | None = None  # seconds of silence before the first probe (TCP_KEEPIDLE)
    interval: int | None = None  # seconds between probes (TCP_KEEPINTVL)
    count: int | None = None  # unanswered probes before the connection is dead (TCP_KEEPCNT)
    user_timeout: int | None = None  # ms that sent data may stay unacknowledged (TCP_USER_TIMEOUT)


@dataclass(frozen=True)
class ConnectParams:
    """Everything needed to open a connection, after the DSN, environment and defaults are merged."""

    endpoints: tuple[Endpoint, ...]
    user: str
    database: str
    password: str | None = field(repr=False)
    passfile: str
    sslmode: str
    sslnegotiation: str
    sslrootcert: str | None
    sslcert: str | None
    sslkey: str | None
    sslpassword: str | None = field(repr=False)
    sslcrl: str | None
    sslcrldir: str | None
    sslsni: bool
    sslcertmode: str
    ssl_min_protocol_version: str
    ssl_max_protocol_version: str | None
    connect_timeout: float | None
    application_name: str | None
    target_session_attrs: str | None
    home: str
    service: str | None = None
    service_file: str | None = None
    keepalives: Keepalives = field(default_factory=Keepalives)
    # Server settings from libpq's ``options`` (``-c name=value``), in the order given.
    server_options: tuple[tuple[str, str], ...] = ()
    load_balance_hosts: str = "disable"  # "random": try hosts (and their addresses) in random order
    require_auth: RequireAuth | None = None

    def redacted(self) -> str:
        """A URI for logs; an explicit password shows as ``***``, sslpassword never appears."""
        userinfo = quote(self.user, safe="")
        if self.password is not None:
            userinfo += ":***"
        hosts = ",".join(_uri_host(endpoint) for endpoint in self.endpoints)
        items = self._query_items()
        if any(endpoint.hostaddr for endpoint in self.endpoints):
            items.insert(0, ("hostaddr", ",".join(endpoint.hostaddr or "" for endpoint in self.endpoints)))
        query = "&".join(f"{key}={quote(value, safe='/')}" for key, value in items)
        return f"postgresql://{userinfo}@{hosts}/{quote(self.database, safe='')}?{query}"

    def _query_items(self) -> list[tuple[str, str]]:
        items = [("sslmode", self.sslmode)]
        if self.sslnegotiation != "postgres":
            items.append(("sslnegotiation", self.sslnegotiation))
        for key in ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir"):
            value = getattr(self, key)
            if value is not None:
                items.append((key, value))
        if not self.sslsni:
            items.append(("sslsni", "0"))
        if self.sslcertmode != "allow":
            items.append(("sslcertmode", self.sslcertmode))
        if self.ssl_min_protocol_version != DEFAULT_MIN_TLS_VERSION:
            items.append(("ssl_min_protocol_version", self.ssl_min_protocol_version))
        if self.ssl_max_protocol_version is not None:
            items.append(("ssl_max_protocol_version", self.ssl_max_protocol_version))
        if self.connect_timeout is not None:
            items.append(("connect_timeout", f"{self.connect_timeout:g}"))
        if self.application_name is not None:
            items.append(("application_name", self.application_name))
        if self.target_session_attrs is not None:
            items.append(("target_session_attrs", self.target_session_attrs))
        items.extend(_keepalive_items(self.keepalives))
        if self.load_balance_hosts != "disable":
            items.append(("load_balance_hosts", self.load_balance_hosts))
        if self.require_auth is not None:
            items.append(("require_auth", str(self.require_auth)))
        if self.server_options:
            items.append(("options", " ".join(f"-c {name}={_escape_option(value)}"
                                              for name, value in self.server_options)))
        return items


def _escape_option(value: str) -> str:
    return re.sub(r"([\\\s])", r"\\\1", value)


def _keepalive_items(keepalives: Keepalives) -> list[tuple[str, str]]:
    if not keepalives.enabled:
        return [("keepalives", "0")]
    named = (("keepalives_idle", keepalives.idle), ("keepalives_interval", keepalives.interval),
             ("keepalives_count", keepalives.count), ("tcp_user_timeout", keepalives.user_timeout))
    return [(key, str(value)) for key, value in named if value is not None]


def _uri_host(endpoint: Endpoint) -> str:
    if ":" in endpoint.host and not endpoint.is_unix_socket:
        host = f"[{endpoint.host}]"
    else:
        host = quote(endpoint.host, safe="")
    return f"{host}:{endpoint.port}"


# --------------------------------------------------------------------------- messages


def _escape(value: str, limit: int) -> str:
    """Control characters escaped and long text cut, so a message stays on one line."""
    return terminal_text(value, width=limit, ellipsis="...")


def _quoted(value: str, limit: int = 80) -> str:
    return '"' + _escape(value, limit).replace('"', '\\"') + '"'


def _show(value: str, limit: int = 80) -> str:
    """A value for a one-line message, quoted only when it is not a plain word or path."""
    shown = _escape(value, limit)
    return shown if re.fullmatch(r"[\w.,/:@+\-~]+", shown) else _quoted(value, limit)


@dataclass(frozen=True)
class _Setting:
    """A raw option value and where it came from: the option name (DSN) or the variable name."""

    value: str
    origin: str


def _bad_value(setting: _Setting, problem: str, fix: str) -> DsnError:
    return DsnError(f"{setting.origin}={_show(setting.value)}: {problem}; {fix}")


# --------------------------------------------------------------------------- parsing


def _percent_decode(text: str, what: str, secret: bool = False) -> str:
    """Strict percent-decoding like libpq: a lone '%' and an encoded NUL are errors."""
    shown = "" if secret else f" {_show(text)}"
    if _BAD_PERCENT_RE.search(text):
        raise DsnError(f"invalid percent-encoding in the URI {what}{shown}; write a literal % as %25")
    try:
        decoded = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise DsnError(f"the URI {what}{shown} is not UTF-8 once percent-decoded; fix its %XX escapes") from None
    if "\x00" in decoded:
        raise DsnError(f"the URI {what}{shown} contains %00, which is forbidden; remove it")
    return decoded


def _parse_uri(text: str, scheme_match: re.Match[str]) -> list[tuple[str, str]]:
    """Split ``postgresql://[user[:password]@][netloc][,netloc...][/dbname][?k=v&...]`` into options."""
    scheme = scheme_match.group(1)
    if scheme.lower() not in _URI_SCHEMES:
        raise DsnError(f'unsupported scheme "{_escape(scheme, 40)}://" in the DSN; {_ACCEPTED_FORMS}')
    rest = text[scheme_match.end() :]
    # A '/' or '?' inside a password must be percent-encoded, as in any URI.
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]

    pairs: list[tuple[str, str]] = []
    userinfo, at, netlocs = authority.rpartition("@")
    if at:
        pairs.extend(_uri_credentials(userinfo))
    elif _looks_like_password_for_port(netlocs):
        raise DsnError("the URI has a port that is not a number and no \"@\" (not shown: it may be a password); "
                       "write postgresql://user:password@host:5432/dbname")
    pairs.extend(_uri_hosts_and_ports(netlocs))
    path, _, query = tail.partition("?")
    dbname = path[1:]
    if dbname:
        pairs.append(("dbname", _percent_decode(dbname, "database name")))
    pairs.extend(_uri_query(query))
    return pairs


def _looks_like_password_for_port(netlocs: str) -> bool:
    """``user:password`` written without ``@host`` reads as a host with a port that is not a number."""
    for netloc in netlocs.split(","):
        if netloc.startswith("[") and "]" not in netloc:
            continue  # reported as a missing "]" while parsing
        after_host = netloc[netloc.find("]") + 1 :] if netloc.startswith("[") else netloc
        _, colon, port = after_host.partition(":")
        if colon and port.strip() and not port.strip().isdigit():
            return True
    return False


def _uri_credentials(userinfo: str) -> list[tuple[str, str]]:
    user, colon, password = userinfo.partition(":")
    pairs = []
    if user:
        pairs.append(("user", _percent_decode(user, "user name")))
    if colon and password:
        pairs.append(("password", _percent_decode(password, "password", secret=True)))
    return pairs


def _uri_hosts_and_ports(netlocs: str) -> list[tuple[str, str]]:
    """Turn ``h1:p1,[::1]:p2,h3`` into comma-joined host and port options, as libpq does."""
    hosts: list[str] = []
    ports: list[str] = []
    i, end = 0, len(netlocs)
    while True:
        if netlocs.startswith("[", i):
            close = netlocs.find("]", i)
            if close < 0:
                raise DsnError('IPv6 address in the URI is missing its "]"; write hosts like [::1]:5432')
            host = netlocs[i + 1 : close]
            if not host:
                raise DsnError('empty IPv6 address "[]" in the URI; write hosts like [::1]:5432')
            i = close + 1
            if i < end and netlocs[i] not in ":,":
                raise DsnError(f"unexpected text after the IPv6 address [{_show(host)}] in the URI; "
                               "write hosts like [::1]:5432")
        else:
            stop = _find_first(netlocs, ":,", i)
            host, i = netlocs[i:stop], stop
        port = ""
        if i < end and netlocs[i] == ":":
            stop = _find_first(netlocs, ",", i + 1)
            port, i = netlocs[i + 1 : stop], stop
        hosts.append(_percent_decode(host, "host"))
        ports.append(_percent_decode(port, "port"))
        if i < end and netlocs[i] == ",":
            i += 1
            continue
        break
    pairs = []
    if any(hosts):
        pairs.append(("host", ",".join(hosts)))
    if any(ports):
        pairs.append(("port", ",".join(ports)))
    return pairs


def _find_first(text: str, chars: str, start: int) -> int:
    positions = [pos for pos in (text.find(ch, start) for ch in chars) if pos >= 0]
    return min(positions, default=len(text))


def _uri_query(query: str) -> list[tuple[str, str]]:
    pairs = []
    for parameter in query.split("&"):
        if not parameter:
            continue
        raw_key, equals, raw_value = parameter.partition("=")
        key = _percent_decode(raw_key, "query parameter name")
        if not equals:
            raise DsnError(f'URI query parameter {_quoted(key)} has no "="; write ?key=value&key=value')
        if "=" in raw_value:
            raise DsnError(f'URI query parameter {_quoted(key)} has a second "=" in its value; '
                           "percent-encode it as %3D")
        value = _percent_decode(raw_value, f'value of {_quoted(key)}', secret=_looks_secret(key))
        if key == "ssl" and value == "true":
            key, value = "sslmode", "require"  # libpq accepts this JDBC spelling in URIs only
        pairs.append((key, value))
    return pairs


def _parse_keyword_value(text: str) -> list[tuple[str, str]]:
    """Split libpq's ``key = value key='quoted \\' value'`` form into (key, value) pairs."""
    pairs: list[tuple[str, str]] = []
    i, end = 0, len(text)
    while True:
        i = _skip_space(text, i)
        if i >= end:
            return pairs
        start = i
        while i < end and not text[i].isspace() and text[i] != "=":
            i += 1
        key = text[start:i]
        i = _skip_space(text, i)
        if i >= end or text[i] != "=":
            raise _missing_equals(key, pairs)
        i = _skip_space(text, i + 1)
        value, i = _read_value(text, i, key)
        pairs.append((key, value))


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _looks_secret(key: str) -> bool:
    """A key that holds, or was probably meant to hold, a secret (``password``, ``passwd``, ``pasword`` …)."""
    return key in _SECRET_OPTIONS or bool(_SECRET_KEY_RE.search(key))


def _missing_equals(word: str, previous: list[tuple[str, str]]) -> DsnError:
    if previous and previous[-1][0] in _SECRET_OPTIONS:
        # The stray word is probably the rest of a password with a space in it: do not echo it.
        return DsnError(f'text after the {previous[-1][0]} value has no "="; quote values that contain '
                        f"spaces, like {previous[-1][0]}='...'")
    if _looks_secret(word):
        return DsnError('a word that looks like a password option has no "="; write password=... '
                        "(or keep passwords in ~/.pgpass or a --db-file)")
    return DsnError(f'missing "=" after {_quoted(word)} in the key=value DSN; write key=value pairs '
                    "separated by spaces, quoting values with spaces as key='a b'")


def _read_value(text: str, i: int, key: str) -> tuple[str, int]:
    """Read one value at ``i``: quoted ('...' with \\' and \\\\) or bare up to whitespace."""
    chars: list[str] = []
    end = len(text)
    if i < end and text[i] == "'":
        i += 1
        while i < end:
            ch = text[i]
            if ch == "\\" and i + 1 < end:
                chars.append(text[i + 1])
                i += 2
            elif ch == "'":
                return "".join(chars), i + 1
            else:
                chars.append(ch)
                i += 1
        raise DsnError(f'unterminated quoted value for {_quoted(key)} in the key=value DSN; close it with \' '
                       "and write a quote inside it as \\'")
    while i < end and not text[i].isspace():
        if text[i] == "\\" and i + 1 < end:
            i += 1  # libpq lets a backslash escape the next character in bare values too
        chars.append(text[i])
        i += 1
    return "".join(chars), i


def _collect_options(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Check every key and keep the last value of each, like libpq."""
    options: dict[str, str] = {}
    for key, value in pairs:
        _check_option_name(key)
        if key == "requiressl":
            key, value = "sslmode", _sslmode_from_requiressl(_Setting(value, "requiressl"))
        options[key] = value
    return options


def _check_option_name(key: str) -> None:
    if key in _OPTION_ENV_VARS:
        return
    if key in UNSUPPORTED_LIBPQ_OPTIONS:
        raise DsnError(f"{key} is a libpq option situation does not support; remove it")
    suggestion = _OPTION_ALIASES.get(key.lower()) or next(
        iter(difflib.get_close_matches(key.lower(), SUPPORTED_OPTIONS, n=1, cutoff=0.75)), None)
    hint = f'did you mean "{suggestion}"? ' if suggestion else ""
    raise DsnError(f'unknown connection option {_quoted(key, 40)}; {hint}check its spelling '
                   f"(libpq options: {', '.join(SUPPORTED_OPTIONS)})")


def _sslmode_from_requiressl(setting: _Setting) -> str:
    # libpq rewrites requiressl to sslmode as it reads it: 1 -> require, anything else -> prefer.
    if setting.value == "1":
        return "require"
    if setting.value == "0":
        return "prefer"
    raise _bad_value(setting, "invalid value for the deprecated requiressl", "use 1 or 0, or better sslmode=require")


def _parse_options(dsn: str | None) -> dict[str, str]:
    text = (dsn or "").strip()
    if not text:
        return {}
    scheme = _SCHEME_RE.match(text)
    if scheme:
        return _collect_options(_parse_uri(text, scheme))
    if "=" in text:
        return _collect_options(_parse_keyword_value(text))
    raise DsnError(f"the DSN is neither a URI nor key=value pairs; {_ACCEPTED_FORMS}")


# --------------------------------------------------------------------------- resolution


class _Sources:
    """Looks an option up in the DSN, then the service file's section, then its
    environment variable (an empty variable counts as unset): libpq's order."""

    def __init__(self, options: Mapping[str, str], environ: Mapping[str, str],
                 service: Mapping[str, _Setting] | None = None) -> None:
        self.options = options
        self.environ = environ
        self.service = service or {}

    def get(self, key: str) -> _Setting | None:
        if key in self.options:
            return _Setting(self.options[key], key)
        if key in self.service:
            return self.service[key]
        var = _OPTION_ENV_VARS.get(key)
        return self.env(var) if var else None

    def env(self, var: str) -> _Setting | None:
        value = self.environ.get(var)
        return _Setting(value, var) if value else None

    def text(self, key: str) -> str | None:
        """A free-form option; an empty value means "use the default"."""
        setting = self.get(key)
        return setting.value if setting and setting.value else None


# --------------------------------------------------------------------------- service files


@dataclass(frozen=True)
class _Service:
    name: str
    file: str
    settings: dict[str, _Setting]


def _service_files(sources: _Sources, home: str) -> list[str]:
    """libpq's search order: servicefile (or PGSERVICEFILE, else ~/.pg_service.conf), then the system file."""
    first = sources.text("servicefile") or (os.path.join(home, ".pg_service.conf") if home else None)
    sysconfdir = sources.environ.get("PGSYSCONFDIR") or DEFAULT_SYSCONFDIR
    return [path for path in (first, os.path.join(sysconfdir, "pg_service.conf")) if path]


def _load_service(sources: _Sources, home: str) -> _Service | None:
    name = sources.text("service")
    if name is None:
        return None
    files = _service_files(sources, home)
    for path in files:
        settings = _read_service_section(path, name)
        if settings is not None:
            return _Service(name, path, settings)
    searched = " and ".join(f'"{path}"' for path in files)
    raise DsnError(f"service {_show(name)} is not defined in {searched}; add a [{_escape(name, 40)}] section "
                   "to one of them, or point servicefile (PGSERVICEFILE) at the right file")


def _read_service_section(path: str, name: str) -> dict[str, _Setting] | None:
    """The settings of section ``[name]`` of ``path``; None when the file or section is missing."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise DsnError(f'service file "{path}" cannot be read ({reason}); fix its permissions or content') from None
    settings: dict[str, _Setting] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if settings is not None:
                break  # the section ends where the next one begins
            if line.endswith("]") and line[1:-1] == name:
                settings = {}
            continue
        if settings is not None:
            _add_service_line(settings, line, f'"{path}" line {number}')
    return settings


def _add_service_line(settings: dict[str, _Setting], line: str, where: str) -> None:
    key, equals, value = line.partition("=")
    if not equals:
        raise DsnError(f'syntax error in service file {where}: "=" is missing; write key=value')
    if key in ("service", "servicefile"):
        raise DsnError(f"service file {where} sets {key}, but services cannot be nested; remove the line")
    if key == "requiressl":
        key, value = "sslmode", _sslmode_from_requiressl(_Setting(value, f"service file {where}: requiressl"))
    try:
        _check_option_name(key)
    except DsnError as exc:
        raise DsnError(f"service file {where}: {exc}") from None
    # libpq keeps the first value of a key within a section.
    settings.setdefault(key, _Setting(value, f"{key} (service file {where})"))


def _reject_unsupported_environment(environ: Mapping[str, str]) -> None:
    for var, option in _UNSUPPORTED_ENV_VARS.items():
        if environ.get(var):
            raise DsnError(f"{var} is set, but situation does not support the libpq option {option}; "
                           f"unset {var}")


def _choose(setting: _Setting, accepted: tuple[str, ...], what: str) -> str:
    if setting.value in accepted:
        return setting.value
    raise _bad_value(setting, f"invalid {what}", f"use one of {', '.join(accepted)}")


def _os_account() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        return None


def _home_directory(environ: Mapping[str, str]) -> str:
    if environ.get("HOME"):
        return environ["HOME"]
    account = _os_account()
    return account.pw_dir if account else ""


def _user_name(sources: _Sources) -> str:
    user = sources.text("user")
    if user:
        return user
    account = _os_account()
    if account is None:
        raise DsnError(f"cannot tell which database user to use: uid {os.getuid()} has no passwd entry; "
                       "set user= in the DSN or PGUSER")
    return account.pw_name


def _default_host() -> str:
    return next((d for d in DEFAULT_SOCKET_DIRS if os.path.isdir(d)), "localhost")


def _split_hosts(sources: _Sources, default: bool = True) -> tuple[list[str], _Setting | None]:
    setting = sources.get("host")
    if not (setting and setting.value) and not default:
        return [], None
    raw = setting.value.split(",") if setting and setting.value else [""]
    return [_normalise_host(host) for host in raw], setting


def _normalise_host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]  # tolerate a bracketed IPv6 literal outside a URI
    return host or _default_host()


def _split_hostaddrs(sources: _Sources) -> tuple[list[str | None], _Setting | None]:
    setting = sources.get("hostaddr")
    if setting is None or not setting.value:
        return [], None
    addresses: list[str | None] = []
    for item in setting.value.split(","):
        item = item.strip()
        if item and not _is_ip_address(item):
            raise _bad_value(setting, f"{_show(item)} is not a numeric IP address",
                             "give addresses like 192.0.2.10 or 2001:db8::10, and names in host")
        addresses.append(item or None)
    return addresses, setting


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _split_ports(sources: _Sources, host_count: int, host_setting: _Setting | None) -> list[int]:
    setting = sources.get("port")
    if setting is None or not setting.value:
        return [DEFAULT_PORT] * host_count
    ports = [_port_number(item, setting) for item in setting.value.split(",")]
    if len(ports) == 1:
        return ports * host_count
    if len(ports) != host_count:
        hosts_from = host_setting.origin if host_setting else "the default host"
        raise _bad_value(setting, f"{len(ports)} ports for {host_count} hosts (from {hosts_from})",
                         "give one port for all hosts or one port per host")
    return ports


def _port_number(item: str, setting: _Setting) -> int:
    if not item.strip():
        return DEFAULT_PORT
    if _INTEGER_RE.fullmatch(item):
        number = int(item)
        if 1 <= number <= 65535:
            return number
    raise _bad_value(setting, f"invalid port number {_show(item)}", "use an integer from 1 to 65535")


def _endpoints(sources: _Sources) -> tuple[Endpoint, ...]:
    """host, hostaddr and port lists paired up by position, as libpq pairs them."""
    addresses, address_setting = _split_hostaddrs(sources)
    hosts, host_setting = _split_hosts(sources, default=not addresses)
    if addresses and hosts and len(hosts) != len(addresses):
        raise DsnError(f"{len(hosts)} host names (from {host_setting.origin}) for {len(addresses)} "
                       f"hostaddr values (from {address_setting.origin}); give one address per host")
    if addresses and not hosts:
        hosts = [""] * len(addresses)
        host_setting = address_setting
    if not addresses:
        addresses = [None] * len(hosts)
    ports = _split_ports(sources, len(hosts), host_setting)
    return tuple(Endpoint(host, port, address) for host, port, address in zip(hosts, ports, addresses))


# Settings the agent fixes itself: its queries name tables without a schema.
_RESERVED_SERVER_SETTINGS = {"search_path": "situation"}


def _server_options(sources: _Sources) -> tuple[tuple[str, str], ...]:
    """libpq's ``options``: ``-c name=value`` or ``--name=value`` words, split as the server splits them."""
    setting = sources.get("options")
    if setting is None:
        return ()
    words = _split_option_words(setting.value)
    settings: list[tuple[str, str]] = []
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            assignment = words.pop(0)
        elif word.startswith("-c") and len(word) > 2:
            assignment = word[2:]
        elif word.startswith("--") and len(word) > 2:
            assignment = word[2:]
        else:
            raise _bad_value(setting, f"{_show(word)} is not a setting",
                             "situation passes only -c name=value (or --name=value) to the server")
        name, equals, value = assignment.partition("=")
        name = name.replace("-", "_").lower()  # as the server reads --work-mem
        if not equals or not name:
            raise _bad_value(setting, f"{_show(word if word != '-c' else assignment)} has no value",
                             "write -c name=value")
        if name in _RESERVED_SERVER_SETTINGS:
            raise _bad_value(setting, f"situation sets {name} to {_RESERVED_SERVER_SETTINGS[name]} itself",
                             f"remove -c {name}")
        settings.append((name, value))
    return tuple(settings)


def _split_option_words(text: str) -> list[str]:
    """Whitespace-separated words; a backslash keeps the next character (a space, a backslash) literal."""
    words: list[str] = []
    current: list[str] | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            if current is not None:
                words.append("".join(current))
                current = None
            i += 1
            continue
        current = current if current is not None else []
        if ch == "\\" and i + 1 < len(text):
            i += 1
            ch = text[i]
        current.append(ch)
        i += 1
    if current is not None:
        words.append("".join(current))
    return words


def _check_names_for_verify_full(endpoints: tuple[Endpoint, ...], sslmode: str) -> None:
    if sslmode != "verify-full":
        return
    for endpoint in endpoints:
        if endpoint.hostaddr and not endpoint.host:
            raise DsnError(f"sslmode=verify-full checks the server's host name, but hostaddr={endpoint.hostaddr} "
                           "has no host name paired with it; add host=NAME (the name in the server certificate)")


def _keepalive_seconds(sources: _Sources, key: str, highest: int) -> int | None:
    setting = sources.get(key)
    if setting is None or not setting.value.strip():
        return None
    if _INTEGER_RE.fullmatch(setting.value):
        value = int(setting.value)
        if 1 <= value <= highest:
            return value
    raise _bad_value(setting, f"invalid {key}", f"use a whole number from 1 to {highest}")


def _keepalives(sources: _Sources) -> Keepalives:
    switch = sources.get("keepalives")
    if switch is not None and switch.value.strip() and not _INTEGER_RE.fullmatch(switch.value):
        raise _bad_value(switch, "invalid keepalives", "use 1 (on, the default) or 0 (off)")
    enabled = switch is None or not switch.value.strip() or int(switch.value) != 0
    timeout = sources.get("tcp_user_timeout")
    user_timeout = None
    if timeout is not None and timeout.value.strip():
        if not _INTEGER_RE.fullmatch(timeout.value) or int(timeout.value) < 0:
            raise _bad_value(timeout, "invalid tcp_user_timeout", "use a whole number of milliseconds (0 = system default)")
        user_timeout = int(timeout.value) or None
    # Linux's limits for TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.
    return Keepalives(
        enabled=enabled,
        idle=_keepalive_seconds(sources, "keepalives_idle", 32767),
        interval=_keepalive_seconds(sources, "keepalives_interval", 32767),
        count=_keepalive_seconds(sources, "keepalives_count", 127),
        user_timeout=user_timeout,
    )


def _sslmode(sources: _Sources, sslrootcert: str | None) -> str:
    setting = sources.get("sslmode")
    requiressl = sources.env("PGREQUIRESSL")
    if requiressl is not None:
        # Checked even when PGSSLMODE wins, so a typo in it is not silently ignored.
        mode_from_requiressl = _sslmode_from_requiressl(requiressl)
        if setting is None and mode_from_requiressl == "require":
            setting = _Setting("require", "PGREQUIRESSL")
    if setting is None:
        # libpq 16+: trusting the system CA store only makes sense with host name checks.
        return "verify-full" if sslrootcert == "system" else "prefer"
    mode = _choose(setting, SSLMODES, "sslmode")
    if sslrootcert == "system" and mode != "verify-full":
        origin = f" (sslmode comes from {setting.origin})" if setting.origin != "sslmode" else ""
        raise DsnError(f'weak sslmode "{mode}" may not be used with sslrootcert=system (use "verify-full"){origin}')
    return mode


def _sslnegotiation(sources: _Sources, sslmode: str) -> str:
    setting = sources.get("sslnegotiation")
    if setting is None:
        return "postgres"
    negotiation = _choose(setting, SSLNEGOTIATIONS, "sslnegotiation")
    if negotiation == "direct" and sslmode not in ("require", "verify-ca", "verify-full"):
        raise DsnError(f'sslnegotiation=direct needs sslmode require, verify-ca or verify-full, not "{sslmode}": '
                       "with a weaker mode a failed direct TLS handshake would fall back to plaintext")
    return negotiation


def _sslsni(sources: _Sources) -> bool:
    setting = sources.get("sslsni")
    if setting is None:
        return True
    return _choose(setting, ("0", "1"), "sslsni") == "1"


def _sslcertmode(sources: _Sources) -> str:
    setting = sources.get("sslcertmode")
    if setting is None:
        return "allow"
    if setting.value == "require":
        raise _bad_value(setting, "not supported by situation",
                         "use allow (the default) or disable")
    return _choose(setting, SSLCERTMODES, "sslcertmode")


def _tls_version(sources: _Sources, key: str) -> str | None:
    setting = sources.get(key)
    if setting is None or not setting.value:
        return None  # libpq: an empty value means "no explicit bound"
    version = _TLS_VERSION_BY_LOWER.get(setting.value.lower())
    if version is None:
        raise _bad_value(setting, f"invalid {key}", f"use one of {', '.join(TLS_VERSIONS)}")
    return version


def _tls_versions(sources: _Sources) -> tuple[str, str | None]:
    minimum = _tls_version(sources, "ssl_min_protocol_version") or DEFAULT_MIN_TLS_VERSION
    maximum = _tls_version(sources, "ssl_max_protocol_version")
    if maximum is not None and TLS_VERSIONS.index(minimum) > TLS_VERSIONS.index(maximum):
        raise DsnError(f"invalid SSL protocol version range: ssl_min_protocol_version={minimum} is above "
                       f"ssl_max_protocol_version={maximum}; lower the minimum or raise the maximum")
    return minimum, maximum


def _connect_timeout(sources: _Sources) -> float | None:
    setting = sources.get("connect_timeout")
    if setting is None:
        return None
    if not _INTEGER_RE.fullmatch(setting.value):
        raise _bad_value(setting, "invalid connect_timeout", "use a whole number of seconds (0 = wait forever)")
    seconds = int(setting.value)
    if seconds <= 0:
        return None  # libpq: zero or negative means no timeout
    return float(max(seconds, 2))  # libpq raises 1 to 2 seconds


def _target_session_attrs(sources: _Sources) -> str | None:
    setting = sources.get("target_session_attrs")
    return None if setting is None else _choose(setting, TARGET_SESSION_ATTRS, "target_session_attrs")


def _load_balance_hosts(sources: _Sources) -> str:
    setting = sources.get("load_balance_hosts")
    return "disable" if setting is None else _choose(setting, LOAD_BALANCE_HOSTS, "load_balance_hosts")


REQUIRE_AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "none")


def _require_auth(sources: _Sources) -> RequireAuth | None:
    setting = sources.get("require_auth")
    if setting is None or not setting.value:
        return None
    words = setting.value.split(",")
    negated = {word.startswith("!") for word in words}
    if len(negated) > 1:
        raise _bad_value(setting, "negative (!) and positive methods cannot be mixed",
                         "list the methods to allow, or only !methods to forbid")
    methods = [word.removeprefix("!") for word in words]
    for method in methods:
        if method not in REQUIRE_AUTH_METHODS:
            raise _bad_value(setting, f"invalid require_auth method {_show(method)}",
                             f"use {', '.join(REQUIRE_AUTH_METHODS)}, each optionally with !")
    if len(set(methods)) != len(methods):
        raise _bad_value(setting, "a method is listed twice", "list each method once")
    return RequireAuth(frozenset(methods), negated.pop())


def _check_channel_binding(sources: _Sources) -> None:
    setting = sources.get("channel_binding")
    if setting is None:
        return
    if setting.value == "require":
        raise _bad_value(setting, "channel binding needs SCRAM-SHA-256-PLUS, which situation's driver (asyncpg) "
                         "does not implement", "use sslmode=verify-full, which pins the server's identity, and a "
                         "client certificate (sslcert, sslkey) for mutual authentication")
    # prefer: as in libpq when the client cannot bind, SCRAM-SHA-256 without binding.
    _choose(setting, ("disable", "prefer"), "channel_binding")


def _application_name(sources: _Sources) -> str | None:
    return sources.text("application_name") or sources.text("fallback_application_name")


def _check_client_encoding(sources: _Sources) -> None:
    setting = sources.get("client_encoding")
    if setting and setting.value and setting.value.upper().replace("-", "") not in ("UTF8", "UNICODE"):
        raise _bad_value(setting, "situation always talks UTF8 to the server", "use UTF8 or remove it")


def _check_gssencmode(sources: _Sources) -> None:
    setting = sources.get("gssencmode")
    if setting is None:
        return
    if setting.value == "require":
        raise _bad_value(setting, "situation has no GSSAPI support, so it cannot require GSS encryption",
                         "use disable or prefer (TLS is controlled by sslmode)")
    _choose(setting, GSSENCMODES_ACCEPTED, "gssencmode")


def parse_dsn(dsn: str | None, environ: Mapping[str, str] | None = None) -> ConnectParams:
    """Parse a URI or key=value DSN, fill gaps from ``environ`` (default ``os.environ``), validate."""
    environ = os.environ if environ is None else environ
    sources = _Sources(_parse_options(dsn), environ)
    _reject_unsupported_environment(environ)
    home = _home_directory(environ)
    service = _load_service(sources, home)
    if service is not None:
        sources = _Sources(sources.options, environ, service.settings)
    _check_client_encoding(sources)
    _check_gssencmode(sources)
    _check_channel_binding(sources)

    user = _user_name(sources)
    password = sources.text("password")
    sslrootcert = sources.text("sslrootcert")
    sslmode = _sslmode(sources, sslrootcert)
    min_tls, max_tls = _tls_versions(sources)
    endpoints = _endpoints(sources)
    _check_names_for_verify_full(endpoints, sslmode)
    return ConnectParams(
        endpoints=endpoints,
        user=user,
        database=sources.text("dbname") or user,
        password=password,
        passfile=sources.text("passfile") or (os.path.join(home, ".pgpass") if home else ""),
        sslmode=sslmode,
        sslnegotiation=_sslnegotiation(sources, sslmode),
        sslrootcert=sslrootcert,
        sslcert=sources.text("sslcert"),
        sslkey=sources.text("sslkey"),
        sslpassword=sources.text("sslpassword"),
        sslcrl=sources.text("sslcrl"),
        sslcrldir=sources.text("sslcrldir"),
        sslsni=_sslsni(sources),
        sslcertmode=_sslcertmode(sources),
        ssl_min_protocol_version=min_tls,
        ssl_max_protocol_version=max_tls,
        connect_timeout=_connect_timeout(sources),
        application_name=_application_name(sources),
        target_session_attrs=_target_session_attrs(sources),
        home=home,
        service=service.name if service else None,
        service_file=service.file if service else None,
        keepalives=_keepalives(sources),
        server_options=_server_options(sources),
        load_balance_hosts=_load_balance_hosts(sources),
        require_auth=_require_auth(sources),
    )


# --------------------------------------------------------------------------- passwords


def password_for(params: ConnectParams, endpoint: Endpoint) -> str | None:
    """The explicit password (DSN or PGPASSWORD), else the matching ``.pgpass`` entry."""
    if params.password is not None:
        return params.password
    return pgpass_password(params, endpoint)


def pgpass_password(params: ConnectParams, endpoint: Endpoint) -> str | None:
    """The password of the first ``.pgpass`` line matching this endpoint, database and user."""
    lines = _read_private_lines(params.passfile) if params.passfile else None
    if lines is None:
        return None
    # libpq matches a socket in the default directory as "localhost"; we also accept the literal path.
    # A hostaddr never takes part: without a host, libpq (15) matches its default, "localhost".
    hosts = {"localhost", endpoint.host} if endpoint.is_unix_socket else {endpoint.host or "localhost"}
    wanted = (hosts, {str(endpoint.port)}, {params.database}, {params.user})
    for line in lines:
        if line.startswith("#"):
            continue
        entry = _split_pgpass_line(line)
        if entry is None:
            continue
        patterns, password = entry
        if all(pattern is None or pattern in accepted for pattern, accepted in zip(patterns, wanted)):
            return password or None
    return None


def _read_private_lines(path: str) -> list[str] | None:
    """The file's lines, or None if it is missing, not a regular file, or readable by others."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        log.warning("password file is not a plain file; ignoring it", path=path)
        return None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("password file has group or world access; ignoring it (fix: chmod 0600)",
                    path=path, mode=f"{stat.S_IMODE(info.st_mode):04o}")
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\r\n") for line in handle]
    except (OSError, UnicodeDecodeError):
        return None


def _split_pgpass_line(line: str) -> tuple[list[str | None], str] | None:
    """``host:port:db:user:password`` -> four patterns (None = ``*``) and the password.

    A backslash escapes the next character, so ``\\:`` and ``\\\\`` are literal; an escaped
    ``\\*`` is a literal star, not a wildcard. Lines with fewer than five fields never match.
    """
    fields: list[tuple[str, bool]] = []  # (unescaped text, was a bare "*")
    chars: list[str] = []
    raw_start = i = 0
    while len(fields) < 5:
        if i == len(line) or line[i] == ":":
            fields.append(("".join(chars), line[raw_start:i] == "*"))
            if i == len(line):
                break
            chars, raw_start = [], i + 1
        elif line[i] == "\\" and i + 1 < len(line):
            i += 1
            chars.append(line[i])
        else:
            chars.append(line[i])
        i += 1
    if len(fields) < 5:
        return None
    patterns = [None if wildcard else text for text, wildcard in fields[:4]]
    return patterns, fields[4][0]


# --------------------------------------------------------------------------- redaction

# Keys whose values are hidden by redact_dsn: the secrets plus likely misspellings of them.
_SECRET_KEY_RE = re.compile(r"pa?s+w|pass(?!file)|pwd|secret", re.IGNORECASE)
_KEYWORD_VALUE_RE = re.compile(
    r"(?P<key>[^\s=']+)(?P<sep>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*)", re.DOTALL)
_BARE_SECRET_RE = re.compile(r"(?<![^\s])((?:ssl)?password)(\s+)(?![^\s]*=)(\S+)")


def redact_dsn(dsn: str) -> str:
    """DSN text for logs and output, with every password-like value hidden; never raises.

    Text that parses as a DSN keeps its shape, each secret shown as ``***``. Text
    that does not (an unclosed quote, a mistyped scheme, bad percent-encoding, an
    SQLite path) is cut at the first thing that looks like a secret: after a
    secret-like key (``password=``, ``sslpassword:``, ``passwd hunter2``) or the
    ``:`` of a ``user:password@``, everything is ``***`` (a ``user:password@``
    keeps what follows its last ``@``). If only its percent-decoded form looks
    secret, or anything goes wrong, the whole text is ``<unparsable, hidden>``.
    """
    try:
        text = dsn if isinstance(dsn, str) else str(dsn)
        try:
            options = _parse_options(text)
        except Exception:  # noqa: BLE001 - any text at all must come out redacted
            return _redact_unparsable(text)
        scheme = _SCHEME_RE.match(text.lstrip())
        redacted = _redact_uri(text.lstrip()) if scheme else _redact_keyword_value(text)
        return _mask_parsed_secrets(options, redacted)
    except Exception:  # noqa: BLE001 - redaction must never be the thing that fails
        return UNPARSABLE_HIDDEN


UNPARSABLE_HIDDEN = "<unparsable, hidden>"
# In text that does not parse: a secret-like key followed by "=", ":" or a bare value.
_LOOSE_SECRET_KEY_RE = re.compile(
    r"[\w.-]*(?:pa?s+w|pass(?!file)|pwd|secret)[\w.-]*(?:\s*[=:]\s*|\s+(?=\S))", re.IGNORECASE)


def _redact_unparsable(text: str) -> str:
    text = _hide_userinfo_password(text)
    key = _LOOSE_SECRET_KEY_RE.search(text)
    if key:
        return text[: key.end()] + "***"
    if "%" in text and _LOOSE_SECRET_KEY_RE.search(_lenient_unquote(text)):
        return UNPARSABLE_HIDDEN  # a percent-encoded key: no safe place to cut the raw text
    return text


def _hide_userinfo_password(text: str) -> str:
    """``user:password@host`` -> ``user:***@host``, the password running to the last ``@``.

    Without an ``@``, a URI whose port is not a number is taken for ``user:password``.
    """
    at = text.rfind("@")
    if at < 0:
        return _hide_password_taken_for_port(text)
    scheme = text.find("://", 0, at)
    colon = text.find(":", scheme + 3 if scheme >= 0 else 0, at)
    if colon < 0:
        return text
    return text[: colon + 1] + "***" + text[at:]


def _redact_uri(text: str) -> str:
    scheme_end = text.index("://") + 3
    head, rest = text[:scheme_end], text[scheme_end:]
    rest = _redact_uri_userinfo(rest)
    main, question, query = rest.partition("?")
    if not question:
        return head + main
    parameters = []
    for parameter in query.split("&"):
        key, equals, _ = parameter.partition("=")
        if equals and _SECRET_KEY_RE.search(_lenient_unquote(key)):
            parameter = f"{key}=***"
        parameters.append(parameter)
    return head + main + "?" + "&".join(parameters)


def _redact_uri_userinfo(rest: str) -> str:
    # The userinfo normally ends at the last '@' before the first '/'; a password with a raw
    # '/' in it is caught by also looking before the first '?'.
    at = -1
    for stop_char in "/?":
        stop = rest.find(stop_char)
        at = rest.rfind("@", 0, stop if stop >= 0 else len(rest))
        if at >= 0:
            break
    if at < 0:
        return rest
    colon = rest.find(":", 0, at)
    if colon < 0:
        return rest
    return rest[: colon + 1] + "***" + rest[at:]


def _lenient_unquote(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", "replace")


def _redact_keyword_value(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        if _SECRET_KEY_RE.search(match["key"]):
            return f"{match['key']}{match['sep']}***"
        return match[0]

    text = _KEYWORD_VALUE_RE.sub(hide, text)
    return _BARE_SECRET_RE.sub(lambda m: f"{m[1]}{m[2]}***", text)


def _hide_password_taken_for_port(text: str) -> str:
    """``postgresql://user:password`` (no ``@host``) -> ``postgresql://user:***``."""
    scheme = _SCHEME_RE.search(text)
    if not scheme:
        return text
    authority = re.split(r"[/?]", text[scheme.end() :], maxsplit=1)[0]
    if not _looks_like_password_for_port(authority):
        return text
    return text[: scheme.end() + authority.find(":") + 1] + "***"


def _mask_parsed_secrets(options: Mapping[str, str], redacted: str) -> str:
    """Safety net: a secret the parser found but the textual pass missed is hidden too."""
    for key in _SECRET_OPTIONS:
        secret = options.get(key)
        if secret and len(secret) >= 4 and secret != "***":
            redacted = redacted.replace(secret, "***")
    return redacted
