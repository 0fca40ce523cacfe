"""Many agents at once against one PostgreSQL: throughput, connections, duplicates, surfaced errors.

Run it from the repository, as root (it builds network namespaces)::

    .venv/bin/python bench/fleet.py [--agents 50 | --large] [--cycles 3] [--interval 5s] [--max-alive N]
                                    [--wave 25] [--pool-size 4] [--neighbours 40] [--peers 10] [--keep] [--check]

N agent daemons (``situation run --interval 5s``, 50 by default, 200 with
``--large``) run in test-made network namespaces (the guard of
support/isolated_exec.py refuses the initial one) against one throwaway
PostgreSQL reached over its Unix socket. Each has its own agent id and state
directory and reads its own fake host (bench/fleet_hosts.py, through
``SITUATION_HOST_ROOT``): host name, DMI UUID, machine id, MACs, address,
distribution, CPU, disks, users, dpkg packages. They share the network: every
host's eth0 is on 198.18.0.0/22, and the neighbour table every agent's ``arp``
reads holds ``--neighbours`` lab neighbours (some named in every host's
/etc/hosts, so every ``reverse-lookup`` wants the same machines) and the last
``--peers`` fleet hosts, so agents see each other (see FleetLab).

Modules that would probe lab addresses no one answers on (tcp-scan, snmp; tls,
ja4 and saas after it) or read this machine's live state instead of the fake
host (netstat and its followers, docker, rpm, zypper) are off;
``--ignore-missing-deps`` lets dpkg run without netstat. ping runs with the lab
subnetwork excluded (it sends nothing there, but keeps arp after host-network);
reverse-lookup sends its PTR queries to 127.0.0.1 inside the namespace, where
nothing answers.

Agents start in waves (at most ``--wave`` between their launch and their first
log line), are parked after their first cycle until all have done theirs, and
then run ``--cycles`` more cycles together (see Pace). Printed:

- cycles per second in that window, and the p50 / p99 of the agents' own
  ``cycle finished`` durations, the first cycle (everything written) apart
  from the window's (nothing changed);
- the peak number of server connections (``pg_stat_activity``, client backends
  of the bench database, sampled every 100 ms), of agents alive, and the
  agents' peak total RSS; PostgreSQL's CPU time per agent cycle;
- duplicate rows under every key of sql/README.md (``DUPLICATES``; each must
  be 0), and the machines per fleet host (must be 1);
- deadlock, serialization and unique-violation errors that surfaced in the
  agents' logs (must be 0), other error lines (failed modules), and for
  information the same errors in the server's log (the store retries
  deadlocks and serialization failures as a unit, so they may appear there
  without surfacing).

Memory: an agent daemon holds about 60 MB, so 200 need 12 GB. At most
``--max-alive`` run at once (default: all N, lowered to what 60% of the
available memory holds at 64 MiB per agent); agents run at nice 10.

Exit status: 1 with ``--check`` when a duplicate or a surfaced error was found
or an agent failed, else 0; 2 when it cannot run (not root); 130 when
interrupted (agents killed, namespaces and cluster removed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(Path(__file__).resolve().parent)]

from fleet_hosts import SUBNET, FleetHost, fleet_host, neighbours, write_host_root  # noqa: E402
from support.netns import GuardedNamespace, home_namespace  # noqa: E402

from situation.agent import HEALTH_FILE  # noqa: E402
from situation.module import parse_duration  # noqa: E402

OFF_MODULES = ("tcp-scan", "snmp", "tls", "ja4", "saas", "netstat", "standard-protocol", "docker", "rpm",
               "zypper")
AGENT_NICENESS = 10
AGENT_RSS_ESTIMATE = 64 * 2**20  # an agent daemon after a few cycles (55-60 MiB measured), with margin
# Error text of a deadlock (40P01), a serialization failure (40001) or a unique violation (23505).
# SQLSTATEs as whole words: a timestamp such as 09:17:38.400019 is not one.
CONFLICT_ERRORS = re.compile(r"deadlock|could not serialize|serializ|duplicate key|unique constraint|unique "
                             r"violation|UniqueViolation|\b(?:40P01|40001|23505)\b", re.IGNORECASE)

# Rows beyond the first under each key of sql/README.md ("Conflict targets"). Keys whose
# NULLs mean "unknown" (NIC name, mac, machine_id; machines.agent, host_id) skip NULL rows,
# as their unique constraints do; the NULL-safe keys group NULLs together, as their indexes do.
_EXTRA = "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM situation.{table} {where} GROUP BY {key}) k"
DUPLICATES = {
    "subnetworks (network_cidr, tag)": _EXTRA.format(table="subnetworks", where="", key="network_cidr, tag"),
    "machines (agent)": _EXTRA.format(table="machines", where="WHERE agent IS NOT NULL", key="agent"),
    "machines (host_id)": _EXTRA.format(table="machines", where="WHERE host_id IS NOT NULL", key="host_id"),
    "cpus (machine_id)": _EXTRA.format(table="cpus", where="", key="machine_id"),
    "gpus (index, machine_id)": _EXTRA.format(table="gpus", where="", key='"index", machine_id'),
    "disks (name, machine_id)": _EXTRA.format(table="disks", where="", key="name, machine_id"),
    "network_interfaces (mac, tag, machine_id)": _EXTRA.format(
        table="network_interfaces", where="WHERE mac IS NOT NULL AND machine_id IS NOT NULL", key="mac, tag, machine_id"),
    "network_interfaces (name, machine_id)": _EXTRA.format(
        table="network_interfaces", where="WHERE name IS NOT NULL AND machine_id IS NOT NULL", key="name, machine_id"),
    # Neighbours have no key: one NIC per MAC on a subnetwork is what arp's lookup keeps.
    "network_interfaces per (mac, subnetwork)":
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(DISTINCT i.id) AS n FROM situation.network_interfaces i "
        "JOIN situation.network_interface_subnets l ON l.network_interface_id = i.id WHERE i.mac IS NOT NULL "
        "GROUP BY i.mac, l.subnetwork_id) k",
    "machine-less network_interfaces per MAC (the lab has one subnetwork)": _EXTRA.format(
        table="network_interfaces", where="WHERE mac IS NOT NULL AND machine_id IS NULL", key="mac"),
    # A fleet host that others saw as a neighbour before its agent ran: its own NIC and the
    # neighbour NIC must end up one row (or at least not both hold the MAC on the subnetwork).
    "MACs both on an agent's machine and on a machine-less NIC":
        "SELECT count(DISTINCT h.mac) FROM situation.network_interfaces h JOIN situation.machines m "
        "ON m.id = h.machine_id AND m.agent IS NOT NULL JOIN situation.network_interfaces n "
        "ON n.mac = h.mac AND n.machine_id IS NULL",
    "network_interface_subnets (network_interface_id, subnetwork_id)": _EXTRA.format(
        table="network_interface_subnets", where="", key="network_interface_id, subnetwork_id"),
    "network_interface_subnets (mac_subnet)": _EXTRA.format(
        table="network_interface_subnets", where="WHERE mac_subnet IS NOT NULL", key="mac_subnet"),
    "packages (name, version, machine_id)": _EXTRA.format(table="packages", where="", key="name, version, machine_id"),
    "applications (name, pid, machine_id)": _EXTRA.format(table="applications", where="", key="name, pid, machine_id"),
    "application_endpoints (port, protocol, addr, network_interface_id)": _EXTRA.format(
        table="application_endpoints", where="", key="port, protocol, addr, COALESCE(network_interface_id, 0)"),
    "users (uid, machine_id)": _EXTRA.format(table="users", where="", key="uid, machine_id"),
    "user_applications (user_id, application_id)": _EXTRA.format(
        table="user_applications", where="", key="user_id, application_id"),
    "flows (src_application_id, src_addr, dst_endpoint_id)": _EXTRA.format(
        table="flows", where="", key="src_application_id, src_addr, dst_endpoint_id"),
    "endpoint_policies (endpoint_id, action, src_endpoint_id, src_addr)": _EXTRA.format(
        table="endpoint_policies", where="", key="endpoint_id, action, src_endpoint_id, src_addr"),
    # reverse-lookup's promise: one machine per neighbour host name, however many agents name it.
    "named machines (lower(hostname), no agent, no host_id)": _EXTRA.format(
        table="machines", where="WHERE agent IS NULL AND host_id IS NULL", key="lower(hostname)"),
}
CONNECTIONS = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
               "AND datname = current_database() AND pid <> pg_backend_pid()")


# -- the lab ------------------------------------------------------------------------------


@dataclass
class FleetNamespace(GuardedNamespace):
    """A network namespace for agents: ``lan0`` (a veth pair inside it) and its neighbour table."""

    name: str

    def create(self, seen: list[tuple[str, str]]) -> FleetNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        batch = ["link set lo up", "link add lan0 type veth peer name lan0p", "link set lan0p up", "link set lan0 up",
                 *(f"neigh replace {ip} lladdr {mac} dev lan0 nud stale" for ip, mac in seen)]
        made = subprocess.run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(batch) + "\n", text=True,
                              capture_output=True)
        if made.returncode != 0:
            self.destroy()
            raise RuntimeError(f"ip -n {self.name} -batch: {made.stderr.strip()}")
        return self

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@dataclass
class FleetLab:
    """The agents' hosts, the namespaces they run in, and the fake host roots under ``workdir``.

    Two namespaces: the peers (the last hosts) run in one whose neighbour table holds the
    shared neighbours; every other host runs in one whose table also holds the peers. So no
    host sees itself as its neighbour, and the kernel's neighbour table, shared by every
    namespace of the machine (``gc_thresh3``: 1,024 entries by default), holds only a
    hundred of the fleet's entries, not one table per agent.
    """

    hosts: list[FleetHost]
    peers: list[FleetHost]
    workdir: Path
    namespaces: dict[str, FleetNamespace] = field(default_factory=dict)  # "hosts" / "peers"

    def namespace(self, host: FleetHost) -> FleetNamespace:
        return self.namespaces["peers" if host in self.peers else "hosts"]

    def root(self, host: FleetHost) -> Path:
        return self.workdir / "roots" / host.hostname

    def state(self, host: FleetHost) -> Path:
        return self.workdir / "state" / host.hostname

    def log(self, host: FleetHost) -> Path:
        return self.workdir / "logs" / f"{host.hostname}.log"

    def destroy(self) -> None:
        for namespace in self.namespaces.values():
            namespace.destroy()


def make_lab(count: int, workdir: Path, *, neighbour_count: int = 40, peers: int = 10) -> FleetLab:
    """``count`` hosts on ``SUBNET`` sharing ``neighbour_count`` neighbours; the last ``peers``
    hosts are also neighbours of the others. They start last, so the others record them as
    neighbours before their own agents report them."""
    shared = neighbours(neighbour_count)
    tag = os.getpid()
    hosts = [fleet_host(index, run_tag=tag) for index in range(count)]
    lab = FleetLab(hosts, hosts[count - min(peers, count - 1):] if peers else [], workdir)
    seen = [(str(n.ip), n.mac) for n in shared]
    try:
        lab.namespaces["hosts"] = FleetNamespace(f"fleet-{tag}").create(seen + [(str(p.ip), p.mac) for p in lab.peers])
        lab.namespaces["peers"] = FleetNamespace(f"fleet-{tag}-peers").create(seen)
        for host in hosts:
            write_host_root(lab.root(host), host, shared)
    except BaseException:
        lab.destroy()
        raise
    return lab


# -- the agents ---------------------------------------------------------------------------


@dataclass
class AgentRun:
    host: FleetHost
    cycles: list[float] = field(default_factory=list)  # seconds, from "cycle finished"
    ended: list[float] = field(default_factory=list)  # time.monotonic() when each cycle was logged
    errors: list[str] = field(default_factory=list)  # error-level lines and unparsable output
    conflicts: list[str] = field(default_factory=list)  # lines (any level) naming a deadlock, … ; see CONFLICT_ERRORS
    returncode: int | None = None


@dataclass
class Pace:
    """When agents pause and stop.

    With every agent alive at once, an agent that has finished its first cycle is parked
    (SIGSTOP, between two cycles) until the last one has finished its own; then all are
    continued (SIGCONT) within one interval, which opens the measured window: N agents
    cycling together. Parking keeps the early agents from taking the CPU the later ones
    need to start. An agent is parked only once it has written its health file after that
    cycle (so it is asleep, holding no lock and no timer), within half an interval; one seen
    too late goes on cycling. Each
    agent stops (SIGTERM) after ``cycles`` cycles ended inside the window. When ``max_alive``
    keeps some waiting there is no such window: nobody is parked, and each agent stops after
    ``cycles`` cycles of its own.
    """

    agents: int
    cycles: int
    all_at_once: bool
    interval: float  # seconds
    window_opened: float | None = None
    cycled: int = 0  # agents with a first cycle
    parked: list[asyncio.subprocess.Process] = field(default_factory=list)
    parking: set[asyncio.Future] = field(default_factory=set)
    parked_total: int = 0
    resuming: asyncio.Future | None = None

    def cycle_ended(self, run: AgentRun, process: asyncio.subprocess.Process, logged: float, health: Path) -> bool:
        """Note ``run``'s latest cycle (logged at ``logged``, wall clock); True when the agent has
        done its share. ``health`` is the agent's health file, written when it goes to sleep."""
        if not self.all_at_once:
            return len(run.cycles) >= self.cycles
        if len(run.cycles) == 1:
            self.cycled += 1
            if self.cycled == self.agents:
                self._open_window()
            else:
                self.parking.add(asyncio.ensure_future(self._park_when_asleep(process, logged, health)))
        return self.window_opened is not None and len(self.in_window(run)) >= self.cycles

    async def _park_when_asleep(self, process: asyncio.subprocess.Process, logged: float, health: Path) -> None:
        """SIGSTOP ``process`` once it has written its health file after the cycle logged at
        ``logged``: after "cycle finished" the agent still pings the database (a 10 s timeout
        that would expire while parked), then writes the file and sleeps, holding nothing."""
        deadline = time.monotonic() + self.interval / 2
        while time.monotonic() < deadline and self.window_opened is None and process.returncode is None:
            try:
                if health.stat().st_mtime >= logged:
                    process.send_signal(signal.SIGSTOP)
                    self.parked.append(process)
                    self.parked_total += 1
                    return
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.02)

    def _open_window(self) -> None:
        self.window_opened = time.monotonic()
        self.resuming = asyncio.ensure_future(self._resume(list(self.parked)))
        self.parked.clear()

    async def _resume(self, parked: list[asyncio.subprocess.Process]) -> None:
        """SIGCONT the parked agents spread over one interval, as their schedules' jitter spreads
        a real fleet: continued all at once, agents at nice 10 on 2 busy cores wait so long for
        the CPU that their own 10 s database ping times out ("database unreachable")."""
        for process in parked:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
            await asyncio.sleep(self.interval / max(len(parked), 1))

    def in_window(self, run: AgentRun) -> list[float]:
        if self.window_opened is None:
            return []
        return [d for d, t in zip(run.cycles[1:], run.ended[1:]) if t > self.window_opened]


@dataclass
class FleetRun:
    agents: list[AgentRun]
    pace: Pace
    seconds: float  # first start to last exit
    ended: float  # time.monotonic() at the last exit
    peak_connections: int
    peak_alive: int
    peak_rss: int  # bytes, all agents together
    server_cpu: float | None = None  # CPU seconds PostgreSQL spent over the run

    @property
    def cycles(self) -> int:
        return sum(len(a.cycles) for a in self.agents)

    def first_cycles(self) -> list[float]:
        return [a.cycles[0] for a in self.agents if a.cycles]

    def later_cycles(self) -> list[float]:
        """The cycles of the measured window (every agent alive, each past its first cycle);
        without one, every cycle after each agent's first."""
        if self.pace.window_opened is None:
            return [c for a in self.agents for c in a.cycles[1:]]
        return [c for a in self.agents for c in self.pace.in_window(a)]

    def cycles_per_second(self) -> float:
        if self.pace.window_opened is None:
            return self.cycles / self.seconds
        return len(self.later_cycles()) / (self.ended - self.pace.window_opened)

    def conflicts(self) -> list[str]:
        return [f"{a.host.hostname}: {line}" for a in self.agents for line in a.conflicts]

    def errors(self) -> list[str]:
        return [f"{a.host.hostname}: {line}" for a in self.agents for line in a.errors]

    def failed_modules(self) -> list[str]:
        return [line for line in self.errors() if '"module finished"' in line]

    def failed_agents(self) -> list[str]:
        return [f"{a.host.hostname} (exit {a.returncode}, {len(a.cycles)} cycles)" for a in self.agents
                if a.returncode != 0]


def agent_command(lab: FleetLab, host: FleetHost, dsn: str, *, interval: str, pool_size: int) -> list[str]:
    off = [f"--no-module-{name}" for name in OFF_MODULES]
    return lab.namespace(host).command(
        sys.executable, "-m", "situation", "--log-format", "json", "run", "--interval", interval, "--no-migration",
        "--db", dsn, "--agent-id", host.agent_id, "--pool-size", str(pool_size), *off, "--ignore-missing-deps",
        "--reverse-lookup-timeout", "200ms", "--discovery-exclude", str(SUBNET), "--ping-timeout", "100ms")


def agent_environment(lab: FleetLab, host: FleetHost) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(lab.workdir),
            "SITUATION_HOST_ROOT": str(lab.root(host)), "SITUATION_STATE_DIR": str(lab.state(host)),
            "SITUATION_TEST_HOME_NETNS": str(home_namespace())}


def take_line(run: AgentRun, line: str) -> bool:
    """Record one log line of ``run``; True when it ends a cycle."""
    if CONFLICT_ERRORS.search(line):
        run.conflicts.append(line)
    try:
        entry = json.loads(line)
    except ValueError:
        run.errors.append(line)
        return False
    if entry.get("level") in ("error", "critical"):
        run.errors.append(line)
    if entry.get("event") == "cycle finished":
        run.cycles.append(entry["duration_ms"] / 1000)
        run.ended.append(time.monotonic())
        return True
    return False


def logged_at(line: str) -> float:
    """``line``'s JSON timestamp as a Unix time (now when it has none)."""
    try:
        return datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return time.time()


@dataclass
class Gates:
    starting: asyncio.Semaphore  # agents between their start and their first log line
    alive: asyncio.Semaphore
    live: dict[int, AgentRun] = field(default_factory=dict)  # pid → its run


async def run_agent(lab: FleetLab, host: FleetHost, dsn: str, *, pace: Pace, gates: Gates, interval: str,
                    pool_size: int, timeout: float) -> AgentRun:
    """One agent daemon until ``pace`` says it is done (then SIGTERM), or ``timeout``."""
    run = AgentRun(host)
    async with gates.alive:
        await gates.starting.acquire()
        starting = True
        process = await asyncio.create_subprocess_exec(
            *agent_command(lab, host, dsn, interval=interval, pool_size=pool_size),
            env=agent_environment(lab, host), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, limit=2**20, preexec_fn=_lower_priority)
        gates.live[process.pid] = run
        lab.log(host).parent.mkdir(exist_ok=True)
        try:
            async with asyncio.timeout(timeout):
                with lab.log(host).open("wb", buffering=0) as log:
                    while line := await process.stderr.readline():
                        log.write(line)
                        if starting:
                            gates.starting.release()
                            starting = False
                        text = line.decode(errors="replace").rstrip("\n")
                        if take_line(run, text) and pace.cycle_ended(run, process, logged_at(text),
                                                                     lab.state(host) / HEALTH_FILE):
                            process.send_signal(signal.SIGTERM)
                run.returncode = await process.wait()
        except TimeoutError:
            run.errors.append(f"not done within {timeout:g} s ({len(run.cycles)} cycles): killed")
            process.kill()
            run.returncode = await process.wait()
        finally:
            if starting:
                gates.starting.release()
            gates.live.pop(process.pid, None)
            if process.returncode is None:  # interrupted: no agent outlives the bench
                process.kill()
    return run


def _lower_priority() -> None:
    # Agents yield the CPU to PostgreSQL (which on a real fleet has a machine of its own) and
    # to whatever else shares this one.
    os.nice(AGENT_NICENESS)


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def server_cpu_seconds(postmaster: int) -> float:
    """CPU time of a PostgreSQL server so far: the postmaster, its reaped and its live children."""
    import psutil

    try:
        server = psutil.Process(postmaster)
        times = server.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in server.children():
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass  # reaped meanwhile: counted in children_* from the next sample on
        return total
    except psutil.NoSuchProcess:
        return float("nan")


async def run_fleet(lab: FleetLab, dsn: str, *, cycles: int = 3, interval: str = "5s", max_alive: int | None = None,
                    wave: int = 25, pool_size: int = 4, timeout: float = 1800,
                    server_pid: int | None = None) -> FleetRun:
    """Every host's agent, ``wave`` starting at once and at most ``max_alive`` running at once;
    ``server_pid``, the postmaster's, to measure the server's CPU time."""
    import asyncpg

    count = len(lab.hosts)
    max_alive = min(max_alive or count, count)
    pace = Pace(count, cycles, all_at_once=max_alive == count, interval=parse_duration(interval))
    gates = Gates(asyncio.Semaphore(wave), asyncio.Semaphore(max_alive))
    peaks = {"connections": 0, "alive": 0, "rss": 0}
    sampler = await asyncpg.connect(dsn)
    cpu_before = server_cpu_seconds(server_pid) if server_pid else None
    began = time.monotonic()
    agents = asyncio.gather(*(
        run_agent(lab, host, dsn, pace=pace, gates=gates, interval=interval, pool_size=pool_size, timeout=timeout)
        for host in lab.hosts))
    try:
        while not agents.done():
            peaks["connections"] = max(peaks["connections"], await sampler.fetchval(CONNECTIONS))
            peaks["alive"] = max(peaks["alive"], len(gates.live))
            peaks["rss"] = max(peaks["rss"], sum(_rss(pid) for pid in list(gates.live)))
            await asyncio.wait({agents}, timeout=0.1)
        results = await agents
    finally:
        if not agents.done():
            agents.cancel()
        await sampler.close()
    ended = time.monotonic()
    server_cpu = server_cpu_seconds(server_pid) - cpu_before if server_pid else None
    return FleetRun(results, pace, ended - began, ended, peaks["connections"], peaks["alive"], peaks["rss"],
                    server_cpu)


# -- what the database holds --------------------------------------------------------------


async def count_duplicates(dsn: str) -> dict[str, int]:
    """Rows beyond the first under every key of ``DUPLICATES``."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return {name: int(await connection.fetchval(sql)) for name, sql in DUPLICATES.items()}
    finally:
        await connection.close()


async def machines_per_host(dsn: str, hosts: list[FleetHost]) -> dict[str, int]:
    """Fleet hosts without exactly one machine row: host name → rows (0 when missing)."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        counts = {r["hostname"]: r["count"] for r in await connection.fetch(
            "SELECT hostname, count(*) FROM situation.machines WHERE hostname = ANY($1::text[]) GROUP BY hostname",
            [h.hostname for h in hosts])}
    finally:
        await connection.close()
    return {h.hostname: counts.get(h.hostname, 0) for h in hosts if counts.get(h.hostname, 0) != 1}


def server_conflicts(log_text: str) -> dict[str, int]:
    """Deadlocks, serialization failures and unique violations the server logged (retried or not)."""
    patterns = {"deadlock detected": "deadlock", "could not serialize": "serialization",
                "duplicate key value violates unique constraint": "unique violation"}
    found = {name: 0 for name in patterns.values()}
    for line in log_text.splitlines():
        for text, name in patterns.items():
            if text in line and "ERROR:" in line:
                found[name] += 1
    return found


# -- the bench ----------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which ``fraction`` of them lie)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def default_max_alive(count: int) -> int:
    available = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemAvailable:")), 0)
    return max(1, min(count, available * 6 // 10 // AGENT_RSS_ESTIMATE))


def start_cluster(workdir: Path, max_connections: int, keep: bool = False):
    from support.cluster import Cluster

    for key in [k for k in os.environ if k.startswith("PG")]:
        del os.environ[key]  # our own cluster: nothing of the caller's libpq setup applies
    cluster = Cluster(workdir / "pg", tls=False, name="fleet", keep=keep).start()
    try:
        cluster.psql(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
        cluster.restart()
        cluster.create_database("fleet")
        migrate(cluster.superuser_dsn("fleet"))
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def migrate(dsn: str) -> None:
    """``situation migrate`` once, as an owner would before the fleet starts (agents run --no-migration)."""
    result = subprocess.run([sys.executable, "-m", "situation", "migrate", "--db", dsn], capture_output=True,
                            text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"situation migrate failed: {result.stderr.strip()}")


def print_report(run: FleetRun, duplicates: dict[str, int], per_host: dict[str, int], server: dict[str, int]) -> None:
    first, later = run.first_cycles(), run.later_cycles()
    window = (f"measured window: {run.ended - run.pace.window_opened:.1f} s, from the moment every agent had "
              f"finished its first cycle ({run.pace.parked_total} parked meanwhile)" if run.pace.window_opened is not None
              else "no moment with every agent alive: the whole run")
    print(f"agents: {len(run.agents)} (peak alive {run.peak_alive}), cycles: {run.cycles} in {run.seconds:.1f} s; "
          f"{window}: {run.cycles_per_second():.2f} cycles/s")
    for label, values in (("first cycle", first), ("later cycles", later)):
        if values:
            print(f"  {label:<13} p50 {percentile(values, 0.5) * 1000:7.0f} ms   p99 {percentile(values, 0.99) * 1000:7.0f} ms"
                  f"   max {max(values) * 1000:7.0f} ms   mean {statistics.fmean(values) * 1000:7.0f} ms  (n={len(values)})")
    print(f"server connections, peak: {run.peak_connections}; agents' RSS, peak total: {run.peak_rss / 2**30:.2f} GiB "
          f"({run.peak_rss / max(run.peak_alive, 1) / 2**20:.0f} MiB per live agent)")
    if run.server_cpu is not None:
        print(f"PostgreSQL CPU over the run: {run.server_cpu:.1f} s, {run.server_cpu / max(run.cycles, 1) * 1000:.0f} ms "
              f"per agent cycle ({run.cycles} cycles, the first ones included)")
    print("duplicate rows per key (must be 0):")
    for name, count in duplicates.items():
        print(f"  {count:>5}  {name}{'   <-- DUPLICATES' if count else ''}")
    print(f"fleet hosts without exactly one machine row: {len(per_host)}"
          + (f" {dict(list(per_host.items())[:10])}" if per_host else ""))
    conflicts, errors = run.conflicts(), run.errors()
    print(f"deadlock / serialization / unique-violation lines in agent logs (must be 0): {len(conflicts)}")
    for line in conflicts[:10]:
        print(f"  {line[:300]}")
    print(f"other error lines in agent logs: {len(errors)}, of which failed modules: {len(run.failed_modules())}; "
          f"agents that did not exit 0: {len(run.failed_agents())}")
    for line in (errors + run.failed_agents())[:10]:
        print(f"  {line[:300]}")
    print("in the server log, retried or not: " + ", ".join(f"{name} {count}" for name, count in server.items()))


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # unwinds through the finally blocks: agents killed, namespaces and cluster removed


def main() -> int:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50, help="number of agents (default 50)")
    parser.add_argument("--large", action="store_true", help="200 agents")
    parser.add_argument("--cycles", type=int, default=3,
                        help="cycles per agent in the measured window, after its first (default 3)")
    parser.add_argument("--interval", default="5s", help="the agents' --interval (default 5s)")
    parser.add_argument("--max-alive", type=int, help="most agents running at once (default: all that 60%% "
                                                      "of the available memory holds)")
    parser.add_argument("--wave", type=int, default=25, help="most agents starting at once (default 25)")
    parser.add_argument("--pool-size", type=int, default=4, help="the agents' --pool-size (default 4)")
    parser.add_argument("--neighbours", type=int, default=40, help="shared lab neighbours (default 40)")
    parser.add_argument("--peers", type=int, default=10, help="fleet hosts also in the neighbour table (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (host roots, cluster)")
    parser.add_argument("--check", action="store_true", help="exit 1 on a duplicate, surfaced error or failed agent")
    args = parser.parse_args()
    count = 200 if args.large else args.agents
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("bench/fleet.py needs root and iproute2 (it builds a network namespace)", file=sys.stderr)
        return 2
    max_alive = args.max_alive or default_max_alive(count)
    workdir = Path(tempfile.mkdtemp(prefix="sit-fleet-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    cluster = start_cluster(workdir, max_connections=count * args.pool_size + 20, keep=args.keep)
    lab = None
    try:
        lab = make_lab(count, workdir, neighbour_count=args.neighbours, peers=args.peers)
        print(f"{count} agents, {args.cycles} cycles each after the first, --interval {args.interval}, --pool-size "
              f"{args.pool_size}, at most {args.wave} starting and {max_alive} alive at once; {args.neighbours} shared "
              f"neighbours, and {len(lab.peers)} fleet hosts also in the others' neighbour table", flush=True)
        dsn = cluster.superuser_dsn("fleet")
        run = asyncio.run(run_fleet(lab, dsn, cycles=args.cycles, interval=args.interval, max_alive=max_alive,
                                    wave=args.wave, pool_size=args.pool_size, server_pid=cluster.postmaster_pid()))
        duplicates = asyncio.run(count_duplicates(dsn))
        per_host = asyncio.run(machines_per_host(dsn, lab.hosts))
        server = server_conflicts(cluster.log_path.read_text(errors="replace"))
    except KeyboardInterrupt:
        print("interrupted: agents killed, lab and cluster removed", file=sys.stderr)
        return 130
    finally:
        if lab is not None:
            lab.destroy()
        cluster.destroy()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(run, duplicates, per_host, server)
    bad = any(duplicates.values()) or per_host or run.conflicts() or run.failed_modules() or run.failed_agents()
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
