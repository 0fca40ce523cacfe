"""What the dpkg, rpm and zypper modules share: family gate, writes, links to applications.

:func:`record_packages` is the whole module body once a reader is given:

1. **Family gate.** The host's ``distribution_family`` (host-basic) must be one
   of the module's families; an empty family runs every package module (spec
   §4.9). Otherwise the module is skipped (a success).
2. The reader runs (blocking readers in a thread). No package: skipped, nothing
   written or deleted (an unreadable or empty database never empties the table).
3. Packages sharing (name, version) are merged (multi-arch, multilib). A reader
   that can read a package's files again (dpkg: its ``.list`` files) gives them
   one package at a time, already merged, with a reloader: each package's files
   are then matched and counted as they are read and dropped, and only the
   packages written (new or changed) are read again, a chunk at a time. Such
   a reader is given the paths looked for (applications' exes and their
   aliases) and may give each package only those of its files, with their
   number in ``file_count``: dpkg streams its lists and keeps no other path.
   The module's memory then stays at one chunk's paths, not the whole database's.
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
from dataclasses import dataclass, replace
from typing import Any

from situation.hostroot import HostRoot
from situation.module import Context, Skip
from situation.packages import Package, merge_duplicates

# Directories that /usr-merge makes symbolic links to their /usr counterparts.
MERGED_CANDIDATES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
UPDATED_COLUMNS = ("vendor", "manager", "install_time_unix", "files")
# Packages per upsert, and file paths: bounds the JSON text held at once (one transaction all the same).
# The paths are small objects: 2,000 at a time (not 10,000) leaves ~1 MB less resident after a first
# cycle that writes every package (bench/soak.py).
CHUNK_PACKAGES = 200
CHUNK_FILES = 2_000


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    family: str


# The reader gives the packages; a lazy iterable is consumed in a worker thread, one package at a time.
Reader = Callable[[Distribution], Awaitable[Iterable[Package]]]
# With a reloader the reader is also given the paths looked for; its packages may hold only those (and file_count).
ScanningReader = Callable[[Distribution, frozenset[str]], Awaitable[Iterable[Package]]]
# Blocking: the files of these packages read again, for a reader whose packages are unique by key.
Reloader = Callable[[list[Package]], Mapping[tuple[str, str], tuple[str, ...]]]


@dataclass
class Listing:
    """What the module keeps of the reader's packages: counts and owners always, files only when needed."""

    packages: list[Package]  # files emptied when a reloader can read them again
    file_counts: dict[tuple[str, str], int]
    owners: dict[int, tuple[str, str]]  # application id → key of the package owning its exe


async def host_distribution(ctx: Context) -> Distribution:
    row = await ctx.store.fetchrow("host_distribution", ctx.host_id()) or {}
    return Distribution(
        row.get("distribution") or "", row.get("distribution_version") or "", row.get("distribution_family") or ""
    )


def check_family(distribution: Distribution, families: Iterable[str]) -> None:
    """Skip unless the family is one of ``families``, or unknown (empty)."""
    if distribution.family and distribution.family not in families:
        raise Skip(f"module skipped for this distribution (family {distribution.family!r})")


async def record_packages(
    ctx: Context, manager: str, families: tuple[str, ...], read: Reader | ScanningReader,
    reload: Reloader | None = None,
) -> None:
    """Gate, read, write and link (see the module docstring).

    With ``reload`` the file lists are not held while the module works: each
    package's files are matched to applications and counted as it is read,
    then dropped, and only the packages that are written are read again, a
    chunk at a time. A dpkg database's 100,000 paths are never all in memory.
    """
    host = ctx.host_id()
    distribution = await host_distribution(ctx)
    check_family(distribution, families)
    applications = await ctx.store.fetch("host_applications", host)
    owners = await asyncio.to_thread(Owners, ctx.root, applications)
    packages = await (read(distribution, owners.paths()) if reload else read(distribution))  # type: ignore[call-arg]
    listing = await asyncio.to_thread(list_packages, packages, owners, keep_files=reload is None)
    del packages
    if not listing.packages:
        raise Skip("no package found")
    existing = {(r["name"], r["version"]): r for r in await ctx.store.fetch("machine_packages", host)}
    unchanged_ids, changed = split_unchanged(listing.packages, listing.file_counts, existing, manager)

    async def write() -> None:
        ids = dict(unchanged_ids)
        for chunk in chunks(changed, listing.file_counts):
            files = await asyncio.to_thread(reload, chunk) if reload else {p.key: p.files for p in chunk}
            rows = [package_row(p, files.get(p.key, ()), manager, host) for p in chunk]
            del files
            result = await ctx.upsert("packages", rows, key="name_version_machine_id", update=UPDATED_COLUMNS)
            del rows
            ids.update({p.key: i for p, i in zip(chunk, result.ids) if i is not None})
        kept = sorted(set(ids.values()))
        ctx.count(await ctx.store.execute("unlink_removed_packages", host, manager, kept, ctx.agent_id))
        ctx.count(await ctx.store.execute("delete_removed_packages", host, manager, kept))
        links = wanted_links(applications, listing.owners, ids, manager_ids=set(kept) | _ids_of(existing, manager))
        if links:
            app_ids = sorted(links)
            package_ids = [links[a] for a in app_ids]
            ctx.count(await ctx.store.execute("set_application_packages", app_ids, package_ids, ctx.agent_id))

    await ctx.run_in_transaction(write)


def list_packages(packages: Iterable[Package], owners: Owners, *, keep_files: bool) -> Listing:
    """The reader's packages (merged by key when their files are kept), matched to applications and counted.

    Blocking: a lazy reader reads its files here. Without ``keep_files`` each
    package's files are dropped once matched and counted.
    """
    if keep_files:
        packages = merge_duplicates(packages)
    kept: list[Package] = []
    counts: dict[tuple[str, str], int] = {}
    for package in packages:
        owners.match(package)
        counts[package.key] = len(package.files) if package.file_count is None else package.file_count
        kept.append(package if keep_files else replace(package, files=(), file_count=None))
    kept.sort(key=lambda p: p.key)
    return Listing(kept, counts, owners.found())


def chunks(packages: list[Package], file_counts: Mapping[tuple[str, str], int]) -> list[list[Package]]:
    """``packages`` in runs of at most CHUNK_PACKAGES, and CHUNK_FILES paths unless one package has more."""
    runs: list[list[Package]] = []
    run: list[Package] = []
    files = 0
    for package in packages:
        count = file_counts.get(package.key, 0)
        if run and (len(run) >= CHUNK_PACKAGES or files + count > CHUNK_FILES):
            runs.append(run)
            run, files = [], 0
        run.append(package)
        files += count
    if run:
        runs.append(run)
    return runs


def split_unchanged(
    packages: list[Package], file_counts: Mapping[tuple[str, str], int], existing: Mapping[tuple, Mapping[str, Any]],
    manager: str,
) -> tuple[dict[tuple[str, str], int], list[Package]]:
    """(key → id of the packages whose row is as it would be written, the other packages)."""
    ids: dict[tuple[str, str], int] = {}
    changed: list[Package] = []
    for package in packages:
        row = existing.get(package.key)
        if row is not None and _unchanged(row, package, file_counts.get(package.key, 0), manager):
            ids[package.key] = row["id"]
        else:
            changed.append(package)
    return ids, changed


def _unchanged(row: Mapping[str, Any], package: Package, file_count: int, manager: str) -> bool:
    return (
        row["vendor"] == package.vendor
        and row["manager"] == manager
        and row["install_time_unix"] == package.install_time_unix
        and row["file_count"] == file_count
    )


def _ids_of(existing: Mapping[tuple, Mapping[str, Any]], manager: str) -> set[int]:
    return {row["id"] for row in existing.values() if row["manager"] == manager}


def package_row(package: Package, files: tuple[str, ...], manager: str, machine_id: int) -> dict[str, Any]:
    return {
        "name": package.name,
        "version": package.version,
        "vendor": package.vendor,
        "manager": manager,
        "install_time_unix": package.install_time_unix,
        "files": list(files),
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


class Owners:
    """Which package owns each application's exe, found one package at a time (blocking: reads the root's links).

    The lookup is a dict from path to applications, with ``/bin`` ↔
    ``/usr/bin``-style aliases on a /usr-merged root: never a scan per
    application. An exact path wins over an alias; among packages listing the
    same path, the first by (name, version), whatever order they come in.
    """

    def __init__(self, root: HostRoot, applications: list[Mapping[str, Any]]):
        merged = merged_directories(root)
        self.exact: dict[str, list[int]] = {}
        self.aliased: dict[str, list[int]] = {}
        for application in applications:
            path = application["name"]
            self.exact.setdefault(path, []).append(application["id"])
            for alias in aliases(path, merged):
                self.aliased.setdefault(alias, []).append(application["id"])
        self.by_path: dict[int, tuple[str, str]] = {}
        self.by_alias: dict[int, tuple[str, str]] = {}

    def paths(self) -> frozenset[str]:
        """Every path that would link an application: the exes and their aliases."""
        return frozenset(self.exact).union(self.aliased)

    def match(self, package: Package) -> None:
        for path in package.files:
            for app_id in self.exact.get(path, ()):
                _keep_first(self.by_path, app_id, package.key)
            for app_id in self.aliased.get(path, ()):
                _keep_first(self.by_alias, app_id, package.key)

    def found(self) -> dict[int, tuple[str, str]]:
        return {**self.by_alias, **self.by_path}


def _keep_first(owners: dict[int, tuple[str, str]], app_id: int, key: tuple[str, str]) -> None:
    if app_id not in owners or key < owners[app_id]:
        owners[app_id] = key


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
