"""rpm and zypper: an rpm database made by the real rpm tool; hand-forged header blobs for hostile cases.

Both modules are passive (they read a database, zypper through ``rpm -qa``),
so they run in-process against real SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

from situation.hostroot import HostRoot
from situation.module import Skip
from situation.modules.rpm import version_before
from situation.packages import rpmdb, rpmquery
from support.packages import add_applications, add_host, links, packages_of, run_package_module, table_counts
from support.rpmdb import PACKAGES, build_database, needs_rpm
from support.stores import backend_store as store  # noqa: F401  (a fixture)

pytestmark = needs_rpm


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """The db directory (rpmdb.sqlite) the real rpm tool wrote."""
    return build_database(tmp_path_factory.mktemp("rpm"))


def rpm_root(tmp_path: Path, database: Path, where: str = "var/lib/rpm") -> Path:
    root = tmp_path / "root"
    shutil.copytree(database, root / where)
    return root


def rpm_says(database: Path) -> dict[str, tuple[str, int, list[str]]]:
    out = subprocess.run(["rpm", "-qa", "--dbpath", str(database), "--qf", "%{NAME}|%{VERSION}|%{INSTALLTIME}|[%{FILENAMES},]\n"],
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, version, installed, files = line.split("|")
        found[name] = (version, int(installed), [f for f in files.split(",") if f])
    return found


def files_of(row) -> list[str]:
    return json.loads(row["files"]) if isinstance(row["files"], str) else row["files"]


def test_the_reader_agrees_with_rpm(database):
    told = rpm_says(database)
    contents = rpmdb.read_database(database / "rpmdb.sqlite")
    assert contents.skipped == 0
    read = {p.name: p for p in contents.packages}
    assert set(read) == set(told) == set(PACKAGES)
    for name, (version, installed, files) in told.items():
        package = read[name]
        assert (package.version, package.install_time_unix) == (version, installed)
        assert set(package.files) == {f for f in files if not any(o.startswith(f + "/") for o in files)}
    assert read["single"].files == ("/usr/bin/single",)  # one file: DIRINDEXES is a one-element list
    assert (read["tiny"].vendor, read["single"].vendor) == ("Situation Tests", "")


def test_the_database_is_found_under_usr_lib(tmp_path, database):
    root = rpm_root(tmp_path, database, "usr/lib/some/where/rpm")
    assert rpmdb.find_database(HostRoot.under(root)) == root / "usr/lib/some/where/rpm/rpmdb.sqlite"
    assert rpmdb.find_database(HostRoot.under(tmp_path / "nothing")) is None


# -- hostile headers -----------------------------------------------------------------------


def header(entries: list[tuple[int, int, int, int]], data: bytes, *, count: int | None = None,
           size: int | None = None) -> bytes:
    preamble = struct.pack(">II", len(entries) if count is None else count, len(data) if size is None else size)
    return preamble + b"".join(struct.pack(">4I", *e) for e in entries) + data


GOOD = header([(rpmdb.NAME, rpmdb.STRING, 0, 1), (rpmdb.VERSION, rpmdb.STRING, 2, 1)], b"a\x001\x00")


@pytest.mark.parametrize("blob, problem", [
    (b"", "preamble"),
    (GOOD[:-1], "truncated"),
    (header([], b"", count=0xFFFFFFFF), "absurd"),
    (header([], b"", size=2**31), "absurd"),
    (header([(rpmdb.NAME, rpmdb.STRING, 0, 1)], b"abc"), "NUL"),
    (header([(rpmdb.NAME, rpmdb.STRING, 99, 1)], b"a\x00"), "past the data store"),
    (header([(rpmdb.BASENAMES, rpmdb.STRING_ARRAY, 0, 2**30)], b"a\x00"), "past the data store"),
    (header([(rpmdb.BASENAMES, rpmdb.STRING_ARRAY, 0, 3)], b"a\x00b\x00"), "NUL"),
    (header([(rpmdb.DIRINDEXES, rpmdb.INT32, 0, 2)], b"\x00\x00\x00\x01"), "past the data store"),
    (header([(rpmdb.NAME, 77, 0, 1)], b"a\x00"), "unknown type"),
])
def test_hostile_headers_are_refused(blob, problem):
    with pytest.raises(rpmdb.HeaderError, match=problem):
        rpmdb.parse_header(blob)


def test_inconsistent_file_arrays_give_no_files():
    data = b"a\x001\x00/d/\x00f\x00g\x00" + struct.pack(">2I", 0, 5)
    blob = header([(rpmdb.NAME, rpmdb.STRING, 0, 1), (rpmdb.VERSION, rpmdb.STRING, 2, 1),
                   (rpmdb.DIRNAMES, rpmdb.STRING_ARRAY, 4, 1), (rpmdb.BASENAMES, rpmdb.STRING_ARRAY, 8, 2),
                   (rpmdb.DIRINDEXES, rpmdb.INT32, 12, 2)], data)
    package = rpmdb.package_from(rpmdb.parse_header(blob), None)
    assert (package.name, package.version, package.files) == ("a", "1", ())  # index 5: no such directory


async def test_forged_rows_are_skipped_and_the_rest_recorded(store, tmp_path, database):
    root = rpm_root(tmp_path, database)
    with sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite") as db:
        real = db.execute("SELECT blob FROM Packages ORDER BY hnum LIMIT 1").fetchone()[0]
        for blob in (real[: len(real) // 2], header([], b"", count=2**20), b"\xff" * 3, "text, not a blob"):
            db.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
    with sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # immutable=1 reads the main file only, as at rest
    contents = rpmdb.read_database(root / "var/lib/rpm/rpmdb.sqlite")
    assert (len(contents.packages), contents.skipped) == (len(PACKAGES), 4)
    host = await add_host(store, family="rhel", distribution="rocky", version="9.4")
    await run_package_module(store, "rpm", host, root)
    assert {name for name, _ in await packages_of(store, host)} == set(PACKAGES)


# -- gates ---------------------------------------------------------------------------------


def test_versions_compare_like_go_version():
    assert version_before("8.9", (9,)) and version_before("15.6", (16,)) and version_before("9.0-beta", (9,))
    assert not version_before("9", (9,)) and not version_before("9.4", (9,)) and not version_before("16.0", (16,))
    with pytest.raises(ValueError, match="cannot parse the distribution version"):
        version_before("nine", (9,))


@pytest.mark.parametrize("family, distribution, version, outcome", [
    ("rhel", "rocky", "8.10", "BerkeleyDB"),
    ("suse", "opensuse-leap", "15.6", "skipped for this distribution"),  # rpm leaves SUSE to zypper
    ("debian", "debian", "12", "skipped for this distribution"),
    ("rhel", "rocky", "eight", ValueError),
])
async def test_rpm_gates(store, tmp_path, database, family, distribution, version, outcome):
    host = await add_host(store, family=family, distribution=distribution, version=version)
    expected = pytest.raises(Skip, match=outcome) if isinstance(outcome, str) else pytest.raises(outcome)
    with expected:
        await run_package_module(store, "rpm", host, rpm_root(tmp_path, database))
    assert await packages_of(store, host) == {}


async def test_no_database_is_a_skip(store, tmp_path):
    host = await add_host(store, family="fedora", distribution="fedora", version="40")
    with pytest.raises(Skip, match="no rpm database"):
        await run_package_module(store, "rpm", host, tmp_path)


# -- the modules on the database -----------------------------------------------------------


@pytest.mark.parametrize("module, family, distribution, version", [
    ("rpm", "rhel", "rocky", "9.4"),
    ("zypper", "suse", "opensuse-leap", "15.6"),
])
async def test_packages_recorded_linked_and_stable(store, tmp_path, database, module, family, distribution, version):
    root = rpm_root(tmp_path, database)
    host = await add_host(store, family=family, distribution=distribution, version=version)
    await add_applications(store, host, [("/usr/bin/single", 5), ("/usr/bin/tiny", 6), ("/usr/bin/other", 7)])
    first = await run_package_module(store, module, host, root)
    told = rpm_says(database)
    stored = await packages_of(store, host)
    assert {name: (row["version"], row["install_time_unix"]) for (name, _), row in stored.items()} == {
        name: (version, installed) for name, (version, installed, _files) in told.items()}
    assert {row["manager"] for row in stored.values()} == {module}
    assert files_of(stored[("tiny", "1.2.3")]) == ["/usr/bin/tiny", "/usr/share/tiny/a.txt"]
    assert await links(store) == {"/usr/bin/single@5": "single", "/usr/bin/tiny@6": "tiny", "/usr/bin/other@7": None}

    counts = await table_counts(store)
    second = await run_package_module(store, module, host, root)
    assert await table_counts(store) == counts
    assert first.rows_written == len(PACKAGES) + 2 and second.rows_written == 0


def test_query_output_cannot_be_forged_by_file_names():
    token = "t0k"
    text = (f"noise\n{token}P{token}a{token}1{token}(none){token}1700000000{token}\n/usr/bin/a\n"
            f"{token}P{token}forged\n/usr/share/a/dir\n/usr/share/a/dir/f\nrelative\n"
            f"{token}P{token}b{token}2{token}V{token}(none){token}\n")
    found = rpmquery.parse_output(text, token)
    assert [(p.name, p.version, p.vendor, p.install_time_unix, p.files) for p in found] == [
        ("a", "1", "", 1_700_000_000, ("/usr/bin/a", "/usr/share/a/dir/f")),  # the forged line is no header
        ("b", "2", "V", 0, ()),
    ]


async def test_zypper_without_a_database_directory_is_a_skip(store, tmp_path):
    host = await add_host(store, family="suse", distribution="sles", version="15.5")
    with pytest.raises(Skip, match="no rpm database directory"):
        await run_package_module(store, "zypper", host, tmp_path)
