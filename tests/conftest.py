"""Test infrastructure: one real PostgreSQL for the session, a fresh database per test.

The server is the embedded one (chatd's own launcher, as `chatd serve` uses),
or the one named by CHATD_TEST_DATABASE_URL. A template database is migrated
once; each test gets a copy (CREATE DATABASE ... TEMPLATE, tens of ms). At the
end of the session `chatd verify`'s checks run on every database the tests
left behind, except those a test broke on purpose: the invariants must hold
after everything the suite did.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from chatd.db.bridge import Database, open_bridge
from chatd.db.migrate import migrate
from chatd.db.stores import Stores
from chatd.testing import admin as _admin
from chatd.testing import with_database  # tests/test_cli.py imports it from here

TEMPLATE = f"chatd_test_template_{os.getpid()}"
_counter = itertools.count(1)


async def _migrate(dsn: str) -> None:
    async with open_bridge():
        db = await Database.connect(dsn, min_size=1, max_size=1)
        try:
            await migrate(db)
        finally:
            await db.close()


async def _verify(dsn: str) -> list[str]:
    async with open_bridge():
        db = await Database.connect(dsn, min_size=1, max_size=1)
        try:
            return await Stores.over(db).checks.verify()
        finally:
            await db.close()


class Databases:
    """Hands out fresh migrated databases; remembers them for the final verify."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.created: list[str] = []
        self.broken: set[str] = set()

    def fresh(self) -> str:
        name = f"chatd_test_{os.getpid()}_{next(_counter)}"
        _admin(self.server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
        self.created.append(name)
        return with_database(self.server_dsn, name)

    def mark_broken(self, dsn: str) -> None:
        self.broken.add(urlsplit(dsn).path.lstrip("/"))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the session's PostgreSQL server (database name to be replaced)."""
    url = os.environ.get("CHATD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from chatd.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")))
    dsn = embedded.acquire()
    try:
        yield dsn
    finally:
        embedded.release()


@pytest.fixture(scope="session")
def databases(pg_server: str) -> Iterator[Databases]:
    _admin(pg_server, f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"')
    trio.run(_migrate, with_database(pg_server, TEMPLATE))
    dbs = Databases(pg_server)
    yield dbs
    problems = []
    for name in dbs.created:
        if name in dbs.broken:
            continue
        for line in trio.run(_verify, with_database(pg_server, name)):
            problems.append(f"{name}: {line}")
    drops = [f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in dbs.created]
    _admin(pg_server, *drops, f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
    assert not problems, "chatd verify failed on databases the tests left behind:\n" + "\n".join(problems)


@pytest.fixture
def db_url(databases: Databases) -> str:
    """A fresh, migrated database for this test."""
    return databases.fresh()
