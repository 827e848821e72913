"""The migrations build exactly the schema that chatd/db/schema.py describes, and run safely twice."""

from __future__ import annotations

from typing import Any

import trio
from sqlalchemy import Index
from sqlalchemy.dialects import postgresql

from chatd.db import schema
from chatd.db.bridge import Connection
from chatd.db.migrate import load_migrations, migrate, status
from tests.support import open_db

_COLUMNS = """
SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""
_INDEXES = """
SELECT t.relname AS table, i.relname AS index, ix.indisunique AS unique, ix.indisprimary AS primary,
       array(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord) AS columns
FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'
"""
_FOREIGN_KEYS = """
SELECT cl.relname AS table, a.attname AS column, rt.relname AS ref_table
FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid JOIN pg_class rt ON rt.oid = co.confrelid
JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = co.conkey[1]
WHERE co.contype = 'f'
"""


async def _catalog(db: Any) -> tuple[list[Any], list[Any], list[Any]]:
    async def unit(conn: Connection) -> tuple[list[Any], list[Any], list[Any]]:
        return (list(await conn.fetch(_COLUMNS)), list(await conn.fetch(_INDEXES)),
                list(await conn.fetch(_FOREIGN_KEYS)))

    return await db.read(unit)


def _type_name(column: Any) -> str:
    return str(column.type.compile(dialect=postgresql.dialect())).lower()


async def test_migrations_match_the_sqlalchemy_schema(db_url: str) -> None:
    async with open_db(db_url) as db:
        columns, indexes, fks = await _catalog(db)
    actual_columns = {(r["table"], r["column"]): (r["type"], r["nullable"]) for r in columns}
    expected_columns = {
        (table.name, column.name): (_type_name(column), bool(column.nullable))
        for table in schema.metadata.tables.values()
        for column in table.columns
    }
    assert actual_columns == expected_columns

    actual_pks = {r["table"]: list(r["columns"]) for r in indexes if r["primary"]}
    expected_pks = {t.name: [c.name for c in t.primary_key.columns] for t in schema.metadata.tables.values()}
    assert actual_pks == expected_pks

    actual_indexes = {(r["table"], r["index"]): r["unique"] for r in indexes if not r["primary"]}
    expected_indexes = {
        (t.name, ix.name): bool(ix.unique) for t in schema.metadata.tables.values() for ix in t.indexes
        if isinstance(ix, Index)
    }
    assert actual_indexes == expected_indexes
    for t in schema.metadata.tables.values():
        for ix in t.indexes:
            plain = [c.name for c in ix.columns]
            if plain and all(e is c for e, c in zip(ix.expressions, ix.columns)):
                found = [list(r["columns"]) for r in indexes if r["index"] == ix.name]
                assert found == [plain], ix.name

    actual_fks = {(r["table"], r["column"], r["ref_table"]) for r in fks}
    expected_fks = {
        (t.name, fk.parent.name, fk.column.table.name)
        for t in schema.metadata.tables.values() for fk in t.foreign_keys
    }
    assert actual_fks == expected_fks


async def test_migrate_twice_and_concurrently_is_safe(db_url: str) -> None:
    async with open_db(db_url) as db:
        assert await migrate(db) == []  # the template was migrated already
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(migrate, db)
        states = await status(db)
    assert [s.version for s in states] == [m.version for m in load_migrations()]
    assert all(s.applied_at is not None for s in states)
