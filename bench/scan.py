"""Time of the agent's TCP port scan against ``nmap -sS`` and ``nmap -sT``, in a namespace lab.

Run it from the repository, as root (it builds network namespaces)::

    .venv/bin/python bench/scan.py [--repeat N] [--timeout SECONDS] [--rate PPS] [--check]

The lab (tests/support/lab.py: a scanner namespace with a bridge, one host
namespace per host, nothing in the initial namespace): 10 hosts on
198.51.100.0/24, each listening on 4 TCP ports of nmap's top 1000 (a
different set per host); the last one drops every incoming TCP segment
(nftables), so its 1000 ports are filtered. Every tool scans the top-1000
ports of the 10 hosts from the scanner namespace, behind the test guard,
``--repeat`` times (default 3) in turn. Before every run the scanner's
neighbour table is filled with the 10 hosts, as the agent finds it after
``ping`` and ``arp`` (nmap does its own ARP discovery anyway).

- ``agent syn``: ``situation.net.tcp.tcp_scan`` (what tcp-scan runs) as root:
  the SYN scan, ``--tcp-scan-timeout``'s default of 200 ms, at ``--rate``.
- ``agent connect``: the same as user nobody without any capability: the
  connect scan (512 connects in flight).
- ``agent syn @2000``: the SYN scan at the agent's default ``--discovery-rate``
  of 2000 packets/s, for information: 10,000 probes cannot take less than 5 s.
- ``nmap -sS`` and ``nmap -sT``: ``-T4 -n -p <the same ports> -oG -``, as root.

Printed per tool: the minimum and median wall time of the whole process
(start-up included), the scan time inside the agent, and the open ports
found against the ports really listening. Targets (issue 9): the SYN path no
slower than ``nmap -sS``; the connect path no more than 2× ``nmap -sT``; both
find the same open ports as nmap. Figures are information: exit 0 whatever
they say, unless ``--check`` (exit 1 when a target is missed). nmap is
installed with apt-get when missing.
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
sys.path.insert(0, str(REPO))

from support.lab import Lab, make_hosts  # noqa: E402
from support.listeners import filter_tcp, start_listeners, stop  # noqa: E402
from support.netns import netns_available  # noqa: E402

from situation.data.tcp_ports import TOP_1000  # noqa: E402

NETWORK, SCANNER = "198.51.100.0/24", "198.51.100.1/24"
HOSTS, OPEN_PER_HOST = 10, 4
FILTERED = HOSTS - 1


def listening_ports(index: int) -> list[int]:
    """Four ports of the top 1000 per host, spread over the list, different on each host."""
    return [TOP_1000[(index * 37 + k * 211) % len(TOP_1000)] for k in range(OPEN_PER_HOST)]


# -- the agent's side, run inside the scanner namespace -----------------------------------


def driver(addresses: str, method: str, timeout: float, rate: float) -> None:
    import ipaddress

    import uvloop

    from situation.net.rate import RateLimiter
    from situation.net.tcp import CONNECT_IN_FLIGHT, raise_open_file_limit, tcp_scan

    targets = [ipaddress.ip_address(a) for a in addresses.split(",")]

    async def main() -> dict:
        raise_open_file_limit(CONNECT_IN_FLIGHT * 4)
        started = time.perf_counter()
        result = await tcp_scan(targets, TOP_1000, timeout=timeout, rate=RateLimiter(rate), method=method)
        return {"open": sorted(f"{a}:{p}" for a, p in result.open), "seconds": time.perf_counter() - started,
                "method": result.method, "sent": result.sent, "silent": len(result.silent)}

    print(json.dumps(uvloop.run(main())))


# -- the bench ----------------------------------------------------------------------------


def ensure_nmap() -> None:
    if not shutil.which("nmap"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nmap"], check=True)


def fill_neighbour_table(lab: Lab) -> None:
    subprocess.run(["ip", "-n", lab.name, "neigh", "flush", "all"], check=True)
    for host in lab.hosts:
        subprocess.run(["ip", "-n", lab.name, "neigh", "replace", host.ip, "lladdr", host.mac, "dev", "br0",
                        "nud", "reachable"], check=True)


def parse_nmap(output: str) -> set[str]:
    """``address:port`` of every open port in nmap's grepable output."""
    found = set()
    for line in output.splitlines():
        if not line.startswith("Host:") or "Ports:" not in line:
            continue
        address = line.split()[1]
        for entry in line.split("Ports:", 1)[1].split("\t", 1)[0].split(","):
            fields = entry.strip().split("/")
            if len(fields) > 2 and fields[1] == "open":
                found.add(f"{address}:{fields[0]}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=0.2, help="the agent's --tcp-scan-timeout, seconds")
    parser.add_argument("--rate", type=float, default=100000.0, help="the agent's --discovery-rate, packets/s")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--driver", nargs=2, metavar=("ADDRESSES", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(*args.driver, args.timeout, args.rate)
        return 0
    if not netns_available():
        print("bench/scan.py needs root and iproute2 (it builds network namespaces)", file=sys.stderr)
        return 2
    ensure_nmap()
    lab = Lab(scanner_address=SCANNER, hosts=make_hosts(NETWORK, HOSTS)).create()
    servers = []
    try:
        servers = [start_listeners(host.namespace, listening_ports(i)) for i, host in enumerate(lab.hosts)]
        filter_tcp(lab.hosts[FILTERED].namespace)
        results = measure(lab, args)
    finally:
        stop(servers)
        lab.destroy()
    truth = {f"{h.ip}:{p}" for i, h in enumerate(lab.hosts) if i != FILTERED for p in listening_ports(i)}
    report(results, truth, args)
    failures = verdict(results)
    print("\ntargets:", "all met" if not failures else "; ".join(failures))
    return 1 if failures and args.check else 0


def measure(lab: Lab, args) -> dict[str, dict]:
    addresses = ",".join(host.ip for host in lab.hosts)
    ports = ",".join(map(str, TOP_1000))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}

    def me(method: str, rate: float) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--driver", addresses, method,
                "--timeout", str(args.timeout), "--rate", str(rate)]

    nmap = ["nmap", "-T4", "-n", "-p", ports, "-oG", "-", *addresses.split(",")]
    tools = {
        "agent syn": me("syn", args.rate),
        "nmap -sS": [*nmap[:1], "-sS", *nmap[1:]],
        "agent connect": lab.unprivileged(*me("connect", args.rate)),
        "nmap -sT": [*nmap[:1], "-sT", *nmap[1:]],
        "agent syn @2000": me("syn", 2000.0),
    }
    results = {name: {"times": [], "scans": [], "found": set()} for name in tools}
    for _ in range(args.repeat):
        for name, argv in tools.items():
            fill_neighbour_table(lab)
            started = time.perf_counter()
            result = lab.run(*argv, env=env, timeout=900)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                raise RuntimeError(f"{name}: {result.stderr.strip()}")
            entry = results[name]
            entry["times"].append(seconds)
            if name.startswith("agent"):
                answer = json.loads(result.stdout)
                entry["scans"].append(answer["seconds"])
                entry["found"] = set(answer["open"])
            else:
                entry["found"] = parse_nmap(result.stdout)
    return results


def report(results: dict, truth: set[str], args) -> None:
    print(f"\ntop-1000 TCP ports of {HOSTS} hosts ({OPEN_PER_HOST} open each, 1 filtered), "
          f"agent timeout {args.timeout * 1000:.0f} ms, rate {args.rate:.0f} pps, repeat {args.repeat}")
    print(f"  {'tool':<16} {'min':>8} {'median':>8} {'scan min':>9} {'open':>5}  missing / extra")
    for name, entry in results.items():
        scan = f"{min(entry['scans']):.2f} s" if entry["scans"] else "—"
        missing, extra = sorted(truth - entry["found"]), sorted(entry["found"] - truth)
        print(f"  {name:<16} {min(entry['times']):>6.2f} s {statistics.median(entry['times']):>6.2f} s "
              f"{scan:>9} {len(entry['found']):>5}  {missing or '-'} / {extra or '-'}")


def verdict(results: dict) -> list[str]:
    failures = []
    syn, connect, nmap_ss, nmap_st = (results[k] for k in ("agent syn", "agent connect", "nmap -sS", "nmap -sT"))
    if min(syn["times"]) > min(nmap_ss["times"]):
        failures.append("agent syn slower than nmap -sS")
    if min(connect["times"]) > 2 * min(nmap_st["times"]):
        failures.append("agent connect slower than 2x nmap -sT")
    if syn["found"] != nmap_ss["found"]:
        failures.append("agent syn and nmap -sS found different open ports")
    if connect["found"] != nmap_st["found"]:
        failures.append("agent connect and nmap -sT found different open ports")
    return failures


if __name__ == "__main__":
    sys.exit(main())
