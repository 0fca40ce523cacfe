"""zypper: the installed packages of a SUSE host, as its own ``rpm`` lists them.

Choice (spec §4.9, §11.3): no reader for SUSE's NDB ``Packages.db`` (no
maintained Python one exists, and the format is rpm-internal); the module runs
``rpm -qa --queryformat …`` through an asyncio subprocess, which reads NDB,
BerkeleyDB or SQLite alike, whichever the host's rpm uses
(:mod:`situation.packages.rpmquery`). On a host root other than the live
system, ``--dbpath`` points at that root's database directory. No ``rpm``
command: skipped.

Family gate ``suse``. Per package: name, version (without release, as the
original), vendor, and the real install time (INSTALLTIME; the original
stored the epoch number there, §10.2); files with directory entries dropped,
like the other package modules (the original kept directories for zypper only).
Writes and links as :mod:`situation.packages.record`.
"""

from __future__ import annotations

import asyncio
import shutil

from situation.module import Context, Skip, command_output, module
from situation.packages import Package, rpmquery
from situation.packages.record import Distribution, record_packages

FAMILIES = ("suse",)
QUERY_TIMEOUT = 90.0


@module("zypper", depends=("host-basic", "netstat"))
async def run(ctx: Context) -> None:
    """Installed SUSE packages (rpm -qa), linked to their applications."""

    async def read(_distribution: Distribution) -> list[Package]:
        if shutil.which("rpm") is None:
            raise Skip("no rpm command to list the installed packages")
        token = rpmquery.new_token()
        command = await asyncio.to_thread(rpmquery.query_command, ctx.root, token)
        if command is None:
            raise Skip("no rpm database directory under the host root")
        output = await command_output(command, QUERY_TIMEOUT)
        if output is None:
            raise RuntimeError(f"{' '.join(command[:2])} failed or timed out; run it by hand to see why")
        return await asyncio.to_thread(rpmquery.parse_output, output, token)

    await record_packages(ctx, "zypper", FAMILIES, read)
