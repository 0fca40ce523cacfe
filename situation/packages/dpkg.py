"""The installed Debian packages, from dpkg's own database (blocking; run it in a thread).

- ``/var/lib/dpkg/status``: one paragraph per package. A package is installed
  when the third word of its ``Status`` is ``installed`` (``install ok
  installed``, also ``hold ok installed`` and ``deinstall ok installed``: held,
  or marked for removal but still there). Its ``Version`` is stored whole
  (epoch and Debian revision included).
- ``/var/lib/dpkg/info/<name>:<arch>.list`` (``Multi-Arch: same`` packages) or
  ``<name>.list``: the package's files, one path a line; directory entries
  are dropped (:func:`~situation.packages.drop_directories`) and ``/.`` is left out. The file's
  mtime is the install time: dpkg rewrites it when it unpacks that version.
- ``/var/log/dpkg.log*`` (``.gz`` rotations included) only for packages
  without a ``.list``: the time of the last ``install``/``upgrade`` event of the
  installed version. The log is in local time without a zone; it is read in
  the agent's time zone.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from situation.hostroot import HostRoot, in_range, lines, read_text
from situation.packages import MAX_FILES_PER_PACKAGE, MAX_PACKAGES, Package, drop_directories

STATUS = "/var/lib/dpkg/status"
INFO = "/var/lib/dpkg/info"
LOG_DIRECTORY = "/var/log"
MAX_LOG_BYTES = 64 * 1024 * 1024  # per log file, decompressed


@dataclass(frozen=True)
class Installed:
    """One installed package as the status file describes it."""

    name: str
    version: str
    architecture: str


def parse_status(text: str) -> list[Installed]:
    """The installed packages of a dpkg status file, in file order."""
    found: list[Installed] = []
    fields: dict[str, str] = {}
    for line in [*lines(text), ""]:
        if not line.strip():
            entry = _installed(fields)
            if entry is not None and len(found) < MAX_PACKAGES:
                found.append(entry)
            fields = {}
        elif not line[0].isspace() and ":" in line:  # continuation lines belong to long fields
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return found


def _installed(fields: dict[str, str]) -> Installed | None:
    words = fields.get("status", "").split()
    name, version = fields.get("package", ""), fields.get("version", "")
    if len(words) != 3 or words[2] != "installed" or not name or not version:
        return None
    return Installed(name=name, version=version, architecture=fields.get("architecture", ""))


def list_files(info: Path) -> dict[str, os.DirEntry]:
    """``.list`` files of dpkg's info directory, by name without the suffix."""
    try:
        with os.scandir(info) as entries:
            return {e.name[: -len(".list")]: e for e in entries if e.name.endswith(".list")}
    except OSError:
        return {}


def read_list(entry: os.DirEntry) -> tuple[tuple[str, ...], int] | None:
    """(leaf paths, mtime) of one ``.list`` file; None when it cannot be read."""
    try:
        mtime = int(entry.stat().st_mtime)
        files = parse_list(read_text(Path(entry.path)))
    except OSError:
        return None
    return files, in_range(mtime) or 0


def parse_list(text: str) -> tuple[str, ...]:
    # Split on "\n" only (see hostroot.lines); paths are data, a stray "\r" stays in its path.
    paths = [p for p in text.split("\n", MAX_FILES_PER_PACKAGE)[:MAX_FILES_PER_PACKAGE] if p[:1] == "/"]
    return tuple(drop_directories(p for p in paths if p != "/."))


def collect(root: HostRoot) -> list[Package]:
    """Every installed package with its version, install time and files. OSError: no status file."""
    installed = parse_status(read_text(root.path(STATUS)))
    lists = list_files(root.path(INFO))
    packages: list[Package] = []
    unlisted: list[Installed] = []
    for entry in installed:
        list_entry = lists.get(f"{entry.name}:{entry.architecture}") or lists.get(entry.name)
        found = read_list(list_entry) if list_entry is not None else None
        if found is None:
            unlisted.append(entry)
            continue
        files, mtime = found
        packages.append(Package(entry.name, entry.version, "", mtime, files))
    if unlisted:
        events = install_events(log_texts(root.path(LOG_DIRECTORY)))
        for entry in unlisted:
            when = events.get((entry.name, entry.architecture, entry.version)) or events.get(
                (entry.name, "", entry.version), 0
            )
            packages.append(Package(entry.name, entry.version, "", when, ()))
    return packages


def log_texts(directory: Path) -> list[str]:
    """Texts of ``dpkg.log*`` in ``directory`` (gzip rotations decompressed), each bounded."""
    texts = []
    try:
        with os.scandir(directory) as entries:
            logs = sorted(e.path for e in entries if e.name.startswith("dpkg.log") and e.is_file())
    except OSError:
        return []
    for path in logs:
        try:
            if path.endswith(".gz"):
                with gzip.open(path) as stream:
                    data = stream.read(MAX_LOG_BYTES)
            else:
                with open(path, "rb") as stream:
                    data = stream.read(MAX_LOG_BYTES)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        texts.append(data.decode("utf-8", errors="replace"))
    return texts


def install_events(texts: Iterable[str]) -> dict[tuple[str, str, str], int]:
    """(name, architecture, version) → time of its last ``install``/``upgrade`` line.

    Lines read ``<date> <time> install|upgrade <name>[:<arch>] <old> <new>``. The
    key with architecture ``''`` holds the latest event for any architecture.
    """
    events: dict[tuple[str, str, str], int] = {}
    for text in texts:
        for line in lines(text):
            tokens = line.split(" ")
            if len(tokens) < 6 or tokens[2] not in ("install", "upgrade"):
                continue
            when = _local_time(tokens[0], tokens[1])
            if when is None:
                continue
            name, _, architecture = tokens[3].partition(":")
            for key in ((name, architecture, tokens[5]), (name, "", tokens[5])):
                if when >= events.get(key, 0):
                    events[key] = when
    return events


def _local_time(day: str, clock: str) -> int | None:
    try:
        return in_range(int(time.mktime(time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S"))))
    except (ValueError, OverflowError):
        return None
