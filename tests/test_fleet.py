"""Many agents at once (issue 12 item 2): bench/fleet.py's own code at N = 20.

Twenty agent daemons, each with its own agent id and fake host (host name, DMI
UUID, machine id, MACs, address), run at least two cycles each (a first one,
then one more once all twenty have written theirs) against one PostgreSQL
database, sharing one lab subnetwork and the same neighbour MACs. They run
inside test-made network namespaces (the bench's FleetLab, behind the guard of
support/isolated_exec.py) and reach PostgreSQL over its Unix socket. Nothing
is timed here (bench/fleet.py prints the figures): the database must hold no
duplicate under any key of sql/README.md and one machine row per host, and no
agent may log a deadlock, serialization failure, unique violation or a failed
module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.netns import netns_available

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fleet import count_duplicates, machines_per_host, make_lab, migrate, run_fleet  # noqa: E402

pytestmark = pytest.mark.skipif(not netns_available(), reason="needs root and network namespaces")

AGENTS = 20


async def test_twenty_agents_leave_no_duplicate_and_log_no_conflict(tls_cluster, fresh_database, tmp_path):
    dsn = tls_cluster.superuser_dsn(fresh_database("fleet"))
    migrate(dsn)
    tmp_path.chmod(0o755)
    lab = make_lab(AGENTS, tmp_path, neighbour_count=20, peers=5)
    try:
        run = await run_fleet(lab, dsn, cycles=1, wave=10, pool_size=2, timeout=240)
    finally:
        lab.destroy()

    assert run.failed_agents() == [], run.errors()[:5]
    assert all(len(agent.cycles) >= 2 for agent in run.agents)
    assert run.conflicts() == []
    assert run.failed_modules() == []
    # What else may be logged as an error: an agent starved of the CPU for 10 s (2 cores shared
    # with the rest of the suite) finds its own database ping timed out, and says so once.
    assert [line for line in run.errors() if "database unreachable" not in line] == []
    duplicates = await count_duplicates(dsn)
    assert {name: count for name, count in duplicates.items() if count} == {}
    assert await machines_per_host(dsn, lab.hosts) == {}
