"""Installed packages as the package managers describe them, before any database code.

Readers (one per source, no database code, blocking: callers run them in a
thread): :mod:`situation.packages.dpkg` (``/var/lib/dpkg``),
:mod:`situation.packages.rpmdb` (``rpmdb.sqlite`` header blobs) and
:mod:`situation.packages.rpmquery` (the ``rpm -qa`` output zypper reads). The
shared module driver (family gate, application links, writes) is
:mod:`situation.packages.record`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Bounds on what one source may make us hold: a package database is a host file.
MAX_PACKAGES = 200_000
MAX_FILES_PER_PACKAGE = 200_000


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    vendor: str = ""
    install_time_unix: int = 0
    files: tuple[str, ...] = ()
    # A scanning reader gives only the files it was asked about in ``files``, and here how many there are.
    file_count: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the row on one machine (the unique key name_version_machine_id)."""
        return (self.name, self.version)


def drop_directories(paths: Iterable[str]) -> list[str]:
    """The files of a package's path list: every path another listed path lies under is dropped.

    The original's "keep leaves" (spec §4.1) aims at the same and gets there by
    string prefixes in sorted order, which keeps ``/usr/lib/x`` when
    ``/usr/lib/x-y`` sorts between it and its content, and drops a file
    ``/usr/bin/x`` beside a directory ``/usr/bin/x.d/``. This keeps exactly the
    paths that are no listed path's ancestor, in the source's order, repeats removed.
    """
    listed = list(dict.fromkeys(paths))
    directories = {path.rpartition("/")[0] for path in listed}
    # A parent that is not listed itself may hide listed ancestors (rare): walk those up.
    for parent in directories.difference(listed):
        parent = parent.rpartition("/")[0]
        while parent and parent not in directories:
            directories.add(parent)
            parent = parent.rpartition("/")[0]
    return [path for path in listed if path not in directories]


def merge_duplicates(packages: Iterable[Package]) -> list[Package]:
    """One package per key (name, version); files of a repeated key are merged.

    Multi-arch installs (``libc6:amd64`` and ``libc6:i386`` at one version) and
    rpm's multilib pairs share a key; the latest install time wins.
    """
    merged: dict[tuple[str, str], Package] = {}
    for package in packages:
        seen = merged.get(package.key)
        if seen is None:
            merged[package.key] = package
            continue
        known = set(seen.files)
        files = seen.files + tuple(f for f in package.files if f not in known)
        merged[package.key] = Package(
            name=package.name,
            version=package.version,
            vendor=seen.vendor or package.vendor,
            install_time_unix=max(seen.install_time_unix, package.install_time_unix),
            files=files,
        )
    return list(merged.values())
