"""Run a collection module's ``run(ctx)`` against a real, migrated SQLite store.

``open_module_store(directory)`` opens ``<directory>/modules.sqlite`` through
:func:`situation.store.open_store` (which applies the migrations), inserts the
agent host's ``machines`` row and yields a :class:`ModuleStore`; its
``context(name, root)`` builds the :class:`~situation.module.Context` the
scheduler would give module ``name`` (logger bound to the module, option
defaults from the module's spec, the fixture tree as its
:class:`~situation.hostroot.HostRoot`, the host machine id).

What a module wrote is read back with the stdlib ``sqlite3`` module over a
separate read-only connection (:func:`rows`, :func:`snapshot`), JSON columns
decoded, so the assertions see the database file, not the store's own view.
A re-run that writes nothing leaves :func:`snapshot` (timestamps and
``updated_by`` included) as it was. ``PRAGMA data_version`` cannot tell that:
an ``INSERT … ON CONFLICT`` that changes no row still advances the table's
AUTOINCREMENT counter in ``sqlite_sequence``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from situation.hostroot import HostRoot
from situation.module import REGISTRY, Context, HostMachine, load_builtin_modules
from situation.store import open_store

AGENT = "ab" * 16
HOSTNAME = "h"

# Columns holding JSON text, per table (sql/sqlite/0001_initial.sql); network_interface_subnets.ip
# is a plain address, network_interfaces.ip a JSON list.
JSON_COLUMNS: dict[str, frozenset[str]] = {
    "network_interfaces": frozenset({"ip", "flags"}),
    "disks": frozenset({"partitions"}),
    "packages": frozenset({"files"}),
    "applications": frozenset({"args", "config"}),
    "application_endpoints": frozenset({"tls", "fingerprints", "application_protocols"}),
}

_UNSET: Any = object()


def _connect_read_only(path: str | Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    return connection


def _decode(table: str, table_row: sqlite3.Row) -> dict[str, Any]:
    json_columns = JSON_COLUMNS.get(table, frozenset())
    decoded: dict[str, Any] = {}
    for column in table_row.keys():
        value = table_row[column]
        if column in json_columns and isinstance(value, str):
            value = json.loads(value)
        decoded[column] = value
    return decoded


def _path_of(store: Any) -> str:
    path = getattr(store, "path", None)
    if path is None or getattr(store, "dialect", None) != "sqlite":
        raise TypeError("rows() reads SQLite stores only")
    return path


def rows(store: Any, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in insertion order (rowid), as dicts with JSON columns decoded."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"not a table name: {table!r}")
    with closing(_connect_read_only(_path_of(store))) as db:
        return [_decode(table, row) for row in db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')]


def tables(store: Any) -> list[str]:
    """The schema's tables (migration history and SQLite internals left out)."""
    with closing(_connect_read_only(_path_of(store))) as db:
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name"
        )
        return [row[0] for row in found]


def snapshot(store: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, timestamps and ``updated_by`` included."""
    return {table: rows(store, table) for table in tables(store)}


def counts(store: Any) -> dict[str, int]:
    """Row count of every table (all writers, unlike ``store.counts()``)."""
    return {table: len(table_rows) for table, table_rows in snapshot(store).items()}


@dataclass
class ModuleStore:
    """A migrated SQLite store with the agent host's machine row, and contexts to run modules on it."""

    store: Any
    agent_id: str
    machine_id: int | None

    def context(
        self, module: str, root: Path | str | HostRoot, *, machine_id: int | None = _UNSET, **options: Any
    ) -> Context:
        """The Context the scheduler gives ``module``: spec option defaults, ``options`` on top."""
        if module not in REGISTRY:
            load_builtin_modules()
        spec = REGISTRY[module]
        values = {option.name: option.default for option in spec.options}
        unknown = set(options) - set(values)
        if unknown:
            raise KeyError(f"module {module!r} has no option {sorted(unknown)}")
        values.update(options)
        host_root = root if isinstance(root, HostRoot) else HostRoot.under(root)
        return Context(
            store=self.store,
            log=structlog.get_logger().bind(module=module),
            agent_id=self.agent_id,
            options=values,
            root=host_root,
            host=HostMachine(id=self.machine_id if machine_id is _UNSET else machine_id),
        )

    async def run(self, module: str, root: Path | str | HostRoot, **kwargs: Any) -> Context:
        """Run ``module`` once on a fresh context; the context comes back (``rows_written``)."""
        ctx = self.context(module, root, **kwargs)
        await REGISTRY[module].run(ctx)
        return ctx

    def rows(self, table: str) -> list[dict[str, Any]]:
        return rows(self.store, table)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return snapshot(self.store)

    def counts(self) -> dict[str, int]:
        return counts(self.store)

    async def add_machine(self, agent: str, hostname: str = "other") -> int:
        """Another agent's machine row (to show a module touches the host's row only); its id."""
        result = await self.store.upsert("machines", [{"agent": agent, "hostname": hostname}], key="agent")
        return result.ids[0]

    def machine(self, machine_id: int | None = None) -> dict[str, Any]:
        """The ``machines`` row ``machine_id`` (the host's by default)."""
        wanted = self.machine_id if machine_id is None else machine_id
        [row] = [row for row in self.rows("machines") if row["id"] == wanted]
        return row


@asynccontextmanager
async def open_module_store(
    directory: Path | str, *, agent_id: str = AGENT, with_machine: bool = True
) -> AsyncIterator[ModuleStore]:
    """A migrated ``<directory>/modules.sqlite``; the host row ``{agent, hostname 'h'}`` unless told not to."""
    store = await open_store(str(Path(directory) / "modules.sqlite"), agent_id)
    try:
        machine_id = None
        if with_machine:
            result = await store.upsert("machines", [{"agent": agent_id, "hostname": HOSTNAME}], key="agent")
            machine_id = result.ids[0]
        yield ModuleStore(store=store, agent_id=agent_id, machine_id=machine_id)
    finally:
        await store.close()
