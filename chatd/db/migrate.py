"""Schema migrations: ``migrations/NNNN_name.sql`` applied in order, once.

All pending files are applied in one transaction under a transaction-level
advisory lock, so two processes migrating at once (``chatd serve`` on two
nodes, or ``serve`` and ``migrate``) serialise: the second finds the work done.
Each applied file is recorded with a checksum; a file edited after it was
applied is refused rather than silently diverging.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

import attrs

from chatd.db.bridge import Connection, Database
from chatd.errors import ChatdError

#: Arbitrary constant key of the advisory lock that serialises migrators.
MIGRATION_LOCK_KEY = 0x63686174_6D696772  # "chatmigr"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_APPLIED = "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
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
        return hashlib.sha256(self.sql.encode()).hexdigest()


@attrs.frozen
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None


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
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


def _check_applied(applied: dict[int, str], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    for version, checksum in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}, which this chatd does not know (newer chatd?)"
            )
        if migration.checksum != checksum:
            raise MigrationError(f"migration {version:04d}_{migration.name} changed after it was applied")


async def migrate(db: Database, known: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call."""
    known = known if known is not None else load_migrations()

    async def unit(conn: Connection) -> list[Migration]:
        await conn.execute(_LOCK, MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(_APPLIED)}
        _check_applied(applied, known)
        pending = [m for m in known if m.version not in applied]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(_RECORD, migration.version, migration.name, migration.checksum)
        return pending

    return await db.transaction(unit)


async def status(db: Database, known: list[Migration] | None = None) -> list[MigrationState]:
    """Every known migration with when it was applied (None: pending)."""
    known = known if known is not None else load_migrations()

    async def unit(conn: Connection) -> dict[int, datetime]:
        if not await conn.fetchval(_TABLE_EXISTS):
            return {}
        return {r["version"]: r["applied_at"] for r in await conn.fetch(_APPLIED)}

    applied = await db.read(unit)
    return [MigrationState(m.version, m.name, applied.get(m.version)) for m in known]


async def is_current(db: Database, known: list[Migration] | None = None) -> bool:
    return all(s.applied_at is not None for s in await status(db, known))
