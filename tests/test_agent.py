"""The agent as a process, inside an isolated test host (DEVELOPERS.md, rule 1).

Every test here runs whole cycles, so the agent runs in a network namespace
(support/netns.py) behind a guard that refuses the machine's own namespace;
PostgreSQL is reached over its Unix socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.cluster import Cluster, clean_environ
from support.notify_socket import NotifySocket

from situation.connection import migrations

AGENT_ID = "5a17da7a5a17da7a5a17da7a5a17da7a"
TABLES = ("machines", "network_interfaces", "subnetworks", "network_interface_subnets", "cpus", "disks", "users")


def agent_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_environ(HOME=str(tmp_path), SITUATION_STATE_DIR=str(tmp_path / "state"), **extra)


def situation(test_host, *args, env, timeout=120):
    return test_host.run(sys.executable, "-m", "situation", *args, env=env, timeout=timeout)


def sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def pg_counts(cluster, database) -> dict[str, int]:
    return {t: int(cluster.psql(f"SELECT count(*) FROM situation.{t}", dbname=database)) for t in TABLES}


def test_guard_refuses_the_machine_namespace(tmp_path):
    from support.netns import GUARD, home_namespace

    env = {**agent_env(tmp_path), "SITUATION_TEST_HOME_NETNS": str(home_namespace())}
    result = subprocess.run([sys.executable, str(GUARD), "true"], env=env, capture_output=True, text=True)
    assert result.returncode == 97 and "refusing" in result.stderr


def test_once_on_the_default_sqlite_database(test_host, tmp_path):
    env = agent_env(tmp_path)
    first = situation(test_host, "run", "--once", "--summary", env=env)
    assert first.returncode == 0, first.stderr
    database = tmp_path / "state" / "situation.sqlite"
    assert f"recorded in SQLite {database}:" in first.stdout
    assert "machines" in first.stdout and "interfaces" in first.stdout
    logs = [json.loads(line) for line in first.stderr.splitlines()]  # JSON lines: stderr is not a terminal
    assert {"event", "level", "timestamp"} <= set(logs[0])
    assert any(line["event"] == "cycle finished" for line in logs)
    counts = sqlite_counts(database)
    second = situation(test_host, "run", "--once", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == ""  # no summary when stdout is not a terminal
    assert sqlite_counts(database) == counts


def test_real_run_records_this_host(test_host, tmp_path):
    """The rows of one real cycle, checked against the machine's own facts."""
    env = agent_env(tmp_path, SITUATION_AGENT_ID=AGENT_ID)
    database = tmp_path / "agent.sqlite"
    result = situation(test_host, "run", "--once", "--db", str(database), env=env)
    assert result.returncode == 0, result.stderr
    db = sqlite3.connect(database)
    db.row_factory = sqlite3.Row
    machine = db.execute("SELECT * FROM machines WHERE agent = ?", (AGENT_ID,)).fetchone()
    assert machine["hostname"] == socket.gethostname()
    host_ids = [Path(p) for p in ("/sys/class/dmi/id/product_uuid", "/etc/machine-id")]
    assert machine["host_id"] and any(
        p.exists() and machine["host_id"].replace("-", "") in p.read_text().lower().replace("-", "") for p in host_ids
    ) or Path("/proc/sys/kernel/random/boot_id").read_text().strip() == machine["host_id"]
    assert machine["arch"] == os.uname().machine and machine["platform"] == "linux"
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(machine["uptime"] / 1e9 - uptime) < 60
    release = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
    )
    assert machine["distribution"] == release["ID"].strip('"')
    nic = db.execute("SELECT * FROM network_interfaces WHERE machine_id = ? AND name = 'eth0'", (machine["id"],)).fetchone()
    assert nic["mac"] == test_host.mac
    assert json.loads(nic["ip"]) == [test_host.ip] or test_host.ip in json.loads(nic["ip"])
    assert nic["gateway"] == test_host.peer_address.split("/")[0]
    subnet = db.execute(
        "SELECT s.* FROM subnetworks s JOIN network_interface_subnets l ON l.subnetwork_id = s.id "
        "WHERE l.network_interface_id = ?", (nic["id"],)
    ).fetchone()
    assert subnet["network_cidr"] == "10.231.7.0/24" and subnet["ip_version"] == 4
    users = {r["username"] for r in db.execute("SELECT username FROM users WHERE machine_id = ?", (machine["id"],))}
    assert "root" in users
    disks = {r["name"]: r for r in db.execute("SELECT * FROM disks WHERE machine_id = ?", (machine["id"],))}
    for name, disk in disks.items():  # each one as /sys/block tells it
        assert disk["size"] == int(Path(f"/sys/block/{name}/size").read_text()) * 512
    cpu = db.execute("SELECT * FROM cpus WHERE machine_id = ?", (machine["id"],)).fetchone()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert cpu["cores"] >= 1 and (not cpu["model_name"] or cpu["model_name"] in cpuinfo)


def test_once_on_postgres_twice_changes_no_row_count(test_host, tls_cluster, fresh_database, tmp_path):
    name = fresh_database("agent")
    env = agent_env(tmp_path, SITUATION_AGENT_ID=AGENT_ID)
    dsn = tls_cluster.superuser_dsn(name)
    assert situation(test_host, "run", "--once", "--db", dsn, env=env).returncode == 0
    counts = pg_counts(tls_cluster, name)
    assert counts["machines"] == 1 and counts["network_interfaces"] >= 1
    result = situation(test_host, "run", "--once", "--db", dsn, env=env)
    assert result.returncode == 0, result.stderr
    assert pg_counts(tls_cluster, name) == counts


def test_no_migration_as_an_agent_role(test_host, tls_cluster, fresh_database, tmp_path):
    name = fresh_database("noimig")
    owner = tls_cluster.superuser_dsn(name)
    env = agent_env(tmp_path)
    tls_cluster.create_role("ag_runner", "x")
    bare = tls_cluster.superuser_dsn(name).replace("postgres@", "ag_runner@")
    refused = situation(test_host, "run", "--once", "--no-migration", "--db", bare, env=env)
    assert refused.returncode != 0
    assert "run `situation migrate` with an owner role" in refused.stderr.strip().splitlines()[-1]
    subprocess.run([sys.executable, "-m", "situation", "migrate", "--db", owner], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "situation", "grant", "ag_runner", "--db", owner], env=env, check=True,
                   capture_output=True)
    result = situation(test_host, "run", "--once", "--no-migrate", "--db", bare, env=env)
    assert result.returncode == 0, result.stderr
    assert int(tls_cluster.psql("SELECT count(*) FROM situation.machines", dbname=name)) == 1


def test_twenty_agents_writing_the_same_rows_at_once(test_host, tls_cluster, fresh_database, tmp_path):
    name = fresh_database("twenty")
    dsn = tls_cluster.superuser_dsn(name)
    env = agent_env(tmp_path, SITUATION_AGENT_ID=AGENT_ID)
    subprocess.run([sys.executable, "-m", "situation", "migrate", "--db", dsn], env=env, check=True, capture_output=True)
    processes = [
        test_host.popen(sys.executable, "-m", "situation", "run", "--once", "--pool-size", "2", "--db", dsn,
                        env={**env, "SITUATION_STATE_DIR": str(tmp_path / f"s{i}")},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(20)
    ]
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert "deadlock" not in err.lower() and '"status": "failed"' not in err
    counts = pg_counts(tls_cluster, name)
    assert counts["machines"] == 1
    duplicates = tls_cluster.psql(
        "SELECT count(*) FROM (SELECT mac, machine_id FROM situation.network_interfaces "
        "WHERE mac IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) d", dbname=name,
    )
    assert duplicates == "0"


def _wait_for_log(process_log: Path, event: str, timeout: float, after: int = 0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = process_log.read_text().splitlines() if process_log.exists() else []
        for index, line in enumerate(lines[after:], start=after):
            if f'"event": "{event}"' in line:
                return index + 1
        time.sleep(0.2)
    raise AssertionError(f"no {event!r} in the agent's log:\n" + (process_log.read_text() if process_log.exists() else ""))


def _assert_sigterm_stops_it_quickly(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0  # a hang guard, not a speed check: the exit status is the point


def test_daemon_notifies_systemd_and_stops_on_sigterm(test_host, tmp_path):
    notify = NotifySocket(Path(tempfile.mkdtemp(dir="/tmp")))
    env = agent_env(tmp_path, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = test_host.popen(sys.executable, "-m", "situation", "run", "--interval", "1h", env=env,
                                  stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            assert notify.wait_for("READY=1", 60), notify.messages
            assert notify.wait_for("STATUS=", 60) and notify.wait_for("WATCHDOG=1", 10)
            _wait_for_log(log, "cycle finished", 60)
            _assert_sigterm_stops_it_quickly(process)
        finally:
            if process.poll() is None:
                process.kill()
    assert notify.wait_for("STOPPING=1", 5)
    assert (tmp_path / "state" / "health.json").exists()


def test_database_down_at_start_and_mid_run(test_host, tmp_path):
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sit-pg-outage-", dir="/tmp")), tls=False, name="outage").start()
    try:
        cluster.create_database("outage")
        cluster.stop()
        env = agent_env(tmp_path, SITUATION_AGENT_ID=AGENT_ID)
        log = tmp_path / "agent.log"
        with log.open("w") as stderr:
            process = test_host.popen(
                sys.executable, "-m", "situation", "run", "--interval", "2s", "--db", cluster.superuser_dsn("outage"),
                env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )
            try:
                seen = _wait_for_log(log, "database unreachable, retrying with backoff", 60)
                cluster.start()
                seen = _wait_for_log(log, "database reachable again", 90, after=seen)
                seen = _wait_for_log(log, "cycle finished", 60, after=seen)
                cluster.stop()
                seen = _wait_for_log(log, "database unreachable, retrying with backoff", 60, after=seen)
                cluster.start()
                seen = _wait_for_log(log, "database reachable again", 90, after=seen)
                _wait_for_log(log, "cycle finished", 60, after=seen)
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=15) == 0
            finally:
                if process.poll() is None:
                    process.kill()
        unreachable = [line for line in log.read_text().splitlines() if "database unreachable" in line]
        assert len(unreachable) == 2  # once per change of state, not once per retry
        assert cluster.psql("SELECT count(*) FROM situation.machines", dbname="outage") == "1"
    finally:
        cluster.destroy()


def test_schema_behind_is_refused_before_any_ddl(test_host, tls_cluster, fresh_database, tmp_path):
    name = fresh_database("behind")
    result = situation(test_host, "run", "--once", "--no-migration", "--db", tls_cluster.superuser_dsn(name),
                       env=agent_env(tmp_path))
    assert result.returncode != 0
    assert f"this build needs {migrations.latest_version()}" in result.stderr
    assert tls_cluster.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'situation'", dbname=name) == "0"


def test_bare_situation_is_run_with_its_environment(test_host, tmp_path):
    database = tmp_path / "from-env.sqlite"
    env = agent_env(tmp_path, SITUATION_ONCE="true", SITUATION_DB=str(database))
    result = test_host.run(sys.executable, "-m", "situation", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sqlite_counts(database)["machines"] == 1


def test_sigterm_while_waiting_for_the_database(test_host, tmp_path):
    env = agent_env(tmp_path)
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = test_host.popen(sys.executable, "-m", "situation", "run", "--db",
                                  "postgresql://nobody@127.0.0.1:1/none?sslmode=disable",
                                  env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _wait_for_log(log, "database unreachable, retrying with backoff", 60)
            _assert_sigterm_stops_it_quickly(process)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("args, extra_env, expected", [
    (["--interval", "soon"], {}, "--interval: invalid duration 'soon'; use e.g. 300ms, 5s, 1m30s or 15m"),
    (["--interval", "-5"], {}, "--interval: '-5' is out of range; use a duration from 1s to 366 days"),
    ([], {"SITUATION_INTERVAL": "nan"}, "--interval: invalid duration 'nan'"),
    (["--pool-size", "0"], {}, "--pool-size: '0' is out of range; use a whole number of at least 1"),
    (["--db", "postgresql:/u:Hunter2@h/db"], {}, "the DSN looks like a mistyped PostgreSQL URI"),
    (["--db", "u:Hunter2@h/db"], {}, "the DSN looks like a mistyped PostgreSQL URI"),
])
def test_bad_run_settings_are_one_line(test_host, tmp_path, args, extra_env, expected):
    # Inside an isolated host even though these fail before any cycle starts.
    result = situation(test_host, "run", "--once", *args, env=agent_env(tmp_path, **extra_env), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("situation: error: ") and expected in lines[0], result.stderr
    assert "Hunter2" not in result.stderr + result.stdout


# -- a one-shot pass that records nothing never exits 0 (issue 14, item 4) ------------------------


def _recorded_database(test_host, tmp_path: Path) -> Path:
    """A real database file, written by one pass."""
    database = tmp_path / "recorded.sqlite"
    result = situation(test_host, "run", "--once", "--db", str(database), env=agent_env(tmp_path))
    assert result.returncode == 0, result.stderr
    return database


def _garbled_copy(database: Path, table: str) -> Path:
    """A copy of ``database`` whose ``table`` has its root data page overwritten with garbage."""
    with sqlite3.connect(database) as db:
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    copy = database.with_name(f"garbled-{table}.sqlite")
    copy.write_bytes(database.read_bytes())
    with copy.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)
    return copy


def _read_only_copy(database: Path) -> Path:
    copy = database.with_name("read-only.sqlite")
    copy.write_bytes(database.read_bytes())
    copy.chmod(0o444)
    return copy


# Root without CAP_DAC_OVERRIDE may not write a file whose mode forbids it.
WITHOUT_DAC_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


@pytest.mark.parametrize("case, expected", [
    ("read-only file", "attempt to write a readonly database); give this user write access"),
    ("garbled machines page", "database disk image is malformed); the file is damaged"),
])
def test_once_that_records_nothing_exits_non_zero(test_host, tmp_path, case, expected):
    database = _recorded_database(test_host, tmp_path)
    if case == "read-only file":
        argv = (*WITHOUT_DAC_OVERRIDE, sys.executable, "-m", "situation", "run", "--once", "--summary",
                "--db", str(_read_only_copy(database)))
    else:
        argv = (sys.executable, "-m", "situation", "run", "--once", "--summary",
                "--db", str(_garbled_copy(database, "machines")))
    result = test_host.run(*argv, env=agent_env(tmp_path, SITUATION_LOG_LEVEL="error"), timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # no summary of a failed pass
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("situation: error: the database failed during this pass (module ") and expected in last
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr


def test_once_summary_that_cannot_be_read_is_one_line(test_host, tmp_path):
    # Without the package modules the pass never reads or writes `packages`, so it succeeds;
    # reading the counts back then fails.
    garbled = _garbled_copy(_recorded_database(test_host, tmp_path), "packages")
    result = situation(test_host, "run", "--once", "--summary", "--db", str(garbled),
                       "--no-module-dpkg", "--no-module-rpm", "--no-module-zypper",
                       env=agent_env(tmp_path, SITUATION_LOG_LEVEL="error"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"situation: error: the pass was recorded, but SQLite {garbled} cannot be read back for the summary "
        "(DatabaseError: database disk image is malformed); the file is damaged: restore it from a backup, "
        "or point --db at a new file"
    ]


# -- a locked SQLite file (issue 14, items 8 and 9) ------------------------------------------------

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(600)
"""


class LockHolder:
    """Another process holding a lock from when it prints ``ready`` until the block ends."""

    def __init__(self, argv: list[str], ready: str, *, stdin: str | None = None, env: dict[str, str] | None = None):
        self.ready = ready
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if stdin is not None:
            self.process.stdin.write(stdin)
            self.process.stdin.flush()

    def __enter__(self):
        assert self.process.stdout.readline().strip() == self.ready
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def exclusive_holder(database: Path) -> LockHolder:
    """``BEGIN EXCLUSIVE`` held on an SQLite file."""
    return LockHolder([sys.executable, "-c", HOLD_EXCLUSIVE, str(database)], "held")


def test_locked_sqlite_file_is_a_temporary_failure(test_host, tmp_path):
    database = _recorded_database(test_host, tmp_path)
    with exclusive_holder(database):
        result = situation(test_host, "run", "--once", "--db", str(database), env=agent_env(tmp_path), timeout=60)
    assert result.returncode == 75, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f'situation: error: another process holds the SQLite database "{database}" '
        "(waited 10s, the busy timeout); try again once it has finished"
    )
    assert "remove" not in result.stderr


class SilentServer:
    """A PostgreSQL Unix socket that accepts connections and never answers: connecting hangs."""

    def __init__(self, directory: Path, port: int = 5999):
        self.port = port
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(directory / f".s.PGSQL.{port}"))
        self.listener.listen()
        self.listener.settimeout(60)
        self.dsn = f"postgresql://agent@/situation?host={directory}&port={port}&sslmode=disable"
        self.accepted: list[socket.socket] = []

    def wait_for_a_client(self) -> None:
        self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        for connection in (*self.accepted, self.listener):
            connection.close()


def migration_lock_holder(cluster: Cluster, database: str) -> LockHolder:
    """A psql session holding the migration advisory lock of ``database``."""
    from support.cluster import SUPERUSER, make_conninfo

    target = make_conninfo(host=cluster.socket_dir, port=cluster.port, user=SUPERUSER, dbname=database)
    return LockHolder([str(cluster.psql_path), "-XAtq", "-d", target], "|held", env=clean_environ(),
                      stdin=f"SELECT pg_advisory_lock({migrations.LOCK_KEY}), 'held';\n")


def _interrupt_once(test_host, tmp_path: Path, database: str, number: int, waiting, **env: str) -> int:
    """Start `run --once` on ``database``; once ``waiting(log)`` returns, send signal ``number``; its status."""
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = test_host.popen(sys.executable, "-m", "situation", "run", "--once", "--db", database,
                                  env=agent_env(tmp_path, **env), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            waiting(log)
            process.send_signal(number)
            return process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=lambda n: signal.Signals(n).name)
def test_once_interrupted_before_its_pass_exits_128_plus_the_signal(number, test_host, tls_cluster, fresh_database,
                                                                   tmp_path):
    # While connecting: the server accepted the connection and says nothing.
    server = SilentServer(Path(tempfile.mkdtemp(dir="/tmp")))
    try:
        status = _interrupt_once(test_host, tmp_path, server.dsn, number, lambda log: server.wait_for_a_client(),
                                 SITUATION_AGENT_ID=AGENT_ID)
    finally:
        server.close()
    assert status == 128 + number, "while connecting"
    # While waiting for the migration lock another session holds.
    name = fresh_database("locked")
    with migration_lock_holder(tls_cluster, name):
        status = _interrupt_once(test_host, tmp_path, tls_cluster.superuser_dsn(name), number,
                                 lambda log: _wait_for_log(log, "waiting for another migration to finish", 30))
    assert status == 128 + number, "while waiting for the migration lock"
    assert tls_cluster.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'situation'", dbname=name) == "0"
    # While waiting for an SQLite file another process holds (its busy timeout is 10 s).
    database = _recorded_database(test_host, tmp_path)
    with exclusive_holder(database):
        status = _interrupt_once(test_host, tmp_path, str(database), number,
                                 lambda log: (_wait_for_log(log, "using the embedded SQLite database", 30),
                                              time.sleep(1)))
    # Had it waited out the busy timeout instead, it would have exited 75 (temporary failure).
    assert status == 128 + number, "while waiting for a locked SQLite file"


# -- small ones (issue 14, item 11) ----------------------------------------------------------------


# Imports that the command line makes at start-up, in this order: a Ctrl-C right after
# each must still end the process quietly.
STARTUP_IMPORTS = ("click", "structlog", "uvloop", "situation.config", "situation.modules.host_network",
                   "situation.cli", "situation.store.sqlite")


@pytest.mark.parametrize("after", STARTUP_IMPORTS)
def test_ctrl_c_while_starting_prints_no_traceback(after, test_host, tmp_path):
    # -X importtime reports each import as it finishes: the signal lands right after ``after``.
    # The database is held by another process, so however late the signal lands, the agent
    # is still waiting for it, not finished and exiting.
    database = tmp_path / "db.sqlite"
    with exclusive_holder(database):
        process = test_host.popen(sys.executable, "-X", "importtime", "-m", "situation", "run", "--once",
                                  "--db", str(database), env=agent_env(tmp_path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for line in process.stderr:
                if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == after:
                    process.send_signal(signal.SIGINT)
                    break
            else:
                raise AssertionError(f"{after} was never imported")
            rest = process.stderr.read()
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    # Exit 130; or, under `python -m` only, death by SIGINT (also 130 to a shell): CPython
    # turns a KeyboardInterrupt that ended a string exec (a dataclass being built, say) into
    # that at exit even when it was caught. The installed `situation` script never does.
    assert process.returncode in (128 + signal.SIGINT, -signal.SIGINT), rest


def test_an_agent_on_sqlite_never_loads_the_postgresql_driver(tmp_path):
    # asyncpg would cost an SQLite daemon ~4 MB of resident memory for nothing (bench/soak.py).
    code = f"""
import asyncio, sys
from situation import agent, cli
from situation.module import load_builtin_modules
from situation.store import open_store

async def main():
    store = await open_store({str(tmp_path / "agent.sqlite")!r}, "agent-1")
    await store.close()

load_builtin_modules()
asyncio.run(main())
print("asyncpg" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=clean_environ())
    assert result.stdout.strip() == "False", result.stderr
