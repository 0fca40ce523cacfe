"""Run the modules of one cycle as a dependency graph.

Every module starts as soon as all its dependencies have finished, so
independent modules run at the same time, sharing the store. A module that
fails (or times out) is logged and its dependents are skipped; with
``fail_fast`` the whole cycle stops at the first failure. A module raising
:class:`~situation.module.Skip` did not apply here: that is a success, and its
dependents run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from situation.errors import ConfigError, SituationError
from situation.module import Context, ModuleSpec, Skip

log = structlog.get_logger("situation.scheduler")

OK, SKIPPED, FAILED, TIMEOUT, BLOCKED, CANCELLED = "ok", "skipped", "failed", "timeout", "blocked", "cancelled"
_BLOCKING = {FAILED, TIMEOUT, BLOCKED, CANCELLED}


@dataclass
class ModuleResult:
    name: str
    status: str
    duration: float = 0.0
    rows: int = 0
    detail: str = ""
    error: BaseException | None = field(default=None, repr=False, compare=False)  # what a failed module raised

    @property
    def failed(self) -> bool:
        return self.status in (FAILED, TIMEOUT)


class ModuleFailed(SituationError):
    """A module failed under --fail-fast."""


def plan(
    registry: Mapping[str, ModuleSpec], disabled: set[str], *, ignore_missing_deps: bool = False
) -> dict[str, ModuleSpec]:
    """The modules to run, after checking names, dependencies and cycles.

    A disabled (or unknown) dependency disables its dependents too, unless
    ``ignore_missing_deps``, where dependents run without it.
    """
    unknown = sorted(disabled - set(registry))
    if unknown:
        raise ConfigError(f"unknown module(s) to disable: {', '.join(unknown)}; known: {', '.join(sorted(registry))}")
    _check_cycles(registry)
    enabled = {name: spec for name, spec in registry.items() if name not in disabled}
    if ignore_missing_deps:
        return enabled
    changed = True
    while changed:
        changed = False
        for name, spec in list(enabled.items()):
            missing = [d for d in spec.depends if d not in enabled]
            if missing:
                log.info("module disabled: a dependency is disabled", module=name, missing=missing)
                del enabled[name]
                changed = True
    return enabled


def _check_cycles(registry: Mapping[str, ModuleSpec]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done" or name not in registry:
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"module dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dependency in registry[name].depends:
            visit(dependency, [*path, name])
        state[name] = "done"

    for name in sorted(registry):
        visit(name, [])


async def run_cycle(
    modules: Mapping[str, ModuleSpec],
    make_context: Callable[[ModuleSpec], Context],
    *,
    fail_fast: bool = False,
    stopping: asyncio.Event | None = None,
) -> list[ModuleResult]:
    """Run one cycle; results come back in the order modules finished.

    Once ``stopping`` is set no further module starts; running ones go on.
    """
    finished = {name: asyncio.Event() for name in modules}
    results: dict[str, ModuleResult] = {}
    order: list[str] = []

    async def run_one(spec: ModuleSpec) -> None:
        try:
            for dependency in spec.depends:
                if dependency in finished:
                    await finished[dependency].wait()
            blockers = [d for d in spec.depends if d in results and results[d].status in _BLOCKING]
            if stopping is not None and stopping.is_set():
                result = ModuleResult(spec.name, CANCELLED, detail="agent stopping")
            elif blockers:
                result = ModuleResult(spec.name, BLOCKED, detail=f"dependency {', '.join(blockers)} did not succeed")
            else:
                result = await _execute(spec, make_context(spec))
            results[spec.name] = result
            order.append(spec.name)
            _log_result(result)
            if fail_fast and result.failed:
                raise ModuleFailed(f"module {spec.name} failed: {result.detail}")
        except asyncio.CancelledError:
            results.setdefault(spec.name, ModuleResult(spec.name, CANCELLED))
            raise
        finally:
            finished[spec.name].set()

    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for name in sorted(modules):  # deterministic start order among ready modules
                group.create_task(run_one(modules[name]), name=f"module:{name}")
    except* ModuleFailed as failures:
        _log_cycle(results, time.monotonic() - started)
        raise failures.exceptions[0] from None
    _log_cycle(results, time.monotonic() - started)
    return [results[name] for name in order]


async def _execute(spec: ModuleSpec, context: Context) -> ModuleResult:
    started = time.monotonic()
    deadline = asyncio.timeout(spec.timeout)
    try:
        async with deadline:
            await spec.run(context)
    except Skip as reason:
        return ModuleResult(spec.name, SKIPPED, time.monotonic() - started, context.rows_written, str(reason))
    except TimeoutError as exc:
        if deadline.expired():
            return ModuleResult(spec.name, TIMEOUT, time.monotonic() - started, context.rows_written,
                                f"no result after {spec.timeout:g}s")
        return ModuleResult(spec.name, FAILED, time.monotonic() - started, context.rows_written,
                            f"TimeoutError: {exc}")
    except asyncio.CancelledError as exc:
        if asyncio.current_task().cancelling():
            raise  # the cycle itself is being cancelled
        # Something inside the module was cancelled under it: a failure of that module.
        return ModuleResult(spec.name, FAILED, time.monotonic() - started, context.rows_written,
                            f"CancelledError: {exc}")
    except SituationError as exc:
        return ModuleResult(spec.name, FAILED, time.monotonic() - started, context.rows_written, str(exc), exc)
    except Exception as exc:  # noqa: BLE001 - a module's bug must not end the cycle
        context.log.debug("module raised", exc_info=True)
        return ModuleResult(spec.name, FAILED, time.monotonic() - started, context.rows_written,
                            f"{type(exc).__name__}: {exc}", exc)
    return ModuleResult(spec.name, OK, time.monotonic() - started, context.rows_written)


def _log_result(result: ModuleResult) -> None:
    fields = {"module": result.name, "status": result.status, "duration_ms": round(result.duration * 1000),
              "rows": result.rows}
    if result.detail:
        fields["detail"] = result.detail
    if result.failed:
        log.error("module finished", **fields)
    else:
        log.info("module finished", **fields)


def _log_cycle(results: Mapping[str, ModuleResult], duration: float) -> None:
    by_status: dict[str, int] = {}
    for result in results.values():
        by_status[result.status] = by_status.get(result.status, 0) + 1
    log.info(
        "cycle finished",
        duration_ms=round(duration * 1000),
        rows=sum(r.rows for r in results.values()),
        **by_status,
    )
