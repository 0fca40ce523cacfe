"""Installed rpm packages from an ``rpmdb.sqlite`` (blocking; run it in a thread).

The database is opened read-only and immutable (``file:…?mode=ro&immutable=1``:
no lock taken, no journal replayed, nothing written). ``Packages`` holds one
header blob per package: an RPM header without its 8-byte magic, i.e.

- big-endian u32 index count ``il``, u32 data size ``dl``;
- ``il`` entries of 16 bytes (tag, type, offset, count; big-endian u32);
- the data store (``dl`` bytes), which entry offsets point into.

Headers are untrusted bytes: counts are bounded (rpm's own limits: 65535
entries, 256 MiB of data), every read is checked against the data store, and a
header that does not hold together is skipped (counted), never the database.

Per package: NAME, VERSION (the version only, without release or epoch, as the
original stores it), VENDOR, files from DIRNAMES[DIRINDEXES[i]] + BASENAMES[i]
(spec §4.9; a package with a single file has one-element arrays here, which
the original read as a scalar and lost: §10.2), directory entries dropped.
The install time comes from the ``Installtid`` index (first 4 bytes of its key,
little-endian, as rpm writes it on the usual hosts), else from the header's
INSTALLTIME.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from situation.hostroot import HostRoot, in_range
from situation.packages import MAX_FILES_PER_PACKAGE, MAX_PACKAGES, Package, drop_directories

NAME, VERSION, INSTALLTIME, VENDOR = 1000, 1001, 1008, 1011
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
WANTED = frozenset({NAME, VERSION, INSTALLTIME, VENDOR, DIRINDEXES, BASENAMES, DIRNAMES})

CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = 1, 2, 3, 4, 5, 6, 7, 8, 9
_INTEGER_FORMATS = {CHAR: "B", INT8: "B", INT16: "H", INT32: "I", INT64: "Q"}

MAX_ENTRIES = 0xFFFF
MAX_DATA = 256 * 1024 * 1024
ENTRY = struct.Struct(">4I")

DATABASE_PATHS = ("/var/lib/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/rpmdb.sqlite")
SEARCH_DEPTH = 4  # below /usr/lib, for a database elsewhere


class HeaderError(ValueError):
    """A header blob that does not hold together."""


def parse_header(blob: bytes) -> dict[int, object]:
    """The wanted tags of a header blob: str, list[str], list[int] or bytes."""
    if len(blob) < 8:
        raise HeaderError("shorter than its 8-byte preamble")
    entries, size = struct.unpack_from(">II", blob)
    if entries > MAX_ENTRIES or size > MAX_DATA:
        raise HeaderError(f"absurd sizes: {entries} entries, {size} data bytes")
    start = 8 + ENTRY.size * entries
    if len(blob) < start + size:
        raise HeaderError(f"truncated: {len(blob)} bytes, {start + size} announced")
    values: dict[int, object] = {}
    store = DataStore(blob, start, start + size)
    for tag, kind, offset, count in ENTRY.iter_unpack(blob[8:start]):
        if tag in WANTED and tag not in values:
            values[tag] = store.value(kind, offset, count)
    return values


@dataclass(frozen=True)
class DataStore:
    """A header's data store: ``blob[start:end]``, read only within those bounds."""

    blob: bytes
    start: int
    end: int

    def value(self, kind: int, offset: int, count: int) -> object:
        size = self.end - self.start
        if offset >= size or count > size:
            raise HeaderError(f"entry past the data store (offset {offset}, count {count})")
        position = self.start + offset
        if kind in (STRING, I18NSTRING):
            return self.strings(position, 1)[0]
        if kind == STRING_ARRAY:
            return self.strings(position, count)
        if kind == BIN:
            if position + count > self.end:
                raise HeaderError("binary value past the data store")
            return self.blob[position : position + count]
        layout = _INTEGER_FORMATS.get(kind)
        if layout is None:
            raise HeaderError(f"unknown type {kind}")
        if position + struct.calcsize(layout) * count > self.end:
            raise HeaderError("integer array past the data store")
        return list(struct.unpack_from(f">{count}{layout}", self.blob, position))

    def strings(self, position: int, count: int) -> list[str]:
        found = []
        for _ in range(count):
            stop = self.blob.find(b"\x00", position, self.end)
            if stop < 0:
                raise HeaderError("string without its NUL")
            found.append(self.blob[position:stop].decode("utf-8", errors="replace"))
            position = stop + 1
        return found


def package_from(values: Mapping[int, object], install_time: int | None) -> Package | None:
    name, version = values.get(NAME), values.get(VERSION)
    if not isinstance(name, str) or not isinstance(version, str) or not name:
        return None
    vendor = values.get(VENDOR)
    if install_time is None:
        times = values.get(INSTALLTIME)
        install_time = times[0] if _all(times, int) and times else 0
    return Package(
        name=name,
        version=version,
        vendor=vendor if isinstance(vendor, str) else "",
        install_time_unix=in_range(install_time) or 0,
        files=tuple(drop_directories(_files(values))),
    )


def _files(values: Mapping[int, object]) -> list[str]:
    directories, bases, indexes = values.get(DIRNAMES), values.get(BASENAMES), values.get(DIRINDEXES)
    if not (_all(directories, str) and _all(bases, str) and _all(indexes, int)):
        return []  # missing, or of another type than rpm writes (a forged header)
    if len(bases) != len(indexes) or len(bases) > MAX_FILES_PER_PACKAGE:
        return []
    if any(i >= len(directories) for i in indexes):
        return []
    return [directories[i] + base for i, base in zip(indexes, bases)]


def _all(value: object, kind: type) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


@dataclass
class Contents:
    packages: list[Package]
    skipped: int  # headers that did not hold together


def read_database(path: Path) -> Contents:
    """Every package of an ``rpmdb.sqlite``. sqlite3.Error when it is no such database."""
    uri = f"file:{quote(str(path))}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True)
    try:
        times = _install_times(connection)
        packages, skipped = [], 0
        for hnum, blob in connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum"):
            if len(packages) >= MAX_PACKAGES:
                break
            try:
                blob = blob if isinstance(blob, bytes) else b""  # a TEXT or NULL in a forged row
                package = package_from(parse_header(blob), times.get(hnum))
            except (HeaderError, struct.error):
                package = None
            if package is None:
                skipped += 1
            else:
                packages.append(package)
        return Contents(packages, skipped)
    finally:
        connection.close()


def _install_times(connection: sqlite3.Connection) -> dict[int, int]:
    """hnum → install transaction time from the ``Installtid`` index (first row per package)."""
    times: dict[int, int] = {}
    try:
        rows = connection.execute("SELECT key, hnum FROM Installtid ORDER BY rowid").fetchall()
    except sqlite3.Error:
        return times
    for key, hnum in rows:
        if isinstance(key, bytes) and len(key) >= 4 and hnum not in times:
            times[hnum] = int.from_bytes(key[:4], "little")
    return times


def find_database(root: HostRoot) -> Path | None:
    """The host's ``rpmdb.sqlite``: the usual places, else the first below /usr/lib (bounded depth)."""
    for candidate in DATABASE_PATHS:
        path = root.path(candidate)
        if path.is_file():
            return path
    top = root.path("/usr/lib")
    for directory, subdirectories, files in os.walk(top):
        if "rpmdb.sqlite" in files:
            return Path(directory) / "rpmdb.sqlite"
        if len(Path(directory).relative_to(top).parts) >= SEARCH_DEPTH:
            subdirectories.clear()
        subdirectories.sort()
    return None
