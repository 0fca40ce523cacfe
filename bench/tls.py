"""Time of the tls module against one ``openssl s_client`` per endpoint run sequentially, in a namespace lab.

Run it from the repository, as root (it builds network namespaces)::

    .venv/bin/python bench/tls.py [--hosts 10] [--repeat N] [--check]

A lab (tests/support/lab.py: a scanner namespace with a bridge, one host
namespace per host, nothing in the initial namespace) of ``--hosts`` hosts,
each serving its own certificate (RSA 2048, DNS names) on port 443 with
tests/support/tls_servers.py. An SQLite database holds one TCP endpoint per
host, as tcp-scan leaves them. Then, ``--repeat`` times (default 5) in turn,
inside the scanner namespace behind the test guard:

- ``agent tls``: the tls module (``run(ctx)`` of situation/modules/tls.py,
  scope database, its defaults otherwise: 5 s timeout, 64 handshakes at a
  time), timed around the module call and as a whole process (interpreter
  start-up, imports and store opening included);
- ``s_client``: ``openssl s_client -connect <ip>:443`` once per endpoint, one
  after the other, stdin closed so that each exits after its handshake.

Printed: minimum and median times, certificates found (tls rows written or
s_client runs that printed a certificate). Target (issue 9): the tls module at
least 5x faster than the s_client loop. Figures are information: exit 0
whatever they say, unless ``--check`` (exit 1 when the target is missed).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
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
from support.tls_servers import make_certificate, serve  # noqa: E402

AGENT = "ab" * 16


def agent_driver(db: str) -> None:
    """Inside the scanner: run the tls module once, print JSON with its time and what it wrote."""
    import structlog
    import uvloop

    from situation.discovery import Discovery
    from situation.hostroot import HostRoot
    from situation.module import REGISTRY, Context, load_builtin_modules
    from situation.store import open_store

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    async def main() -> dict:
        load_builtin_modules()
        spec = REGISTRY["tls"]
        store = await open_store(db, AGENT)
        try:
            ctx = Context(store=store, log=structlog.get_logger(), agent_id=AGENT,
                          options={o.name: o.default for o in spec.options}, root=HostRoot.under("/"),
                          discovery=Discovery(scope="database"))
            started = time.perf_counter()
            await spec.run(ctx)
            seconds = time.perf_counter() - started
        finally:
            await store.close()
        return {"seconds": seconds, "written": ctx.rows_written}

    print(json.dumps(uvloop.run(main())))


def sclient_driver(addresses: list[str]) -> None:
    """Inside the scanner: one s_client per address, sequentially; prints how many showed a certificate."""
    shown = 0
    for address in addresses:
        result = subprocess.run(["openssl", "s_client", "-connect", f"{address}:443"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30)
        shown += "-----BEGIN CERTIFICATE-----" in result.stdout
    print(json.dumps({"certificates": shown}))


def prepare_database(path: Path, addresses: list[str]) -> None:
    import asyncio

    from situation.store import open_store

    async def migrate() -> None:
        await (await open_store(str(path), AGENT)).close()

    asyncio.run(migrate())
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO application_endpoints (port, protocol, addr) VALUES (443, 'tcp', ?)",
                       [(a,) for a in addresses])


def certificates_stored(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM application_endpoints WHERE tls IS NOT NULL").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--agent-driver", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--sclient-driver", nargs="+", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_driver:
        agent_driver(args.agent_driver)
        return 0
    if args.sclient_driver:
        sclient_driver(args.sclient_driver)
        return 0
    if not netns_available():
        print("bench/tls.py needs root and iproute2 (it builds network namespaces)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="situation-bench-tls-"))
    lab = Lab(hosts=make_hosts("198.51.100.0/24", args.hosts)).create()
    servers = []
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)}
    me = [sys.executable, str(Path(__file__).resolve())]
    times: dict[str, list[float]] = {"agent tls (module)": [], "agent tls (process)": [], "s_client loop": []}
    found: dict[str, int] = {}
    try:
        addresses = [host.ip for host in lab.hosts]
        for index, host in enumerate(lab.hosts):
            cert, key = make_certificate(work, f"h{index}", rsa=True, dns_names=(f"h{index}.example.test",))
            servers.append(serve(host.namespace, cert, key, (443,)))
        db = work / "bench.sqlite"
        prepare_database(db, addresses)
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = lab.run(*me, "--agent-driver", str(db), env=env, timeout=300)
            times["agent tls (process)"].append(time.perf_counter() - started)
            if result.returncode != 0:
                raise RuntimeError(f"agent: {result.stderr.strip()}")
            times["agent tls (module)"].append(json.loads(result.stdout.splitlines()[-1])["seconds"])
            found["agent tls (module)"] = found["agent tls (process)"] = certificates_stored(db)
            started = time.perf_counter()
            result = lab.run(*me, "--sclient-driver", *addresses, env=env, timeout=600)
            times["s_client loop"].append(time.perf_counter() - started)
            found["s_client loop"] = json.loads(result.stdout.splitlines()[-1])["certificates"]
    finally:
        for server in servers:
            server.kill()
            server.wait()
        lab.destroy()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"\n{args.hosts} TLS endpoints (one per lab host, port 443), repeat {args.repeat}")
    print(f"  {'tool':<22} {'min':>9} {'median':>9} {'certificates':>13}")
    for name, values in times.items():
        print(f"  {name:<22} {min(values) * 1000:>6.1f} ms {statistics.median(values) * 1000:>6.1f} ms "
              f"{found[name]:>13}")
    baseline = min(times["s_client loop"])
    for name in ("agent tls (module)", "agent tls (process)"):
        print(f"  s_client loop / {name}: {baseline / min(times[name]):.1f}x")
    met = baseline / min(times["agent tls (module)"]) >= 5 and found["agent tls (module)"] == args.hosts
    print("\ntarget (tls module >= 5x the s_client loop, every certificate):", "met" if met else "missed")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
