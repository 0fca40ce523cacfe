"""Run one DSN through situation's connection code and through psql, and compare."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.errors import SituationError

PSQL = shutil.which("psql")


@dataclass
class Outcome:
    ok: bool
    detail: str  # "ssl=True" on success, the error text otherwise


async def situation_outcome(dsn: str, environ: dict[str, str]) -> Outcome:
    """Connect with situation's code (DSN parsing, SSLContext, fallbacks)."""
    try:
        params = parse_dsn(dsn, environ=environ)
        connection = await connect(params)
    except SituationError as exc:
        return Outcome(False, str(exc))
    try:
        on_tls = await connection.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await connection.close()
    return Outcome(True, f"ssl={on_tls}")


async def assert_outcome(dsn: str, home, *, ok: bool, ssl: bool | None = None, env: dict[str, str] | None = None,
                         compare: bool = True) -> Outcome:
    """situation's outcome for ``dsn`` must be ``ok`` (and ``ssl``); psql's the same, unless ``compare`` is off."""
    environ = {"HOME": str(home), **(env or {})}
    ours = await situation_outcome(dsn, environ)
    assert ours.ok is ok, ours.detail
    if ok and ssl is not None:
        assert ours.detail == f"ssl={ssl}"
    if compare and PSQL:
        theirs = psql_outcome(dsn, environ)
        assert theirs.ok is ok, f"psql disagrees: {theirs.detail}"
        if ok:
            assert theirs.detail == ours.detail
    return ours


def psql_outcome(dsn: str, environ: dict[str, str]) -> Outcome:
    """The same DSN through psql (libpq), never prompting."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    result = subprocess.run(
        [PSQL, "-w", "-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", dsn],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    if result.returncode == 0:
        return Outcome(True, "ssl=" + ("True" if result.stdout.strip() == "t" else "False"))
    return Outcome(False, result.stderr.strip())
