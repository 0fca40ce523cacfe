"""--metrics-address: the daemon's Prometheus metrics, scraped over HTTP.

The daemon runs whole cycles, so it runs inside a test-made network namespace
(support/netns.py, behind the guard that refuses the machine's own namespace),
and is scraped over that namespace's loopback by a client started in the same
namespace. One daemon serves every test of the file.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cluster import clean_environ

from situation.config import convert, core_settings
from situation.errors import ConfigError
from situation.metrics import CountingStore, parse_listen_address, written_table

AGENT_ID = "3e7f1c5a3e7f1c5a3e7f1c5a3e7f1c5a"
PORT = 9464
# Prints the status line, the Content-Type and the body of one GET, inside the namespace.
SCRAPE = """
import sys, urllib.error, urllib.request
try:
    response = urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError as error:
    response = error
except OSError as error:
    sys.exit(f"no answer: {error}")
print(response.status)
print(response.headers["Content-Type"])
sys.stdout.write(response.read().decode())
"""


class Daemon:
    def __init__(self, host, directory: Path):
        self.host = host
        self.directory = directory
        self.database = directory / "agent.sqlite"
        self.log = directory / "agent.log"
        self.env = clean_environ(HOME=str(directory), SITUATION_STATE_DIR=str(directory / "state"),
                                 SITUATION_AGENT_ID=AGENT_ID)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("w") as stderr:
            self.process = self.host.popen(
                sys.executable, "-m", "situation", "run", "--interval", "1h", "--db", str(self.database),
                "--metrics-address", f"127.0.0.1:{PORT}", env=self.env, stdout=subprocess.DEVNULL, stderr=stderr)

    def get(self, path: str = "/metrics") -> tuple[int, str, str]:
        result = self.host.run(sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{PORT}{path}", env=self.env,
                               timeout=30)
        if result.returncode != 0:
            raise ConnectionError(result.stderr.strip())
        status, content_type, body = result.stdout.split("\n", 2)
        return int(status), content_type, body

    def samples_after_a_cycle(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                samples = parse(self.get()[2])
            except ConnectionError:  # not listening yet
                samples = {}
            if sum(v for (name, _), v in samples.items() if name == "situation_cycles_total") >= 1:
                return samples
            time.sleep(0.3)
        raise AssertionError("no cycle in the metrics:\n" + self.log.read_text())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def situation(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return self.host.run(sys.executable, "-m", "situation", *args, env={**self.env, **env}, timeout=60)


def parse(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from support.netns import IsolatedHost, netns_available

    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    host = IsolatedHost().create()
    daemon = Daemon(host, tmp_path_factory.mktemp("metrics"))
    started = time.time()
    daemon.start()
    try:
        daemon.first_samples = daemon.samples_after_a_cycle()
        daemon.started = started
        yield daemon
        assert daemon.stop() == 0, daemon.log.read_text()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        host.destroy()


def test_a_scrape_after_one_cycle(daemon):
    samples = daemon.first_samples
    assert value(samples, "situation_cycles_total", outcome="success") == 1
    assert value(samples, "situation_cycles_total", outcome="failure") == 0
    assert value(samples, "situation_cycle_duration_seconds_count") == 1
    assert value(samples, "situation_cycle_duration_seconds_sum") > 0
    assert daemon.started < value(samples, "situation_last_success_timestamp_seconds") <= time.time()
    assert value(samples, "situation_database_up") == 1
    for stage in ("connect", "module", "health-check"):
        assert value(samples, "situation_database_errors_total", stage=stage) == 0
    assert value(samples, "situation_agent_info", agent_id=AGENT_ID, version=__import__("situation").__version__) == 1
    assert value(samples, "process_open_fds") > 0 and value(samples, "process_resident_memory_bytes") > 0

    # every module that ran: one run, its status, its duration
    log = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")]
    finished = {line["module"]: line for line in log if line["event"] == "module finished"}
    assert {"host-basic", "local-users", "host-network"} <= set(finished)
    for module, line in finished.items():
        assert value(samples, "situation_module_runs_total", module=module, status=line["status"]) == 1
        assert value(samples, "situation_module_status", module=module, status=line["status"]) == 1
        assert value(samples, "situation_module_status", module=module, status="failed") == (line["status"] == "failed")
        assert value(samples, "situation_module_duration_seconds", module=module) == pytest.approx(
            line["duration_ms"] / 1000, abs=0.002)

    # rows by table, as the database holds them after a first cycle
    written = {dict(labels)["table"]: v for (name, labels), v in samples.items() if name == "situation_rows_written_total"}
    with sqlite3.connect(daemon.database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        users = db.execute("SELECT count(*) FROM users").fetchone()[0]
    assert set(written) <= tables
    assert written["users"] == users > 0  # one upsert of every account, on an empty database
    assert written["machines"] >= 1 and written["network_interfaces"] >= 1


def test_text_format_and_paths(daemon):
    status, content_type, body = daemon.get("/metrics")
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE situation_cycles_total counter" in body and "_created" not in body
    assert daemon.get("/")[0] == 200
    assert daemon.get("/other")[0] == 404


@pytest.mark.parametrize("address, env, expected", [
    ("9464", False, "--metrics-address: '9464' is not HOST:PORT; use e.g. 127.0.0.1:9464"),
    ("192.0.2.1:9464", False, "--metrics-address: 192.0.2.1 is not an address of this host"),
    (f"127.0.0.1:{PORT}", True, f"--metrics-address: 127.0.0.1:{PORT} is already in use by another process; "
                                "pick a free port"),
])
def test_refused_at_start_in_one_line(daemon, address, env, expected):
    # In the daemon's namespace: its metrics port is the one taken.
    if env:
        result = daemon.situation("run", "--once", SITUATION_METRICS_ADDRESS=address)
    else:
        result = daemon.situation("run", "--once", "--metrics-address", address)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"situation: error: {expected}"), result.stderr


# -- without a namespace: parsing, counting, and nothing imported when off ------------------------


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    (":9464", ("0.0.0.0", 9464)),
    ("[::1]:9100", ("::1", 9100)),
    ("[::]:9100", ("::", 9100)),
    ("metrics.example.com:65535", ("metrics.example.com", 65535)),
])
def test_listen_addresses(text, expected):
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "'' is not HOST:PORT"),
    ("localhost", "'localhost' is not HOST:PORT"),
    ("127.0.0.1:0", "port '0' is not a number from 1 to 65535"),
    ("127.0.0.1:65536", "port '65536' is not a number from 1 to 65535"),
    ("127.0.0.1:http", "port 'http' is not a number from 1 to 65535"),
    ("127.0.0.1:", "port '' is not a number from 1 to 65535"),
    ("::1:9464", "'::1:9464': write an IPv6 address in brackets, e.g. [::1]:9464"),
    ("[::1:9464", "'[::1:9464' is not HOST:PORT"),
    ("[127.0.0.1]:9464", "'[127.0.0.1]:9464' is not HOST:PORT"),
    ("http://127.0.0.1:9464/metrics", "'http://127.0.0.1:9464/metrics': give HOST:PORT alone, without http:// or a path"),
    ("bad host:9464", "'bad host' is not an IP address or a host name"),
])
def test_bad_listen_addresses_name_the_flag(text, message):
    (setting,) = [s for s in core_settings() if s.key == "metrics-address"]
    assert convert(setting, None) is None  # off by default
    with pytest.raises(ConfigError) as caught:
        convert(setting, text)
    assert str(caught.value).startswith(f"--metrics-address: {message}")


class RetriedOnce:
    """The real SQLite store, with the PostgreSQL store's retry: the first attempt of a unit
    is rolled back after its work ran (as a deadlock victim's is), then the unit runs again."""

    def __init__(self, store):
        self.store = store
        self.dialect = store.dialect

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def run_in_transaction(self, work):
        class Rollback(Exception):
            pass

        try:
            async with self.store.transaction():
                await work()
                raise Rollback
        except Rollback:
            pass
        return await self.store.run_in_transaction(work)


async def test_rows_are_counted_when_committed_and_once(module_store):
    recorded: dict[str, int] = {}
    store = CountingStore(RetriedOnce(module_store.store), lambda t, n: recorded.__setitem__(t, recorded.get(t, 0) + n))
    users = [{"uid": uid, "username": f"u{uid}", "machine_id": module_store.machine_id} for uid in (1, 2, 3)]

    async def unit():
        await store.upsert("users", users, key="machine_user")
        assert recorded == {}  # not before the commit
        return "done"

    assert await store.run_in_transaction(unit) == "done"
    assert recorded == {"users": 3}
    assert module_store.counts()["users"] == 3

    async def failing():
        await store.upsert("users", [{**users[0], "username": "renamed"}], key="machine_user")
        raise RuntimeError("the unit fails")

    with pytest.raises(RuntimeError):
        await store.run_in_transaction(failing)
    assert recorded == {"users": 3}  # rolled back: not counted

    assert await store.execute("set_machine_chassis", "vm", module_store.machine_id, AGENT_ID) == 1
    assert recorded == {"users": 3, "machines": 1}  # a named write outside any unit counts at once

    with pytest.raises(RuntimeError):
        async with store.transaction():
            await store.upsert("users", [{**users[0], "username": "renamed"}], key="machine_user")
            raise RuntimeError("the block fails")
    async with store.transaction():
        await store.upsert("users", [{**users[1], "username": "renamed"}], key="machine_user")
        assert recorded["users"] == 3
    assert recorded == {"users": 4, "machines": 1}


def test_every_named_write_names_a_table_of_the_schema():
    from situation.store import queries_for

    for dialect in ("sqlite", "postgres"):
        for query, text in queries_for(dialect).items():
            table = written_table(dialect, query)
            if any(verb in text.upper() for verb in ("INSERT ", "UPDATE ", "DELETE ")):
                assert table in {"machines", "network_interfaces", "network_interface_subnets", "subnetworks",
                                 "applications", "application_endpoints", "packages", "flows",
                                 "endpoint_policies"}, (dialect, query, table)


def test_off_by_default_imports_nothing(tmp_path):
    code = ("import sys; from situation.cli import agent_config; "
            f"config = agent_config(None, {{'state_dir': {str(tmp_path)!r}}}); "
            "assert config.metrics_address is None; "
            "from situation.agent import Agent; Agent(config); "
            "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_environ(HOME=str(tmp_path)), timeout=60)
    assert result.stdout.strip() == "False", result.stderr
