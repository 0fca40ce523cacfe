"""Find control characters in what a database holds, in every table and column.

Text is checked as stored and, when it is JSON (the JSON columns on SQLite,
json/jsonb and arrays on PostgreSQL), every string and key inside it too: a
control character escaped as ``\\u001b`` in JSON text is still stored.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def holds_control(value: Any) -> bool:
    if isinstance(value, str):
        if CONTROL.search(value):
            return True
        if value[:1] in ("[", "{"):
            try:
                return holds_control(json.loads(value))
            except ValueError:
                return False
        return False
    if isinstance(value, (list, tuple)):
        return any(holds_control(v) for v in value)
    if isinstance(value, dict):
        return any(holds_control(k) or holds_control(v) for k, v in value.items())
    return False


def findings(table: str, rows: Iterable[dict[str, Any]]) -> list[str]:
    return [f"{table}.{column} = {value!r}" for row in rows for column, value in row.items() if holds_control(value)]


def sqlite_control_characters(path: str | Path) -> list[str]:
    """``table.column = value`` for every stored value holding a control character."""
    connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        found: list[str] = []
        for table in tables:
            rows = connection.execute(f'SELECT * FROM "{table}"')
            found += findings(table, (dict(r) for r in rows))
        return found
    finally:
        connection.close()


async def postgres_control_characters(connection, schema: str = "situation") -> list[str]:
    """The same over an asyncpg connection, for every table of ``schema``."""
    tables = await connection.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    found: list[str] = []
    for (table,) in tables:
        rows = await connection.fetch(f'SELECT * FROM "{schema}"."{table}"')
        found += findings(table, (dict(r) for r in rows))
    return found
