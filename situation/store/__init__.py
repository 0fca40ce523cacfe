"""The one interface collection modules write through, with two backends.

Modules never build SQL from data. They call:

- ``await store.upsert(table, rows, key=..., update=...)``: a batch of dicts
  (column → value) upserted on a named conflict target (see ``CONFLICT_KEYS``).
  The batch is de-duplicated on the key (last row wins) and sorted by it, so
  that many agents writing the same rows never deadlock; rows that would not
  change are not rewritten. JSON columns take Python lists/dicts,
  ``network_interfaces.ip`` takes a list of strings. ``updated_at`` and
  ``updated_by`` (this agent) are set by the store. Returns an
  :class:`UpsertResult` with the number of rows written and, for every input
  row, the id of its row.
- ``await store.fetch(name, *args)`` / ``fetchrow`` / ``fetchval`` /
  ``execute``: a named query (``-- name: xyz`` blocks) from
  ``sql/queries/<topic>.sql`` (portable SQL with ``$1 … $n`` placeholders),
  overridden per dialect by ``sql/<dialect>/queries/<topic>.sql``. Rows come
  back as dicts with JSON decoded.
- Every text value written (upserted columns, strings inside JSON values and
  their keys, named-query arguments) is cleaned first, the same on both
  backends: invalid UTF-8 is replaced, text is cut at ``MAX_TEXT`` characters,
  tab, newline and carriage return each become a space, and every other control
  character (C0 including NUL, DEL, C1) is removed. So no stored text holds a
  control character, whichever module or host file it came from.
- An integer outside the signed 64-bit range (which SQLite and PostgreSQL
  refuse with errors of their own) never reaches a backend: the upsert or
  named query raises :class:`IntegerOutOfRange`, naming the table and column
  (or the query and argument), and writes nothing. Modules range-check what
  they parse; this is the safety net that keeps the failure one clear line.
- ``await store.run_in_transaction(work)`` runs ``await work()`` (which makes
  store calls) as one short transaction, rerun whole on connection loss,
  deadlock or serialization failure (modules call it as
  ``ctx.run_in_transaction``, which also keeps their row count right). Every
  upsert and every named query outside such a unit is its own unit, retried
  the same way.
  ``async with store.transaction():`` groups calls without retries.

Backends: :mod:`situation.store.postgres` (asyncpg pool) and
:mod:`situation.store.sqlite` (sqlite3 on a worker thread).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import cache
from itertools import chain, islice
from typing import Any, Protocol

from situation.errors import SituationError
from situation.connection.migration_files import sql_root

# Conflict targets by name, per table: the key columns, and the expression list
# used in ON CONFLICT (...) where it differs from the plain columns on a backend.
# From sql/README.md; the index behind each exists in both schemas.


@dataclass(frozen=True)
class ConflictKey:
    columns: tuple[str, ...]
    postgres: str | None = None  # ON CONFLICT target text, when not the plain column list
    sqlite: str | None = None

    def target(self, dialect: str) -> str:
        custom = self.postgres if dialect == "postgres" else self.sqlite
        return custom or ", ".join(_quote(c) for c in self.columns)


CONFLICT_KEYS: dict[str, dict[str, ConflictKey]] = {
    "subnetworks": {"cidr_tag": ConflictKey(("network_cidr", "tag"))},
    "machines": {"agent": ConflictKey(("agent",)), "host_id": ConflictKey(("host_id",))},
    "cpus": {"machine_id": ConflictKey(("machine_id",))},
    "gpus": {"machine_gpu_index": ConflictKey(("index", "machine_id"))},
    "disks": {"machine_disk_name": ConflictKey(("name", "machine_id"))},
    "network_interfaces": {
        "machine_mac_tag": ConflictKey(("mac", "tag", "machine_id")),
        "machine_nic_name": ConflictKey(("name", "machine_id")),
    },
    "packages": {"name_version_machine_id": ConflictKey(("name", "version", "machine_id"))},
    "applications": {"machine_app_name_pid": ConflictKey(("name", "pid", "machine_id"))},
    "application_endpoints": {
        "port_protocol_addr_network_interface_id": ConflictKey(
            ("port", "protocol", "addr", "network_interface_id"),
            postgres="port, protocol, addr, COALESCE(network_interface_id, 0)",
            sqlite="port, protocol, addr, COALESCE(network_interface_id, 0)",
        )
    },
    "users": {"machine_user": ConflictKey(("uid", "machine_id"))},
    "user_applications": {"user_application": ConflictKey(("user_id", "application_id"))},
    "flows": {
        "flow_src_dst": ConflictKey(
            ("src_application_id", "src_addr", "dst_endpoint_id"),
            sqlite="COALESCE(src_application_id, 0), src_addr, COALESCE(dst_endpoint_id, 0)",
        )
    },
    "endpoint_policies": {
        "endpoint_action_src": ConflictKey(
            ("endpoint_id", "action", "src_endpoint_id", "src_addr"),
            sqlite="endpoint_id, action, COALESCE(src_endpoint_id, 0), COALESCE(src_addr, '')",
        )
    },
}


@dataclass
class UpsertResult:
    written: int = 0
    ids: list[int] = field(default_factory=list)


class Store(Protocol):
    dialect: str
    agent_id: str

    async def upsert(
        self,
        table: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        key: str,
        update: Sequence[str] | None = None,
    ) -> UpsertResult: ...

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]: ...

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> int: ...

    def transaction(self) -> AbstractAsyncContextManager[None]: ...

    async def run_in_transaction(self, work: Callable[[], Awaitable[Any]]) -> Any: ...

    async def counts(self) -> dict[str, int]: ...

    async def release_memory(self) -> None:
        """Hand back the caches a cycle filled (called between cycles)."""

    async def close(self) -> None: ...


def conflict_key(table: str, key: str) -> ConflictKey:
    try:
        return CONFLICT_KEYS[table][key]
    except KeyError:
        known = ", ".join(CONFLICT_KEYS.get(table, {})) or "none"
        raise ValueError(f"no conflict key {key!r} on table {table!r} (known: {known})") from None


@dataclass
class Batch:
    """An upsert, ready for a backend: rows de-duplicated and sorted by the key, held by column."""

    table: str
    key: ConflictKey
    columns: list[str]
    values: dict[str, list[Any]]  # column → its values, one per batch row
    index: list[int]  # for each input row, its position in the batch
    update: Sequence[str]

    def __len__(self) -> int:
        return len(self.values[self.columns[0]]) if self.columns else 0

    def keys(self) -> list[tuple]:
        """Each batch row's key values, as a tuple."""
        return list(zip(*(self.values[c] for c in self.key.columns)))

    def ids_for_input(self, batch_ids: list[int | None]) -> list[int | None]:
        return [batch_ids[i] for i in self.index]


# Untrusted text (banners, certificate fields, SNMP strings, hostnames) stays data:
# every string is stored as valid UTF-8, bounded, and without control characters.
MAX_TEXT = 4096

# Tab, newline and carriage return become a space (they separated words where the text
# came from); every other control character (C0, DEL, C1: Unicode category Cc) is removed.
_CONTROLS = {code: None for code in (*range(0x20), *range(0x7F, 0xA0))} | {ord(c): " " for c in "\t\n\r"}
_ASCII_CONTROLS = bytes((*range(0x20), 0x7F))


def _printable_ascii(text: str) -> bool:
    """The common case, checked cheaply: ASCII without control characters (a C loop, twice isprintable's speed)."""
    return text.isascii() and len(text.encode("ascii").translate(None, _ASCII_CONTROLS)) == len(text)


def clean_text(value: str) -> str:
    if len(value) <= MAX_TEXT and _printable_ascii(value):
        return value
    value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from undecodable bytes
    if not value.isprintable():  # also true of some harmless characters (NBSP): translate keeps those
        value = value.translate(_CONTROLS)
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class IntegerOutOfRange(SituationError):
    """An integer no backend can store; the batch or query is refused as a whole."""

    def __init__(self, where: str, value: int):
        super().__init__(f"{where}: {_describe_integer(value)} is outside the signed 64-bit range a database "
                         "column holds; nothing was written (the value's reader should range-check it)")


def _describe_integer(value: int) -> str:
    # Python refuses to print an integer of more than 4300 digits, and a long one says nothing more.
    return f"{value}" if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"


def check_int64(values: list[Any], where: str, kinds: set[type] | None = None) -> None:
    """Raise IntegerOutOfRange for the first integer of ``values`` outside the signed 64-bit range."""
    kinds = set(map(type, values)) if kinds is None else kinds
    if kinds == {int}:
        integers = values  # min and max then run in C over the list as it is
    elif kinds == _INT_OR_NONE:
        integers = [v for v in values if v is not None]
    else:
        integers = [v for v in values if isinstance(v, int)]
    if integers and (min(integers) < INT64_MIN or max(integers) > INT64_MAX):
        raise IntegerOutOfRange(where, next(v for v in integers if not INT64_MIN <= v <= INT64_MAX))


def clean_value(value: Any) -> Any:
    """``value`` with every string in it (also inside JSON lists and objects) cleaned."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_value(v) for k, v in value.items()}
    return value


def clean_arguments(args: Sequence[Any], query: str) -> list[Any]:
    """Named-query arguments get the same cleaning and range check as upserted values."""
    for number, arg in enumerate(args, start=1):
        if isinstance(arg, int):
            check_int64([arg], f"argument ${number} of query {query}")
    return [clean_value(a) for a in args]


def plan_batch(
    table: str, rows: Sequence[Mapping[str, Any]], key: str, update: Sequence[str] | None
) -> Batch:
    """What every backend does first: clean, resolve the key, de-duplicate, sort, default the update list.

    Sorting every batch by its conflict key gives every agent the same lock order
    (no deadlocks); de-duplicating (last row wins) avoids "cannot affect row a
    second time". Work is done a column at a time: batches run to thousands of rows.
    """
    target = conflict_key(table, key)
    columns = list(rows[0]) if rows else []
    if update is None:
        update = [c for c in columns if c not in target.columns]
    if not rows:
        return Batch(table, target, [], {}, [], update)
    expected = rows[0].keys()
    missing = [c for c in target.columns if c not in expected]
    if missing:
        raise ValueError(f"batch lacks key columns {missing}")
    if any(row.keys() != expected for row in rows):
        raise ValueError("every row of a batch must have the same columns")
    values = {c: clean_column([row[c] for row in rows], f"{table}.{c}") for c in columns}
    key_values = [values[c] for c in target.columns]
    row_keys = list(zip(*key_values))
    last_row_of = dict(zip(row_keys, range(len(rows))))  # a later duplicate overrides
    sortable = list(zip(*(_sortable(column) for column in key_values)))
    picked = sorted(last_row_of.values(), key=sortable.__getitem__)
    position = dict(zip(picked, range(len(picked))))
    index = [position[last_row_of[k]] for k in row_keys]
    values = {c: [column[i] for i in picked] for c, column in values.items()}
    return Batch(table, target, columns, values, index, update)


def _sortable(column: list[Any]) -> list[Any]:
    # None compares with nothing: it sorts first, as (False, 0) before every (True, value).
    if None not in column:
        return column
    return [(False, 0) if v is None else (True, v) for v in column]


class JsonText(str):
    """A list or dict, cleaned and serialised as JSON text, as both backends send it."""


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _string_list_json(values: list | tuple) -> str | None:
    """JSON of a list of clean strings, built as one piece; None when the encoder must do it.

    The encoder makes a chunk per item before joining them, and the cleaning
    check copies the text twice: for a package's tens of thousands of paths,
    several times the text's own size. This allocates the text once.
    """
    if not values or set(map(type, values)) != {str} or max(map(len, values)) > MAX_TEXT:
        return None
    last = len(values) - 1
    if last:
        text = '","'.join(chain((f'["{values[0]}',), islice(values, 1, last), (f'{values[-1]}"]',)))
    else:
        text = f'["{values[0]}"]'
    # No quote or backslash inside a string, printable ASCII (no copy, unlike _printable_ascii): nothing to escape.
    if "\\" in text or text.count('"') != 2 * len(values) or not (text.isascii() and text.isprintable()):
        return None
    return text


def json_text(value: Any) -> JsonText:
    if isinstance(value, (list, tuple)) and len(value) > 64:
        text = _string_list_json(value)
        if text is not None:
            return JsonText(text)
    text = _dumps(value)
    # The encoder writes every character that is not printable ASCII as a backslash
    # escape, and no string inside a text this short is over-long: only then is there
    # anything to clean.
    if len(text) > MAX_TEXT or "\\" in text:
        text = _dumps(clean_value(value))
    return JsonText(text)


def clean_column(values: list[Any], where: str = "a column") -> list[Any]:
    """``values`` cleaned (see ``clean_value``) and range-checked; lists and dicts become ``JsonText``."""
    kinds = set(map(type, values))
    if int in kinds or not kinds <= _SCALARS:
        check_int64(values, where, kinds)
    if kinds <= _SCALARS:
        if str not in kinds:
            return values
        texts = [v for v in values if type(v) is str]
        joined = "".join(texts)
        if _printable_ascii(joined) and max(map(len, texts)) <= MAX_TEXT:
            return values
    return [json_text(v) if isinstance(v, _CONTAINERS) else clean_value(v) for v in values]


_SCALARS = {str, int, float, bool, type(None)}
_INT_OR_NONE = {int, type(None)}
_CONTAINERS = (list, tuple, dict)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


quote_ident = _quote


# -- named queries -----------------------------------------------------------------

_QUERY_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """``-- name: xyz`` blocks of a .sql file."""
    queries: dict[str, str] = {}
    matches = list(_QUERY_NAME.finditer(text))
    for match, following in zip(matches, [*matches[1:], None]):
        body = text[match.end() : following.start() if following else len(text)]
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        queries[match.group(1)] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def queries_for(dialect: str) -> dict[str, str]:
    """Portable queries of ``sql/queries/*.sql``, overridden by ``sql/<dialect>/queries/*.sql``."""
    root = sql_root()
    queries: dict[str, str] = {}
    for directory in (root / "queries", root / dialect / "queries"):
        for path in sorted(directory.glob("*.sql")):
            queries.update(parse_queries(path.read_text(encoding="utf-8")))
    return queries


def query_text(dialect: str, name: str) -> str:
    try:
        return queries_for(dialect)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries/ or sql/{dialect}/queries/") from None


# -- choosing and opening a backend ----------------------------------------------------

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_KEYWORD_RE = re.compile(r"(^|\s)([A-Za-z_]+)\s*=")


def is_postgres_dsn(dsn: str) -> bool:
    """PostgreSQL or SQLite, decided from the DSN text as the original agent does.

    Text that looks like a mistyped PostgreSQL DSN (``postgresql:/…``, ``user:pw@host``)
    is refused rather than taken for an SQLite file name, which would create a
    file named after it and print it, password included.
    """
    from situation.connection.dsn import LIBPQ_OPTIONS
    from situation.errors import ConfigError

    text = dsn.strip()
    if text.startswith(("postgres://", "postgresql://")):
        return True
    if text.startswith("file:") or text.endswith(_SQLITE_SUFFIXES) or text == ":memory:":
        return False
    if any(match[2] in LIBPQ_OPTIONS for match in _KEYWORD_RE.finditer(text)):
        return True
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"unsupported scheme {scheme}:// in the DSN; use postgresql://… for PostgreSQL "
            "or a file path (.db, .sqlite) for SQLite"
        )
    if text.lower().startswith("postgres") or "@" in text:
        raise ConfigError(
            "the DSN looks like a mistyped PostgreSQL URI; write postgresql://user@host:5432/dbname "
            "(or give an SQLite path ending in .db or .sqlite)"
        )
    return False


async def open_store(
    dsn: str,
    agent_id: str,
    *,
    migrate: bool = True,
    max_size: int = 4,
    statement_cache: bool = True,
) -> Store:
    """The store for ``dsn``: migrated first (owner) or checked (``migrate=False``, agents)."""
    postgres = is_postgres_dsn(dsn)
    await asyncio.to_thread(queries_for, "postgres" if postgres else "sqlite")  # file reads, once
    if not postgres:
        from situation.store.sqlite import SqliteStore

        return await SqliteStore.open(sqlite_path(dsn), agent_id, migrate=migrate)
    from situation.connection import migrations
    from situation.connection.connect import direct_connection
    from situation.connection.dsn import parse_dsn
    from situation.store.postgres import PostgresStore

    params = await asyncio.to_thread(parse_dsn, dsn)  # may read a service file
    if migrate:
        async with direct_connection(params) as connection, direct_connection(params, "migrate lock") as holder:
            await migrations.migrate(connection, lock_holder=holder)
    store = await PostgresStore.open(params, agent_id, max_size=max_size, statement_cache=statement_cache)
    if not migrate:
        try:
            async with store.pool.acquire() as connection:
                await migrations.verify_agent_schema(connection)
        except BaseException:
            await store.close()
            raise
    return store


def sqlite_path(dsn: str) -> str:
    text = dsn.strip()
    if text.startswith("file:"):
        text = text[len("file:"):]
        if text.startswith("//"):
            text = text[2:]
        text = text.split("?", 1)[0]
    return text
