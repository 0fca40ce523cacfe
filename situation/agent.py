"""The agent service: open the store, run cycles, sleep, survive the database going away.

``run --once`` does one cycle. Otherwise cycles repeat every ``interval`` (plus
a little jitter, so a fleet does not hit the database in step) until SIGTERM
or SIGINT; then no new module starts, running ones get a few seconds to
finish their transactions, the pool closes and the process exits 0.

When the database is unreachable (at start or mid-run) the agent says so once
per change of state and retries with capped exponential backoff and jitter.
Upserts are idempotent, so a cycle re-run after an outage duplicates nothing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from situation.discovery import Discovery
from situation.connection.dsn import parse_dsn, redact_dsn
from situation.errors import ConfigError, ConnectError, DatabaseBusy, PassFailed, SituationError, StoreUnavailable
from situation.hostroot import HostRoot
from situation.identity import HEALTH_FILE
from situation.logs import terminal_text
from situation.memory import release_free_memory, tune_allocator
from situation.metrics import NO_METRICS, serve_metrics
from situation.module import Context, HostMachine, ModuleSpec, load_builtin_modules
from situation.notify import Notifier
from situation.scheduler import OK, SKIPPED, ModuleFailed, ModuleResult, plan, run_cycle
from situation.store import Store, is_postgres_dsn, open_store
from situation.store.sqlite import FREE_SPACE, busy_message, is_busy, is_full

log = structlog.get_logger("situation.agent")

DEFAULT_INTERVAL = 15 * 60.0
SHUTDOWN_GRACE = 5.0
MAX_PROBLEM = 500  # characters of the database's problem kept in the health record
WORKER_THREADS = 4  # blocking file reads and /proc walks of a cycle, at once
BACKOFF_START, BACKOFF_CAP = 1.0, 60.0
# The database's state, as the health record says it: it took the cycle's writes, it could not be
# reached, or it was reached but had no room for them.
UP, DOWN, FULL = "up", "down", "full"
_TROUBLE_EVENTS = {
    DOWN: "database unreachable, retrying with backoff",
    FULL: "database has no room for writes, retrying with backoff",
}
_STATUS_SUFFIXES = {UP: "", DOWN: ", database unreachable", FULL: ", database full"}
# Known driver messages -> how to fix them.
_DATABASE_HINTS = (
    ("readonly database", "; give this user write access to the database file and its directory"),
    ("malformed", "; the file is damaged: restore it from a backup, or point --db at a new file"),
    ("not a database", "; the file is damaged: restore it from a backup, or point --db at a new file"),
    ("permission denied", "; have the owner run `situation grant` for this role"),
    ("disk is full", f"; {FREE_SPACE}"),
)
DEFAULT_SQLITE_NAME = "situation.sqlite"

# Kinds shown in the --once summary, in this order.
SUMMARY_KINDS = (
    ("machines", "machines"), ("network_interfaces", "interfaces"), ("subnetworks", "subnetworks"),
    ("cpus", "cpus"), ("gpus", "gpus"), ("disks", "disks"), ("users", "users"), ("packages", "packages"),
    ("applications", "applications"), ("application_endpoints", "endpoints"), ("flows", "flows"),
)


@dataclass
class AgentConfig:
    dsn: str | None
    state_dir: Path
    agent_id: str
    once: bool = False
    interval: float = DEFAULT_INTERVAL
    no_migration: bool = False
    fail_fast: bool = False
    ignore_missing_deps: bool = False
    disabled: set[str] = field(default_factory=set)
    module_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pool_size: int = 4
    statement_cache: bool = True
    summary: bool = False
    metrics_address: tuple[str, int] | None = None  # where to serve Prometheus metrics, if anywhere
    # One policy, and so one packet budget, for every module of this process.
    discovery: Discovery = field(default_factory=Discovery)

    @property
    def database(self) -> str:
        return self.dsn or str(self.state_dir / DEFAULT_SQLITE_NAME)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        registry: Mapping[str, ModuleSpec] | None = None,
        report: Callable[[Store], Awaitable[None]] | None = None,
    ):
        self.config = config
        self.report = report  # after a --once cycle, instead of the summary
        self.modules = plan(
            registry if registry is not None else load_builtin_modules(),
            config.disabled,
            ignore_missing_deps=config.ignore_missing_deps,
        )
        self._check_module_options()
        self.root = HostRoot.from_environment()
        self.notifier = Notifier()
        self.metrics = NO_METRICS
        self.stopping = asyncio.Event()
        self.store: Store | None = None
        self._database: str | None = None  # UP, DOWN or FULL once known
        self._database_problem = ""
        self._backoff = BACKOFF_START / 2
        self._health_warned = False
        self._signal = 0
        self._cycle_seconds = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        tune_allocator()  # before the store's and the cycles' threads exist
        # A fixed pool for blocking reads, not Python's default of one per core up to 32: on a
        # large host each idle worker would keep its stack and allocator caches.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="situation-worker"))
        self._install_signal_handlers()
        if self.config.metrics_address is not None:  # first: a bad address ends the start before anything
            self.metrics = await serve_metrics(self.config.metrics_address, self.config.agent_id)
        watchdog = asyncio.create_task(self._watchdog())
        # Ready as soon as the service runs: waiting for an unreachable database is part
        # of its normal life, and must not look to systemd like a start that hangs.
        self.notifier.ready(status="opening the database")
        try:
            self.store = await self._open_store()
            if self.store is None:  # stopped while connecting, or waiting for a lock
                return self._stopped_status()
            self.notifier.status("first cycle")
            return await self._loop()
        finally:
            self.notifier.stopping()
            watchdog.cancel()
            await self.metrics.close()
            if self.store is not None:
                await self.store.close()

    async def _loop(self) -> int:
        while True:
            results, healthy = await self._guarded_cycle()
            if self.config.once:
                return await self._finish_pass(results)
            delay = self._next_delay(healthy)
            await asyncio.to_thread(self._write_health, results, delay)
            await self.store.release_memory()
            await asyncio.to_thread(release_free_memory)
            if await self._sleep(delay):
                return 0

    async def _finish_pass(self, results: list[ModuleResult]) -> int:
        """The status of a one-shot pass: 0 only when it ran to its end and something was recorded."""
        if self.stopping.is_set():
            return self._stopped_status()
        if self._database == DOWN:
            raise ConnectError(f"the database became unusable during the pass ({self._database_problem})",
                               transient=True)
        failure = pass_failure(results, self.config.database)
        if failure is not None:
            raise failure
        if self.report is not None:
            await self.report(self.store)
        elif self.config.summary:
            await self._print_summary()
        return 0

    def _stopped_status(self) -> int:
        """A daemon asked to stop has done its job (0); a one-shot pass that did not run
        to its end, whether it had started or not, was interrupted (128 + the signal)."""
        return 128 + self._signal if self.config.once else 0

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(number, self._stop, number)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass

    def _stop(self, number: int) -> None:
        if not self.stopping.is_set():
            log.info("stopping", signal=signal.Signals(number).name)
            self._signal = number
        self.stopping.set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True when asked to stop meanwhile."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return self.stopping.is_set()

    # -- the database ---------------------------------------------------------------------

    async def _open_store(self) -> Store | None:
        database = self.config.database
        if not is_postgres_dsn(database):
            log.info("using the embedded SQLite database", db=database)
        delay = BACKOFF_START
        while True:
            try:
                store = await self._unless_stopped(
                    open_store(
                        database,
                        self.config.agent_id,
                        migrate=not self.config.no_migration,
                        max_size=self.config.pool_size,
                        statement_cache=self.config.statement_cache,
                    )
                )
                if store is None:
                    return None
                self._database_state(UP)
                return store
            except (ConfigError, ModuleFailed):
                raise
            except SituationError as exc:
                if self.config.once or not _is_transient(exc):
                    raise
                self.metrics.database_error("connect")
                self._database_problem = str(exc)
                self._database_state(DOWN)
                # Unhealthy while waiting, also to a health record left by an earlier run.
                self.notifier.status("database unreachable, retrying")
                await asyncio.to_thread(self._write_health, [], delay)
            if await self._sleep(_jittered(delay)):
                return None
            delay = min(delay * 2, BACKOFF_CAP)

    async def _unless_stopped(self, work, *, grace: float = 0.0):
        """``work``'s result; or, when the agent is asked to stop first, None once ``work``
        has had ``grace`` more seconds (it is cancelled if it has not finished by then)."""
        task = asyncio.ensure_future(work)
        stop_wait = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and grace:
                await asyncio.wait({task}, timeout=grace)
        finally:
            stop_wait.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    def _database_state(self, state: str) -> None:
        """Log the database's state (UP, DOWN, FULL) once per change, not once per retry."""
        self.metrics.database_up(state == UP)
        previous, self._database = self._database, state
        if state == previous:
            return
        if state != UP:
            log.error(_TROUBLE_EVENTS[state], reason=self._database_problem)
        elif previous == DOWN:
            log.info("database reachable again")
        elif previous == FULL:
            log.info("database takes writes again")

    async def _database_usable(self, results: list[ModuleResult]) -> bool:
        """Whether the database took this cycle's writes: no module lost it after its retries, and it answers now."""
        # A module that gave up on the database already waited through the store's retries:
        # pinging it again would only delay the report.
        problem = next((r.error for r in results if isinstance(r.error, StoreUnavailable)), None)
        no_room = next((r.error for r in results if r.error is not None and out_of_space(r.error)), None)
        if problem is None:
            try:
                await asyncio.wait_for(self.store.fetchval("ping"), timeout=10)
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the database is not usable
                problem = exc
                self.metrics.database_error("health-check")
        if problem is not None:
            self._database_problem = _one_line(problem)
            self._database_state(DOWN)
            return False
        if no_room is not None:  # it answers, but this cycle's writes were lost
            self._database_problem = _one_line(no_room) + _database_hint(no_room)
            self._database_state(FULL)
            return False
        self._database_state(UP)
        return True

    # -- cycles ---------------------------------------------------------------------------

    async def _guarded_cycle(self) -> tuple[list[ModuleResult], bool]:
        """One cycle, bounded at shutdown; returns its results and whether the database held up."""
        host = HostMachine()  # resolved afresh every cycle by fingerprint / host-basic
        started = time.monotonic()
        cycle = run_cycle(
            self.modules,
            lambda spec: self._context(spec, host),
            fail_fast=self.config.fail_fast,
            stopping=self.stopping,
        )
        # Asked to stop: running modules get a few seconds to finish their transactions.
        results = await self._unless_stopped(cycle, grace=SHUTDOWN_GRACE)
        if results is None:
            return [], True
        self._cycle_seconds = time.monotonic() - started
        healthy = await self._database_usable(results)
        self.notifier.status(_status_line(results, self._database or UP))
        self._record_metrics(results, healthy)
        return results, healthy

    def _record_metrics(self, results: list[ModuleResult], healthy: bool) -> None:
        failed_by_database = sum(1 for r in results if r.failed and is_database_error(r.error))
        self.metrics.database_error("module", failed_by_database)
        succeeded = healthy and pass_failure(results, self.config.database) is None
        self.metrics.cycle_finished(results, self._cycle_seconds, succeeded=succeeded)

    def _module_options(self, spec: ModuleSpec) -> dict[str, Any]:
        options = {o.name: o.default for o in spec.options}
        options.update(self.config.module_options.get(spec.name, {}))
        return options

    def _check_module_options(self) -> None:
        """Settings of the modules that will run, checked once at start: ConfigError stops the agent."""
        for spec in self.modules.values():
            if spec.check is not None:
                spec.check(self._module_options(spec))

    def _context(self, spec: ModuleSpec, host: HostMachine) -> Context:
        return Context(
            store=self.metrics.count_writes(self.store),
            log=structlog.get_logger(f"situation.modules.{spec.name}").bind(module=spec.name),
            agent_id=self.config.agent_id,
            options=self._module_options(spec),
            root=self.root,
            host=host,
            discovery=self.config.discovery,
            interval=self.config.interval,
        )

    def _next_delay(self, healthy: bool) -> float:
        if not healthy:
            self._backoff = min(self._backoff * 2, BACKOFF_CAP)
            return _jittered(self._backoff)
        self._backoff = BACKOFF_START / 2
        return self.config.interval + random.uniform(0, min(self.config.interval * 0.1, 60.0))

    def _write_health(self, results: list[ModuleResult], delay: float) -> None:
        """What `situation health` reads: when the next cycle is due, and how the last one went."""
        now = time.time()
        record = {
            "pid": os.getpid(),
            "finished_at": now,
            # room for the next cycle to run, as long as the last one took, twice over
            "next_cycle_before": now + delay + SHUTDOWN_GRACE + 60 + 2 * self._cycle_seconds,
            "database": self._database or DOWN,
            "failed_modules": [r.name for r in results if r.failed],
        }
        if record["database"] != UP:
            record["problem"] = self._database_problem[:MAX_PROBLEM]
        path = self.config.state_dir / HEALTH_FILE
        try:
            write_record(path, json.dumps(record).encode())
        except OSError as exc:
            if not self._health_warned:  # once: `situation health` will report the daemon overdue
                log.warning("cannot write the health file", path=str(path), error=str(exc))
                self._health_warned = True

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if not interval:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _print_summary(self) -> None:
        where = await asyncio.to_thread(_describe_database, self.config.database)  # may read a service file
        try:
            counts = await self.store.counts()
        except Exception as exc:
            if not is_database_error(exc):
                raise
            raise PassFailed(f"the pass was recorded, but {where} cannot be read back for the summary "
                             f"({_one_line(exc)}){_database_hint(exc)}") from None
        print(f"recorded in {where}:", file=sys.stdout)
        for table, label in SUMMARY_KINDS:
            if counts.get(table):
                print(f"  {label:<13} {counts[table]}", file=sys.stdout)


def pass_failure(results: list[ModuleResult], database: str) -> SituationError | None:
    """Why a finished pass counts as failed: the database failed a module, or no module succeeded."""
    broken = next((r for r in results if r.failed and is_database_error(r.error)), None)
    if broken is not None:
        if is_busy(broken.error):
            return DatabaseBusy(busy_message(database))
        message = (f"the database failed during this pass (module {broken.name}: {_one_line(broken.error)})"
                   f"{_database_hint(broken.error)}")
        if isinstance(broken.error, SituationError) and _is_transient(broken.error):
            return ConnectError(message, transient=True)
        return PassFailed(message)
    if results and not any(r.status in (OK, SKIPPED) for r in results):
        failed = ", ".join(r.name for r in results if r.failed) or "none"
        return PassFailed(f"no module succeeded in this pass (failed: {failed}; the others depend on them); "
                          "the log above says why")
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, SituationError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _database_hint(exc: BaseException) -> str:
    text = str(exc).lower()
    return next((hint for needle, hint in _DATABASE_HINTS if needle in text), "")


def _status_line(results: list[ModuleResult], database: str) -> str:
    failed = [r.name for r in results if r.failed]
    text = f"{len(results)} modules, {sum(r.rows for r in results)} rows written"
    if failed:
        text += f", failed: {', '.join(failed)}"
    return text + _STATUS_SUFFIXES[database]


def write_record(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically; on a full file system, overwrite it in place instead.

    The health record must say "no room" when the state directory shares the full
    disk with the database: a new file needs a free block, the old one has its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
        with open(path, "r+b") as stream:
            stream.write(data)
            stream.truncate()


def _asyncpg():
    """asyncpg when this process loaded it: an agent on SQLite never does, and its errors cannot occur there."""
    return sys.modules.get("asyncpg")


def is_database_error(exc: BaseException | None) -> bool:
    """Raised by a driver because the database refused or failed a statement."""
    if isinstance(exc, (sqlite3.Error, ConnectError, StoreUnavailable)):
        return True
    asyncpg = _asyncpg()
    return asyncpg is not None and isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError))


def out_of_space(exc: BaseException) -> bool:
    """The database (SQLite's file system, or the PostgreSQL server's disk) had no room for a write."""
    asyncpg = _asyncpg()
    return is_full(exc) or (asyncpg is not None and isinstance(exc, asyncpg.DiskFullError))


def _describe_database(database: str) -> str:
    if not is_postgres_dsn(database):
        return f"SQLite {terminal_text(redact_dsn(database))}"
    return "PostgreSQL " + parse_dsn(database).redacted()


def _is_transient(exc: SituationError) -> bool:
    """Worth waiting for: the server is down or busy. Bad credentials or TLS are not."""
    return isinstance(exc, StoreUnavailable) or getattr(exc, "transient", False)


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(0.5, 1.0)
