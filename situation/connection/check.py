"""`situation check`: connect as an agent would and report how secure that is."""

from __future__ import annotations

import asyncio

from dataclasses import asdict, dataclass, field

import asyncpg

from situation.connection.connect import connect
from situation.connection.dsn import ConnectParams
from situation.errors import MigrationError
from situation.connection.migrations import SchemaAccessDenied, latest_version, schema_version
from situation.connection.tls import VERIFY_NONE, describe_certificate, ssl_context_for

_PRIVILEGES = """
SELECT r.rolsuper AS superuser,
       r.rolcreaterole AS createrole,
       r.rolbypassrls AS bypassrls,
       has_database_privilege(current_database(), 'CREATE') AS database_create,
       EXISTS (SELECT 1 FROM pg_namespace n
               WHERE n.nspname = 'situation' AND pg_has_role(n.nspowner, 'USAGE')) AS owns_schema,
       EXISTS (SELECT 1 FROM pg_namespace n
               WHERE n.nspname = 'situation' AND has_schema_privilege(n.oid, 'CREATE')) AS schema_create,
       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'situation' AND pg_has_role(c.relowner, 'USAGE')) AS owns_tables,
       EXISTS (SELECT 1 FROM pg_namespace n
               WHERE n.nspname = 'public' AND has_schema_privilege(n.oid, 'CREATE')) AS public_create
FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass
class CheckReport:
    server: str
    server_version: str
    tls: bool
    tls_version: str | None
    cipher: str | None
    sslmode: str
    verification: str
    root_certificates: str | None
    server_certificate: dict | None
    client_certificate: str | None
    role: str
    session_user: str
    schema_changes: list[str]
    schema_version: int | None
    expected_version: int
    notes: list[str] = field(default_factory=list)
    service: str | None = None  # "NAME (FILE)" when the settings came from a service file
    # How PostgreSQL sees this session arrive, when that is not this host's own link
    # (a pooler such as PgBouncer, a proxy or address translation in between).
    server_sees: str | None = None

    @property
    def can_change_schema(self) -> bool:
        return bool(self.schema_changes)

    def as_dict(self) -> dict:
        report = asdict(self)
        report["can_change_schema"] = self.can_change_schema
        return report


async def inspect(params: ConnectParams) -> CheckReport:
    """Connect with the agent's exact settings and gather the facts."""
    tls = await asyncio.to_thread(ssl_context_for, params)
    # No named prepared statements: through a PgBouncer in transaction mode, another session's
    # statements of the same name may already sit on the server connection it is given.
    connection = await connect(
        params, tls=tls, server_settings={"application_name": "situation check"}, statement_cache_size=0
    )
    try:
        return await _gather(connection, params, tls)
    finally:
        await connection.close()


async def _gather(connection: asyncpg.Connection, params: ConnectParams, tls) -> CheckReport:
    ssl_row = await connection.fetchrow(
        "SELECT s.ssl, s.version, s.cipher, s.client_dn, a.client_port FROM pg_stat_ssl s "
        "JOIN pg_stat_activity a USING (pid) WHERE s.pid = pg_backend_pid()"
    )
    who = await connection.fetchrow(
        "SELECT current_user AS role, session_user AS session, "
        "current_setting('server_version') AS version, inet_server_addr()::text AS address"
    )
    privileges = await connection.fetchrow(_PRIVILEGES)
    version, notes = await _schema_version(connection)
    ours = _our_link(connection)
    on_tls = ours.tls_version is not None
    policy = tls.policy if (tls is not None and on_tls) else None
    endpoint = _connected_endpoint(connection, params)
    report = CheckReport(
        server=endpoint + (f" ({who['address']})" if who["address"] else ""),
        server_version=who["version"],
        tls=on_tls,
        tls_version=ours.tls_version,
        cipher=ours.cipher,
        sslmode=params.sslmode,
        verification=policy.verify if policy else VERIFY_NONE,
        root_certificates=policy.root if policy else None,
        server_certificate=(
            describe_certificate(tls.last_peer_certificate) if policy and tls.last_peer_certificate else None
        ),
        client_certificate=(ssl_row["client_dn"] or None) if on_tls else None,
        role=who["role"],
        session_user=who["session"],
        schema_changes=_schema_powers(privileges),
        schema_version=version,
        expected_version=await asyncio.to_thread(latest_version),
        notes=notes,
        service=f"{params.service} ({params.service_file})" if params.service else None,
        server_sees=_server_view(ssl_row, ours),
    )
    report.notes.extend(_advice(report, privileges))
    return report


@dataclass(frozen=True)
class _Link:
    """This host's end of the connection: TLS version and cipher (None without TLS), local TCP port."""

    tls_version: str | None
    cipher: str | None
    port: int | None  # None over a Unix socket


def _our_link(connection: asyncpg.Connection) -> _Link:
    transport = connection._transport  # asyncpg offers no public accessor for the socket or TLS object
    ssl_object = transport.get_extra_info("ssl_object")
    sockname = transport.get_extra_info("sockname")
    port = sockname[1] if isinstance(sockname, tuple) else None
    if ssl_object is None:
        return _Link(None, None, port)
    return _Link(ssl_object.version(), ssl_object.cipher()[0], port)


def _server_view(ssl_row, ours: _Link) -> str | None:
    """How the server sees the session arrive, when that differs from this host's link; else None.

    Behind a pooler or proxy PostgreSQL describes the pooler's connection, which
    may lack TLS, come over a Unix socket, or at least from another port.
    """
    server_tls = ssl_row["version"] if ssl_row and ssl_row["ssl"] else None
    server_port = ssl_row["client_port"] if ssl_row and ssl_row["client_port"] not in (None, -1) else None
    if (server_tls, server_port) == (ours.tls_version, ours.port):
        return None
    over = f"TCP from port {server_port}" if server_port is not None else "a Unix socket"
    return f"{over}, {'with ' + server_tls if server_tls else 'without TLS'}"


def _connected_endpoint(connection: asyncpg.Connection, params: ConnectParams) -> str:
    address = connection._addr  # asyncpg keeps the address it dialled; no public accessor exists
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


async def _schema_version(connection: asyncpg.Connection) -> tuple[int | None, list[str]]:
    try:
        return await schema_version(connection), []
    except SchemaAccessDenied as exc:
        return None, [str(exc)]
    except MigrationError:
        return None, ["this role may not read situation.schema_migrations; grant it situation_agent"]


def _schema_powers(privileges) -> list[str]:
    """Why this role could change the situation schema (empty: it cannot)."""
    powers = []
    if privileges["superuser"]:
        powers.append("superuser")
    if privileges["owns_schema"]:
        powers.append("owns schema situation")
    if privileges["owns_tables"]:
        powers.append("owns tables in schema situation")
    if privileges["schema_create"]:
        powers.append("CREATE on schema situation")
    return powers


def _advice(report: CheckReport, privileges) -> list[str]:
    notes = []
    if report.server_sees:
        notes.append(
            f"PostgreSQL sees this session arrive over {report.server_sees}: a pooler (such as PgBouncer), "
            "proxy or address translation sits in between; tls describes only this host's link, so secure "
            "the pooler's link to PostgreSQL too"
        )
    if not report.tls:
        notes.append("the connection is NOT encrypted; use sslmode=verify-full")
    elif report.verification == VERIFY_NONE:
        notes.append("the server certificate is NOT verified; use sslmode=verify-full with sslrootcert")
    elif report.sslmode != "verify-full":
        notes.append("the server's host name is not checked; use sslmode=verify-full")
    if privileges["database_create"] and not privileges["superuser"]:
        notes.append("this role may create schemas in the database (CREATE on the database)")
    if privileges["public_create"] and not privileges["superuser"]:
        notes.append("this role may create tables in schema public")
    if privileges["createrole"]:
        notes.append("this role has CREATEROLE")
    if report.schema_version is not None and report.schema_version < report.expected_version:
        notes.append("the schema is behind this build; run `situation migrate` with the owner role")
    elif report.schema_version is not None and report.schema_version > report.expected_version:
        notes.append("the schema is newer than this build; upgrade situation")
    return notes


def format_report(report: CheckReport) -> str:
    rows = [("server", f"{report.server}, PostgreSQL {report.server_version}")]
    if report.service:
        rows.append(("service", report.service))
    rows += [
        ("tls", f"on, {report.tls_version}, {report.cipher}" if report.tls else "off"),
        ("verification", _verification_text(report)),
    ]
    if report.server_sees:
        rows.append(("server sees", report.server_sees))
    if report.server_certificate:
        cert = report.server_certificate
        rows.append(("server cert", f"{cert['subject']}, issued by {cert['issuer']}, expires {cert['not_after']}"))
    rows += [
        ("client cert", report.client_certificate or "none"),
        ("role", f"{report.role}" + (f" (session user {report.session_user})" if report.session_user != report.role else "")),
        ("schema changes", "ALLOWED: " + ", ".join(report.schema_changes) if report.schema_changes else "not allowed"),
        ("schema version", _version_text(report)),
    ]
    lines = [f"{name:<15} {value}" for name, value in rows]
    lines += [f"{'note':<15} {note}" for note in report.notes]
    return "\n".join(lines)


def _verification_text(report: CheckReport) -> str:
    if not report.tls:
        return f"none (sslmode={report.sslmode})"
    root = f", roots: {report.root_certificates}" if report.root_certificates else ""
    return f"{report.verification} (sslmode={report.sslmode}{root})"


def _version_text(report: CheckReport) -> str:
    found = "unknown" if report.schema_version is None else str(report.schema_version)
    state = ""
    if report.schema_version is not None:
        if report.schema_version == report.expected_version:
            state = ": up to date"
        elif report.schema_version < report.expected_version:
            state = ": behind"
        else:
            state = ": ahead"
    return f"{found} (this build expects {report.expected_version}){state}"
