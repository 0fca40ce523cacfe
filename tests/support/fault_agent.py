"""`situation` with one more module, ``fault-unit``, for the fault tests (test_faults_*.py).

``fault-unit`` writes one unit (one ``run_in_transaction``) of package rows in
two batches and stops between them: it writes its first batch, creates the file
named by ``SITUATION_TEST_UNIT_MARKER``, and waits. A test kills the agent there
and checks that none of the unit's rows survive; or breaks the database and
creates the file named by ``SITUATION_TEST_UNIT_RELEASE``, and the unit goes on
(later cycles, finding that file, do not stop). ``SITUATION_TEST_UNIT_ROWS``
sets the rows per batch. The rest of the cycle is the real one, so this runs
only inside a test-made network namespace, behind the guard
(``IsolatedHost.popen``); it checks again itself.

    fault_agent.py run --once --db DSN ...   (any `situation` command line)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROWS = 20_000  # enough for SQLite to spill the open transaction into its WAL file
NAME_PREFIX = "fault-unit-"


def kill_inside_the_unit(process: subprocess.Popen, marker: Path, inside: Callable[[], None], log: Path,
                         timeout: float = 60) -> None:
    """For the tests: wait until the fault agent ``process`` (logging to ``log``) is inside its
    unit, run the ``inside`` checks there, and SIGKILL it; it is killed whatever happens."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert process.poll() is None, f"the agent ended ({process.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the agent never reached the unit:\n{log.read_text()[-4000:]}"
            time.sleep(0.05)
        inside()
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _refuse_home_namespace() -> None:
    home = os.environ.get("SITUATION_TEST_HOME_NETNS")
    here = os.stat("/proc/self/ns/net").st_ino
    if not home or here == int(home):
        sys.stderr.write("refusing to run: not inside a test-made network namespace\n")
        sys.exit(97)


def _register() -> None:
    from situation.module import module

    marker = Path(os.environ["SITUATION_TEST_UNIT_MARKER"])
    release = Path(os.environ.get("SITUATION_TEST_UNIT_RELEASE", "/nonexistent/never"))
    rows = int(os.environ.get("SITUATION_TEST_UNIT_ROWS", ROWS))

    @module("fault-unit", depends=("host-basic",), timeout=600)
    async def run(ctx) -> None:
        """One unit of rows, stopped halfway for a kill -9 to land inside it."""
        machine = ctx.host_id()

        def batch(half: str) -> list[dict]:
            return [{"name": f"{NAME_PREFIX}{half}-{i:06d}", "version": "1", "manager": "fault",
                     "machine_id": machine} for i in range(rows)]

        async def unit() -> None:
            await ctx.upsert("packages", batch("a"), key="name_version_machine_id")
            if not await asyncio.to_thread(release.exists):
                await asyncio.to_thread(marker.write_text, "inside the unit\n")
            while not await asyncio.to_thread(release.exists):
                await asyncio.sleep(0.05)
            await ctx.upsert("packages", batch("b"), key="name_version_machine_id")

        await ctx.run_in_transaction(unit)


if __name__ == "__main__":
    _refuse_home_namespace()
    _register()
    from situation.cli import main

    main(sys.argv[1:])
