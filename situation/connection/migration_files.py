"""The build's migration files, and what of them a database still lacks (both backends; no driver).

Files are ``sql/<dialect>/NNNN_description.sql``, numbered 1, 2, 3 … without
gaps. A database's history is checked against them by sha256: an edited file,
a gap, or a database newer than this build is refused instead of guessed at.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from situation.errors import MigrationError

NO_TRANSACTION_MARK = "-- situation:no-transaction"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(NO_TRANSACTION_MARK)

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str
    duration_ms: int


def sql_root() -> Path:
    """The ``sql/`` tree: inside the installed package, or beside it in a checkout."""
    packaged = resources.files("situation").joinpath("sql")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "sql"


def read_sql(name: str, dialect: str = "postgres") -> str:
    return (sql_root() / dialect / name).read_text(encoding="utf-8")


def load_migrations(dialect: str = "postgres", directory: Path | None = None) -> list[Migration]:
    """The build's migrations, in order; numbering must run 1, 2, 3 … without gaps."""
    directory = directory or sql_root() / dialect
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        raw = path.read_bytes()
        text = raw.decode("utf-8").replace("\r\n", "\n")
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        migrations.append(Migration(int(match.group(1)), match.group(2), text, checksum))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration files in {directory} skip from {expected - 1:04d} to {migration.version:04d}; "
                "this build is broken, reinstall situation"
            )
    return migrations


def latest_version(dialect: str = "postgres") -> int:
    migrations = load_migrations(dialect)
    return migrations[-1].version if migrations else 0


def plan(migrations: list[Migration], history: list[Applied]) -> list[Migration]:
    """What is left to apply, after refusing drift, gaps and a newer database."""
    known = {m.version: m for m in migrations}
    newest_known = migrations[-1].version if migrations else 0
    for row in history:
        if row.version > newest_known:
            raise MigrationError(
                f"database schema is at version {max(r.version for r in history)}, newer than this build "
                f"({newest_known}); upgrade situation before migrating"
            )
        migration = known.get(row.version)
        if migration is None:  # below 1: no file was ever numbered so
            raise MigrationError(
                f"database migration history holds version {row.version}, which no migration has (they start at 0001); "
                "it was changed by hand: delete that row from schema_migrations before migrating"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {migration.filename} was changed after it was applied "
                f"(checksum {row.checksum[:12]}… in the database, {migration.checksum[:12]}… in this build); "
                "restore the original file: applied migrations must never be edited"
            )
    applied_versions = sorted(row.version for row in history)
    if applied_versions != list(range(1, len(applied_versions) + 1)):
        missing = sorted(set(range(1, applied_versions[-1] + 1)) - set(applied_versions))
        raise MigrationError(
            f"database migration history has a gap (missing {', '.join(f'{v:04d}' for v in missing)}); "
            "it was changed by hand, restore it before migrating"
        )
    return [m for m in migrations if m.version > len(applied_versions)]
