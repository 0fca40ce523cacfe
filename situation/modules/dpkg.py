"""dpkg: the installed Debian packages, linked to the applications whose exe they own.

Source: dpkg's database, ``/var/lib/dpkg/status`` and ``/var/lib/dpkg/info/*.list``
through the host root (see :mod:`situation.packages.dpkg`), read in a thread.
Family gate ``debian``; writes and links as :mod:`situation.packages.record`.

Deliberate deviation from the original (spec §4.9, §10.1 item 10), which turns
every ``status installed`` line of ``dpkg.log*`` into a row (history, versions
cut at the first ``-``, local time read as UTC) and never reads the file lists:
here the rows are the installed set with full Debian versions, the install
time is the ``.list`` file's mtime (``dpkg.log*`` only for a package without
one), ``files`` holds the package's files, and applications link to the
package owning their exe. Packages removed since the last cycle are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from situation.module import Context, Skip, module
from situation.packages import Package, dpkg
from situation.packages.record import Distribution, record_packages

FAMILIES = ("debian",)


@module("dpkg", depends=("host-basic", "netstat"))
async def run(ctx: Context) -> None:
    """Installed Debian packages (dpkg status and file lists), linked to their applications."""

    database: dpkg.Database | None = None

    async def read(_distribution: Distribution, wanted: frozenset[str]) -> Iterator[Package]:
        nonlocal database
        try:
            database = await asyncio.to_thread(dpkg.open_database, ctx.root)
        except OSError as exc:
            raise Skip(f"no dpkg database: cannot read {dpkg.STATUS}: {exc.strerror or exc}") from None
        return dpkg.scan_packages(ctx.root, database, wanted)  # streamed one list at a time, in record's thread

    def reload(packages: list[Package]) -> dict[tuple[str, str], tuple[str, ...]]:
        return dpkg.files_of(database, (p.key for p in packages))

    await record_packages(ctx, "dpkg", FAMILIES, read, reload)
