"""`situation schema`: what it prints is what `migrate` builds (tables, columns, indexes)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

from support.cluster import clean_environ

from situation.connection import migrations
from situation.connection.connect import connect
from situation.connection.dsn import parse_dsn
from situation.schema import schema_text, split_statements
from situation.store import open_store

HISTORY_TABLE = "schema_migrations"  # the migrator's bookkeeping, not part of the SQL API
_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (?:situation\.)?(\w+) \((.*)\)\s*$", re.S)
_ADD_COLUMN = re.compile(r"ALTER TABLE (?:situation\.)?(\w+)\s+ADD COLUMN (?:IF NOT EXISTS )?(\w+)")
_INDEX = re.compile(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\w+)")
_NOT_COLUMNS = {"CONSTRAINT", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK"}


def schema_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "situation", "schema", *args], capture_output=True, text=True,
                          timeout=60, env=clean_environ())


def declared(dialect: str) -> tuple[dict[str, list[str]], set[str]]:
    """Tables with their columns in order, and index names, as the printed schema declares them."""
    tables: dict[str, list[str]] = {}
    indexes: set[str] = set()
    for _comment, statement in split_statements(schema_text(dialect)):
        if match := _TABLE.match(statement):
            tables[match.group(1)] = [item.split()[0].strip('"') for item in _top_level_items(match.group(2))
                                      if item.split()[0].upper() not in _NOT_COLUMNS]
        elif match := _ADD_COLUMN.match(statement):
            tables[match.group(1)].append(match.group(2))
        elif match := _INDEX.match(statement):
            indexes.add(match.group(1))
    return tables, indexes


def _top_level_items(body: str) -> list[str]:
    body = re.sub(r"--[^\n]*", "", body)
    items, depth, current = [], 0, ""
    for char in body:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [item for item in items + [current.strip()] if item]


def test_schema_command_prints_the_text():
    for args, dialect in ((["--dialect", "postgres"], "postgres"), (["--dialect", "sqlite"], "sqlite"), ([], "sqlite")):
        result = schema_cli(*args)
        assert result.returncode == 0 and result.stdout == schema_text(dialect)
    assert "situation.machines" in schema_text("postgres") and "CREATE TABLE IF NOT EXISTS machines" in schema_text("sqlite")
    for dialect in ("postgres", "sqlite"):  # the adoption repairs are not part of the API
        assert not re.search(r"^\s*(DELETE|UPDATE|DROP)\b", schema_text(dialect), re.M | re.I)
    bad = schema_cli("--dialect", "mysql")
    assert bad.returncode == 2 and "mysql" in bad.stderr


async def test_sqlite_schema_matches_a_migrated_database(tmp_path):
    path = tmp_path / "s.sqlite"
    store = await open_store(str(path), "ab" * 16)
    await store.close()
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != ?", (HISTORY_TABLE,))]
        actual = {name: [r[1] for r in db.execute(f'PRAGMA table_info("{name}")')] for name in names}
        actual_indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    tables, indexes = declared("sqlite")
    assert tables == actual
    assert indexes == actual_indexes


async def test_postgres_schema_matches_a_migrated_database(tls_cluster, fresh_database):
    name = fresh_database("schema")
    connection = await connect(parse_dsn(tls_cluster.superuser_dsn(name), environ={}), statement_cache_size=0)
    try:
        await migrations.migrate(connection)
        rows = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'situation' AND table_name != $1 ORDER BY table_name, ordinal_position", HISTORY_TABLE)
        actual_indexes = {r[0] for r in await connection.fetch(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = 'situation' "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)")}
    finally:
        await connection.close()
    actual: dict[str, list[str]] = {}
    for row in rows:
        actual.setdefault(row["table_name"], []).append(row["column_name"])
    tables, indexes = declared("postgres")
    assert tables == actual
    assert indexes == actual_indexes


def test_statements_split_around_quotes_and_comments():
    statements = split_statements("-- a; comment\nSELECT ';' AS x /* ; */;\n\n-- kept\nSELECT $f$;$f$;\n")
    assert statements == [("-- a; comment\n", "SELECT ';' AS x /* ; */"), ("-- kept\n", "SELECT $f$;$f$")]
