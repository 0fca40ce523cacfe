"""The SQL API schema as text: what `situation schema` prints and `situation mcp` serves.

It is derived from this build's migrations (sql/<dialect>/NNNN_*.sql), so it needs no
database and cannot drift from what `migrate` creates. Only the statements that
shape the final schema are kept (CREATE TABLE, CREATE INDEX, ALTER TABLE … ADD
COLUMN), each with the comment block right above it; the one-off data repairs and
constraint drops that adopt a Go agent's database, and the files' housekeeping
notes, are left out. A later migration that renames or drops a column would need
this filter taught; tests/test_schema.py compares the result with a migrated
database and fails first.
"""

from __future__ import annotations

import re

from situation import __version__
from situation.connection.migration_files import load_migrations

DIALECTS = ("postgres", "sqlite")
# The dialect names the original uses in the resource URI.
URI_DIALECT = {"postgres": "pg", "sqlite": "sqlite"}

_KEPT = re.compile(r"^\s*(CREATE\s+(UNIQUE\s+)?INDEX|CREATE\s+TABLE|ALTER\s+TABLE\s+\S+\s+ADD\s+COLUMN)\b", re.I)

_HEADERS = {
    "postgres": (
        "-- The situation SQL API, PostgreSQL dialect (situation {version}).\n"
        "-- Tables live in schema `situation`; a reader's search_path is `situation`, so names\n"
        "-- work unqualified. `ip` columns are VARCHAR[] arrays; JSON columns are json/jsonb.\n"
    ),
    "sqlite": (
        "-- The situation SQL API, SQLite dialect (situation {version}).\n"
        "-- Lists and JSON documents are text holding JSON: query them with json_each()/json_extract().\n"
    ),
}


def schema_text(dialect: str) -> str:
    """The dialect's schema as SQL text: a header, then the kept statements of every migration."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    parts = [_HEADERS[dialect].format(version=__version__)]
    for migration in load_migrations(dialect):
        for comment, statement in split_statements(migration.sql):
            if _KEPT.match(statement):
                # A blank line before each commented block; uncommented runs stay together.
                parts.append(f"\n{comment}{statement};\n" if comment else f"{statement};\n")
    return "".join(parts)


def resource_uri(dialect: str) -> str:
    return f"file:///situation/{__version__}/{URI_DIALECT[dialect]}/schema.sql"


def split_statements(sql: str) -> list[tuple[str, str]]:
    """``(comment, statement)`` per statement: the comment lines directly above it
    (no blank line between), and its text without the closing semicolon.

    Quotes, dollar quotes and comments are skipped over, so a ``;`` inside them
    does not end a statement.
    """
    result: list[tuple[str, str]] = []
    start = 0
    for end in _statement_ends(sql):
        result.append(_leading_comment(sql[start:end]))
        start = end + 1
    return [(comment, statement) for comment, statement in result if statement]


def _statement_ends(sql: str):
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if sql.startswith("--", i):
            i = _find(sql, "\n", i)
        elif sql.startswith("/*", i):
            i = _find(sql, "*/", i + 2) + 1
        elif char in "'\"":
            i = _find(sql, char, i + 1)
        elif char == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[i:])):
            i = _find(sql, tag.group(0), i + len(tag.group(0))) + len(tag.group(0)) - 1
        elif char == ";":
            yield i
        i += 1


def _find(text: str, needle: str, start: int) -> int:
    found = text.find(needle, start)
    return len(text) if found < 0 else found


def _leading_comment(chunk: str) -> tuple[str, str]:
    lines = chunk.strip("\n").split("\n")
    first_code = next((k for k, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("--")), len(lines))
    comment_lines = lines[:first_code]
    # Keep only the last paragraph: the block that sits right above the statement.
    while "" in (line.strip() for line in comment_lines):
        blank = max(k for k, line in enumerate(comment_lines) if not line.strip())
        comment_lines = comment_lines[blank + 1:]
    comment = "".join(line + "\n" for line in comment_lines)
    return comment, "\n".join(lines[first_code:]).strip()
