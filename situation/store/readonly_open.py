"""Opening a situation database so that it cannot be written: what reader.py and readonly.py share.

- SQLite: :class:`SqliteThread` opens the file through a ``file:…?mode=ro`` URI
  (the file must exist; nothing is ever created) with ``PRAGMA query_only``,
  and runs every sqlite3 call on one worker thread of its own. A caller locks
  the connection down further in ``setup``, which runs last (readonly.py sets
  its authorizer there, after which not even these pragmas would pass).
- PostgreSQL: :func:`connect_read_only` makes one connection as the agent's are
  made (situation/connection/connect.py: libpq's DSN rules, TLS and error
  wording), with ``default_transaction_read_only`` and ``search_path =
  situation``; meant for a role made with ``situation grant ROLE --reader``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from situation.connection.dsn import redact_dsn
from situation.errors import ConfigError

BUSY_TIMEOUT_MS = 5000  # how long a read waits while the agent holds the file's write lock


def open_sqlite_read_only(path: str, setup: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """``path`` opened read-only (FileNotFoundError when it is not a file), then ``setup``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    connection = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if setup is not None:
            setup(connection)
    except BaseException:
        connection.close()
        raise
    return connection


class SqliteThread:
    """A read-only sqlite3 connection and the one worker thread every call on it runs on."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor):
        self.connection = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: str, *, setup: Callable[[sqlite3.Connection], None] | None = None,
                   thread_name: str) -> SqliteThread:
        """ConfigError (one line, with the fix) when ``path`` cannot be opened."""
        shown = redact_dsn(path)
        if path == ":memory:":
            raise ConfigError("an in-memory database is empty; give --db the SQLite file or PostgreSQL DSN to read")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, open_sqlite_read_only, path, setup)
        except FileNotFoundError:
            executor.shutdown(wait=False)
            raise ConfigError(f'cannot open SQLite database "{shown}" read-only: it does not exist; '
                              "give --db the file the agent writes") from None
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(f'cannot open SQLite database "{shown}" read-only ({exc}); '
                              "check that the file exists and is readable") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(connection, *args)`` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, self.connection, *args)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.connection.close)
        await asyncio.to_thread(self._executor.shutdown, True)


async def connect_read_only(params, purpose: str, **options: Any):
    """An asyncpg connection for ``params`` (a parsed DSN) whose transactions are read-only by default."""
    from situation.connection.connect import connect

    settings = {
        "application_name": params.application_name or f"situation {purpose}",
        "search_path": "situation",
        "default_transaction_read_only": "on",
    }
    return await connect(params, server_settings=settings, **options)
