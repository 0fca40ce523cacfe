"""Time of the agent's neighbour sweep against ``nmap -sn`` and ``fping -g``, in a namespace lab.

Run it from the repository, as root (it builds network namespaces)::

    .venv/bin/python bench/discovery.py [--repeat N] [--timeout SECONDS] [--rate PPS] [--check]

Two labs (tests/support/lab.py: a scanner namespace with a bridge, one host
namespace per live host, nothing in the initial namespace), one after the other:

- a /24 (198.51.100.0/24) with 10 live hosts, one of which drops ICMP echo;
- a /22 (10.77.0.0/22) with 50 live hosts spread over it.

In each, every tool sweeps the whole network from the scanner namespace,
behind the test guard, ``--repeat`` times (default 3) in turn; the kernel's
neighbour table of the scanner is flushed before every run, so none inherits
what another learnt. Printed per tool: the minimum and median wall time of
the whole process (start-up included) and the hosts found (the scanner's own
address left out), and for the agent also the time of the sweep itself.

- ``agent raw``: ``situation.net.sweep.sweep`` (what the ping module runs per
  network) with CAP_NET_RAW, on br0: ARP, each answer followed by an echo,
  ``--ping-timeout``'s default of 1 s, ``--discovery-rate``'s default of 2000 pps.
- ``agent datagram``: the same as user nobody without any capability, with the
  scanner's ``net.ipv4.ping_group_range`` opened to it: ICMP echo on the
  datagram socket only, no ARP.
- ``nmap -sn -n`` as root (ARP ping on a local Ethernet network).
- ``fping -g -a -q`` as root (its defaults: 3 retries, 500 ms initial timeout).

Targets (issue 8): with CAP_NET_RAW the agent takes no longer than nmap and finds
every host nmap finds; without it, no more than 2× fping's time; the agent's
peak RSS during the sweep within 20 MB of its idle RSS. Figures are information:
exit 0 whatever they say, unless ``--check`` (exit 1 when a target is missed).
nmap and fping are installed with apt-get when missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.lab import Lab, make_hosts  # noqa: E402
from support.netns import netns_available  # noqa: E402

LABS = (
    ("/24, 10 hosts, 1 drops ICMP", "198.51.100.0/24", "198.51.100.1/24", 10, (4,)),
    ("/22, 50 hosts", "10.77.0.0/22", "10.77.0.1/22", 50, ()),
)


# -- the agent's side, run inside the scanner namespace -----------------------------------


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def driver(network: str, interface: str, timeout: float, rate: float) -> None:
    """Sweep ``network`` once and print JSON: found, sweep time, idle and peak RSS."""
    import ipaddress

    import uvloop

    from situation.net.rate import RateLimiter
    from situation.net.sweep import sweep

    targets = [a for a in ipaddress.ip_network(network) if a.packed[-1] != 255]

    async def main() -> dict:
        idle = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here
        started = time.perf_counter()
        result = await sweep(targets, timeout=timeout, rate=RateLimiter(rate), interface=interface)
        elapsed = time.perf_counter() - started
        return {"found": sorted(map(str, result.found)), "seconds": elapsed, "idle_rss": idle,
                "peak_rss": _rss("VmHWM"), "kind": result.echo_kind, "arp_only": len(set(result.arp) - result.icmp)}

    print(json.dumps(uvloop.run(main())))


# -- the bench ----------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [package for package, tool in (("nmap", "nmap"), ("fping", "fping")) if not shutil.which(tool)]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True)


def timed(lab: Lab, argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    subprocess.run(["ip", "-n", lab.name, "neigh", "flush", "all"], check=True)
    started = time.perf_counter()
    result = lab.run(*argv, env=env, timeout=600)
    return time.perf_counter() - started, result


def parse_nmap(output: str) -> set[str]:
    return {line.split()[1] for line in output.splitlines() if line.startswith("Host:") and "Status: Up" in line}


def run_lab(title: str, network: str, scanner: str, count: int, drops: tuple[int, ...], args) -> dict:
    hosts = make_hosts(network, count, drops_icmp=drops, first=10)
    if count > 20:  # spread over the whole network, not packed at its start
        size = 2 ** (32 - int(network.split("/")[1]))
        hosts = make_hosts(network, size - 20, first=10)[:: (size - 20) // count][:count]
    lab = Lab(scanner_address=scanner, hosts=hosts).create()
    live = {host.ip for host in hosts}
    own = scanner.split("/")[0]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    me = [sys.executable, str(Path(__file__).resolve()), "--driver", network, "--timeout", str(args.timeout),
          "--rate", str(args.rate)]
    tools = {
        "agent raw": me,
        "agent datagram": lab.unprivileged(*me),
        "nmap -sn": ["nmap", "-sn", "-n", "-oG", "-", network],
        "fping -g": ["fping", "-g", "-a", "-q", network],
    }
    results: dict[str, dict] = {name: {"times": [], "sweeps": [], "found": set(), "rss": []} for name in tools}
    try:
        lab.set_ping_group_range(65534, 65534)
        for _ in range(args.repeat):
            for name, argv in tools.items():
                seconds, result = timed(lab, argv, env)
                entry = results[name]
                entry["times"].append(seconds)
                if name.startswith("agent"):
                    if result.returncode != 0:
                        raise RuntimeError(f"{name}: {result.stderr.strip()}")
                    report = json.loads(result.stdout)
                    found = set(report["found"])
                    entry["sweeps"].append(report["seconds"])
                    entry["rss"].append((report["idle_rss"], report["peak_rss"]))
                elif name.startswith("nmap"):
                    found = parse_nmap(result.stdout)
                else:
                    found = set(result.stdout.split())
                entry["found"] = found - {own}
    finally:
        lab.destroy()
    print(f"\n{title} ({network}, {len(live)} live, repeat {args.repeat})")
    print(f"  {'tool':<16} {'min':>8} {'median':>8} {'sweep min':>10} {'found':>6}  missing / phantom")
    for name, entry in results.items():
        sweep = f"{min(entry['sweeps']):.2f} s" if entry["sweeps"] else "—"
        missing, phantom = sorted(live - entry["found"]), sorted(entry["found"] - live)
        print(f"  {name:<16} {min(entry['times']):>6.2f} s {statistics.median(entry['times']):>6.2f} s "
              f"{sweep:>10} {len(entry['found']):>6}  {missing or '-'} / {phantom or '-'}")
    for name in ("agent raw", "agent datagram"):
        idle, peak = max(results[name]["rss"], key=lambda pair: pair[1] - pair[0])
        print(f"  {name}: idle RSS {idle / 2**20:.1f} MB, peak during the sweep {peak / 2**20:.1f} MB "
              f"(+{(peak - idle) / 2**20:.1f} MB)")
    return {name: {**entry, "live": live} for name, entry in results.items()}


def verdict(results: dict) -> list[str]:
    failures = []
    agent, nmap, datagram, fping = (results[k] for k in ("agent raw", "nmap -sn", "agent datagram", "fping -g"))
    if min(agent["times"]) > min(nmap["times"]):
        failures.append("agent raw slower than nmap -sn")
    if nmap["found"] - agent["found"]:
        failures.append("agent raw missed hosts nmap found")
    if min(datagram["times"]) > 2 * min(fping["times"]):
        failures.append("agent datagram slower than 2x fping -g")
    for name in ("agent raw", "agent datagram"):
        if any(peak - idle > 20 * 2**20 for idle, peak in results[name]["rss"]):
            failures.append(f"{name}: peak RSS more than 20 MB over idle")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1.0, help="the agent's --ping-timeout, seconds")
    parser.add_argument("--rate", type=float, default=2000.0, help="the agent's --discovery-rate, packets/s")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--driver", metavar="NETWORK", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver, "br0", args.timeout, args.rate)
        return 0
    if not netns_available():
        print("bench/discovery.py needs root and iproute2 (it builds network namespaces)", file=sys.stderr)
        return 2
    ensure_tools()
    failures = []
    for lab in LABS:
        failures += [f"{lab[0]}: {text}" for text in verdict(run_lab(*lab, args))]
    print("\ntargets:", "all met" if not failures else "; ".join(failures))
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
