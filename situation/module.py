"""What a collection module is: a name, dependencies, options and ``async run(ctx)``.

Modules register themselves with :func:`module` at import time. The scheduler
(``situation/scheduler.py``) runs them as a dependency graph; each gets a
:class:`Context` with the store, a logger bound to its name, the agent id,
its options and the system root it must read the host through.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from situation.discovery import Discovery
from situation.errors import ConfigError

if TYPE_CHECKING:
    from situation.hostroot import HostRoot
    from situation.store import Store

RunFunction = Callable[["Context"], Awaitable[None]]
CheckFunction = Callable[[Mapping[str, Any]], object]  # raises ConfigError (one line) on unusable options

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
DEFAULT_TIMEOUT = 120.0
DEFAULT_INTERVAL = 15 * 60.0  # the agent's cycle interval when a caller gives none


class Skip(Exception):
    """Raised by a module that does not apply here (no D-Bus, not root …): logged, not a failure."""


@dataclass(frozen=True)
class Option:
    """A module setting, exposed as ``--<module>-<name>`` and ``SITUATION_<MODULE>_<NAME>``."""

    name: str
    default: Any
    kind: str  # "str", "int", "bool", "duration" (seconds, Go syntax accepted: 300ms, 1m30s), "ports"
    help: str


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    run: RunFunction
    depends: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    summary: str = ""
    check: CheckFunction | None = None  # run at start on the module's options, before any module runs


@dataclass
class HostMachine:
    """The ``machines`` row of the host this agent runs on, resolved lazily."""

    id: int | None = None


@dataclass
class Context:
    store: Store
    log: Any
    agent_id: str
    options: Mapping[str, Any]
    root: HostRoot
    host: HostMachine = field(default_factory=HostMachine)
    discovery: Discovery = field(default_factory=Discovery)  # where active modules may send packets
    interval: float = DEFAULT_INTERVAL  # seconds between cycles (what "recently written" means)
    rows_written: int = 0

    def count(self, rows: int) -> None:
        """Modules report what they wrote; the cycle log line sums it."""
        self.rows_written += rows

    async def upsert(self, table: str, rows, *, key: str, update=None):
        """``store.upsert``, with the rows it wrote counted."""
        result = await self.store.upsert(table, rows, key=key, update=update)
        self.count(result.written)
        return result

    async def run_in_transaction(self, work):
        """``store.run_in_transaction(work)``, with rows counted once however often the unit runs.

        A unit rolled back and rerun (connection lost, deadlock victim) would
        otherwise count what its failed attempt wrote and then undid.
        """
        before = self.rows_written

        async def attempt():
            self.rows_written = before
            return await work()

        return await self.store.run_in_transaction(attempt)

    def host_id(self) -> int:
        """The host's machine id, which fingerprint / host-basic resolved earlier in the cycle."""
        if self.host.id is None:
            raise RuntimeError("no host found in storage (host-basic did not run)")
        return self.host.id


REGISTRY: dict[str, ModuleSpec] = {}


def module(
    name: str,
    *,
    depends: tuple[str, ...] = (),
    options: tuple[Option, ...] = (),
    timeout: float = DEFAULT_TIMEOUT,
    check: CheckFunction | None = None,
) -> Callable[[RunFunction], RunFunction]:
    """Register the decorated ``async def run(ctx)`` as module ``name``.

    ``check(options)`` validates settings that depend on each other or on the
    environment, at start (situation/agent.py); a bad single value is caught
    earlier by its option's kind.
    """
    if not _NAME.match(name):
        raise ValueError(f"module name {name!r} must be kebab-case")

    def register(run: RunFunction) -> RunFunction:
        if name in REGISTRY:
            raise ValueError(f"module {name!r} is registered twice")
        summary = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else ""
        REGISTRY[name] = ModuleSpec(name, run, tuple(depends), tuple(options), timeout, summary, check)
        return run

    return register


def load_builtin_modules() -> dict[str, ModuleSpec]:
    """Import every module of ``situation.modules`` so that they register."""
    import importlib
    import pkgutil

    import situation.modules as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return REGISTRY


async def command_output(argv: list[str], timeout: float) -> str | None:
    """stdout of a host command, or None when it cannot run, fails or hangs."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can drop the module's cancellation
            stdout, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    except asyncio.CancelledError:
        process.kill()  # no orphan when the module is cancelled
        raise
    if process.returncode != 0:
        return None
    return stdout.decode("utf-8", errors="replace")


# -- option values ---------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = {"1", "t", "true", "yes", "y", "on"}
_FALSE = {"0", "f", "false", "no", "n", "off"}


def parse_duration(text: str) -> float:
    """Seconds from Go syntax (``300ms``, ``1m30s``) or a plain number of seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise ValueError(f"invalid duration {text!r}; use e.g. 300ms, 5s, 1m30s or 15m")
        return seconds
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}; use e.g. 300ms, 5s, 1m30s or 15m")
    return total


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}; use true/false, 1/0, yes/no or on/off")


def convert_option(option: Option, value: Any, source: str) -> Any:
    """A raw flag or environment value as the option's kind; ConfigError names the source."""
    if not isinstance(value, str):
        return value
    try:
        if option.kind == "duration":
            return parse_duration(value)
        if option.kind == "int":
            return int(value)
        if option.kind == "bool":
            return parse_bool(value)
        if option.kind == "ports":
            from situation.net.tcp import parse_ports

            parse_ports(value)  # checked here, parsed by the module
        return value
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
