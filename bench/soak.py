"""Memory and open file descriptors of the daemon over hundreds of cycles, in a namespace lab.

Run it from the repository, as root (it builds network namespaces)::

    .venv/bin/python bench/soak.py [--cycles 300] [--every 50] [--hosts 5] [--postgres] [--metrics]
                                   [--tracemalloc FILE] [--check]

The lab (tests/support/lab.py: a scanner namespace with a bridge, ``--hosts`` host
namespaces, nothing in the initial namespace) has one host serving TLS on port
443, so every module has something to do each cycle: the sweep finds the hosts,
tcp-scan their ports, tls, ja4 and saas the TLS endpoint. The daemon runs in the
scanner namespace behind the test guard: ``situation run --interval 1s`` on an
SQLite file (``--postgres``: a throwaway cluster over its Unix socket; ``--metrics``:
with ``--metrics-address 127.0.0.1:9464``, scraped at every report), until it has
finished ``--cycles`` cycles (default 300; about 25 minutes), then SIGTERM.

After cycle 1 and every ``--every`` cycles (default 50) it prints, read from
/proc/<pid>: RSS (VmRSS) while the daemon sleeps until its next cycle, the peak so far
(VmHWM), open file descriptors, threads, and the median cycle time since the last
report. Targets (issue 12): RSS ≤ 60 MB at every report; growth from the report
after cycle 1 to the last ≤ 5 MB; the same number of fds at every report. Figures
are information: exit 0 whatever they say, unless ``--check`` (exit 1 when a target
is missed).

``--tracemalloc FILE`` runs the daemon under tracemalloc (10 frames): at the
report after cycle 1 a baseline snapshot is taken, and at exit the 30 largest
allocation sites by growth since then are written to FILE. RSS figures of such a
run are inflated by tracemalloc itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.lab import Lab, make_hosts  # noqa: E402
from support.netns import netns_available  # noqa: E402

RSS_TARGET_MB, GROWTH_TARGET_MB = 60.0, 5.0
FRAMES = 10  # tracemalloc's traceback depth: more makes every cycle much slower
METRICS_PORT = 9464
IDLE_AFTER = 0.3  # seconds after "cycle finished": the daemon is asleep by then, well before the next cycle


# -- the daemon under tracemalloc (run inside the lab) --------------------------------------


def traced_daemon(output: str, argv: list[str]) -> None:
    """``situation`` with ``argv`` in this process; SIGUSR1 takes the baseline snapshot, exit writes the diff."""
    import atexit
    import tracemalloc

    tracemalloc.start(FRAMES)
    baseline: list[tracemalloc.Snapshot] = []
    signal.signal(signal.SIGUSR1, lambda *_: baseline.append(tracemalloc.take_snapshot()))

    def write_growth() -> None:
        if not baseline:
            return
        ignored = [tracemalloc.Filter(False, tracemalloc.__file__)]
        now = tracemalloc.take_snapshot().filter_traces(ignored)
        stats = now.compare_to(baseline[0].filter_traces(ignored), "traceback")
        with open(output, "w") as out:
            total = sum(s.size_diff for s in stats)
            out.write(f"traced growth since the baseline: {total / 2**20:+.2f} MB\n")
            for stat in stats[:30]:
                out.write(f"\n{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks\n")
                out.write("".join(f"  {line}\n" for line in stat.traceback.format(limit=8)))

    atexit.register(write_growth)
    from situation.cli import main

    main(argv)


# -- measuring ------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            fields[name] = int(rest.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


class LogFollower:
    """The daemon's JSON log: cycles finished, their durations, error lines."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.cycle_ms: list[int] = []
        self.errors: list[str] = []

    def poll(self) -> None:
        with self.path.open() as log:
            log.seek(self.offset)
            for line in iter(log.readline, ""):
                if not line.endswith("\n"):
                    break  # half-written: read it again next time
                self.offset += len(line.encode())
                self._take(line)

    def _take(self, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            self.errors.append(line.strip())
            return
        if record.get("event") == "cycle finished":
            self.cycle_ms.append(record.get("duration_ms", 0))
        elif record.get("level") in ("error", "critical"):
            self.errors.append(line.strip())


def resident_by_mapping(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """The mappings holding the most resident memory, in MB: [heap], anonymous, each library."""
    sizes: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            name = Path(fields[5]).name if len(fields) > 5 else "[anonymous]"
        elif fields[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(fields[1])
    ranked = sorted(sizes.items(), key=lambda item: -item[1])[:top]
    return [(mapping, kb / 1024) for mapping, kb in ranked]


def scrape(lab: Lab, env: dict[str, str]) -> str:
    code = ("import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())")
    result = lab.run(sys.executable, "-c", code, env=env, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"scrape failed: {result.stderr.strip()}")
    return result.stdout


# -- the run --------------------------------------------------------------------------------


def database(args, workdir: Path):
    """(DSN, cleanup) for the daemon."""
    if not args.postgres:
        return str(workdir / "soak.sqlite"), lambda: None
    from support.cluster import Cluster

    cluster = Cluster(Path(tempfile.mkdtemp(prefix="sit-pg-soak-", dir="/tmp")), tls=False, name="soak").start()
    cluster.create_database("soak")
    return cluster.superuser_dsn("soak"), cluster.destroy


def start_tls_server(lab: Lab, workdir: Path) -> subprocess.Popen:
    from support.tls_servers import make_certificate, serve

    host = lab.hosts[0]
    cert, key = make_certificate(workdir, "soak", dns_names=("soak.example",), ip_addresses=(host.ip,))
    return serve(host.namespace, cert, key, (443,))


def daemon_argv(args, dsn: str) -> list[str]:
    argv = ["--log-format", "json", "run", "--interval", "1s", "--db", dsn, *args.run_args]
    if args.metrics:
        argv += ["--metrics-address", f"127.0.0.1:{METRICS_PORT}"]
    if args.tracemalloc:
        return [sys.executable, str(Path(__file__).resolve()), "--traced", args.tracemalloc, "--", *argv]
    return [sys.executable, "-m", "situation", *argv]


def soak(args) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="situation-soak-"))
    lab = Lab(hosts=make_hosts("198.51.100.0/24", args.hosts, first=10)).create()
    cleanups = [lab.destroy]
    try:
        server = start_tls_server(lab, workdir)
        cleanups.insert(0, lambda: (server.kill(), server.wait()))
        dsn, drop = database(args, workdir)
        cleanups.insert(0, drop)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": str(workdir),
               "SITUATION_STATE_DIR": str(workdir / "state"),
               # allocator settings to compare, passed on as given
               **{k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "PYTHONMALLOC"))}}
        log_path = workdir / "agent.log"
        with log_path.open("w") as stderr:
            process = lab.popen(*daemon_argv(args, dsn), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            reports = follow(process, LogFollower(log_path), lab, env, args)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=300 if args.tracemalloc else 30)  # the snapshot takes a while
            except subprocess.TimeoutExpired:
                process.kill()
                status = "killed"
            if status != 0:
                print(f"the daemon did not stop cleanly ({status}); its log: {log_path}", file=sys.stderr)
        if status == 0:
            shutil.rmtree(workdir, ignore_errors=True)  # kept, with the log, when something went wrong
        return reports
    finally:
        for cleanup in cleanups:
            cleanup()


def follow(process: subprocess.Popen, log: LogFollower, lab: Lab, env: dict[str, str], args) -> list[dict]:
    wanted = [1, *range(args.every, args.cycles + 1, args.every)]
    if wanted[-1] != args.cycles:
        wanted.append(args.cycles)
    reports: list[dict] = []
    started, previous = time.monotonic(), 0
    print(f"{'cycle':>6} {'elapsed':>8} {'RSS MB':>7} {'anon MB':>8} {'peak MB':>8} {'fds':>4} {'threads':>7} "
          f"{'cycle ms (median)':>18} {'errors':>6}", flush=True)
    while wanted:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited ({process.returncode}) after {len(log.cycle_ms)} cycles; "
                               f"its log: {log.path}")
        log.poll()
        if len(log.cycle_ms) < wanted[0]:
            time.sleep(0.05)
            continue
        # "cycle finished" comes before the daemon writes its health record and gives freed memory back;
        # IDLE_AFTER later it sleeps until the next cycle (--interval 1s).
        time.sleep(IDLE_AFTER)
        status = proc_status(process.pid)
        if args.tracemalloc and wanted[0] == 1:
            os.kill(process.pid, signal.SIGUSR1)
        if args.metrics:
            scrape(lab, env)
        recent = log.cycle_ms[previous:] or log.cycle_ms[-1:]
        report = {"cycle": len(log.cycle_ms), "elapsed": time.monotonic() - started,
                  "rss": status["VmRSS"] / 1024, "anon": status["RssAnon"] / 1024, "peak": status["VmHWM"] / 1024,
                  "fds": status["fds"],
                  "threads": status["Threads"], "cycle_ms": statistics.median(recent), "errors": len(log.errors)}
        reports.append(report)
        print(f"{report['cycle']:>6} {report['elapsed']:>7.0f}s {report['rss']:>7.1f} {report['anon']:>8.1f} "
              f"{report['peak']:>8.1f} "
              f"{report['fds']:>4} {report['threads']:>7} {report['cycle_ms']:>18.0f} {report['errors']:>6}",
              flush=True)
        previous = len(log.cycle_ms)
        while wanted and wanted[0] <= previous:
            wanted.pop(0)
        if not wanted:
            print("resident memory by mapping at the end, MB:",
                  ", ".join(f"{name} {mb:.1f}" for name, mb in resident_by_mapping(process.pid)))
    for line in log.errors[:5]:
        print(f"  error in the log: {line[:300]}")
    return reports


def verdict(reports: list[dict]) -> list[str]:
    failures = []
    highest = max(r["rss"] for r in reports)
    growth = reports[-1]["rss"] - reports[0]["rss"]
    fds = sorted({r["fds"] for r in reports})
    print(f"\nRSS between cycles: {reports[0]['rss']:.1f} MB after cycle 1, {reports[-1]['rss']:.1f} MB after "
          f"cycle {reports[-1]['cycle']}, highest {highest:.1f} MB (target ≤ {RSS_TARGET_MB:.0f}); "
          f"growth {growth:+.1f} MB (target ≤ {GROWTH_TARGET_MB:.0f}); peak {reports[-1]['peak']:.1f} MB")
    if len(reports) > 2:  # after the warm-up: first-cycle writes, lazy imports, caches filled
        settled = reports[1]
        print(f"growth from cycle {settled['cycle']} to {reports[-1]['cycle']}: "
              f"{reports[-1]['rss'] - settled['rss']:+.1f} MB")
    print(f"open fds: {', '.join(map(str, fds))} (target: constant)")
    if highest > RSS_TARGET_MB:
        failures.append(f"RSS {highest:.1f} MB over {RSS_TARGET_MB:.0f} MB")
    if growth > GROWTH_TARGET_MB:
        failures.append(f"RSS grew {growth:.1f} MB")
    if len(fds) > 1:
        failures.append(f"open fds changed: {fds}")
    return failures


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--traced":
        traced_daemon(sys.argv[2], sys.argv[4:])  # --traced FILE -- situation arguments
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="report every N cycles")
    parser.add_argument("--hosts", type=int, default=5, help="live hosts in the lab")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    parser.add_argument("--metrics", action="store_true", help="serve (and scrape) the Prometheus metrics")
    parser.add_argument("--tracemalloc", metavar="FILE", help="write the largest allocation growths to FILE")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("run_args", nargs="*", metavar="-- RUN-ARGS",
                        help="more `situation run` arguments, e.g. -- --no-module-dpkg")
    args = parser.parse_args()
    if args.cycles < 1 or args.every < 1 or args.hosts < 1:
        parser.error("--cycles, --every and --hosts must be at least 1")
    if not netns_available():
        print("bench/soak.py needs root and iproute2 (it builds network namespaces)", file=sys.stderr)
        return 2
    failures = verdict(soak(args))
    print("targets:", "all met" if not failures else "; ".join(failures))
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
