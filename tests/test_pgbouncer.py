"""The agent through a real PgBouncer in transaction pooling mode (issue 12, item 1).

One PgBouncer (tests/support/pgbouncer.py, settings from deploy/pgbouncer.ini)
runs inside a test-made network namespace, takes TLS from the agents
(``sslmode=verify-full``) and SCRAM-authenticates them against secrets copied
from pg_authid. It reaches a TLS cluster running in the same namespace over TCP,
with TLS (verify-full) and SCRAM pass-through; the cluster's pg_hba.conf takes
nothing else over the network.
Every command here, including the whole ``run`` cycles, runs inside that
namespace (support/netns.py), behind the guard that refuses the machine's own;
the cycles read fixture host trees, one per agent, so that each agent is a
host of its own.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cluster import Cluster, clean_environ
from support.netns import IsolatedHost, netns_available
from support.pgbouncer import Bouncer, pgbouncer_binary

from situation.module import load_builtin_modules
from situation.store import queries_for

HOST_MODULES = {"fingerprint", "host-basic", "host-cpu", "host-disk", "host-gpu", "host-network", "chassis", "local-users"}
AGENTS = 3
MIGRATORS = 3
PASSWORD = "Bouncer-test-pw1"

pytestmark = pytest.mark.skipif(pgbouncer_binary() is None, reason="pgbouncer is not installed")


@dataclass
class Lab:
    host: IsolatedHost
    cluster: Cluster
    bouncer: Bouncer
    database: str
    owner: str
    agents: list[str]
    plain: str  # a role made an agent without `situation grant`
    ca_file: Path
    work: Path

    def dsn(self, role: str) -> str:
        return (f"host=localhost port={self.bouncer.port} dbname={self.database} user={role} "
                f"sslmode=verify-full sslrootcert={self.ca_file}")

    def env(self, name: str, **extra: str) -> dict[str, str]:
        home = self.work / name
        home.mkdir(exist_ok=True)
        return clean_environ(HOME=str(home), SITUATION_STATE_DIR=str(home / "state"), PGPASSWORD=PASSWORD, **extra)

    def situation(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return self.host.run(sys.executable, "-m", "situation", *args, env=env, timeout=120)

    def popen(self, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("w") as stderr:
            return self.host.popen(sys.executable, "-m", "situation", *args, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)

    def sql(self, query: str) -> str:
        return self.cluster.psql(query, dbname=self.database)


@pytest.fixture(scope="module")
def lab(certs):
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    owner, agents, plain, database = "pgb_owner", [f"pgb_agent{i}" for i in range(AGENTS)], "pgb_plain", "pgb"
    host = IsolatedHost().create()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sit-pg-pgb-", dir="/tmp")), tls=True, certs=certs,
                      name="pgbouncer", namespace=host.name)
    bouncer = Bouncer(Path(tempfile.mkdtemp(prefix="sit-pgb-", dir="/tmp")), cluster, host.name,
                      tls_cert=certs.server_crt, tls_key=certs.server_key, ca_file=certs.ca_crt)
    try:
        cluster.start()
        cluster.create_role(owner, PASSWORD, extra="CREATEROLE")
        for agent in (*agents, plain):
            cluster.create_role(agent, PASSWORD)
        cluster.create_database(database, owner=owner)
        bouncer.add_users(owner, plain, *agents)
        # One server connection for this agent: its sessions' named statements are bound to meet there.
        bouncer.users[agents[1]] = "max_user_connections=1"
        bouncer.start()
        with tempfile.TemporaryDirectory(prefix="sit-pgb-work-") as work:
            yield Lab(host, cluster, bouncer, database, owner, agents, plain, certs.ca_crt, Path(work))
    finally:
        bouncer.destroy()
        cluster.destroy()
        host.destroy()


def advisory_locks(lab: Lab) -> int:
    return int(lab.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


@pytest.fixture(scope="module")
def migrated(lab) -> list[subprocess.CompletedProcess]:
    """Several `situation migrate` at once through the bouncer, then `situation grant` for each agent."""
    env = lab.env("owner")
    with ThreadPoolExecutor(MIGRATORS) as pool:
        results = list(pool.map(lambda _: lab.situation("migrate", "--db", lab.dsn(lab.owner), env=env),
                                range(MIGRATORS)))
        grants = list(pool.map(lambda agent: lab.situation("grant", "--db", lab.dsn(lab.owner), agent, env=env),
                               lab.agents))
        assert [g.returncode for g in grants] == [0] * AGENTS, [g.stderr for g in grants]
    # Made an agent by hand, without `situation grant`: no search_path on the role.
    lab.sql(f"GRANT situation_agent TO {lab.plain}")
    return results


def test_migrations_run_through_the_bouncer_once(lab, migrated):
    """Concurrent migrations through transaction pooling: one applies, none leaves a lock behind."""
    assert [r.returncode for r in migrated] == [0] * MIGRATORS, [r.stderr for r in migrated]
    assert sum("applied 0001_initial.sql" in r.stdout for r in migrated) == 1
    assert lab.sql("SELECT string_agg(version::text, ',') FROM situation.schema_migrations") == "1"
    assert advisory_locks(lab) == 0  # a session lock could have stayed on a pooled server connection


def test_check_through_the_bouncer_says_what_the_server_sees(lab, migrated):
    # Twice: a second session on the same pooled server connection finds nothing the first left there.
    first = lab.situation("check", "--db", lab.dsn(lab.agents[0]), env=lab.env("check"))
    assert first.returncode == 0, first.stderr
    result = lab.situation("check", "--json", "--db", lab.dsn(lab.agents[0]), env=lab.env("check"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tls"] is True and report["verification"] == "chain and host name"
    assert report["role"] == lab.agents[0] and report["can_change_schema"] is False
    assert report["schema_version"] == report["expected_version"]
    # PostgreSQL sees PgBouncer's own TLS connection, from its port.
    assert report["server_sees"].startswith("TCP from port ") and report["server_sees"].endswith("with TLSv1.3")
    assert any("pooler" in note for note in report["notes"])


def host_tree(base: Path, n: int) -> Path:
    """A small host of its own for agent ``n``: hostname, machine id, one NIC."""
    files = {
        "proc/sys/kernel/hostname": f"bounced-{n}\n",
        "proc/uptime": "100.0 50.0\n",
        "proc/cpuinfo": "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n\n",
        "proc/mounts": "/dev/vda1 / ext4 rw 0 0\n",
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
        "etc/machine-id": f"{n:032x}\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "sys/class/net/eth0/address": f"52:54:00:00:01:{n:02x}\n",
        "sys/class/net/eth0/flags": "0x1043\n",
        "sys/class/net/eth0/type": "1\n",
        "situation-test/addresses.json": json.dumps({"eth0": [f"192.0.2.{10 + n}/24"]}),
    }
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return base


def host_cycle_flags() -> list[str]:
    return [f"--no-module-{name}" for name in sorted(load_builtin_modules()) if name not in HOST_MODULES]


def agent_id(n: int) -> str:
    return f"{0xb0 + n:02x}" * 16


def module_statuses(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {line["module"]: line["status"] for line in map(json.loads, result.stderr.splitlines())
            if line.get("event") == "module finished"}


def test_agents_at_once_through_the_bouncer(lab, migrated):
    """Several agents, each its own role and host, run a cycle at the same time: the host modules
    on fixture hosts, and every module (discovery, its locks) on the namespace's live host."""
    flags = host_cycle_flags()
    whole = AGENTS - 1

    def run(n: int) -> subprocess.CompletedProcess:
        if n == whole:
            env, only = lab.env("whole"), []
        else:
            env, only = lab.env(f"agent{n}", SITUATION_HOST_ROOT=str(host_tree(lab.work / f"host{n}", n))), flags
        return lab.situation("run", "--once", "--no-migration", "--no-statement-cache", "--agent-id", agent_id(n),
                             "--db", lab.dsn(lab.agents[n]), *only, env=env)

    with ThreadPoolExecutor(AGENTS) as pool:
        results = list(pool.map(run, range(AGENTS)))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "failed" not in module_statuses(result).values(), module_statuses(result)
    assert {"arp", "ping", "netstat", "tcp-scan", "reverse-lookup"} <= set(module_statuses(results[whole]))
    assert all(set(module_statuses(r)) == HOST_MODULES for r in results[:whole])
    machines = lab.sql("SELECT string_agg(hostname || ' ' || agent, ',' ORDER BY agent) FROM situation.machines "
                       "WHERE agent IS NOT NULL")
    assert machines.split(",")[:whole] == [f"bounced-{n} {agent_id(n)}" for n in range(whole)]
    assert machines.split(",")[whole].endswith(agent_id(whole))
    assert advisory_locks(lab) == 0


def test_daemon_through_the_bouncer_is_healthy(lab, migrated):
    env = lab.env("daemon", SITUATION_HOST_ROOT=str(host_tree(lab.work / "host-daemon", 0)))
    log = lab.work / "daemon.log"
    process = lab.popen("run", "--interval", "1h", "--no-migration", "--no-statement-cache", "--agent-id",
                        agent_id(0), "--db", lab.dsn(lab.agents[0]), *host_cycle_flags(), env=env, log=log)
    try:
        health = lab.work / "daemon" / "state" / "health.json"
        deadline = time.monotonic() + 60
        while not health.exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        checked = lab.situation("health", env=env)
        assert checked.returncode == 0 and checked.stdout.strip() == "healthy", checked.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert '"level": "error"' not in log.read_text()


def test_a_role_without_the_search_path_is_refused_in_one_line(lab, migrated):
    """PgBouncer drops the search_path the agent asks for: the role must carry it, or the agent says so."""
    result = lab.situation("run", "--once", "--no-migration", "--no-statement-cache", "--db", lab.dsn(lab.plain),
                           *host_cycle_flags(), env=lab.env("plain"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f'schema situation is not on the search path of role "{lab.plain}"' in result.stderr
    assert f"situation grant {lab.plain}" in result.stderr


# What would tie a named query (one statement each) to one server session, which transaction pooling does not keep.
SESSION_STATE = {
    "session advisory lock": re.compile(r"pg_(try_)?advisory_(un)?lock(_shared)?\s*\(", re.IGNORECASE),
    "SET outside a transaction": re.compile(r"^\s*(SET|RESET)\s+(?!LOCAL\b)", re.IGNORECASE),
    "set_config for the session": re.compile(r"set_config\s*\([^)]*,\s*false\s*\)", re.IGNORECASE),
    "temporary table": re.compile(r"\bCREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\b", re.IGNORECASE),
    "LISTEN": re.compile(r"\b(UN)?LISTEN\b", re.IGNORECASE),
    "SQL-level prepared statement": re.compile(r"^\s*(PREPARE|EXECUTE|DEALLOCATE)\b", re.IGNORECASE),
    "cursor kept past its transaction": re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
}


def test_no_named_query_keeps_session_state():
    found = [(name, what) for name, sql in queries_for("postgres").items()
             for what, pattern in SESSION_STATE.items() if pattern.search(sql)]
    assert found == []


PREPARE_EVERY_QUERY = """
import asyncio, json, sys
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.store import queries_for

async def main():
    connection = await connect(parse_dsn(sys.argv[1]), statement_cache_size=0)
    failed = {}
    async with connection.transaction():  # one server connection throughout, even through the bouncer
        for name, sql in sorted(queries_for("postgres").items()):
            try:
                async with connection.transaction():  # a savepoint: one failure does not end the check
                    await connection.prepare(sql)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
    await connection.close()
    print(json.dumps(failed))

asyncio.run(main())
"""


def test_every_named_query_is_valid_for_an_agent_through_the_bouncer(lab, migrated):
    """Each one parses and finds its tables and columns on the agent role's search path, through the bouncer."""
    result = lab.host.run(sys.executable, "-c", PREPARE_EVERY_QUERY, lab.dsn(lab.agents[0]),
                          env=lab.env("prepare"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}


def test_an_agent_with_its_statement_cache_says_to_turn_it_off(lab, migrated):
    """Without --no-statement-cache, named statements of two sessions meet on one server connection:
    within a run (its pool's connections) or at the latest in the next one."""
    env = lab.env("cached", SITUATION_HOST_ROOT=str(host_tree(lab.work / "host-cached", 1)))
    for _ in range(2):
        failed = lab.situation("run", "--once", "--no-migration", "--agent-id", agent_id(1), "--db",
                               lab.dsn(lab.agents[1]), *host_cycle_flags(), env=env)
        if failed.returncode != 0:
            break
    assert failed.returncode != 0
    last = failed.stderr.splitlines()[-1]
    assert 'prepared statement "__asyncpg_stmt_' in last and "run the agent with --no-statement-cache" in last
    assert "HINT" not in last  # asyncpg's advice (its own pool, statement_cache_size) means nothing to a user
