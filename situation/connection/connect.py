"""Open asyncpg connections the way libpq would for the same DSN.

asyncpg gets fully resolved arguments and our own SSLContext, never the DSN:
the host list, sslmode fallbacks (``allow`` and ``prefer``) and error wording
are decided here. Every failure is turned into a :class:`ConnectError` whose
message is one line saying what went wrong and what to do about it.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import ssl
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from situation.connection.dialer import DialingLoop
from situation.connection.dsn import ConnectParams, Endpoint, password_for
from situation.errors import ConnectError
from situation.connection.tls import HostNameMismatch, LibpqSSLContext, ReloadingContext, build_ssl_context

log = structlog.get_logger("situation.connect")

DEFAULT_CONNECT_TIMEOUT = 10.0
# The agent's units are short transactions that never wait on anything but the database.
# A session idle inside one for this long lost its agent (killed, or cut off by the
# network): the server ends it, so its row locks do not stall every later unit on the
# same rows until the server's TCP keepalive notices, hours later by default.
IDLE_IN_TRANSACTION_TIMEOUT = "1min"


class _ServerHasNoTls(ConnectionError):
    pass


class _AuthMethodRefused(Exception):
    """require_auth forbids the method the server asked for; we hung up before answering."""

    def __init__(self, method: str, require_auth):
        self.method = method
        self.require_auth = require_auth
        super().__init__(f"server asked for {method}, require_auth={require_auth}")


class _SessionMismatch(Exception):
    """The server answered, but its session is not what target_session_attrs asks for."""

    def __init__(self, wanted: str, found: str):
        self.wanted = wanted
        self.found = found
        super().__init__(f"session is {found}, target_session_attrs={wanted}")


async def connect(
    params: ConnectParams,
    *,
    tls: LibpqSSLContext | None = None,
    server_settings: dict[str, str] | None = None,
    statement_cache_size: int = 100,
    **kwargs: Any,
) -> asyncpg.Connection:
    """One connection, trying each host in turn as libpq does.

    ``tls`` lets a caller reuse (and later inspect) a context; by default one is
    built from ``params`` when the first TCP host is tried (Unix sockets never
    use TLS). Extra keyword arguments go to :func:`asyncpg.connect` (the pool
    passes ``connection_class`` and ``record_class`` this way).
    """
    settings = dict(server_settings or {})
    if params.application_name and "application_name" not in settings:
        settings["application_name"] = params.application_name
    # The operator's `options` (-c name=value) beat the agent's own defaults (jit,
    # application_name); search_path, which the agent's queries need, is refused by parse_dsn.
    settings.update(params.server_options)
    tls_ready = tls is not None
    last_error: Exception | None = None
    last_endpoint = params.endpoints[-1]
    endpoints = list(params.endpoints)
    if params.load_balance_hosts == "random":
        random.shuffle(endpoints)  # libpq 16: spread a fleet over replicas or bouncers
    for wanted in _session_passes(params.target_session_attrs):
        for endpoint in endpoints:
            if not tls_ready and not endpoint.is_unix_socket:
                tls = await asyncio.to_thread(build_ssl_context, params)  # reads key and certificate files
                tls_ready = True
            try:
                connection = await _connect_endpoint(params, endpoint, tls, settings, statement_cache_size, kwargs)
            except (OSError, asyncio.TimeoutError) as exc:
                # Unreachable: libpq moves on to the next host. A server that
                # answered and refused us ends the search.
                if isinstance(exc, ssl.SSLError) or isinstance(exc, _ServerHasNoTls):
                    raise explain(exc, params, endpoint) from exc
                last_error, last_endpoint = exc, endpoint
                continue
            except Exception as exc:
                raise explain(exc, params, endpoint) from exc
            mismatch = await _session_mismatch(connection, wanted)
            if mismatch is None:
                return connection
            # Like libpq, a server of the wrong kind is skipped, not fatal.
            connection.terminate()
            log.info("server does not match target_session_attrs, trying the next host",
                     host=endpoint.host, port=endpoint.port, wanted=wanted, found=mismatch)
            last_error, last_endpoint = _SessionMismatch(wanted, mismatch), endpoint
    assert last_error is not None
    raise explain(last_error, params, last_endpoint) from last_error


def _session_passes(target_session_attrs: str | None) -> tuple[str, ...]:
    # libpq's prefer-standby: look for a standby among all hosts, then take any of them.
    if target_session_attrs == "prefer-standby":
        return ("standby", "any")
    return (target_session_attrs or "any",)


async def _session_mismatch(connection: asyncpg.Connection, wanted: str) -> str | None:
    """None when the session suits ``wanted``, else what it is ("read-only", "a standby", ...).

    As libpq does with servers from 14 on, this trusts the parameters the server
    reports at start-up (default_transaction_read_only, in_hot_standby) and asks
    only an older server.
    """
    if wanted == "any":
        return None
    reported = connection.get_settings()
    standby_flag = getattr(reported, "in_hot_standby", None)
    if standby_flag is not None:
        in_standby = standby_flag == "on"
    else:
        in_standby = bool(await connection.fetchval("SELECT pg_catalog.pg_is_in_recovery()"))
    if wanted in ("primary", "standby"):
        if in_standby == (wanted == "standby"):
            return None
        return "a standby" if in_standby else "a primary"
    default_read_only = getattr(reported, "default_transaction_read_only", None)
    if default_read_only is None:  # servers before 14 do not report it
        default_read_only = await connection.fetchval("SHOW transaction_read_only")
    read_only = in_standby or default_read_only == "on"
    if read_only == (wanted == "read-only"):
        return None
    return "read-only" if read_only else "read-write"


async def _connect_endpoint(params, endpoint, tls, settings, statement_cache_size, kwargs) -> asyncpg.Connection:
    async def attempt(context: ssl.SSLContext | None) -> asyncpg.Connection:
        return await _open(params, endpoint, context, settings, statement_cache_size, kwargs)

    if endpoint.is_unix_socket or tls is None:
        return await attempt(None)
    if params.sslmode == "allow":
        try:
            return await attempt(None)
        except asyncpg.PostgresError as exc:
            log.info("plaintext connection refused, retrying with TLS", host=endpoint.host, reason=_one_line(exc))
            return await attempt(tls)
    if params.sslmode == "prefer":
        try:
            return await attempt(tls)
        except (_ServerHasNoTls, ssl.SSLError, asyncpg.PostgresError) as exc:
            log.warning(
                "TLS failed, falling back to an UNENCRYPTED connection because sslmode=prefer; "
                "use sslmode=verify-full",
                host=endpoint.host,
                reason=_one_line(exc),
            )
            return await attempt(None)
    return await attempt(tls)


async def _open(params, endpoint: Endpoint, context, settings, statement_cache_size, kwargs) -> asyncpg.Connection:
    timeout = params.connect_timeout or DEFAULT_CONNECT_TIMEOUT
    if endpoint.is_unix_socket:
        host, loop = endpoint.host, None
    else:
        # asyncpg is given the name (TLS checks it, SNI carries it); the dialler connects
        # to hostaddr when there is one, with libpq's keepalive options set first.
        host = endpoint.host if endpoint.host and not endpoint.host.startswith(("/", "@")) else endpoint.hostaddr
        loop = DialingLoop(asyncio.get_running_loop(), endpoint, params.keepalives,
                           shuffle=params.load_balance_hosts == "random", require_auth=params.require_auth)
    try:
        return await asyncpg.connect(
            host=host,
            port=endpoint.port,
            user=params.user,
            database=params.database,
            # A callable keeps asyncpg from reading .pgpass itself: ours follows libpq's rules,
            # and reads the file on a thread when a connection is opened.
            password=functools.partial(_password, params, endpoint),
            ssl=context if context is not None else False,
            direct_tls=params.sslnegotiation == "direct" and context is not None,
            target_session_attrs="any",  # checked by connect(), which then moves on to the next host
            timeout=timeout,
            server_settings=settings,
            statement_cache_size=statement_cache_size,
            loop=loop,
            **kwargs,
        )
    except Exception as exc:
        if loop is not None and loop.refused_method is not None:
            raise _AuthMethodRefused(loop.refused_method, params.require_auth) from None
        if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
            raise _ServerHasNoTls(str(exc)) from None
        raise


@asynccontextmanager
async def direct_connection(params: ConnectParams, purpose: str = "migrate"):
    """A connection of its own, outside any pool and without prepared statements:
    for migrations (and the transaction holding their lock) and grants."""
    connection = await connect(
        params, statement_cache_size=0, server_settings={"application_name": f"situation {purpose}"}
    )
    try:
        yield connection
    finally:
        await connection.close()


async def _password(params: ConnectParams, endpoint: Endpoint) -> str | None:
    return await asyncio.to_thread(password_for, params, endpoint)


async def create_pool(
    params: ConnectParams,
    *,
    min_size: int = 0,
    max_size: int = 4,
    statement_cache: bool = True,
    application_name: str = "situation",
    server_settings: dict[str, str] | None = None,
    init=None,
) -> asyncpg.Pool:
    """The process's one pool: small, because agents are many.

    ``search_path`` and ``application_name`` travel as startup parameters, which
    survive the pool's ``RESET ALL`` between uses, unlike a ``SET`` in ``init``.
    So does ``jit = off``: the store's statements take milliseconds, and a batch
    large enough to pass ``jit_above_cost`` would spend longer compiling than running.
    And so does ``idle_in_transaction_session_timeout`` (see IDLE_IN_TRANSACTION_TIMEOUT).
    Turn ``statement_cache`` off behind a PgBouncer in transaction mode. Each new
    connection re-reads rotated TLS files (see :class:`~situation.connection.tls.ReloadingContext`).
    """
    tls = await asyncio.to_thread(ReloadingContext, params)  # rotated certificates are picked up
    settings = {"application_name": params.application_name or application_name, "search_path": "situation", "jit": "off",
                "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT}
    settings.update(server_settings or {})

    async def open_connection(*_args, **kwargs):
        kwargs.pop("loop", None)
        return await connect(
            params,
            tls=await asyncio.to_thread(tls.current),
            server_settings=settings,
            statement_cache_size=100 if statement_cache else 0,
            **kwargs,
        )

    try:
        return await asyncpg.create_pool(
            connect=open_connection, min_size=min_size, max_size=max_size, init=init
        )
    except ConnectError:
        raise
    except Exception as exc:  # raised by the first connection when min_size > 0
        raise explain(exc, params, params.endpoints[0]) from exc


# -- errors --------------------------------------------------------------------


def explain(exc: BaseException, params: ConnectParams, endpoint: Endpoint) -> ConnectError:
    """One line for a failed connection: what happened, and what to do."""
    where = _where(endpoint)
    role, database = params.user, params.database
    text = _one_line(exc)
    lowered = text.lower()
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError) and isinstance(exc.__cause__, ssl.SSLError):
        # Under TLS 1.3 the server's verdict on our certificate arrives after our
        # side of the handshake; asyncpg keeps the TLS alert as the cause.
        exc = exc.__cause__
        text = _one_line(exc)
        lowered = text.lower()
    if isinstance(exc, _AuthMethodRefused):
        asked = "no authentication" if exc.method == "none" else f"{exc.method} authentication"
        return ConnectError(
            f"server at {where} asked for {asked}, which require_auth={exc.require_auth} does not allow; "
            "no credentials were sent; change the server's pg_hba.conf method or require_auth"
        )
    if isinstance(exc, _SessionMismatch):
        return ConnectError(
            f"no server in the host list suits target_session_attrs={exc.wanted} "
            f"(the last one tried, {where}, is {exc.found}); add a matching host or change target_session_attrs",
            transient=True,
        )
    if isinstance(exc, HostNameMismatch):
        names = ", ".join(exc.names) or "none"
        return ConnectError(
            f"server certificate at {where} does not match host name {endpoint.name!r} "
            f"(it names: {names}); connect using a name the certificate lists, or reissue it with that name"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or text
        if "revoked" in reason.lower():
            return ConnectError(
                f"server certificate at {where} has been revoked (CRL in sslcrl, sslcrldir or root.crl); "
                "the server needs a new certificate"
            )
        return ConnectError(
            f"server certificate at {where} is not trusted ({reason}); "
            "set sslrootcert to the CA that signed it"
        )
    if isinstance(exc, _ServerHasNoTls):
        return ConnectError(
            f"server at {where} does not support TLS but sslmode={params.sslmode} requires it; "
            "enable ssl on the server (ssl = on)"
        )
    if isinstance(exc, ssl.SSLError):
        if "unknown ca" in lowered or "certificate unknown" in lowered or "bad certificate" in lowered:
            return ConnectError(
                f"server at {where} rejected our client certificate ({text}); "
                "use a certificate signed by the CA in the server's ssl_ca_file"
            )
        if "certificate required" in lowered:
            return ConnectError(f"server at {where} requires a client certificate; set sslcert and sslkey")
        return ConnectError(f"TLS handshake with {where} failed ({text})")
    if isinstance(exc, asyncpg.InvalidPasswordError) or "password authentication failed" in lowered:
        return ConnectError(
            f'password authentication failed for role "{role}" at {where}; '
            "check the password given in the DSN, PGPASSWORD or the .pgpass file"
        )
    if "certificate authentication failed" in lowered:
        return ConnectError(
            f'client certificate authentication failed for role "{role}" at {where}; '
            "the certificate's CN must be the role name (or be mapped to it in pg_ident.conf)"
        )
    if "requires a valid client certificate" in lowered:
        return ConnectError(
            f'server at {where} requires a client certificate for role "{role}"; '
            "set sslcert and sslkey (or install ~/.postgresql/postgresql.crt and postgresql.key)"
        )
    if "password is required" in lowered or "no password" in lowered:
        return ConnectError(
            f'server at {where} asks a password for role "{role}" and none was given; '
            "put it in the DSN, PGPASSWORD or ~/.pgpass"
        )
    if "no pg_hba.conf entry" in lowered or "pg_hba.conf rejects" in lowered:
        if "no encryption" in lowered:
            return ConnectError(
                f"server at {where} refuses unencrypted connections (pg_hba.conf); "
                "use sslmode=verify-full with sslrootcert"
            )
        return ConnectError(
            f'server at {where} has no pg_hba.conf entry for role "{role}" and database "{database}" '
            "from this address; ask its administrator to add one"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError) or "database" in lowered and "does not exist" in lowered:
        return ConnectError(f'database "{database}" does not exist at {where}; create it or fix dbname')
    if "role" in lowered and "does not exist" in lowered:
        return ConnectError(f'role "{role}" does not exist at {where}; create it or fix user')
    if isinstance(exc, asyncpg.TooManyConnectionsError) or "too many connections" in lowered:
        return ConnectError(
            f"server at {where} has too many connections; raise max_connections, "
            "lower the agents' pool size, or put PgBouncer in front",
            transient=True,
        )
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return ConnectError(f"server at {where} is starting up or shutting down; try again shortly", transient=True)
    if isinstance(exc, asyncio.TimeoutError):
        return ConnectError(
            f"timed out connecting to {where}; check the address and firewalls, or raise connect_timeout",
            transient=True,
        )
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"cannot resolve host {endpoint.name!r}; check the host name", transient=True)
    if isinstance(exc, OSError):
        return ConnectError(
            f"cannot reach server at {where} ({exc.strerror or text}); is it running and listening there?",
            transient=True,
        )
    if isinstance(exc, asyncpg.PostgresError):
        return ConnectError(f"server at {where} refused the connection: {text}")
    return ConnectError(f"cannot connect to {where}: {text}")


def _where(endpoint: Endpoint) -> str:
    if endpoint.is_unix_socket:
        return f"{endpoint.host}/.s.PGSQL.{endpoint.port}"
    name = endpoint.name
    where = f"[{name}]:{endpoint.port}" if ":" in name else f"{name}:{endpoint.port}"
    if endpoint.hostaddr and endpoint.host:
        where += f" (hostaddr {endpoint.hostaddr})"
    return where


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
