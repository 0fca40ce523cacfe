"""What the dpkg, rpm and zypper modules share: family gate, writes, links to applications.

:func:`record_packages` is the whole module body once a reader is given:

1. **Family gate.** The host's ``distribution_family`` (host-basic) must be one
   of the module's families; an empty family runs every package module (spec
   §4.9). Otherwise the module is skipped (a success).
2. The reader runs (blocking readers in a thread). No package: skipped, nothing
   written or deleted (an unreadable or empty database never empties the table).
3. Packages sharing (name, version) are merged (multi-arch, multilib).
4. **Links.** Every application of this host whose ``name`` (the exe path) is a
   file of a package points to that package, found through a dict from path to
   applications built once (with ``/bin`` ↔ ``/usr/bin``-style aliases on a
   /usr-merged root), never a scan per application. An exact path wins over
   an alias; among packages listing the same path, the first by (name,
   version). An application still linked to a package of this manager whose
   files no longer hold its exe is unlinked.
5. **One transaction**: upsert the packages whose row is new or differs (vendor,
   manager, install time, number of files: a package whose version and install
   time are unchanged keeps its files, so its large ``files`` list is not sent
   again), unlink applications from this machine's packages of this manager
   that are no longer installed, delete those packages, and set the links.

Removed packages therefore disappear: a package row of this machine and
manager that the current database no longer lists (removed, or upgraded to
another version, which is another row) is deleted, its applications unlinked
first (``applications.package_id`` has no cascade). Rows of other managers and
other machines are never touched.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from situation.hostroot import HostRoot
from situation.module import Context, Skip
from situation.packages import Package, merge_duplicates

# Directories that /usr-merge makes symbolic links to their /usr counterparts.
MERGED_CANDIDATES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
UPDATED_COLUMNS = ("vendor", "manager", "install_time_unix", "files")
# Packages per upsert, and file paths: bounds the JSON text held at once (one transaction all the same).
CHUNK_PACKAGES = 200
CHUNK_FILES = 10_000


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    family: str


Reader = Callable[[Distribution], Awaitable[list[Package]]]


async def host_distribution(ctx: Context) -> Distribution:
    row = await ctx.store.fetchrow("host_distribution", ctx.host_id()) or {}
    return Distribution(
        row.get("distribution") or "", row.get("distribution_version") or "", row.get("distribution_family") or ""
    )


def check_family(distribution: Distribution, families: Iterable[str]) -> None:
    """Skip unless the family is one of ``families``, or unknown (empty)."""
    if distribution.family and distribution.family not in families:
        raise Skip(f"module skipped for this distribution (family {distribution.family!r})")


async def record_packages(ctx: Context, manager: str, families: tuple[str, ...], read: Reader) -> None:
    """Gate, read, write and link (see the module docstring)."""
    host = ctx.host_id()
    distribution = await host_distribution(ctx)
    check_family(distribution, families)
    applications = await ctx.store.fetch("host_applications", host)
    packages = merge_duplicates(await read(distribution))
    if not packages:
        raise Skip("no package found")
    packages.sort(key=lambda p: p.key)
    owners = await asyncio.to_thread(owners_of_applications, ctx.root, applications, packages)
    existing = {(r["name"], r["version"]): r for r in await ctx.store.fetch("machine_packages", host)}
    unchanged_ids, changed = split_unchanged(packages, existing, manager)
    del packages  # the file lists of unchanged packages are no longer needed

    async def write() -> None:
        ids = dict(unchanged_ids)
        for chunk in chunks(changed):
            rows = [package_row(p, manager, host) for p in chunk]
            result = await ctx.upsert("packages", rows, key="name_version_machine_id", update=UPDATED_COLUMNS)
            ids.update({p.key: i for p, i in zip(chunk, result.ids) if i is not None})
        kept = sorted(set(ids.values()))
        ctx.count(await ctx.store.execute("unlink_removed_packages", host, manager, kept, ctx.agent_id))
        ctx.count(await ctx.store.execute("delete_removed_packages", host, manager, kept))
        links = wanted_links(applications, owners, ids, manager_ids=set(kept) | _ids_of(existing, manager))
        if links:
            app_ids = sorted(links)
            package_ids = [links[a] for a in app_ids]
            ctx.count(await ctx.store.execute("set_application_packages", app_ids, package_ids, ctx.agent_id))

    await ctx.run_in_transaction(write)


def chunks(packages: list[Package]) -> list[list[Package]]:
    """``packages`` in runs of at most CHUNK_PACKAGES, and CHUNK_FILES paths unless one package has more."""
    runs: list[list[Package]] = []
    run: list[Package] = []
    files = 0
    for package in packages:
        if run and (len(run) >= CHUNK_PACKAGES or files + len(package.files) > CHUNK_FILES):
            runs.append(run)
            run, files = [], 0
        run.append(package)
        files += len(package.files)
    if run:
        runs.append(run)
    return runs


def split_unchanged(
    packages: list[Package], existing: Mapping[tuple, Mapping[str, Any]], manager: str
) -> tuple[dict[tuple[str, str], int], list[Package]]:
    """(key → id of the packages whose row is as it would be written, the other packages)."""
    ids: dict[tuple[str, str], int] = {}
    changed: list[Package] = []
    for package in packages:
        row = existing.get(package.key)
        if row is not None and _unchanged(row, package, manager):
            ids[package.key] = row["id"]
        else:
            changed.append(package)
    return ids, changed


def _unchanged(row: Mapping[str, Any], package: Package, manager: str) -> bool:
    return (
        row["vendor"] == package.vendor
        and row["manager"] == manager
        and row["install_time_unix"] == package.install_time_unix
        and row["file_count"] == len(package.files)
    )


def _ids_of(existing: Mapping[tuple, Mapping[str, Any]], manager: str) -> set[int]:
    return {row["id"] for row in existing.values() if row["manager"] == manager}


def package_row(package: Package, manager: str, machine_id: int) -> dict[str, Any]:
    return {
        "name": package.name,
        "version": package.version,
        "vendor": package.vendor,
        "manager": manager,
        "install_time_unix": package.install_time_unix,
        "files": list(package.files),
        "machine_id": machine_id,
    }


# -- links ---------------------------------------------------------------------------------


def merged_directories(root: HostRoot) -> tuple[str, ...]:
    """Top directories that are symbolic links to ``usr/<same>`` (a /usr-merged system)."""
    merged = []
    for name in MERGED_CANDIDATES:
        try:
            target = os.readlink(root.base / name)
        except OSError:
            continue
        if target.strip("/") == f"usr/{name}":
            merged.append(name)
    return tuple(merged)


def aliases(path: str, merged: tuple[str, ...]) -> list[str]:
    """The other spellings of ``path`` on a /usr-merged system (``/bin/sh`` ↔ ``/usr/bin/sh``)."""
    for name in merged:
        if path.startswith(f"/{name}/"):
            return ["/usr" + path]
        if path.startswith(f"/usr/{name}/"):
            return [path[len("/usr"):]]
    return []


def owners_of_applications(
    root: HostRoot, applications: list[Mapping[str, Any]], packages: list[Package]
) -> dict[int, tuple[str, str]]:
    """Application id → key of the package owning its exe (blocking: reads the root's links)."""
    merged = merged_directories(root)
    exact: dict[str, list[int]] = {}
    aliased: dict[str, list[int]] = {}
    for application in applications:
        path = application["name"]
        exact.setdefault(path, []).append(application["id"])
        for alias in aliases(path, merged):
            aliased.setdefault(alias, []).append(application["id"])
    by_path: dict[int, tuple[str, str]] = {}
    by_alias: dict[int, tuple[str, str]] = {}
    for package in packages:
        for path in package.files:
            for app_id in exact.get(path, ()):
                by_path.setdefault(app_id, package.key)
            for app_id in aliased.get(path, ()):
                by_alias.setdefault(app_id, package.key)
    return {**by_alias, **by_path}


def wanted_links(
    applications: list[Mapping[str, Any]],
    owners: Mapping[int, tuple[str, str]],
    ids: Mapping[tuple[str, str], int],
    *,
    manager_ids: set[int],
) -> dict[int, int | None]:
    """Application id → the package id it must point to, for the applications whose link changes.

    An application with no owner here is unlinked only when it points to a
    package of this manager (another manager may own it).
    """
    links: dict[int, int | None] = {}
    for application in applications:
        current = application["package_id"]
        owner = owners.get(application["id"])
        wanted = ids.get(owner) if owner is not None else None
        if wanted is None and current not in manager_ids:
            continue
        if wanted != current:
            links[application["id"]] = wanted
    return links
