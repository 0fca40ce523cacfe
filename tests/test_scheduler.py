"""The scheduler: order, overlap, cycles, disabled dependencies, failures, fail-fast, timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from situation.errors import ConfigError
from situation.hostroot import HostRoot
from situation.module import Context, ModuleSpec, Skip
from situation.scheduler import ModuleFailed, plan, run_cycle


def spec(name, depends=(), *, sleep=0.0, fail=None, timeout=5.0, log=None, rows=0):
    async def run(ctx):
        log.append(("start", name, time.monotonic())) if log is not None else None
        await asyncio.sleep(sleep)
        if fail == "error":
            raise RuntimeError(f"{name} broke")
        if fail == "skip":
            raise Skip("not here")
        ctx.count(rows)
        log.append(("end", name, time.monotonic())) if log is not None else None

    return ModuleSpec(name, run, tuple(depends), (), timeout)


def context(module_spec):
    return Context(store=None, log=structlog.get_logger().bind(module=module_spec.name), agent_id="a" * 32,
                   options={}, root=HostRoot())


def registry(*specs):
    return {s.name: s for s in specs}


async def test_dependencies_run_first_and_independent_modules_overlap():
    log = []
    modules = registry(
        spec("fingerprint", log=log, sleep=0.01),
        spec("host-basic", ["fingerprint"], log=log, sleep=0.01),
        spec("host-cpu", ["host-basic"], log=log, sleep=0.2),
        spec("host-disk", ["host-basic"], log=log, sleep=0.2),
        spec("local-users", ["host-basic"], log=log, sleep=0.2),
    )
    results = await run_cycle(plan(modules, set()), context)
    assert {r.status for r in results} == {"ok"}
    when = {(kind, name): t for kind, name, t in log}
    for child in ("host-cpu", "host-disk", "local-users"):
        assert when[("start", child)] >= when[("end", "host-basic")]
    assert when[("end", "host-basic")] >= when[("end", "fingerprint")]
    starts = sorted(when[("start", c)] for c in ("host-cpu", "host-disk", "local-users"))
    assert starts[-1] < min(when[("end", c)] for c in ("host-cpu", "host-disk", "local-users"))


def test_cycles_are_detected_at_start():
    modules = registry(spec("a", ["c"]), spec("b", ["a"]), spec("c", ["b"]))
    with pytest.raises(ConfigError, match="cycle: a -> c -> b -> a"):
        plan(modules, set())


def test_disabled_dependency_disables_dependents():
    modules = registry(spec("a"), spec("b", ["a"]), spec("c", ["b"]), spec("d"))
    assert set(plan(modules, {"a"})) == {"d"}
    assert set(plan(modules, {"a"}, ignore_missing_deps=True)) == {"b", "c", "d"}


# Spec §3.2's dependency table: every built-in module depends at least on these (ours may add one).
SPEC_DEPENDENCIES = {
    "host-basic": {"fingerprint"}, "host-network": {"host-basic"}, "ping": {"host-network"}, "arp": {"ping"},
    "tcp-scan": {"arp"}, "docker": {"host-network", "tcp-scan"}, "netstat": {"local-users", "tcp-scan"},
    "dpkg": {"host-basic", "netstat"}, "rpm": {"host-basic", "netstat"}, "zypper": {"host-basic", "netstat"},
    "standard-protocol": {"netstat"}, "tls": {"tcp-scan", "netstat"}, "ja4": {"tls"}, "saas": {"tls", "ja4"},
}


def test_builtin_modules_depend_on_what_the_spec_lists():
    from situation.module import load_builtin_modules

    builtin = load_builtin_modules()
    assert {name: SPEC_DEPENDENCIES[name] - set(builtin[name].depends) for name in SPEC_DEPENDENCIES} == {
        name: set() for name in SPEC_DEPENDENCIES}
    passive = plan(builtin, {"tcp-scan"})
    assert not {"netstat", "docker", "dpkg", "standard-protocol", "tls"} & set(passive)
    assert {"netstat", "docker", "dpkg"} <= set(plan(builtin, {"ping"}, ignore_missing_deps=True))


def test_unknown_module_name_is_refused():
    with pytest.raises(ConfigError, match="unknown module"):
        plan(registry(spec("a")), {"nope"})


async def test_ignored_missing_dependency_still_runs():
    results = await run_cycle(plan(registry(spec("a"), spec("b", ["a"])), {"a"}, ignore_missing_deps=True), context)
    assert [(r.name, r.status) for r in results] == [("b", "ok")]


async def test_failure_blocks_dependents_only():
    modules = registry(spec("a", fail="error"), spec("b", ["a"]), spec("c", ["b"]), spec("d", rows=3))
    results = {r.name: r for r in await run_cycle(plan(modules, set()), context)}
    assert results["a"].status == "failed" and "a broke" in results["a"].detail
    assert results["b"].status == "blocked" and results["c"].status == "blocked"
    assert results["d"].status == "ok" and results["d"].rows == 3


async def test_skip_is_not_a_failure():
    results = {r.name: r for r in await run_cycle(plan(registry(spec("a", fail="skip"), spec("b", ["a"])), set()), context)}
    assert results["a"].status == "skipped" and results["b"].status == "ok"


async def test_fail_fast_stops_the_cycle():
    log = []
    modules = registry(spec("a", fail="error"), spec("slow", sleep=2, log=log), spec("b", ["a"], log=log))
    with pytest.raises(ModuleFailed, match="module a failed"):
        await run_cycle(plan(modules, set()), context, fail_fast=True)
    assert ("start", "slow") in {(k, n) for k, n, _t in log}
    assert ("end", "slow") not in {(k, n) for k, n, _t in log}  # cancelled, not waited for


async def test_timeout():
    results = {r.name: r for r in await run_cycle(plan(registry(spec("a", sleep=5, timeout=0.1)), set()), context)}
    assert results["a"].status == "timeout"


async def test_stopping_prevents_new_modules():
    stopping = asyncio.Event()
    stopping.set()
    results = await run_cycle(plan(registry(spec("a"), spec("b", ["a"])), set()), context, stopping=stopping)
    assert {r.status for r in results} == {"cancelled"}


async def test_errors_a_module_raises_itself_are_failures():
    async def cancelled_inside(ctx):
        raise asyncio.CancelledError("a library future was cancelled")

    async def timed_out_inside(ctx):
        raise TimeoutError("a socket timed out")

    modules = {
        "a": ModuleSpec("a", cancelled_inside, (), (), 5.0),
        "b": ModuleSpec("b", timed_out_inside, (), (), 5.0),
        "c": ModuleSpec("c", spec("c").run, ("a",), (), 5.0),
    }
    results = {r.name: r for r in await run_cycle(plan(modules, set()), context)}
    assert results["a"].status == "failed" and "CancelledError" in results["a"].detail
    assert results["b"].status == "failed" and "socket timed out" in results["b"].detail
    assert results["c"].status == "blocked"


async def test_a_pass_where_no_module_succeeded_fails_with_one_line():
    from situation.agent import pass_failure
    from situation.errors import PassFailed

    chain = registry(spec("fingerprint", fail="error"), spec("host-basic", ["fingerprint"]),
                     spec("host-cpu", ["host-basic"]))
    failure = pass_failure(await run_cycle(plan(chain, set()), context), "db.sqlite")
    assert isinstance(failure, PassFailed) and failure.exit_code == 1
    assert str(failure) == ("no module succeeded in this pass (failed: fingerprint; the others depend on them); "
                            "the log above says why")
    # One module failing for a reason of its own, or modules that do not apply here, fail nothing.
    for modules in (registry(spec("fingerprint"), spec("host-gpu", fail="error")),
                    registry(spec("chassis", fail="skip"))):
        assert pass_failure(await run_cycle(plan(modules, set()), context), "db.sqlite") is None
