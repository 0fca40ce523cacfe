"""Hold a pooled connection to PostgreSQL and report when it is found dead, then reconnect.

Started inside a test-made network namespace (behind isolated_exec.py) by
tests/test_keepalives_netns.py, which drops the link's traffic with nftables in
the server's namespace. Talks over stdin/stdout, one JSON object per line:

    -> {"ready": pid}            a pooled connection is open and idle
    <- "dropped"                  the test has started dropping traffic
    -> {"dead_after": seconds}    the kernel's keepalives gave up on the idle connection
    <- "healed"                   traffic flows again
    -> {"reconnected": pid}       the store's next unit of work ran on a new connection
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncpg
import structlog
import uvloop

from situation.store import open_store

GIVE_UP = 120.0  # seconds; far beyond any keepalive setting the test uses


def say(**message) -> None:
    print(json.dumps(message), flush=True)


async def wait_for(line: str) -> None:
    received = await asyncio.to_thread(sys.stdin.readline)
    if received.strip() != line:
        raise SystemExit(f"expected {line!r}, got {received!r}")


def closed(connection) -> bool:
    # The pool detaches its proxy from a connection that was lost.
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True


async def main(dsn: str) -> None:
    store = await open_store(dsn, "0" * 32, migrate=True, max_size=1)
    try:
        connection = await store.pool.acquire()
        first_pid = await connection.fetchval("SELECT pg_backend_pid()")
        say(ready=first_pid)
        await wait_for("dropped")
        started = time.monotonic()
        while not closed(connection) and time.monotonic() - started < GIVE_UP:
            await asyncio.sleep(0.1)
        say(dead_after=round(time.monotonic() - started, 1) if closed(connection) else None)
        if not closed(connection):
            await store.pool.release(connection)
        await wait_for("healed")
        # The daemon's path: a retried unit of work through the store, on whatever the pool has.
        await store.counts()
        async with store.pool.acquire() as fresh:
            say(reconnected=await fresh.fetchval("SELECT pg_backend_pid()"))
    finally:
        await store.close()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    uvloop.run(main(sys.argv[1]))
