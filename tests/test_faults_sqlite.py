"""Faults under SQLite: the agent killed inside a unit, and the disk full (one pass, and a daemon).

Every test here runs whole cycles, so the agent runs inside a test-made network
namespace (support/netns.py), behind the guard that refuses the machine's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.fault_agent import NAME_PREFIX, kill_inside_the_unit
from support.notify_socket import NotifySocket

FAULT_AGENT = Path(__file__).with_name("support") / "fault_agent.py"
AGENT_ID = "fa017fa017fa017fa017fa017fa017fa"
QUICK = ("--no-module-ping", "--no-module-tcp-scan", "--no-module-netstat")  # the store, not discovery


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {"HOME": str(tmp_path), "SITUATION_STATE_DIR": str(tmp_path / "state"), "SITUATION_AGENT_ID": AGENT_ID}
    return clean_environ(**{**settings, **extra})


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


def test_a_daemon_on_a_full_disk_reports_it_and_takes_writes_again_once_there_is_room(test_host, tmp_path,
                                                                                        small_disk):
    # The state directory shares the full disk: the health record must still say so.
    database, state = small_disk / "inventory.sqlite", small_disk / "state"
    notify_dir = Path(tempfile.mkdtemp(dir="/tmp"))  # short: a socket path has ~107 bytes
    notify = NotifySocket(notify_dir)
    env = agent_env(tmp_path, SITUATION_STATE_DIR=str(state), NOTIFY_SOCKET=str(notify.path))
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        daemon = test_host.popen(sys.executable, "-m", "situation", "--log-format", "json", "run", "--interval", "1s",
                                 *QUICK, "--db", str(database), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    filler = None
    try:
        wait_for_health(state, "up", daemon, log)
        users = count(database, "SELECT count(*) FROM users")
        filler = fill_between_cycles(daemon, database, small_disk)

        record = wait_for_health(state, "full", daemon, log)
        assert "database or disk is full" in record["problem"] and "free space" in record["problem"]
        said = test_host.run(sys.executable, "-m", "situation", "health", env=env, timeout=60)
        assert said.returncode == 1 and "no room for its writes" in said.stderr, said.stderr
        assert notify.wait_for("database full", 30), notify.messages

        filler.unlink()
        filler = None
        wait_for_health(state, "up", daemon, log)
        assert test_host.run(sys.executable, "-m", "situation", "health", env=env, timeout=60).returncode == 0
        assert daemon.poll() is None  # recovered without a restart
    finally:
        if filler is not None:
            filler.unlink()
        daemon.terminate()
        daemon.wait(timeout=30)
        notify.close()
        shutil.rmtree(notify_dir, ignore_errors=True)
    events = [json.loads(line).get("event") for line in log.read_text().splitlines() if line.startswith("{")]
    assert events.count("database has no room for writes, retrying with backoff") == 1  # once, not per retry
    assert "database takes writes again" in events
    assert integrity(database) == "ok"
    assert count(database, "SELECT count(*) FROM users") == users


def wait_for_health(state: Path, database: str, daemon: subprocess.Popen, log: Path) -> dict:
    """The daemon's health record, once it says the database is ``database``."""
    deadline = time.monotonic() + 90
    while True:
        try:
            record = json.loads((state / "health.json").read_text())
            if record["database"] == database:
                return record
        except (OSError, ValueError, KeyError):
            pass
        assert daemon.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no health record with database {database}:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


def fill_between_cycles(daemon: subprocess.Popen, database: Path, disk: Path) -> Path:
    """With the daemon paused, drop its users (the next cycle writes them again) and fill the disk."""
    for _ in range(20):
        daemon.send_signal(signal.SIGSTOP)
        try:
            with sqlite3.connect(database, timeout=0.5) as db:
                db.execute("DELETE FROM users")
            with sqlite3.connect(database, timeout=0.5) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return fill(disk)
        except sqlite3.OperationalError:  # paused inside a write of its own: let it finish
            pass
        finally:
            daemon.send_signal(signal.SIGCONT)
        time.sleep(0.3)
    raise AssertionError("the daemon held its database the whole time")
