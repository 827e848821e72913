"""Rolling upgrades: what a node does with a schema migrated by a newer (or older) chatd.

- A migration this chatd does not know but may read (a newer release's
  addition) is accepted and shown by ``chatd migrate --status``.
- A schema that needs a higher reader level is refused: ``chatd serve`` and
  ``chatd migrate`` exit 1 with one ``chatd: error:`` line, and a node already
  serving turns ``/readyz`` 503.
- A node of the previous schema (the code of an earlier commit, from git) and a
  node of the current one serve the same database at once.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.db.migrate import READER_LEVEL, Migration, is_current, load_migrations, migrate, status
from chatd.testing import admin, with_database
from tests.conftest import Databases
from tests.processes import REPO, Serving, seed_channel, serving
from tests.support import open_db
from tests.test_cli import chatd, query
from tests.test_cluster import Device, inbox_of, send_all

FUTURE = "INSERT INTO schema_migrations (version, name, checksum, release, min_reader) VALUES ($1, $2, 'x', $3, $4)"


async def test_a_newer_additive_migration_is_accepted_and_listed(tmp_path: Path, db_url: str) -> None:
    await query(db_url, FUTURE, 9998, "from_the_future", "9.9", READER_LEVEL)
    async with open_db(db_url) as db:
        assert await migrate(db) == []
        assert await is_current(db)
        states = await status(db)
    assert [(s.version, s.known) for s in states][-1] == (9998, False)
    listed = await chatd(tmp_path, db_url, "migrate", "--status")
    assert listed.rc == 0, listed
    known = load_migrations()
    assert listed.lines[0].split("\t")[2] == f"release {known[0].release}" == "release 0.1"
    assert listed.lines[-1].split("\t")[0] == "9998_from_the_future"
    assert listed.lines[-1].split("\t")[2:] == ["release 9.9", "from a newer chatd"]


async def test_a_schema_needing_a_newer_reader_is_refused(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, {"CHATD_NODE_NAME": "old"}) as node:
        async with httpx.AsyncClient(base_url=node.url) as client:
            assert (await client.get("/readyz")).status_code == 200
            # A newer release drops something this one uses, while this node serves:
            await query(db_url, FUTURE, 9999, "drop_something", "9.9", READER_LEVEL + 1)
            assert (await client.get("/readyz")).status_code == 503
    for command in ("migrate", "serve"):
        result = await chatd(tmp_path, db_url, command, env={"CHATD_SERVER_PORT": "0"})
        line = result.err.splitlines()[-1] if result.err else ""
        assert result.rc == 1 and "Traceback" not in result.err, result
        assert line == (
            "chatd: error: the database's schema is newer than this chatd understands: migration "
            f"9999_drop_something (release 9.9) needs schema reader level {READER_LEVEL + 1}, "
            f"this chatd reads level {READER_LEVEL}; upgrade chatd"
        ), result
        if command == "migrate":
            result.assert_one_line_error()
    async with open_db(db_url) as db:
        assert not await is_current(db)


def test_a_migration_file_declares_its_release_and_reader_level_outside_its_checksum() -> None:
    body = "CREATE TABLE t (id int);\n"
    plain = Migration(8, "t", body)
    marked = Migration(8, "t", "-- release: 0.2\n-- min_reader: 2\n" + body)
    assert plain.checksum == marked.checksum
    assert (plain.release, plain.min_reader) == (None, 1)
    assert (marked.release, marked.min_reader) == ("0.2", 2)


# --- a node of the previous schema beside a current one ------------------------------------------


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True).stdout


def previous_schema_commit() -> str | None:
    """The newest commit whose migrations are a strict prefix of the current ones, unchanged.

    Walks the commits that touched ``migrations/`` (newest first) and takes the
    parent of each: the first whose files are a proper subset of today's, each
    with today's checksum, is the code of the release before the newest
    migration. None without git or such a commit (a shallow clone).
    """
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    current = {m.version: m.checksum for m in load_migrations()}
    try:
        commits = _git("log", "--format=%H", "--", "migrations/").decode().split()
        for commit in commits:
            parent = f"{commit}^"
            try:
                names = _git("ls-tree", "--name-only", parent, "migrations/").decode().split()
            except subprocess.CalledProcessError:
                continue  # the root commit
            old = {}
            for path in names:
                name = Path(path).name
                version = int(name[:4])
                old[version] = Migration(version, name[5:-4], _git("show", f"{parent}:{path}").decode()).checksum
            if old and len(old) < len(current) and all(current.get(v) == c for v, c in old.items()):
                return _git("rev-parse", parent).decode().strip()
    except (subprocess.CalledProcessError, ValueError):
        return None
    return None


async def test_a_node_of_the_previous_schema_and_a_current_one_serve_one_database(
    tmp_path: Path, databases: Databases, db_url: str
) -> None:
    commit = await trio.to_thread.run_sync(previous_schema_commit)
    if commit is None:
        pytest.skip("no git history with an earlier migration set (shallow clone?)")
    tree = tmp_path / "previous"
    tree.mkdir()
    archive = await trio.to_thread.run_sync(_git, "archive", "--format=tar", commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    old_known = len(list((tree / "migrations").glob("*.sql")))

    # An empty database (the fixture's is migrated already): verified and dropped at the session's end.
    name = db_url.rsplit("/", 1)[1] + "_upgrade"
    empty = with_database(db_url, name)
    await trio.to_thread.run_sync(admin, db_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    databases.created.append(name)

    old_cwd = tmp_path / "node-old"
    old_cwd.mkdir()
    # The previous commit's tree first on the path: `python -m chatd serve` runs its code.
    async with serving(old_cwd, empty, {"CHATD_NODE_NAME": "node-old", "PYTHONPATH": str(tree)}) as old:
        rows = await query(empty, "SELECT version FROM schema_migrations")
        assert len(rows) == old_known  # the previous release's schema, by the previous release's code:
        columns = await query(empty, "SELECT column_name FROM information_schema.columns "
                                     "WHERE table_name = 'schema_migrations'")
        old_code_records_levels = "min_reader" in (tree / "chatd" / "db" / "migrate.py").read_text()
        assert ("min_reader" in {r["column_name"] for r in columns}) == old_code_records_levels
        # The current node starts on it and migrates, while the old node serves.
        async with serving(tmp_path, empty, {"CHATD_NODE_NAME": "node-new"}) as new:
            async with open_db(empty) as db:
                assert await is_current(db)
            ids, channel, tokens = await seed_channel(empty, ("alice", "bob", "carol"))
            await both_serve(old, new, empty, ids, channel, tokens)
            async with httpx.AsyncClient() as client:
                assert (await client.get(old.url + "/readyz")).status_code == 200
                assert (await client.get(new.url + "/readyz")).status_code == 200
    verified = await chatd(tmp_path, empty, "verify")
    assert verified.rc == 0, verified


async def both_serve(old: Serving, new: Serving, db_url: str, ids: list[int], channel: int, tokens: list[str]) -> None:
    """Devices on each node receive, exactly once and in order, what senders on both nodes send."""
    bob_old, carol_new = Device(tokens[1]), Device(tokens[2])
    final = 1 + 20 + 20
    acks: list[Any] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: bob_old.follow(old.url, until=final))
            nursery.start_soon(lambda: carol_new.follow(new.url, until=final))

            async def send(url: str, prefix: str) -> None:
                acks.extend(await send_all(url, tokens[0], channel, [f"{prefix}{i}" for i in range(20)]))

            nursery.start_soon(send, old.url, "old")
            nursery.start_soon(send, new.url, "new")
    assert len(acks) == 40
    assert bob_old.events == await inbox_of(db_url, ids[1])
    assert carol_new.events == await inbox_of(db_url, ids[2])
