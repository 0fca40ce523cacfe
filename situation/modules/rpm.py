"""rpm: the installed packages of an rpm-based host, from ``rpmdb.sqlite``.

Source: the rpm database in SQLite form (rpm 4.16+), ``/var/lib/rpm/rpmdb.sqlite``,
``/usr/lib/sysimage/rpm/rpmdb.sqlite``, else the first one found below
``/usr/lib`` (at most four levels down), through the host root; header blobs
are parsed in a thread (:mod:`situation.packages.rpmdb`). Family gate
``fedora``, ``rhel``, ``neokylin``, ``anolis`` (SUSE has zypper); older Rocky
(< 9) and openSUSE Leap (< 16) releases keep a BerkeleyDB database and are
skipped; an unparsable version on those is an error, as in the original.
Writes and links as :mod:`situation.packages.record`.

No database found is a skip (the original fails): the module does not apply.
"""

from __future__ import annotations

import asyncio
import re

from situation.module import Context, Skip, module
from situation.packages import Package, rpmdb
from situation.packages.record import Distribution, record_packages

FAMILIES = ("fedora", "rhel", "neokylin", "anolis")
# Releases before these keep the BerkeleyDB rpmdb: distribution → first SQLite release.
SQLITE_SINCE = {"rocky": (9,), "opensuse-leap": (16,)}
_VERSION = re.compile(r"^v?([0-9]+(?:\.[0-9]+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def version_before(text: str, release: tuple[int, ...]) -> bool:
    """Whether version ``text`` (go-version syntax) is below ``release``; ValueError when unparsable."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ValueError(f"cannot parse the distribution version {text!r}")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    width = max(len(numbers), len(release))
    padded, wanted = numbers + (0,) * (width - len(numbers)), release + (0,) * (width - len(release))
    if padded != wanted:
        return padded < wanted
    return match.group(2) is not None  # a pre-release comes before its release


def check_database_format(distribution: Distribution) -> None:
    release = SQLITE_SINCE.get(distribution.name)
    if release is not None and version_before(distribution.version, release):
        raise Skip(f"{distribution.name} {distribution.version} keeps a BerkeleyDB rpm database, not rpmdb.sqlite")


@module("rpm", depends=("host-basic", "netstat"))
async def run(ctx: Context) -> None:
    """Installed rpm packages (rpmdb.sqlite header blobs), linked to their applications."""

    async def read(distribution: Distribution) -> list[Package]:
        check_database_format(distribution)
        path = await asyncio.to_thread(rpmdb.find_database, ctx.root)
        if path is None:
            raise Skip("no rpm database (rpmdb.sqlite) found")
        contents = await asyncio.to_thread(rpmdb.read_database, path)
        if contents.skipped:
            ctx.log.warning("rpm headers skipped: they do not parse", database=str(path), count=contents.skipped)
        return contents.packages

    await record_packages(ctx, "rpm", FAMILIES, read)
