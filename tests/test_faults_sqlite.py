"""Faults under SQLite: the agent killed inside a unit, and the disk full.

Every test here runs whole cycles, so the agent runs inside a test-made network
namespace (support/netns.py), behind the guard that refuses the machine's own.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.fault_agent import NAME_PREFIX, kill_inside_the_unit

FAULT_AGENT = Path(__file__).with_name("support") / "fault_agent.py"
AGENT_ID = "fa017fa017fa017fa017fa017fa017fa"
QUICK = ("--no-module-ping", "--no-module-tcp-scan", "--no-module-netstat")  # the store, not discovery


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"),
                         SITUATION_AGENT_ID=AGENT_ID, **extra)


def integrity(database: Path) -> str:
    with sqlite3.connect(database) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def count(database: Path, sql: str) -> int:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchone()[0]


def unit_rows(database: Path) -> int:
    return count(database, f"SELECT count(*) FROM packages WHERE name LIKE '{NAME_PREFIX}%'")


def test_kill_9_inside_a_unit_leaves_nothing_of_it_and_the_next_cycle_succeeds(test_host, tmp_path):
    database = tmp_path / "inventory.sqlite"
    marker = tmp_path / "inside-the-unit"
    env = agent_env(tmp_path, SITUATION_TEST_UNIT_MARKER=str(marker))
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = test_host.popen(sys.executable, str(FAULT_AGENT), "run", "--once", *QUICK, "--db", str(database),
                                  env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def inside() -> None:  # the first half went to the database file: the open transaction spilled into the WAL
        assert Path(f"{database}-wal").stat().st_size > 1_000_000

    kill_inside_the_unit(process, marker, inside, log)
    assert integrity(database) == "ok"
    assert unit_rows(database) == 0

    rerun = test_host.run(sys.executable, "-m", "situation", "run", "--once", *QUICK, "--db", str(database),
                          env=agent_env(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert integrity(database) == "ok"
    assert unit_rows(database) == 0
    assert count(database, "SELECT count(*) FROM machines") == 1
    assert count(database, "SELECT count(*) FROM users") > 0


@pytest.fixture
def small_disk():
    """A 16 MiB tmpfs on a fresh directory, unmounted afterwards (the agent's namespace sees it too)."""
    directory = Path(tempfile.mkdtemp(prefix="sit-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(directory)
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)
        os.rmdir(directory)


def fill(directory: Path) -> Path:
    """Take every free block of the file system under ``directory``."""
    filler = directory / "filler"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def assert_says_the_disk_is_full(result: subprocess.CompletedProcess) -> None:
    """Exit 1 and a last line that says what happened and what to do, with no traceback."""
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr
    assert last.startswith("situation: error:") and "database or disk is full" in last, result.stderr
    assert "free space on the file system that holds the database file" in last
    assert "Traceback" not in result.stderr


def test_disk_full_is_one_clear_line_and_the_database_stays_sound(test_host, tmp_path, small_disk):
    database = small_disk / "inventory.sqlite"
    env = agent_env(tmp_path)

    def once(path: Path = database) -> subprocess.CompletedProcess:
        return test_host.run(sys.executable, "-m", "situation", "run", "--once", *QUICK, "--db", str(path), env=env)

    first = once()
    assert first.returncode == 0, first.stderr
    users = count(database, "SELECT count(*) FROM users")
    # The next pass has rows to write again, and the disk has no room for them.
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM users")
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = fill(small_disk)

    assert_says_the_disk_is_full(once())
    assert integrity(database) == "ok"
    # A new database on the full disk: the same advice, before any module runs.
    assert_says_the_disk_is_full(once(small_disk / "new.sqlite"))

    filler.unlink()
    again = once()
    assert again.returncode == 0, again.stderr
    assert integrity(database) == "ok"
    assert count(database, "SELECT count(*) FROM users") == users
