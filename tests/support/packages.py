"""Running the package modules in-process on either backend, with a seeded host and applications.

The package modules are passive (they read files), so they run in-process on
real SQLite and PostgreSQL stores (``support.stores.backend_store``). The host
row carries the distribution the family gates look at; applications are
seeded as netstat writes them (exe path, pid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine, load_builtin_modules
from support.stores import AGENT, raw_rows


async def add_host(store, family: str = "debian", distribution: str = "debian", version: str = "12",
                   agent: str = AGENT) -> int:
    result = await store.upsert("machines", [{
        "agent": agent, "hostname": "h", "distribution": distribution, "distribution_version": version,
        "distribution_family": family,
    }], key="agent")
    return result.ids[0]


async def add_applications(store, machine_id: int, exes: list[tuple[str, int]]) -> list[int]:
    rows = [{"name": exe, "args": [], "pid": pid, "version": "", "protocol": "", "cpe": "", "machine_id": machine_id}
            for exe, pid in exes]
    return (await store.upsert("applications", rows, key="machine_app_name_pid")).ids


async def run_package_module(store, name: str, machine_id: int, root: Path | HostRoot | None = None) -> Context:
    load_builtin_modules()
    host_root = root if isinstance(root, HostRoot) else HostRoot() if root is None else HostRoot.under(root)
    ctx = Context(store=store, log=structlog.get_logger().bind(module=name), agent_id=AGENT,
                  options={}, root=host_root, host=HostMachine(id=machine_id))
    await REGISTRY[name].run(ctx)
    return ctx


async def packages_of(store, machine_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    rows = await raw_rows(store, f"SELECT * FROM packages WHERE machine_id = {int(machine_id)}")
    return {(r["name"], r["version"]): r for r in rows}


async def links(store) -> dict[str, str | None]:
    """Application exe@pid → name of its package (None when unlinked)."""
    rows = await raw_rows(store, "SELECT a.name AS exe, a.pid AS pid, p.name AS package FROM applications AS a "
                                 "LEFT JOIN packages AS p ON p.id = a.package_id")
    return {f"{r['exe']}@{r['pid']}": r["package"] for r in rows}


async def table_counts(store) -> dict[str, int]:
    counts = {}
    for table in ("machines", "packages", "applications"):
        counts[table] = (await raw_rows(store, f"SELECT count(*) AS n FROM {table}"))[0]["n"]
    return counts
