"""One machine row per host, whatever the agent ids; cloned agent ids kept apart.

Every test runs whole `run --once` cycles, so the agents run inside a test-made network
namespace (support/netns.py) behind the guard that refuses the machine's own one;
PostgreSQL is reached over its Unix socket. Hosts are fixture trees (SITUATION_HOST_ROOT)
and only the host modules run, which keeps each process short.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.cluster import clean_environ
from support.netns import isolated_host_or_skip

from situation.module import load_builtin_modules
from situation.modules.host_basic import format_machine_id

HOST_MODULES = {"fingerprint", "host-basic"}
TAKEOVER = "took over this host's machine row from another agent"
TWO_AGENTS = "two agents run on this host: its machine row changed hands within one interval"
CLONED = "this agent id is in use on another host (a cloned image?); this host is recorded without it"
FAILURES = ("machines_host_id_key", "machines_agent_key", "unique", "deadlock", "serializ", '"status": "failed"')


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_host(base: Path, *, hostname: str, machine_id: str, mac: str, address: str) -> Path:
    """A host tree as host-basic, fingerprint and host-network read it."""
    write(base / "proc/sys/kernel/hostname", hostname + "\n")
    write(base / "proc/sys/kernel/arch", "x86_64\n")
    write(base / "proc/uptime", "1234.5 100.0\n")
    write(base / "etc/machine-id", machine_id + "\n")
    write(base / "etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    write(base / "sys/class/net/eth0/address", mac + "\n")
    write(base / "sys/class/net/eth0/flags", "0x1003\n")
    write(base / "sys/class/net/eth0/type", "1\n")
    write(base / "situation-test/addresses.json", json.dumps({"eth0": [address]}))
    return base


def host_id_of(machine_id: str) -> str:
    return format_machine_id(machine_id)


namespace = pytest.fixture(scope="module", name="namespace")(isolated_host_or_skip)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hosts")
    return {
        "web": make_host(base / "web", hostname="web-1", machine_id="1" * 32, mac="02:5a:00:00:01:01",
                         address="10.231.7.2/24"),
        "db": make_host(base / "db", hostname="db-1", machine_id="2" * 32, mac="02:5a:00:00:02:01",
                        address="10.231.7.3/24"),
    }


@pytest.fixture(scope="module")
def module_env(tmp_path_factory) -> dict[str, str]:
    state = tmp_path_factory.mktemp("state")
    disabled = sorted(set(load_builtin_modules()) - HOST_MODULES - {"host-network"})
    return clean_environ(HOME=str(state), **{f"SITUATION_NO_MODULE_{n.upper().replace('-', '_')}": "1" for n in disabled})


@pytest.fixture(scope="module")
def database(tls_cluster):
    """A migrated database for the file; each test empties its machines first."""
    name = f"takeover_{uuid.uuid4().hex[:10]}"
    tls_cluster.create_database(name)
    dsn = tls_cluster.superuser_dsn(name)
    subprocess.run([sys.executable, "-m", "situation", "migrate", "--db", dsn], env=clean_environ(), check=True,
                   capture_output=True)
    yield name, dsn
    tls_cluster.drop_database(name)


def start(namespace, env, root: Path, agent: str, db: str, *, modules=HOST_MODULES) -> subprocess.Popen:
    extra = {} if "host-network" in modules else {"SITUATION_NO_MODULE_HOST_NETWORK": "1"}
    return namespace.popen(
        sys.executable, "-m", "situation", "run", "--once", "--pool-size", "1", "--interval", "15m", "--db", db,
        env={**env, **extra, "SITUATION_HOST_ROOT": str(root), "SITUATION_AGENT_ID": agent,
             "SITUATION_STATE_DIR": str(root.parent / f"state-{root.name}-{agent}")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def finish(processes: list[subprocess.Popen]) -> list[list[dict]]:
    """Wait for every agent; each must succeed without a key, deadlock or module failure in its log."""
    logs = []
    for process in processes:
        _out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        lowered = err.lower()
        assert not [f for f in FAILURES if f in lowered], err
        logs.append([json.loads(line) for line in err.splitlines() if line.startswith("{")])
    return logs


def run_all(namespace, env, runs, db: str, **options) -> list[list[dict]]:
    return finish([start(namespace, env, root, agent, db, **options) for root, agent in runs])


def events(logs: list[list[dict]], event: str) -> list[dict]:
    return [line for log in logs for line in log if line.get("event") == event]


def agent_id(n: int) -> str:
    return f"{n:032x}"


def pg_machines(cluster, name: str) -> list[dict]:
    text = cluster.psql("SELECT coalesce(json_agg(m ORDER BY id), '[]') FROM (SELECT id, host_id, hostname, agent "
                        "FROM situation.machines) m", dbname=name)
    return json.loads(text)


def sqlite_machines(path: Path) -> list[dict]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT id, host_id, hostname, agent FROM machines ORDER BY id")]


def test_twenty_agents_with_their_own_ids_on_one_host_share_one_row(namespace, hosts, module_env, database,
                                                                      tls_cluster):
    name, dsn = database
    tls_cluster.psql("DELETE FROM situation.machines", dbname=name)
    ids = [agent_id(100 + n) for n in range(20)]
    logs = run_all(namespace, module_env, [(hosts["web"], a) for a in ids], dsn)
    [row] = pg_machines(tls_cluster, name)
    assert row["host_id"] == host_id_of("1" * 32) and row["hostname"] == "web-1" and row["agent"] in ids
    # Serialised on the host: the first agent inserts, each of the 19 others takes the row over
    # from a live agent once, which is the warning (never an error).
    warnings = events(logs, TWO_AGENTS)
    assert len(warnings) == 19 and {w["level"] for w in warnings} == {"warning"}
    assert {w["previous_agent"] for w in warnings} <= set(ids) and not events(logs, TAKEOVER)


def test_two_agents_on_one_sqlite_file_and_a_later_takeover(namespace, hosts, module_env, tmp_path):
    database = str(tmp_path / "situation.sqlite")
    first, second, later = agent_id(1), agent_id(2), agent_id(3)
    logs = run_all(namespace, module_env, [(hosts["web"], first), (hosts["web"], second)], database)
    [row] = sqlite_machines(Path(database))
    assert row["agent"] in (first, second) and row["host_id"] == host_id_of("1" * 32)
    [warning] = events(logs, TWO_AGENTS)
    assert warning["level"] == "warning" and warning["previous_agent"] in (first, second)

    # The state directory is lost an hour later: a new agent id takes the row over, logged once.
    with sqlite3.connect(database) as db:
        db.execute("UPDATE machines SET updated_at = datetime('now', '-1 hour')")
    previous = row["agent"]
    logs = run_all(namespace, module_env, [(hosts["web"], later)], database)
    logs += run_all(namespace, module_env, [(hosts["web"], later)], database)
    [takeover] = events(logs, TAKEOVER)
    assert takeover["previous_agent"] == previous and takeover["level"] == "info"
    assert not events(logs, TWO_AGENTS)
    [row] = sqlite_machines(Path(database))
    assert row["agent"] == later


def test_a_cloned_agent_id_on_two_hosts_keeps_both_hosts_apart(namespace, hosts, module_env, database, tls_cluster):
    name, dsn = database
    tls_cluster.psql("DELETE FROM situation.network_interfaces; DELETE FROM situation.machines", dbname=name)
    cloned = agent_id(0xC10E)
    runs = [(hosts["web"], cloned), (hosts["db"], cloned)]
    modules = HOST_MODULES | {"host-network"}
    logs = run_all(namespace, module_env, runs, dsn, modules=modules)
    logs += run_all(namespace, module_env, runs, dsn, modules=modules)
    machines = {m["host_id"]: m for m in pg_machines(tls_cluster, name)}
    web, db = machines[host_id_of("1" * 32)], machines[host_id_of("2" * 32)]
    assert len(machines) == 2 and (web["hostname"], db["hostname"]) == ("web-1", "db-1")
    # The first host to record itself keeps the id; the other is recorded without an agent.
    assert sorted([web["agent"] or "", db["agent"] or ""]) == ["", cloned]
    clone_warnings = events(logs, CLONED)
    assert len(clone_warnings) == 2 and {w["level"] for w in clone_warnings} == {"warning"}
    nics = json.loads(tls_cluster.psql(
        "SELECT json_object_agg(mac, machine_id) FROM situation.network_interfaces WHERE mac IS NOT NULL",
        dbname=name))
    assert nics == {"02:5a:00:00:01:01": web["id"], "02:5a:00:00:02:01": db["id"]}
