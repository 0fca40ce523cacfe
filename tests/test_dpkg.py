"""dpkg: this machine's real dpkg database, and fixture databases for removal and hostile input.

The module is passive (it reads /var/lib/dpkg and /var/log), so it runs
in-process against real SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from situation import hostroot
from situation.hostroot import HostRoot
from situation.module import Skip
from situation.packages import Package, drop_directories, merge_duplicates
from situation.packages import dpkg as dpkg_reader
from support.packages import add_applications, add_host, links, packages_of, run_package_module, table_counts
from support.neighbour_table import database  # noqa: F401  (a fixture)
from support.stores import backend_store as store  # noqa: F401  (a fixture)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None or not Path("/var/lib/dpkg/status").exists(),
                                reason="not a Debian system")


def files_of(row) -> list[str]:
    return json.loads(row["files"]) if isinstance(row["files"], str) else row["files"]


# -- readers -------------------------------------------------------------------------------


def test_directories_are_dropped_and_files_kept():
    paths = "/d/e/f/g,/d/f,/d/e/f,/a,/a/b/c,/a/c,/b/c/d,/b,/b/c,/c".split(",")
    # The set spec §4.1's example keeps, in the source's order.
    assert drop_directories(paths) == ["/d/e/f/g", "/d/f", "/a/b/c", "/a/c", "/b/c/d", "/c"]
    # Where the original's prefix rule errs: a file beside a longer-named directory, a directory
    # with a sibling sorting between it and its content, a directory whose child dir is unlisted.
    assert drop_directories(["/usr/bin", "/usr/bin/x", "/usr/bin/x.d", "/usr/bin/x.d/conf"]) == [
        "/usr/bin/x", "/usr/bin/x.d/conf"]
    assert drop_directories(["/usr/lib/x", "/usr/lib/x-y", "/usr/lib/x/z"]) == ["/usr/lib/x-y", "/usr/lib/x/z"]
    assert drop_directories(["/opt/p", "/opt/p/sub/file", "/opt/p/sub/file"]) == ["/opt/p/sub/file"]


def test_same_name_and_version_merge_into_one_package():
    merged = merge_duplicates([
        Package("libc6", "2.36-9", "", 10, ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/share/doc/libc6/x")),
        Package("libc6", "2.36-8", "", 5, ("/old",)),
        Package("libc6", "2.36-9", "", 20, ("/lib/i386-linux-gnu/libc.so.6", "/usr/share/doc/libc6/x")),
    ])
    assert [(p.version, p.install_time_unix, len(p.files)) for p in merged] == [("2.36-9", 20, 3), ("2.36-8", 5, 1)]


STATUS = """Package: keep
Status: install ok installed
Architecture: amd64
Version: 1:2.0-3+deb12u1
Description: first line
 Package: forged
 Status: install ok installed
 Version: 6.6.6

Package: held
Status: hold ok installed
Architecture: all
Version: 1.0

Package: leaving
Status: deinstall ok installed
Version: 2.0
Architecture: amd64

Package: gone
Status: deinstall ok config-files
Version: 3.0

Package: broken
Status: install reinstreq half-installed
Version: 4.0

Package: multi
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 5.0\r

Package: noversion
Status: install ok installed
"""


def test_status_keeps_the_installed_set_only():
    found = dpkg_reader.parse_status(hostroot.lines(STATUS))
    assert [(p.name, p.version, p.architecture) for p in found] == [
        ("keep", "1:2.0-3+deb12u1", "amd64"),  # epoch and revision kept; continuation lines are not fields
        ("held", "1.0", "all"),
        ("leaving", "2.0", "amd64"),
        ("multi", "5.0", "i386"),
    ]


def test_the_status_file_streamed_reads_as_its_text(tmp_path):
    path = tmp_path / "status"
    path.write_bytes(STATUS.encode() + b"\nPackage: odd\rname\nStatus: install ok installed\r\nVersion: 1\xff\n")
    streamed = dpkg_reader.parse_status(dpkg_reader.status_lines(path))
    assert streamed == dpkg_reader.parse_status(hostroot.lines(hostroot.read_text(path)))
    assert streamed[-1] == dpkg_reader.Installed("odd\rname", "1\ufffd", "")  # a lone \r is no line break


LOG = """2024-01-02 10:00:00 install multi:i386 <none> 4.0
2024-01-03 11:00:00 upgrade multi:i386 4.0 5.0
2024-01-03 11:00:01 status installed multi:i386 5.0
2024-02-01 09:00:00 trigproc man-db:amd64 2.11 <none>
garbage line
2024-13-45 99:00:00 install leaving:amd64 <none> 2.0
"""


def make_root(tmp_path: Path, status: str, lists: dict[str, list[str]], mtimes: dict[str, int] | None = None,
              log: str | None = None, merged: bool = True) -> Path:
    root = tmp_path / "root"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").write_text(status, encoding="utf-8")
    for old in info.glob("*.list"):
        old.unlink()
    for name, paths in lists.items():
        path = info / f"{name}.list"
        path.write_text("".join(p + "\n" for p in paths), encoding="utf-8")
        when = (mtimes or {}).get(name)
        if when is not None:
            os.utime(path, (when, when))
    if log is not None:
        (root / "var/log").mkdir(parents=True, exist_ok=True)
        (root / "var/log/dpkg.log").write_text(log, encoding="utf-8")
    if merged and not (root / "bin").is_symlink():
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "bin").symlink_to("usr/bin")
    return root


def test_install_time_from_list_mtime_else_from_the_log(tmp_path):
    root = make_root(tmp_path, STATUS, {"keep": ["/.", "/usr", "/usr/bin", "/usr/bin/keep"], "held": ["/."]},
                     mtimes={"keep": 1_700_000_000, "held": 1_600_000_000}, log=LOG)
    found = {p.name: p for p in dpkg_reader.collect(HostRoot.under(root))}
    assert found["keep"].files == ("/usr/bin/keep",) and found["keep"].install_time_unix == 1_700_000_000
    assert found["held"].files == () and found["held"].install_time_unix == 1_600_000_000
    upgraded = int(time.mktime(time.strptime("2024-01-03 11:00:00", "%Y-%m-%d %H:%M:%S")))
    assert found["multi"].install_time_unix == upgraded  # no .list: the log's upgrade to 5.0
    assert found["leaving"].install_time_unix == 0  # neither a .list nor a parsable event


def test_multi_arch_copies_are_one_package_read_again_the_same(tmp_path):
    both = STATUS + "\nPackage: multi\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\nVersion: 5.0\r\n"
    root = make_root(tmp_path, both, {"multi:i386": ["/usr/lib/i386/m.so", "/usr/share/doc/multi/c"],
                                      "multi:amd64": ["/usr/lib/amd64/m.so", "/usr/share/doc/multi/c"]},
                     mtimes={"multi:i386": 1_600_000_000, "multi:amd64": 1_700_000_000})
    database = dpkg_reader.open_database(HostRoot.under(root))
    [multi] = [p for p in dpkg_reader.iter_packages(HostRoot.under(root), database) if p.name == "multi"]
    assert multi.files == ("/usr/lib/i386/m.so", "/usr/share/doc/multi/c", "/usr/lib/amd64/m.so")
    assert multi.install_time_unix == 1_700_000_000
    assert dpkg_reader.files_of(database, [multi.key, ("absent", "1")]) == {multi.key: multi.files,
                                                                           ("absent", "1"): ()}


def test_gzip_rotations_of_the_log_are_read(tmp_path):
    import gzip

    root = make_root(tmp_path, STATUS, {}, log="")
    with gzip.open(root / "var/log/dpkg.log.2.gz", "wt", encoding="utf-8") as rotated:
        rotated.write("2023-06-01 08:00:00 install leaving:amd64 <none> 2.0\n")
    (root / "var/log/dpkg.log.3.gz").write_bytes(b"not gzip at all")  # skipped, not fatal
    found = {p.name: p for p in dpkg_reader.collect(HostRoot.under(root))}
    assert found["leaving"].install_time_unix == int(time.mktime(time.strptime("2023-06-01 08:00:00",
                                                                               "%Y-%m-%d %H:%M:%S")))


@pytest.mark.parametrize("seed", [*range(20), 1735])  # 1735: DIRINDEXES forged as strings
def test_random_bytes_never_break_the_package_parsers(seed):
    import random

    from situation.packages import rpmdb, rpmquery

    chance = random.Random(seed)
    alphabet = b"Package: Status: Version: install ok installed \n\r\x00/:.-\xff\xfe\t 0123456789abc"
    data = bytes(chance.choice(alphabet) for _ in range(chance.randrange(1, 4000)))
    text = data.decode("utf-8", errors="replace")
    dpkg_reader.parse_status(hostroot.lines(text))
    dpkg_reader.parse_list(text)
    dpkg_reader.install_events([text])
    rpmquery.parse_output(text, "tok")
    try:
        rpmdb.parse_header(data)
    except rpmdb.HeaderError:
        pass
    blob = struct_header(chance, data)
    try:
        values = rpmdb.parse_header(blob)
    except rpmdb.HeaderError:
        return
    rpmdb.package_from(values, None)


def struct_header(chance, data: bytes) -> bytes:
    """A header blob with a few random entries of the wanted tags pointing into ``data``."""
    import struct

    from situation.packages import rpmdb

    tags = sorted(rpmdb.WANTED)
    entries = [(chance.choice(tags), chance.randrange(0, 10), chance.randrange(0, len(data) + 8),
                chance.randrange(0, 6)) for _ in range(chance.randrange(0, 8))]
    return (struct.pack(">II", len(entries), len(data)) + b"".join(struct.pack(">4I", *e) for e in entries) + data)


def test_no_status_file_is_a_skip(tmp_path):
    with pytest.raises(OSError):
        dpkg_reader.collect(HostRoot.under(tmp_path))


# -- the module on a fixture database ------------------------------------------------------


async def test_removed_and_upgraded_packages_leave_and_links_follow(store, tmp_path):
    host = await add_host(store)
    other = await add_host(store, agent="cd" * 16)
    await store.upsert("packages", [{"name": "tool", "version": "1.0", "vendor": "", "manager": "dpkg",
                                     "install_time_unix": 1, "files": [], "machine_id": other}],
                       key="name_version_machine_id")
    await store.upsert("packages", [{"name": "foreign", "version": "9", "vendor": "", "manager": "rpm",
                                     "install_time_unix": 1, "files": [], "machine_id": host}],
                       key="name_version_machine_id")
    await add_applications(store, host, [("/usr/bin/tool", 10), ("/usr/sbin/daemon", 11), ("/usr/bin/none", 12)])
    status = ("Package: tool\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n"
              "Package: daemon\nStatus: install ok installed\nVersion: 2.0\nArchitecture: amd64\n")
    root = make_root(tmp_path, status, {"tool": ["/usr", "/usr/bin", "/usr/bin/tool"],
                                        "daemon": ["/sbin", "/sbin/daemon"]})  # /sbin not merged here
    await run_package_module(store, "dpkg", host, root)
    assert set(await packages_of(store, host)) == {("tool", "1.0"), ("daemon", "2.0"), ("foreign", "9")}
    assert (await links(store))["/usr/bin/tool@10"] == "tool"
    assert (await links(store))["/usr/sbin/daemon@11"] is None  # /sbin is no link to usr/sbin

    (root / "usr/sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")  # now /usr-merged: /sbin/daemon is /usr/sbin/daemon
    status = ("Package: tool\nStatus: install ok installed\nVersion: 1.1\nArchitecture: amd64\n\n"
              "Package: daemon\nStatus: deinstall ok installed\nVersion: 2.0\nArchitecture: amd64\n")
    make_root(tmp_path, status, {"tool": ["/usr/bin/tool"], "daemon": ["/sbin", "/sbin/daemon"]})
    await run_package_module(store, "dpkg", host, root)
    assert set(await packages_of(store, host)) == {("tool", "1.1"), ("daemon", "2.0"), ("foreign", "9")}
    assert await links(store) == {"/usr/bin/tool@10": "tool", "/usr/sbin/daemon@11": "daemon", "/usr/bin/none@12": None}

    status = "Package: daemon\nStatus: install ok installed\nVersion: 2.1\nArchitecture: amd64\n"
    make_root(tmp_path, status, {"daemon": ["/usr/sbin/other"]})
    await run_package_module(store, "dpkg", host, root)
    assert set(await packages_of(store, host)) == {("daemon", "2.1"), ("foreign", "9")}  # rpm's row stays
    assert set(await packages_of(store, other)) == {("tool", "1.0")}  # another machine's rows stay
    assert set((await links(store)).values()) == {None}  # removed package and lost file: unlinked


async def test_a_foreign_family_is_skipped_and_an_unknown_one_runs(store, tmp_path):
    root = make_root(tmp_path, "Package: a\nStatus: install ok installed\nVersion: 1\n", {"a": ["/usr/bin/a"]})
    host = await add_host(store, family="rhel", distribution="rocky", version="9.3")
    with pytest.raises(Skip, match="skipped for this distribution"):
        await run_package_module(store, "dpkg", host, root)
    host = await add_host(store, family="", distribution="", version="")
    await run_package_module(store, "dpkg", host, root)
    assert set(await packages_of(store, host)) == {("a", "1")}


async def test_an_empty_or_missing_database_writes_and_deletes_nothing(store, tmp_path):
    host = await add_host(store)
    await run_package_module(store, "dpkg", host, make_root(tmp_path, "Package: a\nStatus: install ok installed\n"
                                                            "Version: 1\n", {"a": []}))
    with pytest.raises(Skip, match="no package found"):
        await run_package_module(store, "dpkg", host, make_root(tmp_path, "garbage\n\x00\n", {}))
    (tmp_path / "root/var/lib/dpkg/status").unlink()
    with pytest.raises(Skip, match="no dpkg database"):
        await run_package_module(store, "dpkg", host, tmp_path / "root")
    assert set(await packages_of(store, host)) == {("a", "1")}


# -- the module on this machine ------------------------------------------------------------


def installed_here() -> set[tuple[str, str]]:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Version}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {(name, version) for status, name, version in (line.split("\t") for line in out.splitlines())
            if status == "installed"}


def owner_here(path: str) -> str:
    out = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=True).stdout
    return out.split(":", 1)[0].strip()


@needs_dpkg
async def test_this_machines_packages_and_a_running_binary_linked_to_its_owner(store):
    binary = os.path.realpath(sys.executable) if sys.executable.startswith("/usr/") else "/usr/bin/python3.11"
    if not Path(binary).exists():
        pytest.skip(f"{binary} is not here")
    process = subprocess.Popen([binary, "-c", "import time; time.sleep(60)"])
    try:
        exe = psutil.Process(process.pid).exe()  # what netstat stores as the application's name
        host = await add_host(store)
        await add_applications(store, host, [(exe, process.pid), ("/usr/bin/bash", 1), ("/no/such/exe", 2)])
        expected = installed_here()
        first = await run_package_module(store, "dpkg", host)
        stored = await packages_of(store, host)
        assert set(stored) == expected
        assert {row["manager"] for row in stored.values()} == {"dpkg"}
        linked = await links(store)
        owner = owner_here(exe)
        assert linked[f"{exe}@{process.pid}"] == owner
        assert linked["/usr/bin/bash@1"] == owner_here("/bin/bash")  # listed as /bin/bash: /usr-merge alias
        assert linked["/no/such/exe@2"] is None
        python = next(row for key, row in stored.items() if key[0] == owner)
        assert exe in files_of(python) and python["install_time_unix"] > 1_000_000_000

        counts = await table_counts(store)
        second = await run_package_module(store, "dpkg", host)
        assert await table_counts(store) == counts
        assert first.rows_written >= len(expected) and second.rows_written == 0
    finally:
        process.kill()
        process.wait()


# -- a cycle in a test-made namespace: netstat records the applications, dpkg links them ----

HOLDER = Path(__file__).parent / "support" / "socket_holder.py"
CYCLE_AGENT = "dc" * 16


def run_in_namespace(test_host, database, home: Path, *modules: str) -> dict:
    from support.cluster import clean_environ

    result = test_host.run_module("--db", database.dsn, "--agent", CYCLE_AGENT, "--host-lookup", *modules,
                                  env=clean_environ(HOME=str(home)))
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_dpkg
def test_a_cycle_in_a_namespace_links_a_listening_process_to_its_package(test_host, database, tmp_path):
    from support.cluster import clean_environ

    python = os.path.realpath("/usr/bin/python3")  # a packaged interpreter (python3.11 here)
    holder = test_host.popen(python, str(HOLDER), "listen:tcp:127.0.0.1:7070", env=clean_environ(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "ready"
        modules = ("fingerprint", "host-basic", "local-users", "host-network", "netstat", "dpkg")
        report = run_in_namespace(test_host, database, tmp_path, *modules)
        assert report["rows"]["dpkg"] > 0 and not report["skipped"], report
        p = database.table_prefix
        linked = {(name, int(pid)): package for name, pid, package in database.query(
            f"SELECT a.name, a.pid, k.name FROM {p}applications a LEFT JOIN {p}packages k ON k.id = a.package_id")}
        assert linked[(python, holder.pid)] == owner_here(python)
        stored = {(name, version) for name, version in database.query(f"SELECT name, version FROM {p}packages")}
        assert stored == installed_here()

        counts = {t: database.query(f"SELECT count(*) FROM {p}{t}")[0][0] for t in ("packages", "applications")}
        again = run_in_namespace(test_host, database, tmp_path, "netstat", "dpkg")
        assert again["rows"]["dpkg"] == 0
        assert {t: database.query(f"SELECT count(*) FROM {p}{t}")[0][0] for t in counts} == counts
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
