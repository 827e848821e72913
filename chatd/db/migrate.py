"""Schema migrations: ``migrations/NNNN_name.sql`` applied in order, once.

All pending files are applied in one transaction under a transaction-level
advisory lock, so two processes migrating at once (``chatd serve`` on two
nodes, or ``serve`` and ``migrate``) serialise: the second finds the work done.
Each applied file is recorded with a checksum; a file edited after it was
applied is refused rather than silently diverging.

Rolling upgrades: nodes of the previous release keep serving while a node of
the new one migrates the schema, so migrations within a release line only add
(tables, nullable columns, functions under new names). Each file may declare,
in comment lines of its own (left out of its checksum, so adding them to an
applied file changes nothing)::

    -- release: 0.2        the release that introduced it (`chatd migrate --status`)
    -- min_reader: 1       the lowest READER_LEVEL that still works with the schema
                           after it (default 1: additive, every chatd serves on)

Both are recorded in ``schema_migrations``. A migration that removes or
changes what older code uses (dropping a column, a function) declares a
``min_reader`` above the level of the releases that used it; a node whose
:data:`READER_LEVEL` is below the highest ``min_reader`` in the database
refuses to start (:class:`MigrationError`, one line), and its ``/readyz``
turns 503 if that happens under it. Migrations this node does not know but
may read (a newer release's additions) are accepted: their checksums are the
newer node's to check.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from chatd.db.bridge import Connection, Database
from chatd.errors import ChatdError

#: Arbitrary constant key of the advisory lock that serialises migrators.
MIGRATION_LOCK_KEY = 0x63686174_6D696772  # "chatmigr"

#: The schema level this chatd's code reads. Raise it in the release that stops
#: using what a later breaking migration (``-- min_reader: N``) removes.
READER_LEVEL = 1

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: A header line declaring the release or the reader level (left out of the checksum).
_DIRECTIVE_RE = re.compile(r"^--[ \t]*(release|min_reader):[ \t]*(\S+)[ \t]*$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# Added by the release that introduced rolling upgrades; older nodes insert
# without them (NULL release, reader level 1: they only ever apply additions).
_ADD_COLUMNS = """
ALTER TABLE schema_migrations
    ADD COLUMN IF NOT EXISTS release    text,
    ADD COLUMN IF NOT EXISTS min_reader integer NOT NULL DEFAULT 1
"""
_LOCK = "SELECT pg_advisory_xact_lock($1)"
# SELECT *: a database migrated only by older nodes has no release/min_reader yet.
_APPLIED = "SELECT * FROM schema_migrations ORDER BY version"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum, release, min_reader) VALUES ($1, $2, $3, $4, $5)"
_HAS_COLUMNS = """
SELECT count(*) = 2 FROM pg_attribute
WHERE attrelid = 'schema_migrations'::regclass AND attname IN ('release', 'min_reader') AND NOT attisdropped
"""
_TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"


class MigrationError(ChatdError):
    code, status = "migration", 500


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Of the SQL without its ``release``/``min_reader`` lines."""
        body = "".join(line for line in self.sql.splitlines(keepends=True) if not _DIRECTIVE_RE.match(line))
        return hashlib.sha256(body.encode()).hexdigest()

    @property
    def release(self) -> str | None:
        return self._directives().get("release")

    @property
    def min_reader(self) -> int:
        return int(self._directives().get("min_reader", "1"))

    def _directives(self) -> dict[str, str]:
        return {m[1]: m[2] for line in self.sql.splitlines() if (m := _DIRECTIVE_RE.match(line))}


@attrs.frozen
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None
    release: str | None = None
    min_reader: int = 1
    #: False for a migration of a newer chatd, found applied in the database.
    known: bool = True


@attrs.frozen
class _Applied:
    """A ``schema_migrations`` row, read whether or not it has the newer columns."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    release: str | None
    min_reader: int

    @classmethod
    def of(cls, row: Any) -> _Applied:
        return cls(
            row["version"], row["name"], row["checksum"], row["applied_at"],
            row.get("release"), row.get("min_reader") or 1,
        )


def migrations_dir() -> Path:
    """Where the SQL files are: installed inside the package (``chatd/migrations``,
    see pyproject.toml), or the source tree's top-level ``migrations/``."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "migrations"
    if installed.is_dir():
        return installed
    return package.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        migration = Migration(int(match[1]), match[2], path.read_text(encoding="utf-8"))
        try:
            level = migration.min_reader
        except ValueError:
            raise MigrationError(f"migration {path.name}: min_reader is not a whole number") from None
        if level > READER_LEVEL:
            raise MigrationError(f"migration {path.name} needs reader level {level}; this chatd reads {READER_LEVEL}")
        found.append(migration)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


def unreadable(applied: list[_Applied], reader_level: int = READER_LEVEL) -> str | None:
    """Why this chatd cannot serve on a schema with these migrations, or None when it can."""
    for row in applied:
        if row.min_reader > reader_level:
            release = f" (release {row.release})" if row.release else ""
            return (
                f"the database's schema is newer than this chatd understands: migration "
                f"{row.version:04d}_{row.name}{release} needs schema reader level {row.min_reader}, "
                f"this chatd reads level {reader_level}; upgrade chatd"
            )
    return None


def _check_applied(applied: list[_Applied], known: list[Migration], reader_level: int) -> None:
    problem = unreadable(applied, reader_level)
    if problem is not None:
        raise MigrationError(problem)
    by_version = {m.version: m for m in known}
    for row in applied:
        migration = by_version.get(row.version)
        # One this chatd does not know, but readable: a newer release's addition.
        if migration is not None and migration.checksum != row.checksum:
            raise MigrationError(f"migration {row.version:04d}_{migration.name} changed after it was applied")


async def migrate(
    db: Database, known: list[Migration] | None = None, *, reader_level: int = READER_LEVEL
) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call.

    Refuses (:class:`MigrationError`) a database whose schema needs a higher
    reader level than ``reader_level``, before changing anything.
    """
    known = known if known is not None else load_migrations()

    async def unit(conn: Connection) -> list[Migration]:
        await conn.execute(_LOCK, MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        if not await conn.fetchval(_HAS_COLUMNS):  # ALTER would lock the table even with IF NOT EXISTS
            await conn.execute(_ADD_COLUMNS)
        applied = [_Applied.of(r) for r in await conn.fetch(_APPLIED)]
        _check_applied(applied, known, reader_level)
        done = {row.version for row in applied}
        pending = [m for m in known if m.version not in done]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(
                _RECORD, migration.version, migration.name, migration.checksum, migration.release,
                migration.min_reader,
            )
        return pending

    return await db.transaction(unit)


async def _applied(db: Database) -> list[_Applied]:
    async def unit(conn: Connection) -> list[_Applied]:
        if not await conn.fetchval(_TABLE_EXISTS):
            return []
        return [_Applied.of(r) for r in await conn.fetch(_APPLIED)]

    return await db.read(unit)


async def status(db: Database, known: list[Migration] | None = None) -> list[MigrationState]:
    """Every known migration with when it was applied (None: pending) and its release,
    then those applied by a newer chatd that this one does not know."""
    known = known if known is not None else load_migrations()
    applied = {row.version: row for row in await _applied(db)}
    states = []
    for m in known:
        row = applied.pop(m.version, None)
        states.append(MigrationState(m.version, m.name, row.applied_at if row else None, m.release, m.min_reader))
    for row in applied.values():
        states.append(MigrationState(row.version, row.name, row.applied_at, row.release, row.min_reader, known=False))
    return sorted(states, key=lambda s: s.version)


async def is_current(
    db: Database, known: list[Migration] | None = None, *, reader_level: int = READER_LEVEL
) -> bool:
    """Every known migration applied, and nothing applied that this chatd cannot read (for /readyz)."""
    known = known if known is not None else load_migrations()
    applied = await _applied(db)
    done = {row.version for row in applied}
    return all(m.version in done for m in known) and unreadable(applied, reader_level) is None
