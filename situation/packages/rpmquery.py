"""Installed packages as ``rpm -qa --queryformat`` lists them (zypper's source).

rpm reads whatever database format the host's rpm was built for (SUSE's NDB
``Packages.db``, BerkeleyDB, SQLite), so no reader for those formats is needed
here. The query prints, per package, a header line and then one file per line:

    <token>P<token>NAME<token>VERSION<token>VENDOR<token>INSTALLTIME<token>
    /path/one
    /path/two

``token`` is random per run, so no package field or file name can forge a
header line. Values rpm does not have read ``(none)``.
"""

from __future__ import annotations

import secrets

from situation.hostroot import HostRoot, host_int, lines
from situation.packages import MAX_FILES_PER_PACKAGE, MAX_PACKAGES, Package, drop_directories

NONE = "(none)"
DATABASE_DIRECTORIES = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")


def new_token() -> str:
    return secrets.token_hex(12)


def query_format(token: str) -> str:
    fields = token.join(("", "P", "%{NAME}", "%{VERSION}", "%{VENDOR}", "%{INSTALLTIME}", ""))
    return fields + r"\n[%{FILENAMES}\n]"


def query_command(root: HostRoot, token: str) -> list[str] | None:
    """``rpm -qa`` with our format; a root other than the live system needs its database's --dbpath.

    None when such a root has no rpm database directory.
    """
    command = ["rpm", "-qa", "--queryformat", query_format(token)]
    if root.is_live:
        return command
    for directory in DATABASE_DIRECTORIES:
        path = root.path(directory)
        if path.is_dir():
            return [*command, "--dbpath", str(path)]
    return None


def parse_output(text: str, token: str) -> list[Package]:
    """Packages of the query's output; lines before the first header are ignored."""
    packages: list[Package] = []
    header: list[str] | None = None
    files: list[str] = []
    marker = f"{token}P{token}"

    def finish() -> None:
        if header is not None and len(packages) < MAX_PACKAGES:
            packages.append(_package(header, files))

    for line in lines(text):
        if line.startswith(marker) and line.endswith(token):
            fields = line[len(marker) : -len(token)].split(token)
            finish()
            header, files = (fields if len(fields) == 4 and fields[0] else None), []
        elif header is not None and line.startswith("/") and len(files) < MAX_FILES_PER_PACKAGE:
            files.append(line)
    finish()
    return packages


def _package(header: list[str], files: list[str]) -> Package:
    name, version, vendor, installed = header
    return Package(
        name=name,
        version="" if version == NONE else version,
        vendor="" if vendor == NONE else vendor,
        install_time_unix=host_int(installed) or 0,
        files=tuple(drop_directories(files)),
    )
