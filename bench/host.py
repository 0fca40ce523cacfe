"""Time of collecting every host module together, on this machine.

Run it from the repository::

    .venv/bin/python bench/host.py [--repeat N] [--check]

Calls the pure, blocking collection entry point of every host module on
``HostRoot()`` (the live system), one after the other, as one agent cycle
would, without writing anything anywhere:

=============  ====================================
host-basic     ``host_basic.collect``
host-cpu       ``host_cpu.collect``
host-disk      ``host_disk.collect_disks``
host-gpu       ``host_gpu.collect_gpus`` (``Skip`` when there is no DRM or no pci.ids)
host-network   ``host_network.collect_network``
chassis        ``chassis.detect_from_files``
local-users    ``local_users.collect``
fingerprint    ``fingerprint.collect_identity``
dpkg           ``packages.dpkg.collect`` (status file and every ``info/*.list``)
=============  ====================================

Everything is passive reading of /proc, /sys, /etc and /var/lib/dpkg (plus psutil's address
list for host-network). Left out, because they are not reading: the
``lsb_release`` command host-basic may run when /etc/lsb-release is missing,
and chassis' question to hostnamed over D-Bus.

netstat is measured apart, in a network namespace the script creates (its
sockets are then only the bench's): a helper process holds ``--sockets``
sockets (default 2,000: a quarter TCP listeners, a quarter bound UDP sockets,
half the two ends of loopback TCP connections), and one round compares
``ss -tunap`` (the floor: the same /proc/net and /proc/*/fd walk, in C) with
netstat's collection (``sockets.read_sockets`` plus ``netstat.plan_rows``) and
with its whole ``run`` into a fresh SQLite store (host rows written first,
untimed), counting the store calls per table. Target: collection within 2x
``ss -tunap``, and one statement per table. ``--no-netstat`` leaves it out.

One warm-up round (reported as "first": cold caches, first imports inside the
modules) is followed by ``--repeat`` rounds (default 20); min and median are
over those. The baseline, measured in the same rounds: reading
/proc/cpuinfo, /etc/os-release and /proc/mounts once each, the least any
collection of this host can cost (the floor); the ratio total/floor says how
much the modules add on top of the kernel producing those files.

Target: a whole round well under 1 s (median), and dpkg alone under 300 ms
(median). Figures are information: the script exits 0 either way, unless
``--check`` is given (exit 1 at or above a target). Peak RSS of the process is
printed at the end.

After the rounds, the whole dpkg module (read, link, write) runs twice on a
temporary SQLite store with one application per running process: the first
cycle writes every package, the second (the steady state) finds them unchanged.

Last, the whole cycle's memory (root needed; ``--no-cycle`` leaves it out):
``situation run --once`` with every module, into a fresh SQLite file, twice
(the first cycle writes everything, the second is the steady state), in a
network namespace the script creates with only ``lo`` (so the discovery
modules find nothing to probe; the host modules, dpkg's 100,000 paths
included, read this machine). The figure is the process's own peak RSS
(``VmHWM`` read as it exits; a parent's rusage would also count the image it
was forked from). Floor: a process importing the agent and every module.
Target: under 100 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from situation.hostroot import HostRoot  # noqa: E402
from situation.module import Skip  # noqa: E402
from situation.modules import (  # noqa: E402
    chassis,
    fingerprint,
    host_basic,
    host_cpu,
    host_disk,
    host_gpu,
    host_network,
    local_users,
)
from situation.packages import dpkg  # noqa: E402

TARGET_SECONDS = 1.0
DPKG_TARGET_SECONDS = 0.3
FLOOR_FILES = ("/proc/cpuinfo", "/etc/os-release", "/proc/mounts")


def _basic(facts: host_basic.HostFacts) -> str:
    return f"{facts.distribution} {facts.distribution_version}, host_id {'set' if facts.host_id else 'none'}"


def _cpu(facts: host_cpu.CpuFacts) -> str:
    return f"{facts.vendor or '?'}, {facts.cores} cores"


def _network(snapshot: host_network.NetworkSnapshot) -> str:
    return f"{len(snapshot.nics)} NICs, {len(snapshot.subnets)} subnets, {len(snapshot.links)} links"


def _chassis(found: tuple[str, str] | None) -> str:
    return "no hint in files" if found is None else f"{found[0]} ({found[1]})"


def _identity(identity: fingerprint.Identity) -> str:
    return f"{len(identity.interfaces)} identifying NICs, {len(identity.listening_ports)} listening ports"


# (module, entry point, function, summary of its result)
MODULES: list[tuple[str, str, Callable[[HostRoot], Any], Callable[[Any], str]]] = [
    ("host-basic", "host_basic.collect", host_basic.collect, _basic),
    ("host-cpu", "host_cpu.collect", host_cpu.collect, _cpu),
    ("host-disk", "host_disk.collect_disks", host_disk.collect_disks, lambda disks: f"{len(disks)} disks"),
    ("host-gpu", "host_gpu.collect_gpus", host_gpu.collect_gpus, lambda gpus: f"{len(gpus)} GPUs"),
    ("host-network", "host_network.collect_network", host_network.collect_network, _network),
    ("chassis", "chassis.detect_from_files", chassis.detect_from_files, _chassis),
    ("local-users", "local_users.collect", local_users.collect, lambda users: f"{len(users)} users"),
    ("fingerprint", "fingerprint.collect_identity", fingerprint.collect_identity, _identity),
    ("dpkg", "packages.dpkg.collect", dpkg.collect,
     lambda packages: f"{len(packages)} packages, {sum(len(p.files) for p in packages)} files"),
]


def read_floor(root: HostRoot) -> int:
    size = 0
    for name in FLOOR_FILES:
        try:
            size += len(root.path(name).read_bytes())
        except OSError:
            pass
    return size


# CPU time of each module's collection (all rounds): wall time swings with the machine's load.
cpu_times: dict[str, list[float]] = {}


def one_round(root: HostRoot, times: dict[str, list[float]], results: dict[str, str]) -> None:
    started = time.perf_counter()
    read_floor(root)
    times["floor"].append(time.perf_counter() - started)
    total = 0.0
    for name, _entry, collect, summary in MODULES:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            result = summary(collect(root))
        except Skip as skipped:
            result = f"Skip: {skipped}"
        except Exception as exc:  # shown, not fatal: the other modules still count
            result = f"ERROR {type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        times[name].append(elapsed)
        cpu_times.setdefault(name, []).append(time.process_time() - cpu_started)
        results[name] = result
        total += elapsed
    times["total"].append(total)


async def dpkg_module_cycles() -> tuple[float, float, int]:
    """(first, second) wall time of the dpkg module on a fresh SQLite store, and the links made."""
    import psutil
    import structlog

    from situation.module import Context, HostMachine
    from situation.modules import dpkg as dpkg_module
    from situation.store import open_store

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as directory:
        store = await open_store(str(Path(directory) / "bench.sqlite"), "ab" * 16)
        try:
            host = (await store.upsert("machines", [{"agent": "ab" * 16, "hostname": "bench",
                                                      "distribution_family": "debian"}], key="agent")).ids[0]
            applications = []
            for process in psutil.process_iter(["exe", "pid"]):
                if process.info["exe"]:
                    applications.append({"name": process.info["exe"], "args": [], "pid": process.info["pid"],
                                         "machine_id": host})
            await store.upsert("applications", applications, key="machine_app_name_pid")
            elapsed = []
            for _ in range(2):
                ctx = Context(store=store, log=structlog.get_logger(), agent_id="ab" * 16, options={},
                              root=HostRoot(), host=HostMachine(id=host))
                started = time.perf_counter()
                await dpkg_module.run(ctx)
                elapsed.append(time.perf_counter() - started)
            linked = await store.fetch("host_applications", host)
            return elapsed[0], elapsed[1], sum(1 for a in linked if a["package_id"] is not None)
        finally:
            await store.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


# -- netstat, in a namespace of its own ------------------------------------------------------

HOLDER = r"""
import socket, sys
count = int(sys.argv[1]) // 4
held = []
for i in range(count):
    listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(4); held.append(listener)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0)); held.append(udp)
    client = socket.create_connection(listener.getsockname()); held.append(client)
    held.append(listener.accept()[0])
print("ready", flush=True)
sys.stdin.read()
"""


def run_netstat_bench(sockets: int, repeat: int) -> None:
    """Create a namespace, run this script's netstat child inside it, remove the namespace."""
    import subprocess
    import uuid

    namespace = f"sit-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", namespace, sys.executable, __file__, "--netstat-child",
                        "--sockets", str(sockets), "--repeat", str(repeat)], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CountingStore:
    """The store, with its calls counted per table (upserts) or query (named queries)."""

    def __init__(self, store):
        self._store, self.calls = store, {}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    async def upsert(self, table, rows, **kwargs):
        self._count(table)
        return await self._store.upsert(table, rows, **kwargs)

    async def fetch(self, query, *args):
        self._count(query)
        return await self._store.fetch(query, *args)


async def _netstat_round(directory: Path, record_host: bool) -> tuple[float, dict[str, int], int]:
    import structlog

    from situation.module import REGISTRY, Context, HostMachine, load_builtin_modules
    from situation.store import open_store

    load_builtin_modules()
    store = await open_store(str(directory / "netstat.sqlite"), "be" * 16)
    try:
        host = HostMachine(id=await store.fetchval("machine_by_agent", "be" * 16))
        names = ["fingerprint", "host-basic", "local-users", "host-network"] if record_host else []
        for name in names:
            ctx = Context(store=store, log=structlog.get_logger(), agent_id="be" * 16, options={}, root=HostRoot(),
                          host=host)
            await REGISTRY[name].run(ctx)
        counting = CountingStore(store)
        ctx = Context(store=counting, log=structlog.get_logger(), agent_id="be" * 16, options={}, root=HostRoot(),
                      host=host)
        started = time.perf_counter()
        await REGISTRY["netstat"].run(ctx)
        return time.perf_counter() - started, counting.calls, ctx.rows_written
    finally:
        await store.close()


def netstat_child(sockets: int, repeat: int) -> None:
    import asyncio
    import logging
    import subprocess
    import tempfile

    import structlog

    from situation.modules import netstat
    from situation.net import sockets as socket_reader

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, sockets + 512)), hard))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(sockets)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        ss_times, collect_times, ss_cpu, collect_cpu = [], [], [], []
        for _ in range(repeat + 1):
            started, children = time.perf_counter(), _children_cpu()
            listed = subprocess.run(["ss", "-tunapH"], capture_output=True, text=True, check=True).stdout
            ss_times.append(time.perf_counter() - started)
            ss_cpu.append(_children_cpu() - children)
            started, cpu_started = time.perf_counter(), time.process_time()
            listing = socket_reader.read_sockets(os.getpid())
            netstat.plan_rows(listing, [], {})
            collect_times.append(time.perf_counter() - started)
            collect_cpu.append(time.process_time() - cpu_started)
        with tempfile.TemporaryDirectory() as directory:
            first = asyncio.run(_netstat_round(Path(directory), record_host=True))
            again = asyncio.run(_netstat_round(Path(directory), record_host=False))
    finally:
        holder.stdin.close()
        holder.wait()
    ss_median, collect_median = statistics.median(ss_times[1:]), statistics.median(collect_times[1:])
    ss_cpu_median, collect_cpu_median = statistics.median(ss_cpu[1:]), statistics.median(collect_cpu[1:])
    print(f"\nnetstat in a namespace of its own, {sockets} sockets held by one process "
          f"(ss lists {len(listed.splitlines())}; netstat: {len(listing.listeners)} listeners, "
          f"{len(listing.connections)} connections), {repeat} measured rounds")
    print(f"  ss -tunap (process included)          median {ms(ss_median):>8} ms   CPU {ms(ss_cpu_median):>8} ms")
    print(f"  netstat collection (read + plan)      median {ms(collect_median):>8} ms   "
          f"CPU {ms(collect_cpu_median):>8} ms   {collect_median / ss_median:.2f}x ss "
          f"({collect_cpu_median / ss_cpu_median:.2f}x in CPU time; load average {os.getloadavg()[0]:.1f})")
    for label, (elapsed, calls, written) in (("first run into SQLite", first), ("second run (unchanged)", again)):
        per_table = ", ".join(f"{what} {count}" for what, count in sorted(calls.items()))
        print(f"  netstat run, {label:<24}  {ms(elapsed):>8} ms   {written} rows written; store calls: {per_table}")
    verdict = "PASS" if collect_median <= 2 * ss_median else "FAIL"
    print(f"netstat collection within 2x ss -tunap: {verdict}")


# -- a whole cycle's peak RSS, in a namespace of its own -------------------------------------------

RSS_TARGET_MIB = 100.0
# The measured process reads its own VmHWM as it exits: the rusage a parent gets also counts the
# pages of the image it was forked from before exec (this script's, once it has collected).
MEASURED = r"""
import atexit, os, sys
def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_HWM_FILE"], "w") as out:
        out.write(peak)
atexit.register(report)
if sys.argv[1:] == ["--imports-only"]:
    import situation.cli, situation.agent, situation.store.sqlite
    from situation.module import load_builtin_modules
    load_builtin_modules()
else:
    from situation.launch import main
    sys.argv[0] = "situation"
    main()
"""


def peak_rss_of(argv: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in MiB) of ``argv``, which runs the MEASURED program."""
    import subprocess

    with tempfile.NamedTemporaryFile() as hwm:
        started = time.perf_counter()
        result = subprocess.run(argv, env={**env, "BENCH_HWM_FILE": hwm.name}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        text = Path(hwm.name).read_text().strip()
    return result.returncode, elapsed, int(text) / 1024 if text else float("nan")


def run_cycle_rss_bench() -> tuple[float, float] | None:
    """Peak RSS of two whole ``situation run --once`` (every module, a fresh SQLite file), in a new namespace.

    The namespace holds only ``lo``, so the discovery modules find nothing to
    probe and the host modules read this machine as they would anywhere. The
    first cycle writes everything (dpkg's 100,000 paths included), the second
    is the steady state. Floor: importing the agent and every module.
    """
    import shutil
    import subprocess
    import uuid

    namespace = f"sit-rss-{uuid.uuid4().hex[:6]}"
    resolver = Path("/etc/netns") / namespace
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        resolver.mkdir(parents=True, exist_ok=True)  # no name server reachable from the namespace
        (resolver / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        with tempfile.TemporaryDirectory() as directory:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SITUATION_", "PG", "DOCKER_"))}
            env.update(HOME=directory, SITUATION_STATE_DIR=f"{directory}/state", SITUATION_AGENT_ID="e5" * 16,
                       SITUATION_LOG_LEVEL="error")
            _, _, floor = peak_rss_of([sys.executable, "-c", MEASURED, "--imports-only"], env)
            agent = ["ip", "netns", "exec", namespace, sys.executable, "-c", MEASURED,
                     "run", "--once", "--db", f"{directory}/rss.sqlite"]
            cycles = [peak_rss_of(agent, env) for _ in range(2)]
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        shutil.rmtree(resolver, ignore_errors=True)
    print(f"\nwhole cycle, `situation run --once` in a namespace of its own (every module; SQLite; peak RSS = "
          f"the process's own VmHWM)")
    print(f"  floor: importing the agent and every module   peak RSS {floor:6.1f} MiB")
    for label, (status, elapsed, peak) in zip(("first cycle (writes everything)", "second cycle (steady)"), cycles):
        print(f"  {label:<44}  peak RSS {peak:6.1f} MiB   {elapsed:5.2f} s, exit status {status}")
    worst = max(peak for _, _, peak in cycles)
    print(f"whole-cycle peak RSS {worst:.1f} MiB, target < {RSS_TARGET_MIB:.0f} MiB: "
          f"{'PASS' if worst < RSS_TARGET_MIB else 'FAIL'}")
    return cycles[0][2], cycles[1][2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, metavar="N", help="measured rounds after the warm-up (default 20)")
    parser.add_argument("--sockets", type=int, default=2000, help="sockets held open for netstat (default 2000)")
    parser.add_argument("--no-netstat", action="store_true", help="leave netstat out (it needs root: a namespace)")
    parser.add_argument("--no-cycle", action="store_true",
                        help="leave out the whole cycle's peak RSS (it needs root: a namespace)")
    parser.add_argument("--netstat-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a round's median is {TARGET_SECONDS:g} s or more, dpkg's "
                        f"{DPKG_TARGET_SECONDS * 1e3:.0f} ms or more, or a whole cycle peaks at "
                        f"{RSS_TARGET_MIB:.0f} MiB or more")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.netstat_child:
        netstat_child(args.sockets, args.repeat)
        return 0

    root = HostRoot()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    names = [name for name, *_ in MODULES]
    first: dict[str, list[float]] = {key: [] for key in [*names, "floor", "total"]}
    times: dict[str, list[float]] = {key: [] for key in [*names, "floor", "total"]}
    results: dict[str, str] = {}
    one_round(root, first, results)
    for _ in range(args.repeat):
        one_round(root, times, results)

    print(f"host collection on {socket.gethostname()} ({os.cpu_count()} CPUs), HostRoot() = the live system, "
          f"1 warm-up round + {args.repeat} measured rounds")
    print(f"  {'module':<13} {'entry point':<30} {'first ms':>9} {'min ms':>8} {'median ms':>10}  result")
    for name, entry, *_ in MODULES:
        print(f"  {name:<13} {entry:<30} {ms(first[name][0]):>9} {ms(min(times[name])):>8} "
              f"{ms(statistics.median(times[name])):>10}  {results[name]}")
    total_min, total_median = min(times["total"]), statistics.median(times["total"])
    print(f"  {'total':<13} {'(all modules, one round)':<30} {ms(first['total'][0]):>9} {ms(total_min):>8} "
          f"{ms(total_median):>10}")
    floor_min, floor_median = min(times["floor"]), statistics.median(times["floor"])
    print(f"\nbaseline (floor): read {' + '.join(FLOOR_FILES)} once: "
          f"first {ms(first['floor'][0])} ms, min {ms(floor_min)} ms, median {ms(floor_median)} ms")
    print(f"total/floor (median): {total_median / floor_median:.1f}x")
    verdict = "PASS" if total_median < TARGET_SECONDS else "FAIL"
    print(f"total (median) {ms(total_median)} ms, target < {TARGET_SECONDS * 1e3:.0f} ms: {verdict}")
    dpkg_median = statistics.median(times["dpkg"])
    dpkg_verdict = "PASS" if dpkg_median < DPKG_TARGET_SECONDS else "FAIL"
    print(f"dpkg (median) {ms(dpkg_median)} ms, target < {DPKG_TARGET_SECONDS * 1e3:.0f} ms: {dpkg_verdict} "
          f"(CPU time: median {ms(statistics.median(cpu_times['dpkg']))} ms, load average {os.getloadavg()[0]:.1f})")
    if Path("/var/lib/dpkg/status").exists():
        first_cycle, steady_cycle, linked = asyncio.run(dpkg_module_cycles())
        print(f"dpkg module on a temporary SQLite store: first cycle {ms(first_cycle)} ms, "
              f"steady cycle {ms(steady_cycle)} ms, {linked} applications linked")
    if not args.no_netstat:
        run_netstat_bench(args.sockets, min(args.repeat, 10))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nthis script's peak RSS {peak:.1f} MiB (after imports, before collecting: {rss_before:.1f} MiB)")
    cycle_peaks = None if args.no_cycle else run_cycle_rss_bench()
    rss_verdict = "FAIL" if cycle_peaks and max(cycle_peaks) >= RSS_TARGET_MIB else "PASS"
    return 1 if args.check and "FAIL" in (verdict, dpkg_verdict, rss_verdict) else 0


if __name__ == "__main__":
    sys.exit(main())
