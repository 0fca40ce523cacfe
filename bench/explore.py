"""How fast `situation explore` opens on a large inventory.

Run it from the repository::

    .venv/bin/python bench/explore.py [--pg DSN] [--machines 5000] [--zones 20] [--runs 5] [--check]

Fills a fresh SQLite file (and, with ``--pg``, the given empty PostgreSQL database, as
its owner) through the store with ``--machines`` machines spread over ``--zones``
zones, each with 3 endpoints (TLS on some), 3 applications and ~6 outgoing flows
(tests/support/inventory.py). Then, per backend, in a fresh process each run: import
the viewer, open the database read-only, start the app headless (160×48) and wait
until the first zone's hosts and the first node card are shown: the *open* time,
interpreter start-up included. Also times a Tab to the next zone (its hosts and card
shown) inside the same process. The baseline, same run, is ``python -c pass``, and,
for scale, reading every zone's hosts at once (what loading the whole inventory at
start would cost). Target: open under 1 s (median).

``--screenshot PATH`` instead fills a small lab (4 zones × 12 hosts) and saves the
viewer's Ctrl+S screenshot there (docs/explore.svg is made this way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
TARGET_S = 1.0

CHILD = r"""
import asyncio, json, sys, time
started = time.perf_counter()
from situation.explore import ExploreApp
from situation.store.reader import open_reader

async def main(dsn):
    reader = await open_reader(dsn, "bench")
    app = ExploreApp(reader)
    async with app.run_test(size=(160, 48)) as pilot:
        while app.card is None or not app.shown_hosts:
            await pilot.pause(0.005)
        opened = time.perf_counter() - started
        first = app.card
        switch = time.perf_counter()
        await pilot.press("tab")
        while app.card is first or app.zone_index != 1 or not app.shown_hosts:
            await pilot.pause(0.005)
        switched = time.perf_counter() - switch
    await reader.close()
    print(json.dumps({"open": opened, "switch": switched, "hosts": len(app.hosts)}))

asyncio.run(main(sys.argv[1]))
"""


async def fill(dsn: str, machines: int, zones: int) -> None:
    from support.inventory import fill_inventory

    from situation.store import open_store

    store = await open_store(dsn, "be" * 16)
    try:
        await fill_inventory(store, zones=zones, hosts=machines // zones, seed=11)
    finally:
        await store.close()


async def read_everything(dsn: str) -> float:
    from situation.store.reader import open_reader

    reader = await open_reader(dsn, "bench")
    started = time.perf_counter()
    for zone in await reader.fetch("explore_zones", 100_000):
        await reader.fetch("explore_zone_hosts", zone["id"], 1_000_000)
        await reader.fetch("explore_zone_endpoint_counts", zone["id"])
    elapsed = time.perf_counter() - started
    await reader.close()
    return elapsed


def timed_child(dsn: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, dsn], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def report(name: str, dsn: str, runs: int) -> float:
    samples = [timed_child(dsn) for _ in range(runs)]
    bare = statistics.median(baseline() for _ in range(runs))
    whole = asyncio.run(read_everything(dsn))
    opened = statistics.median(s["open"] for s in samples)
    print(f"{name}: open {opened * 1000:.0f} ms median (min {min(s['open'] for s in samples) * 1000:.0f}), "
          f"next zone {statistics.median(s['switch'] for s in samples) * 1000:.0f} ms, {samples[0]['hosts']} hosts per zone; "
          f"python -c pass {bare * 1000:.0f} ms; reading every zone at once {whole * 1000:.0f} ms")
    return opened


async def screenshot(target: Path) -> None:
    from situation.explore import ExploreApp
    from situation.store.reader import open_reader

    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "lab.sqlite")
        await fill(path, 48, 4)
        reader = await open_reader(path, "screenshot")
        app = ExploreApp(reader, screenshot_dir=directory)
        async with app.run_test(size=(150, 40)) as pilot:
            await pilot.press("tab")
            while app.card is None or app.zone_index != 1 or not app.shown_hosts:
                await pilot.pause(0.01)
            await pilot.press("down", "down", "down")
            await app.workers.wait_for_complete()
            await pilot.pause(0.2)
            await pilot.press("ctrl+s")
            while app.last_screenshot is None:
                await pilot.pause(0.01)
        await reader.close()
        target.write_bytes(Path(app.last_screenshot).read_bytes())
    print(f"saved {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", metavar="DSN", help="an empty PostgreSQL database to fill (owner DSN)")
    parser.add_argument("--machines", type=int, default=5000)
    parser.add_argument("--zones", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when opening takes 1 s or more")
    parser.add_argument("--screenshot", metavar="PATH", type=Path, help="save a screenshot of a small lab and exit")
    options = parser.parse_args()
    if options.screenshot:
        asyncio.run(screenshot(options.screenshot))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "bench.sqlite")
        started = time.perf_counter()
        asyncio.run(fill(path, options.machines, options.zones))
        print(f"filled SQLite with {options.machines} machines in {options.zones} zones ({time.perf_counter() - started:.1f} s)")
        results.append(report("SQLite", path, options.runs))
        if options.pg:
            asyncio.run(fill(options.pg, options.machines, options.zones))
            results.append(report("PostgreSQL", options.pg, options.runs))
    over = [r for r in results if r >= TARGET_S]
    print(f"target: open under {TARGET_S:.0f} s (median): {'met' if not over else 'missed'}")
    return 1 if options.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
