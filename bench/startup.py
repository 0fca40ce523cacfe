"""Start-up time of interactive commands, against a bare interpreter in the same run.

Run it from the repository::

    .venv/bin/python bench/startup.py [--runs N] [--check]

Each command runs as the installed entry point does (``python -m situation …``,
through ``situation/launch.py``), in a fresh process, ``--runs`` times,
interleaved with the baseline ``python -c pass`` so that load on the machine hits
both alike. It prints min and median wall time per command, and the same minus the
baseline (what the command itself costs). The target is ``--help``, ``version`` and
``id`` under 150 ms (median); ``--check`` exits 1 when one is above it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_MS = 150.0
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "situation --help": ["-m", "situation", "--help"],
    "situation version": ["-m", "situation", "version"],
    "situation id": ["-m", "situation", "id"],
    "situation run --help": ["-m", "situation", "run", "--help"],
}
TARGETED = ("situation --help", "situation version", "situation id")


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--check", action="store_true", help="exit 1 when a targeted command is over 150 ms")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "SITUATION_STATE_DIR": state}
        env.pop("SITUATION_AGENT_ID", None)
        for argv in COMMANDS.values():  # warm the page cache and byte-code files
            timed(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(options.runs):
            for name, argv in COMMANDS.items():
                samples[name].append(timed(argv, env))
    base = statistics.median(samples["python -c pass"])
    print(f"{'command':<24} {'min ms':>8} {'median ms':>10} {'median - baseline':>18}")
    over = []
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<24} {min(values):8.1f} {median:10.1f} {median - base:18.1f}")
        if name in TARGETED and median > TARGET_MS:
            over.append(name)
    print(f"target: {', '.join(TARGETED)} under {TARGET_MS:.0f} ms (median)" + (f"; over: {', '.join(over)}" if over else "; met"))
    return 1 if options.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
