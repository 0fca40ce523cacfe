"""The `situation` command line."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from situation import __version__, logs
from situation.errors import ConfigError, MigrationError, SituationError

if TYPE_CHECKING:
    from situation.connection.dsn import ConnectParams

# Interactive commands start fast: the collection modules, asyncpg, uvloop, structlog,
# textual and mcp are imported by the commands that use them, not here
# (bench/startup.py measures it).

# Commands that never log: they skip setting up structlog, a noticeable share of start-up.
QUIET_COMMANDS = frozenset({"version", "id", "refresh-id", "health"})


def run_async(coroutine):
    import uvloop

    return uvloop.run(coroutine)


def _level_option(_ctx, _param, value: str) -> str:
    try:
        return logs.parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level", "-l", default="info", show_default=True, envvar="SITUATION_LOG_LEVEL",
    callback=_level_option, help="debug, info, warning or error (the original's 0-5 work too).",
)
@click.option(
    "--log-format", type=click.Choice(logs.FORMATS), default="auto", show_default=True,
    envvar="SITUATION_LOG_FORMAT", help="auto: console on a terminal, JSON lines otherwise.",
)
@click.version_option(__version__, "--version", "-v", prog_name="situation")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Collect IT data about this host and its network into a database."""
    if ctx.invoked_subcommand in QUIET_COMMANDS:
        logs.set_debug(log_level == "debug")
    else:
        logs.configure(log_level, log_format)
    if ctx.invoked_subcommand is None:
        # `situation` alone is `situation run`, environment variables included
        # (ctx.invoke would skip them).
        with run.make_context("run", [], parent=ctx) as run_context:
            run.invoke(run_context)


# -- database options -----------------------------------------------------------


def database_options(command):
    """--db / SITUATION_DB and --db-file / SITUATION_DB_FILE (a file holding the DSN)."""

    @click.option("--db", "db", metavar="DSN", envvar="SITUATION_DB", help="PostgreSQL DSN (URI or key=value); for run, also an SQLite path or :memory:.")
    @click.option(
        "--db-file", "db_file", metavar="PATH", envvar="SITUATION_DB_FILE",
        type=click.Path(dir_okay=False, path_type=Path), help="Read the DSN from this file (container secrets).",
    )
    @functools.wraps(command)
    def wrapper(*args, db: str | None, db_file: Path | None, **kwargs):
        kwargs["dsn"] = choose_dsn(db, db_file)
        return command(*args, **kwargs)

    return wrapper


def choose_dsn(db: str | None, db_file: Path | None) -> str | None:
    """The DSN text; a flag beats an environment variable, and two sources of one kind clash."""
    ctx = click.get_current_context()
    if db is not None and db_file is not None:
        from_flag = {
            name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
            for name in ("db", "db_file")
        }
        if from_flag["db"] == from_flag["db_file"]:
            raise ConfigError("both a DSN (--db/SITUATION_DB) and a DSN file (--db-file/SITUATION_DB_FILE) are given; keep one")
        return db if from_flag["db"] else read_dsn_file(db_file)
    if db_file is not None:
        return read_dsn_file(db_file)
    return db


def read_dsn_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f'DSN file "{path}" does not exist; fix --db-file or SITUATION_DB_FILE') from None
    except OSError as exc:
        raise ConfigError(f'DSN file "{path}" cannot be read ({exc.strerror}); check its permissions') from None
    except UnicodeDecodeError:
        raise ConfigError(f'DSN file "{path}" is not UTF-8 text; it must hold one DSN line') from None
    if not text:
        raise ConfigError(f'DSN file "{path}" is empty; write the PostgreSQL DSN into it')
    if "\0" in text:
        raise ConfigError(f'DSN file "{path}" holds a NUL byte; it must hold one line of text: the DSN or an SQLite path')
    return text


def postgres_params(dsn: str | None) -> ConnectParams:
    import structlog

    from situation.connection.dsn import parse_dsn

    params = parse_dsn(dsn)
    structlog.get_logger("situation").debug("database", db=params.redacted())
    return params


async def on_direct_connection(params: ConnectParams, purpose: str, work):
    """``await work(connection)`` on a connection of its own, closed afterwards."""
    from situation.connection.connect import direct_connection

    async with direct_connection(params, purpose) as connection:
        return await work(connection)


state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), envvar="SITUATION_STATE_DIR", help="State directory."
)


# -- commands ---------------------------------------------------------------------


@cli.command()
@database_options
@click.option("--status", is_flag=True, help="List applied and pending migrations; change nothing.")
@click.option("--dry-run", is_flag=True, help="Show what would be applied; change nothing.")
@click.option("--lock-wait", default=300.0, show_default=True, metavar="SECONDS",
              help="How long to wait for another migrate to finish.")
def migrate(dsn: str | None, status: bool, dry_run: bool, lock_wait: float) -> None:
    """Create or upgrade the database schema (run as the owner role)."""
    from situation.connection import migrations
    from situation.store import is_postgres_dsn

    if dsn and not is_postgres_dsn(dsn):
        return migrate_sqlite(dsn, status or dry_run)
    params = postgres_params(dsn)

    async def work(connection):
        from situation.connection.connect import direct_connection

        if status:
            return await migrations.status(connection)
        if dry_run:
            return await migrations.migrate(connection, dry_run=True)
        async with direct_connection(params, "migrate lock") as holder:
            return await migrations.migrate(connection, lock_wait=lock_wait, lock_holder=holder)

    report = run_async(on_direct_connection(params, "migrate", work))
    if status:
        for row in report.history:
            click.echo(f"{row.version:04d}_{row.name}  applied {row.applied_at:%Y-%m-%d %H:%M:%S} by {row.applied_by}")
        for migration in report.pending:
            click.echo(f"{migration.filename}  pending")
        if report.problem:
            raise MigrationError(report.problem)
        return
    if dry_run:
        if report.problem:
            raise MigrationError(report.problem)
        for migration in report.pending:
            click.echo(f"would apply {migration.filename}")
        if not report.pending:
            click.echo("schema is up to date")
        return
    for migration in report.applied:
        click.echo(f"applied {migration.filename}")
    if not report.applied:
        click.echo("schema is up to date")


def migrate_sqlite(path: str, read_only: bool) -> None:
    """SQLite databases carry the same numbered migrations (sql/sqlite/)."""
    from situation.store import sqlite_path
    from situation.store.sqlite import SqliteStore

    if read_only:
        raise ConfigError("--status and --dry-run work on PostgreSQL; an SQLite file is migrated as a whole")

    async def apply():
        store = await SqliteStore.open(sqlite_path(path), agent_id="", migrate=True)
        await store.close()
        return store.applied

    applied = run_async(apply())
    for migration in applied:
        click.echo(f"applied {migration.filename}")
    if not applied:
        click.echo("schema is up to date")


def postgres_only(dsn: str | None, command: str) -> None:
    from situation.store import is_postgres_dsn

    if dsn and not is_postgres_dsn(dsn):
        raise ConfigError(f"`situation {command}` needs a PostgreSQL DSN (postgresql://… or key=value), not an SQLite path")


@cli.command()
@database_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(dsn: str | None, as_json: bool) -> None:
    """Connect exactly as an agent would and report TLS, identity and privileges."""
    from situation.connection.check import format_report, inspect

    postgres_only(dsn, "check")
    report = run_async(inspect(postgres_params(dsn)))
    import json

    click.echo(json.dumps(report.as_dict(), indent=2, default=str) if as_json else format_report(report))


@cli.command()
@database_options
@click.argument("role")
@click.option("--reader", is_flag=True, help="Make ROLE a read-only consumer instead of an agent.")
def grant(dsn: str | None, role: str, reader: bool) -> None:
    """Make an existing login ROLE an agent (situation_agent) or a reader (situation_reader)."""
    from situation.connection.roles import grant as grant_role

    postgres_only(dsn, "grant")
    params = postgres_params(dsn)
    group = run_async(on_direct_connection(params, "grant", lambda c: grant_role(c, role, reader=reader)))
    click.echo(f"{role} is now a member of {group}")


@functools.cache
def builtin_modules() -> dict:
    from situation.module import load_builtin_modules

    return load_builtin_modules()


@functools.cache
def run_settings() -> list:
    from situation.config import core_settings, module_settings

    return core_settings() + module_settings(builtin_modules())


class LazyOptionsCommand(click.Command):
    """A command whose setting options are made when first needed (parsing or help).

    `run` has one option per module setting, and making them means importing every
    module: `situation --help`, `version` or `id` never pay for that.
    """

    def __init__(self, *args, settings, **kwargs):
        self._settings = settings
        self._all_params: list[click.Parameter] | None = None
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        # One list object, kept: Click appends its help option to it and pops it again.
        if self._all_params is None:
            from situation.config import click_options

            def holder():
                pass

            click_options(self._settings())(holder)
            self._all_params = self._own_params + list(reversed(getattr(holder, "__click_params__", [])))
        return self._all_params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._own_params = list(value)
        self._all_params = None


@cli.command(cls=LazyOptionsCommand, settings=run_settings)
@database_options
def run(dsn: str | None = None, **values) -> None:
    """Run the agent (the default command): a cycle every --interval, or one with --once."""
    from situation.agent import Agent

    config = agent_config(dsn, values)
    status = run_async(Agent(config).run())
    sys.exit(status)


def agent_config(dsn: str | None, values: dict, *, only=None):
    from situation.agent import AgentConfig
    from situation.config import convert
    from situation.identity import default_state_dir, resolve_agent_id

    all_settings = run_settings()
    settings = {s.dest: convert(s, values.get(s.dest)) for s in all_settings}
    state_dir = Path(settings["state_dir"]) if settings["state_dir"] else default_state_dir()
    module_options: dict[str, dict] = {}
    for setting in all_settings:
        if setting.option is not None and values.get(setting.dest) is not None:
            module_options.setdefault(setting.module, {})[setting.option] = settings[setting.dest]
    summary = settings["summary"]
    return AgentConfig(
        dsn=dsn,
        state_dir=state_dir,
        agent_id=resolve_agent_id(settings["agent_id"], state_dir),
        once=settings["once"],
        interval=settings["interval"],
        no_migration=settings["no_migration"],
        fail_fast=settings["fail_fast"],
        ignore_missing_deps=settings["ignore_missing_deps"],
        disabled={s.module for s in all_settings if s.key.startswith("no-module-") and settings[s.dest]},
        module_options=module_options,
        pool_size=settings["pool_size"],
        statement_cache=not settings["no_statement_cache"],
        summary=sys.stdout.isatty() if summary is None else summary,
        metrics_address=settings["metrics_address"],
        discovery=discovery_policy(settings, only=only),
    )


def discovery_policy(settings: dict, only=None):
    """The one discovery policy (and packet budget) of this process."""
    from situation.discovery import Discovery
    from situation.net.rate import RateLimiter

    return Discovery(
        scope=settings["discovery_scope"],
        exclude=settings["discovery_exclude"],
        rate=RateLimiter(settings["discovery_rate"]),
        only=only,
    )


# Modules every scan needs: neither their options nor --no-module-<name> are offered to it.
SCAN_BASE = {"fingerprint", "host-basic"}


@functools.cache
def scan_settings() -> list:
    from situation.scan import scan_registry

    shared = {"agent-id", "state-dir", "pool-size", "no-migration", "no-statement-cache",
              "discovery-exclude", "discovery-rate"}
    modules = scan_registry(builtin_modules())
    return [s for s in run_settings() if s.key in shared or (s.module in modules and s.module not in SCAN_BASE)]


@cli.command(cls=LazyOptionsCommand, settings=scan_settings)
@database_options
@click.argument("targets", nargs=-1, required=True, metavar="CIDR...")
def scan(dsn: str | None = None, targets: tuple[str, ...] = (), **values) -> None:
    """Find the live hosts of CIDR... and their open TCP ports once (like nmap), record them as `run` does, print a table.

    --no-module-tcp-scan finds the hosts only (like nmap -sn)."""
    import dataclasses

    from situation.agent import Agent
    from situation.scan import found_hosts, format_table, scan_registry, scan_targets

    only = scan_targets(targets)
    config = dataclasses.replace(agent_config(dsn, values, only=only), once=True, summary=False)

    async def report(store) -> None:
        click.echo(format_table(await found_hosts(store, config.agent_id, only), only))

    status = run_async(Agent(config, registry=scan_registry(builtin_modules()), report=report).run())
    sys.exit(status)


@cli.command()
@database_options
@state_dir_option
def explore(dsn: str | None, state_dir: Path | None) -> None:
    """Browse zones, hosts, endpoints and flows in a terminal, read-only (never migrates)."""
    from situation.agent import DEFAULT_SQLITE_NAME
    from situation.identity import default_state_dir

    if dsn is None:
        dsn = str((state_dir or default_state_dir()) / DEFAULT_SQLITE_NAME)
    from situation.explore import explore as explore_database

    problem = run_async(explore_database(dsn, terminal=sys.stdin.isatty() and sys.stdout.isatty()))
    if problem:
        raise SituationError(f"explore stopped: {problem}")


@cli.command(cls=LazyOptionsCommand, settings=run_settings)
@click.option("--task-start", metavar="TIME", help="Time of day of the first run: 15:04:05, 15:04 or 3:04PM (default: now).")
@click.option("--task-days", type=click.IntRange(min=1), default=1, show_default=True, help="Run every N days.")
@click.option("--task-period", metavar="DURATION", default="0", show_default=True,
              help="Repeat within the day: 2h repeats the hour, 30m the minute within the start hour (0: off).")
@click.option("--task-log-level", default="1", show_default=True, callback=_level_option,
              help="The job's --log-level (the original's 0-5 work too).")
@click.option("--uninstall", is_flag=True, help="Remove the scheduled task.")
@click.option("--scheduler", type=click.Choice(["auto", "systemd", "cron"]), default="auto", show_default=True,
              help="auto: a systemd timer where systemd runs, else /etc/cron.d.")
@click.option("--root", "target_root", type=click.Path(file_okay=False, path_type=Path), default="/", show_default=True,
              envvar="SITUATION_TASK_ROOT", help="Write under this directory instead of / (to prepare an image).")
@click.option("--db", "db", metavar="DSN", envvar="SITUATION_DB", help="The job's database (kept root-only).")
@click.option("--db-file", "db_file", metavar="PATH", envvar="SITUATION_DB_FILE", help="The job reads its DSN from this file.")
@click.pass_context
def task(ctx: click.Context, task_start: str | None, task_days: int, task_period: str, task_log_level: str,
         uninstall: bool, scheduler: str, target_root: Path, db: str | None, db_file: str | None, **_values) -> None:
    """Install a scheduled `situation run --once` (systemd timer, else cron); run flags given are passed on."""
    from situation import task as scheduled
    from situation.module import parse_duration

    if uninstall:
        for line in scheduled.uninstall(target_root):
            click.echo(line)
        return
    try:
        period = parse_duration(task_period)
    except ValueError as exc:
        raise ConfigError(f"--task-period: {exc}") from None
    if period < 0 or period >= 86400:
        raise ConfigError(f"--task-period: {task_period!r} is out of range; use a duration under 24h, or 0")
    schedule = scheduled.Schedule(*scheduled.parse_start(task_start), days=task_days, period=period)
    argv = [*scheduled.executable(), "--log-level", task_log_level, "run", "--once", *forwarded_run_flags(ctx)]
    systemd = scheduled.uses_systemd(target_root, scheduler)
    for line in scheduled.install(target_root, schedule, argv, systemd=systemd, dsn=db, db_file=db_file):
        click.echo(line)


cli.add_command(task, name="cron")


def forwarded_run_flags(ctx: click.Context) -> list[str]:
    """The `run` flags given to `task` (on its command line or in the environment), as `run` takes them."""
    wanted = {s.dest for s in run_settings()} - {"once"}
    sources = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    args: list[str] = []
    for param in ctx.command.params:
        if param.name not in wanted or ctx.get_parameter_source(param.name) not in sources:
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        elif value is not None:
            args += [param.opts[0], str(value)]
    return args


@cli.command()
def defaults() -> None:
    """Print every setting of `run` as JSON: default, current value, flag and environment name."""
    from situation.config import defaults_document
    from situation.connection.dsn import redact_dsn

    document = {
        "db": {"default": None, "value": redact_dsn(os.environ["SITUATION_DB"]) if os.environ.get("SITUATION_DB") else None,
               "flag": "--db", "env": "SITUATION_DB", "env_aliases": [],
               "help": "Database: a PostgreSQL DSN, or an SQLite path (default: situation.sqlite in the state directory)."},
        "db-file": {"default": None, "value": os.environ.get("SITUATION_DB_FILE") or None, "flag": "--db-file",
                    "env": "SITUATION_DB_FILE", "env_aliases": [], "help": "A file holding the DSN."},
    }
    document.update(defaults_document(run_settings()))
    import json

    click.echo(json.dumps(document, indent=2, sort_keys=True))


@cli.command(name="id")
@state_dir_option
def show_id(state_dir: Path | None) -> None:
    """Print this agent's id (created on first use)."""
    from situation.identity import AGENT_ID_ENV, default_state_dir, resolve_agent_id

    click.echo(resolve_agent_id(os.environ.get(AGENT_ID_ENV) or None, state_dir or default_state_dir()))


@cli.command(name="refresh-id")
@click.argument("hex_id", metavar="[HEX]", required=False)
@state_dir_option
def refresh_id(hex_id: str | None, state_dir: Path | None) -> None:
    """Give this agent a new id: HEX (32 hex digits) or 16 random bytes."""
    from situation.identity import default_state_dir, new_agent_id, parse_agent_id, write_agent_id

    agent_id = parse_agent_id(hex_id) if hex_id else new_agent_id()
    click.echo(write_agent_id(state_dir or default_state_dir(), agent_id))


@cli.command()
@state_dir_option
def health(state_dir: Path | None) -> None:
    """Exit 0 when the running daemon finished a cycle recently and its database was up."""
    from situation.identity import HEALTH_FILE, default_state_dir  # not the agent: a health check starts fast

    path = (state_dir or default_state_dir()) / HEALTH_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SituationError(f"no health record at {path} yet; the daemon has not finished a cycle") from None
    except OSError as exc:
        raise SituationError(f"cannot read the health record at {path} ({exc.strerror}); check its permissions") from None
    record = _health_record(raw)
    if record is None:
        raise SituationError(f"the health record at {path} is damaged; the daemon rewrites it after its next cycle")
    if time.time() > record["next_cycle_before"]:
        raise SituationError("the daemon's last cycle is overdue; check its logs")
    if record.get("database") == "full":
        problem = str(record.get("problem", ""))[:500]
        raise SituationError(f"the daemon's database has no room for its writes ({problem}); check its logs")
    if record.get("database") != "up":
        raise SituationError("the daemon cannot reach its database; check its logs")
    click.echo("healthy")


def _health_record(raw: bytes) -> dict | None:
    """The daemon's health record, or None unless it is a JSON object with a finite ``next_cycle_before``."""
    import json

    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        return None
    if not isinstance(record, dict):
        return None
    deadline = record.get("next_cycle_before")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        return None
    return record


def _timeout_option(_ctx, _param, value: str) -> float:
    from situation.module import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= 24 * 3600:
        raise click.BadParameter(f"{value!r} is out of range; give a duration between 1ms and 24h, e.g. 30s")
    return seconds


@cli.command()
@database_options
@click.option("--transport", "-t", type=click.Choice(["stdio"]), default="stdio", show_default=True,
              help="How the client talks to the server (stdio only).")
@click.option("--timeout", default="30s", show_default=True, envvar="SITUATION_MCP_TIMEOUT", callback=_timeout_option,
              metavar="DURATION", help="Stop a query after this long (Go syntax: 500ms, 30s, 2m).")
@click.option("--max-rows", default=1000, show_default=True, envvar="SITUATION_MCP_MAX_ROWS",
              type=click.IntRange(1, 1_000_000), help="Most rows a query returns; the result says when it cut.")
@state_dir_option
def mcp(dsn: str | None, transport: str, timeout: float, max_rows: int, state_dir: Path | None) -> None:
    """Serve the inventory read-only to AI assistants over MCP (stdio): a schema resource and a query tool."""
    from situation.mcp_server import serve

    run_async(serve(dsn or str(default_sqlite_path(state_dir)), timeout=timeout, max_rows=max_rows))


def default_sqlite_path(state_dir: Path | None) -> Path:
    """The SQLite file `run` writes when no --db is given."""
    from situation.agent import DEFAULT_SQLITE_NAME
    from situation.identity import default_state_dir

    return (state_dir or default_state_dir()) / DEFAULT_SQLITE_NAME


@cli.command()
@click.option("--dialect", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True,
              help="The database flavour whose schema to print.")
def schema(dialect: str) -> None:
    """Print the SQL API schema (the tables `situation mcp` serves), for writing queries."""
    from situation.schema import schema_text

    click.echo(schema_text(dialect), nl=False)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"situation {__version__}")


# -- entry point ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a failure is one line on stderr (a traceback only at debug level)."""
    try:
        result = cli.main(args=argv, prog_name="situation", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("situation: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SituationError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: still one line
        if _is_postgres_error(exc):
            _fail(f"the database refused: {' '.join(str(exc).split())} (SQLSTATE {exc.sqlstate})", 1)
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --log-level debug for details)", 1)
    sys.exit(result if isinstance(result, int) else 0)


def _is_postgres_error(exc: BaseException) -> bool:
    asyncpg = sys.modules.get("asyncpg")  # not imported: the error cannot be one of its
    return asyncpg is not None and isinstance(exc, asyncpg.PostgresError)


def _fail(message: str, code: int) -> None:
    if logs.is_debug():
        import traceback

        traceback.print_exc(file=sys.stderr)
    click.echo(f"situation: error: {logs.terminal_text(message)}", err=True)
    sys.exit(code)
