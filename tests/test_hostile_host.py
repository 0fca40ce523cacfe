"""Hostile host files never block a cycle (issue 14, items 6 and 10, and its fuzz test).

The eight host modules run as one cycle (the scheduler's dependency graph)
against a fixture tree and a real SQLite store. One malformed source costs what
it would have told, with one warning naming the file; it never fails a module,
and never blocks the modules that depend on it. One test runs a whole
``--once`` pass on the live host, inside a test-made network namespace and its
own UTS namespace (support/netns.py).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from situation.hostroot import HostRoot
from situation.modules import fingerprint
from situation.module import REGISTRY, HostMachine, load_builtin_modules
from situation.scheduler import OK, SKIPPED, ModuleResult, run_cycle
from support.cluster import clean_environ
from support.modules import AGENT, ModuleStore, open_module_store
from support.stored_text import CONTROL

from situation.store import open_store

HOST_MODULES = (
    "fingerprint", "host-basic", "host-cpu", "host-disk", "host-gpu", "host-network", "chassis", "local-users",
)

# A small, well-formed host: each test spoils one file of it.
HOST: dict[str, bytes | str] = {
    "proc/sys/kernel/hostname": "web-7\n",
    "proc/uptime": "12345.67 45678.90\n",
    "proc/cpuinfo": "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\ncore id\t\t: 0\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\ncore id\t\t: 1\n",
    "proc/net/tcp": "  sl  local_address rem_address   st\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000\n",
    "proc/net/route": "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                      "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\n",
    "proc/net/ipv6_route": "",
    "proc/mounts": "/dev/sda1 / ext4 rw,relatime 0 0\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000:Bob:/home/bob:/bin/sh\n",
    "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "sys/class/dmi/id/chassis_type": "3\n",
    "sys/class/net/eth0/address": "52:54:00:12:34:56\n",
    "sys/class/net/eth0/flags": "0x1043\n",
    "sys/class/net/eth0/type": "1\n",
    "sys/block/sda/size": "2048\n",
    "sys/block/sda/dev": "8:0\n",
    "sys/block/sda/queue/rotational": "1\n",
    "sys/block/sda/sda1/size": "1024\n",
    "sys/block/sda/sda1/dev": "8:1\n",
    "run/udev/data/b8:0": "E:ID_MODEL=Disk\n",
    "sys/class/drm/card0/device/vendor": "0x1af4\n",
    "sys/class/drm/card0/device/device": "0x1050\n",
    "usr/share/misc/pci.ids": "1af4  Red Hat, Inc.\n\t1050  Virtio GPU\n",
    "situation-test/addresses.json": json.dumps({"eth0": ["192.168.1.10/24"]}),
}


def host_tree(base: Path, files: dict[str, bytes | str]) -> HostRoot:
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return HostRoot.under(base)


async def run_host_cycle(db: ModuleStore, root: HostRoot) -> dict[str, ModuleResult]:
    """The host modules as one cycle, sharing the host machine as the agent's cycle does."""
    load_builtin_modules()
    host = HostMachine()

    def make_context(spec):
        ctx = db.context(spec.name, root)
        ctx.host = host
        return ctx

    results = await run_cycle({name: REGISTRY[name] for name in HOST_MODULES}, make_context)
    return {result.name: result for result in results}


def warnings_about(logs: list[dict], name: str) -> list[dict]:
    return [line for line in logs if line["log_level"] == "warning" and name in str(line.get("file", ""))]


# -- item 6: one bad file ------------------------------------------------------------------

SPOILED = {
    "non-UTF-8 hostname": ("proc/sys/kernel/hostname", b"web\xff\xfe-7\x1b]0;pwned\x07\n", None),
    "garbage in /proc/net/tcp": ("proc/net/tcp", b"header\n 0: zz:zz 00 0A\n\xff\x00\n", "proc/net/tcp"),
    "garbage in /proc/net/route": ("proc/net/route", "h\neth0 zz 00 xx 0 0 1e9999 00\n", "proc/net/route"),
    "garbage in /proc/uptime": ("proc/uptime", "nan 0\n", "proc/uptime"),
    "infinite uptime": ("proc/uptime", "1e999 0\n", "proc/uptime"),
    "empty /proc/uptime": ("proc/uptime", "", "proc/uptime"),
    "addresses that are not a map": ("situation-test/addresses.json", "[1, 2]", "addresses.json"),
}


@pytest.mark.parametrize(("relative", "content", "warned"), SPOILED.values(), ids=SPOILED.keys())
async def test_one_bad_file_blocks_no_module(tmp_path: Path, relative: str, content: bytes | str, warned) -> None:
    root = host_tree(tmp_path / "host", {**HOST, relative: content})
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        with capture_logs() as logs:
            results = await run_host_cycle(db, root)
        assert {name: r.status for name, r in results.items()} == {
            name: OK for name in HOST_MODULES
        }, [r.detail for r in results.values()]
        [machine] = db.rows("machines")
        assert machine["hostname"] and db.rows("users") and db.rows("cpus") and db.rows("disks")
    if warned:
        assert len(warnings_about(logs, warned)) >= 1


async def test_non_utf8_hostname_is_stored_with_replacement_characters(tmp_path: Path) -> None:
    root = host_tree(tmp_path / "host", {**HOST, "proc/sys/kernel/hostname": b"web\xff-7\n"})
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        await run_host_cycle(db, root)
        [machine] = db.rows("machines")
    assert machine["hostname"] == "web\ufffd-7"


async def test_unparsable_uptime_is_recorded_as_unknown(tmp_path: Path) -> None:
    root = host_tree(tmp_path / "host", {**HOST, "proc/uptime": "soon\n"})
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        with capture_logs() as logs:
            await run_host_cycle(db, root)
        [machine] = db.rows("machines")
    assert machine["uptime"] == 0
    [warning] = warnings_about(logs, "proc/uptime")
    assert warning["event"] == "host file skipped: it cannot be parsed" and "ValueError" in warning["error"]


# -- item 10: integers beyond 64 bits ---------------------------------------------------------

HUGE = "99999999999999999999999"
HUGE_INTEGERS = {
    **HOST,
    "proc/cpuinfo": f"processor\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\ncore id\t\t: {HUGE}\n",
    "proc/uptime": "1e30 0\n",
    "sys/block/sda/size": f"{HUGE}\n",
    "sys/block/sda/sda1/size": "36028797018963968\n",  # 2**55 sectors: 2**64 bytes
    "sys/class/net/eth0/type": f"{HUGE}\n",
    f"sys/class/drm/card{HUGE}/device/vendor": "0x1af4\n",
}


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request, tmp_path: Path):
    """A ModuleStore on SQLite or PostgreSQL, without the host's row, and a ``select(sql)`` reading it back."""
    if request.param == "sqlite":
        async with open_module_store(tmp_path / "db", with_machine=False) as db:
            yield db, lambda sql: [tuple(row.values()) for row in _sqlite_select(db, sql)]
        return
    cluster = request.getfixturevalue("tls_cluster")
    name = request.getfixturevalue("fresh_database")("huge")
    store = await open_store(cluster.superuser_dsn(name), AGENT)
    try:
        yield ModuleStore(store, AGENT, None), lambda sql: _psql_select(cluster, name, sql)
    finally:
        await store.close()


def _sqlite_select(db: ModuleStore, sql: str) -> list[dict]:
    with sqlite3.connect(db.store.path) as connection:
        cursor = connection.execute(sql)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor]


def _psql_select(cluster, database: str, sql: str) -> list[tuple]:
    output = cluster.psql(f"COPY ({sql.replace('FROM ', 'FROM situation.')}) TO STDOUT", dbname=database)
    return [tuple(int(v) if v.lstrip("-").isdigit() else v for v in line.split("\t")) for line in output.splitlines()]


async def test_integers_beyond_64_bits_are_not_stored(tmp_path: Path, any_store) -> None:
    db, select = any_store
    root = host_tree(tmp_path / "host", HUGE_INTEGERS)
    results = await run_host_cycle(db, root)
    assert {name: r.status for name, r in results.items()} == {name: OK for name in HOST_MODULES}, [
        r.detail for r in results.values()
    ]
    assert select("SELECT cores FROM cpus") == [(2,)]  # not a core id + 1: the number of blocks
    assert select("SELECT uptime FROM machines") == [(0,)]
    [(size, partitions)] = select("SELECT size, partitions FROM disks")
    assert size == 0 and "size" not in json.loads(partitions)[0]
    assert select('SELECT "index" FROM gpus') == [(0,)]  # card0 only


async def test_a_failing_identity_read_does_not_block_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fingerprint only avoids duplicating a row neighbours left; without it the host is still recorded."""

    def broken(_root):
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(fingerprint, "collect_identity", broken)
    root = host_tree(tmp_path / "host", HOST)
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        with capture_logs() as logs:
            results = await run_host_cycle(db, root)
        [machine] = db.rows("machines")
    assert {r.status for r in results.values()} == {OK}
    assert machine["agent"] == db.agent_id and machine["hostname"] == "web-7"
    [warning] = [line for line in logs if line["log_level"] == "warning"]
    assert "identity could not be read" in warning["event"] and "a parser bug" in warning["error"]


def test_live_host_with_a_non_utf8_hostname(test_host, tmp_path: Path) -> None:
    """A whole --once pass in a test-made network namespace and its own UTS namespace."""
    database = tmp_path / "agent.sqlite"
    env = clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"))
    script = (
        r"printf 'web\377\376-7\033]0;pwned\007' > /proc/sys/kernel/hostname"
        f' && exec "{sys.executable}" -m situation run --once --db "{database}"'
    )
    result = test_host.run("unshare", "--uts", "sh", "-c", script, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    logs = [json.loads(line) for line in result.stderr.splitlines()]
    statuses = {line["module"]: line["status"] for line in logs if line["event"] == "module finished"}
    assert set(HOST_MODULES) <= set(statuses)
    assert set(statuses.values()) <= {OK, SKIPPED}, statuses
    with sqlite3.connect(database) as db:
        [(hostname,)] = db.execute("SELECT hostname FROM machines").fetchall()
    assert hostname.startswith("web\ufffd\ufffd-7"), repr(hostname)


# -- fuzz: random bytes into every host-file parser ----------------------------------------

# Every file a host module parses, with what a well-formed host has there ("" when absent).
FUZZED_FILES: dict[str, bytes | str] = {
    **HOST,
    "proc/net/tcp6": "  sl  local_address rem_address   st\n",
    "proc/sys/kernel/arch": "x86_64\n",
    "proc/sys/kernel/random/boot_id": "7b5c3a43-5d0e-4d5c-9a3e-6c0c6d7e8f90\n",
    "proc/1/cgroup": "0::/init.scope\n",
    "proc/1/environ": "HOME=/\0TERM=linux\0",
    "proc/device-tree/model": "Raspberry Pi 4 Model B\0",
    "proc/device-tree/chassis-type": "embedded\0",
    "etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=24.04\n",
    "etc/debian_version": "12.5\n",
    "etc/redhat-release": "Rocky Linux release 9.3 (Blue Onyx)\n",
    "etc/SuSE-release": "openSUSE 42.3\nVERSION = 42.3\nPATCHLEVEL = 1\n",
    "sys/class/dmi/id/product_uuid": "4c4c4544-0051-3510-8052-b4c04f4e3332\n",
    "sys/class/dmi/id/sys_vendor": "QEMU\n",
    "sys/class/dmi/id/product_name": "Standard PC\n",
    "sys/class/dmi/id/bios_vendor": "SeaBIOS\n",
    "sys/firmware/acpi/pm_profile": "1\n",
    "sys/devices/system/cpu/cpu1/topology/core_id": "1\n",
    "run/udev/data/b8:1": "E:ID_FS_TYPE=ext4\n",
}

# What breaks naive parsers: line breaks splitlines knows, control characters, escapes,
# field separators, numbers past 64 bits, and byte sequences that are not UTF-8.
FUZZ_TOKENS = [
    b"\n", b"\r", b"\r\n", "\u2028".encode(), "\x85".encode(), b"\f", b"\v", b"\x1c", b"\x1e", b"\x00",
    b"\x1b]0;pwned\x07", b"\x7f", "\x9b".encode(), b":", b"=", b"\t", b" ", b"0x", b"-", b",", b"%", b"/",
    HUGE.encode(), b"-" + HUGE.encode(), b"1e999", b"nan", b"0A", b"ffffffff", b'"', b"#", b"E:", b"\\123",
    b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"[", b"{", b"}",
]
FUZZ_ROUNDS = 24


def fuzz_bytes(rng, well_formed: bytes) -> bytes:
    """Random bytes, or the well-formed content with tokens inserted and slices cut out."""
    if rng.random() < 0.25:
        return rng.randbytes(rng.randrange(0, 300))
    data = bytearray(well_formed)
    for _ in range(rng.randint(1, 8)):
        position = rng.randint(0, len(data))
        if rng.random() < 0.2 and data:
            del data[position : position + rng.randint(1, 8)]
        else:
            data[position:position] = rng.choice(FUZZ_TOKENS) * rng.choice((1, 1, 1, 3))
    return bytes(data)


def fuzz_name(rng, prefix: bytes) -> str:
    """A directory name of random bytes (no NUL, no slash) after ``prefix``, as Python spells it."""
    tail = bytes(b for b in rng.randbytes(rng.randint(1, 12)) if b not in (0, 0x2F))
    return os.fsdecode(prefix + tail)


def fuzzed_host(rng, base: Path) -> HostRoot:
    files: dict[str, bytes | str] = {}
    for relative, content in FUZZED_FILES.items():
        well_formed = content if isinstance(content, bytes) else content.encode()
        roll = rng.random()
        if roll < 0.5:
            files[relative] = fuzz_bytes(rng, well_formed)
        elif roll < 0.85 or relative in HOST:
            files[relative] = well_formed
    interface = fuzz_name(rng, b"e")  # an interface and a disk named with control characters
    for name in ("address", "flags", "type"):
        files[f"sys/class/net/{interface}/{name}"] = files.get(f"sys/class/net/eth0/{name}", b"")
    files[f"sys/block/{fuzz_name(rng, b'sd')}/size"] = fuzz_bytes(rng, b"4096\n")
    return host_tree(base, files)


def assert_stored_text_is_clean(snapshot: dict[str, list[dict]]) -> None:
    """No control character (C0, DEL, C1) and no invalid UTF-8 in any text the store wrote."""
    for table, table_rows in snapshot.items():
        for row in table_rows:
            for column, value in row.items():
                for text in _texts(value):
                    assert not CONTROL.search(text), (table, column, text)
                    text.encode("utf-8")  # raises on a lone surrogate


def _texts(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


@pytest.mark.parametrize("seed", range(FUZZ_ROUNDS))
async def test_fuzzed_host_files(tmp_path: Path, seed: int, capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(14_000 + seed)
    root = fuzzed_host(rng, tmp_path / "host")
    async with open_module_store(tmp_path / "db", with_machine=False) as db:
        with capture_logs() as logs:
            results = await run_host_cycle(db, root)
        statuses = {name: result.status for name, result in results.items()}
        assert set(statuses) == set(HOST_MODULES)
        assert set(statuses.values()) <= {OK, SKIPPED}, [(r.name, r.detail) for r in results.values()]
        assert_stored_text_is_clean(db.snapshot())
        assert len(db.rows("machines")) == 1
    assert not [line for line in logs if "exc_info" in line or line["log_level"] in ("error", "critical")]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
