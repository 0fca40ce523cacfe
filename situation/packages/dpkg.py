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
  The copies of one (name, version) for several architectures are one
  package here (files merged, latest mtime). :func:`iter_packages` reads the
  lists one package at a time, and :func:`files_of` reads some again, so
  that a caller need not hold every path at once. :func:`scan_packages` holds
  none: it streams each list for the few paths it is asked about and counts
  the files (a 124,000-path database left ~17 MB of resident fragments per
  cycle when its lists were read into strings only to find the owners of
  the applications' exes).
- ``/var/log/dpkg.log*`` (``.gz`` rotations included) only for packages
  without a ``.list``: the time of the last ``install``/``upgrade`` event of the
  installed version. The log is in local time without a zone; it is read in
  the agent's time zone.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass
from itertools import chain, islice
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


STATUS_FIELDS = frozenset({"package", "status", "version", "architecture"})


def parse_status(status: Iterable[str]) -> list[Installed]:
    """The installed packages of a dpkg status file, given its lines, in file order.

    Only the fields read are kept, one paragraph at a time: the daemon reads a
    ~2 MB file each cycle, and small strings held across it stay resident as
    fragments.
    """
    found: list[Installed] = []
    fields: dict[str, str] = {}
    for line in chain(status, [""]):
        if not line.strip():
            entry = _installed(fields)
            if entry is not None and len(found) < MAX_PACKAGES:
                found.append(entry)
            fields = {}
        elif not line[0].isspace() and ":" in line:  # continuation lines belong to long fields
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in STATUS_FIELDS:
                fields[name] = value.strip()
    return found


def status_lines(path: Path) -> Iterator[str]:
    r"""The lines of the status file, streamed (split on ``\n`` only, as :func:`~situation.hostroot.lines`)."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as stream:
        for line in stream:
            yield line.removesuffix("\n").removesuffix("\r")


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
        lines = split_list(read_text(entry.path))  # the text is freed before the paths are sorted out
    except OSError:
        return None
    return leaf_paths(lines), in_range(mtime) or 0


def scan_list(entry: os.DirEntry, wanted: Set[str]) -> tuple[tuple[str, ...], int, int] | None:
    """(the ``wanted`` paths among one list's files, the number of its files, mtime); None when unreadable.

    The list is streamed twice, and only its directories are held between the
    passes: the first finds every path another listed path lies under, the
    second counts the others (the files, as :func:`leaf_paths`) and picks the
    wanted ones. A path listed twice (dpkg never does) is counted twice: the
    count only decides whether the row is written again.
    """
    try:
        mtime = int(entry.stat().st_mtime)
        directories: set[str] = set()
        for path in _listed_paths(entry.path):
            parent = path.rpartition("/")[0]
            while parent and parent not in directories:
                directories.add(parent)
                parent = parent.rpartition("/")[0]
        found: list[str] = []
        count = 0
        for path in _listed_paths(entry.path):
            if path not in directories:
                count += 1
                if path in wanted:
                    found.append(path)
    except OSError:
        return None
    return tuple(dict.fromkeys(found)), count, in_range(mtime) or 0


def _listed_paths(path: str) -> Iterator[str]:
    """The paths of a list file one at a time, as :func:`leaf_paths` filters the lines of :func:`split_list`."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as stream:
        for line in islice(stream, MAX_FILES_PER_PACKAGE):
            path = line[:-1] if line[-1:] == "\n" else line
            if path[:1] == "/" and path != "/.":
                yield path


def split_list(text: str) -> list[str]:
    # Split on "\n" only (see hostroot.lines); paths are data, a stray "\r" stays in its path.
    return text.split("\n", MAX_FILES_PER_PACKAGE)[:MAX_FILES_PER_PACKAGE]


def leaf_paths(lines: list[str]) -> tuple[str, ...]:
    return tuple(drop_directories(p for p in lines if p[:1] == "/" and p != "/."))


def parse_list(text: str) -> tuple[str, ...]:
    return leaf_paths(split_list(text))


@dataclass(frozen=True)
class Database:
    """dpkg's database once its status file is read: installed packages by (name, version), and the lists."""

    installed: dict[tuple[str, str], list[Installed]]  # multi-arch copies share a key
    lists: dict[str, os.DirEntry]


def open_database(root: HostRoot) -> Database:
    """The status file parsed and the info directory listed. OSError: no status file."""
    installed: dict[tuple[str, str], list[Installed]] = {}
    for entry in parse_status(status_lines(root.path(STATUS))):
        installed.setdefault((entry.name, entry.version), []).append(entry)
    return Database(installed, list_files(root.path(INFO)))


def listed_files(database: Database, entries: list[Installed]) -> tuple[tuple[str, ...], int] | None:
    """(files, latest mtime) of the ``.list`` files of one key's entries; None when none can be read."""
    found = []
    for entry in entries:
        list_entry = _list_entry(database, entry)
        read = read_list(list_entry) if list_entry is not None else None
        if read is not None:
            found.append(read)
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return tuple(dict.fromkeys(path for files, _ in found for path in files)), max(mtime for _, mtime in found)


def _list_entry(database: Database, entry: Installed) -> os.DirEntry | None:
    return database.lists.get(f"{entry.name}:{entry.architecture}") or database.lists.get(entry.name)


def iter_packages(root: HostRoot, database: Database) -> Iterator[Package]:
    """Every installed package (one per name and version) with its install time and files, read one at a time."""
    unlisted: list[tuple[tuple[str, str], list[Installed]]] = []
    for key, entries in database.installed.items():
        found = listed_files(database, entries)
        if found is None:
            unlisted.append((key, entries))
            continue
        files, mtime = found
        yield Package(key[0], key[1], "", mtime, files)
    yield from unlisted_packages(root, unlisted)


def unlisted_packages(root: HostRoot, unlisted: list[tuple[tuple[str, str], list[Installed]]]) -> Iterator[Package]:
    """Packages without a list, dated by their last install or upgrade in dpkg's log."""
    if unlisted:
        events = install_events(log_texts(root.path(LOG_DIRECTORY)))
        for (name, version), entries in unlisted:
            when = max(events.get((name, e.architecture, version)) or events.get((name, "", version), 0)
                       for e in entries)
            yield Package(name, version, "", when, ())


def scan_packages(root: HostRoot, database: Database, wanted: Set[str]) -> Iterator[Package]:
    """:func:`iter_packages` holding no list: each package's ``files`` are only its ``wanted`` ones.

    ``file_count`` says how many files it has. A key with several lists (the
    architectures of a multi-arch package) is read whole, its files merged.
    """
    unlisted: list[tuple[tuple[str, str], list[Installed]]] = []
    for key, entries in database.installed.items():
        if len(entries) == 1:
            list_entry = _list_entry(database, entries[0])
            scanned = scan_list(list_entry, wanted) if list_entry is not None else None
        else:
            listed = listed_files(database, entries)
            scanned = None if listed is None else (
                tuple(p for p in listed[0] if p in wanted), len(listed[0]), listed[1])
        if scanned is None:
            unlisted.append((key, entries))
            continue
        found, count, mtime = scanned
        yield Package(key[0], key[1], "", mtime, found, file_count=count)
    yield from unlisted_packages(root, unlisted)


def files_of(database: Database, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, ...]]:
    """The files of these packages, read again from their lists (() when there is none)."""
    return {key: (listed_files(database, database.installed.get(key, [])) or ((), 0))[0] for key in keys}


def collect(root: HostRoot) -> list[Package]:
    """Every installed package with its version, install time and files. OSError: no status file."""
    return list(iter_packages(root, open_database(root)))


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
