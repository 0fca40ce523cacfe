"""Prometheus metrics of the daemon, served over HTTP when ``--metrics-address`` is set.

Off by default, and then nothing here imports ``prometheus_client``: the agent
talks to :data:`NO_METRICS`, whose methods do nothing. With an address the
agent binds it before anything else (a bad address or a taken port ends the
start with one line) and serves the text format on ``/metrics`` (and ``/``)
from an asyncio handler on the agent's event loop; the exposition itself is
rendered on a worker thread, since the process collector reads /proc.
(prometheus_client's own ``start_http_server`` would add a serving thread and
a reverse DNS lookup of the bind address at start, through http.server.)

Every metric lives in a private registry:

- ``situation_cycles_total{outcome}`` and ``situation_cycle_duration_seconds``;
- ``situation_rows_written_total{table}``: rows the store reported written, counted
  when their transaction commits (a unit rolled back and rerun counts once);
- ``situation_module_runs_total{module,status}``, ``situation_module_status{module,status}``
  (1 for the last run's status) and ``situation_module_duration_seconds{module}``
  (the last run's);
- ``situation_database_errors_total{stage}`` and ``situation_database_up``;
- ``situation_last_success_timestamp_seconds``;
- ``situation_agent_info{agent_id,version}``, and the ``process_*`` metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from situation.errors import ConfigError

FLAG = "--metrics-address"
EXAMPLE = "127.0.0.1:9464, [::1]:9464 or :9464 (every IPv4 address)"
MODULE_STATUSES = ("ok", "skipped", "failed", "timeout", "blocked", "cancelled")
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DATABASE_STAGES = ("connect", "module", "health-check")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``; an empty host is every IPv4 address) as (host, port)."""
    text = text.strip()
    if "/" in text:
        raise ValueError(f"{text!r}: give HOST:PORT alone, without http:// or a path; use e.g. {EXAMPLE}")
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":") or not _is_ip(host, version=6):
            raise ValueError(f"{text!r} is not HOST:PORT; use e.g. {EXAMPLE}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not HOST:PORT; use e.g. {EXAMPLE}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
        if host and not (_is_ip(host, version=4) or _HOSTNAME.match(host)):
            raise ValueError(f"{host!r} is not an IP address or a host name; use e.g. {EXAMPLE}")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535; use e.g. {EXAMPLE}")
    return host or "0.0.0.0", int(port_text)


def _is_ip(text: str, *, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- counting what the store writes ----------------------------------------------------

# Rows written inside the transaction unit running in this task, by table; None outside one.
_PENDING: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("situation_pending_rows",
                                                                                  default=None)
_WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(?:situation\.)?\"?([a-z_]+)", re.IGNORECASE)


@cache
def written_table(dialect: str, query: str) -> str | None:
    """The table a named query writes (each writes at most one), None for a read."""
    from situation.store import query_text

    match = _WRITE.search(query_text(dialect, query))
    return match.group(1).lower() if match else None


class CountingStore:
    """The store as modules see it when metrics are on: every write is counted by table.

    Counts reach ``record`` when they are committed: inside ``run_in_transaction``
    or ``transaction()`` they wait for the unit to end, so an attempt rolled back
    and rerun is counted once, and a failed unit not at all.
    """

    def __init__(self, store: Any, record: Callable[[str, int], None]):
        self._store = store
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _add(self, table: str | None, rows: int) -> None:
        if table is None or rows <= 0:
            return
        pending = _PENDING.get()
        if pending is None:
            self._record(table, rows)
        else:
            pending[table] = pending.get(table, 0) + rows

    def _commit(self, pending: dict[str, int]) -> None:
        for table, rows in pending.items():
            self._add(table, rows)  # into the enclosing unit, if there is one

    async def upsert(self, table: str, rows: Sequence[Any], *, key: str, update: Sequence[str] | None = None):
        result = await self._store.upsert(table, rows, key=key, update=update)
        self._add(table, result.written)
        return result

    async def execute(self, query: str, *args: Any) -> int:
        written = await self._store.execute(query, *args)
        self._add(written_table(self._store.dialect, query), written)
        return written

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        rows = await self._store.fetch(query, *args)
        self._add(written_table(self._store.dialect, query), len(rows))  # INSERT … RETURNING
        return rows

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        row = await self._store.fetchrow(query, *args)
        self._add(written_table(self._store.dialect, query), row is not None)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        value = await self._store.fetchval(query, *args)
        self._add(written_table(self._store.dialect, query), value is not None)
        return value

    async def run_in_transaction(self, work: Callable[[], Awaitable[Any]]) -> Any:
        async def attempt():
            pending: dict[str, int] = {}
            token = _PENDING.set(pending)
            try:
                return await work(), pending
            finally:
                _PENDING.reset(token)

        result, pending = await self._store.run_in_transaction(attempt)
        self._commit(pending)
        return result

    @asynccontextmanager
    async def transaction(self, **options: Any):
        pending: dict[str, int] = {}
        token = _PENDING.set(pending)
        try:
            async with self._store.transaction(**options):
                yield
        finally:
            _PENDING.reset(token)
        self._commit(pending)


# -- the metrics -------------------------------------------------------------------------


class NoMetrics:
    """Metrics off: every call does nothing."""

    def count_writes(self, store: Any) -> Any:
        return store

    def database_up(self, up: bool) -> None:
        pass

    def database_error(self, stage: str, count: int = 1) -> None:
        pass

    def cycle_finished(self, results: Sequence[Any], seconds: float, *, succeeded: bool) -> None:
        pass

    async def close(self) -> None:
        pass


NO_METRICS = NoMetrics()


class PrometheusMetrics(NoMetrics):
    def __init__(self, agent_id: str):
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector,
                                       disable_created_metrics)

        from situation import __version__

        disable_created_metrics()  # no `_created` twin of every counter: this process has no other registry
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        Info("situation_agent", "This agent's id and version.", registry=registry).info(
            {"agent_id": agent_id, "version": __version__})
        self.cycles = Counter("situation_cycles", "Cycles finished, by outcome: success when the database "
                              "took the cycle's writes and a module succeeded.", ["outcome"], registry=registry)
        self.cycle_seconds = Histogram("situation_cycle_duration_seconds", "Wall time of a cycle.",
                                       buckets=CYCLE_BUCKETS, registry=registry)
        self.rows = Counter("situation_rows_written", "Rows written (inserted, changed or deleted) by table.",
                            ["table"], registry=registry)
        self.module_runs = Counter("situation_module_runs", "Module runs by final status.", ["module", "status"],
                                   registry=registry)
        self.module_status = Gauge("situation_module_status", "1 for the status of the module's last run, "
                                   "0 for the others.", ["module", "status"], registry=registry)
        self.module_seconds = Gauge("situation_module_duration_seconds", "Wall time of the module's last run.",
                                    ["module"], registry=registry)
        self.database_errors = Counter("situation_database_errors", "Database failures: a connection attempt "
                                       "refused, a module failed by the database, a failed health check.",
                                       ["stage"], registry=registry)
        self.database_is_up = Gauge("situation_database_up", "1 while the database is reachable and takes writes.",
                                    registry=registry)
        self.last_success = Gauge("situation_last_success_timestamp_seconds",
                                  "Unix time of the end of the last successful cycle.", registry=registry)
        for outcome in ("success", "failure"):
            self.cycles.labels(outcome)
        for stage in DATABASE_STAGES:
            self.database_errors.labels(stage)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    def count_writes(self, store: Any) -> Any:
        return CountingStore(store, self._rows_written)

    def _rows_written(self, table: str, rows: int) -> None:
        self.rows.labels(table).inc(rows)

    def database_up(self, up: bool) -> None:
        self.database_is_up.set(1 if up else 0)

    def database_error(self, stage: str, count: int = 1) -> None:
        if count:
            self.database_errors.labels(stage).inc(count)

    def cycle_finished(self, results: Sequence[Any], seconds: float, *, succeeded: bool) -> None:
        self.cycles.labels("success" if succeeded else "failure").inc()
        self.cycle_seconds.observe(seconds)
        for result in results:
            self.module_runs.labels(result.name, result.status).inc()
            self.module_seconds.labels(result.name).set(result.duration)
            for status in MODULE_STATUSES:
                self.module_status.labels(result.name, status).set(1 if status == result.status else 0)
        if succeeded:
            self.last_success.set_to_current_time()

    # -- serving --------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=REQUEST_LIMIT)
        except socket.gaierror as exc:
            raise ConfigError(f"{FLAG}: cannot resolve {host!r} ({exc.strerror}); use an IP address of this host") from None
        except OSError as exc:
            raise ConfigError(f"{FLAG}: {_bind_problem(exc, host, port)}") from None

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                return
            await asyncio.wait_for(self._answer(reader, writer), REQUEST_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError, OSError):
            pass  # a client that is slow, too long-winded or gone: it gets nothing
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, path, *_ = request_line.split(" ") + ["", ""]
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in header_lines if line)}
        if method not in ("GET", "HEAD"):
            status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path.split("?")[0] not in ("/", "/metrics"):
            status, content_type, body = "404 Not Found", "text/plain", b"metrics are at /metrics\n"
        else:
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(headers.get("accept", ""))
            status, body = "200 OK", await asyncio.to_thread(encoder, self.registry)
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        if method != "HEAD":
            writer.write(body)
        await writer.drain()


REQUEST_LIMIT = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


def _bind_problem(exc: OSError, host: str, port: int) -> str:
    where = format_address(host, port)
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use by another process; pick a free port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this host; use one of its addresses, 127.0.0.1 or an empty host (:{port})"
    if exc.errno == errno.EACCES:
        return f"listening on port {port} needs CAP_NET_BIND_SERVICE; use a port above 1023"
    return f"cannot listen on {where} ({exc.strerror or exc})"


async def serve_metrics(address: tuple[str, int], agent_id: str) -> PrometheusMetrics:
    """The daemon's metrics, served on ``address``; ConfigError (one line) when it cannot listen there."""
    metrics = await asyncio.to_thread(PrometheusMetrics, agent_id)  # imports, and reads /proc
    await metrics.listen(*address)
    return metrics
