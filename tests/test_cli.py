"""The ``chatd`` command line (PROTOCOL §8, §9), run as real subprocesses.

Every command runs as ``python -m chatd`` in a temporary directory (so no
``chatd.toml`` is picked up) against the test's own database through
``CHATD_DATABASE_URL``. Exit codes are the contract: 0 success, 1 a failure
explained in one line on stderr (``chatd: error: ...``), 2 a usage error.
``chatd serve`` is checked from outside: its one stdout line, ``/healthz``, and
the graceful stop on SIGTERM/SIGINT with real WebSocket clients sending. Every
process a test starts is ended by its own pid in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatd.db.bridge import Connection
from chatd.db.migrate import load_migrations
from chatd.db.stores import Stores
from chatd.services.auth import token_hash
from tests.conftest import Databases, with_database
from tests.processes import Serving, cli_env, seed_channel, serving
from tests.support import open_db, running_server

CLEAN_CLOSE_CODES = {1000, 1001, 1012}


# --- running the command ----------------------------------------------------------------


@attrs.frozen
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def assert_one_line_error(self, *fragments: str) -> str:
        """Exit 1 with exactly one stderr line, ``chatd: error: ...``, containing each fragment."""
        assert self.rc == 1, self
        err_lines = self.err.splitlines()
        assert len(err_lines) == 1, self
        assert err_lines[0].startswith("chatd: error: "), self
        for fragment in fragments:
            assert fragment in err_lines[0], self
        return err_lines[0]


async def chatd(
    cwd: Path,
    db_url: str,
    *args: str,
    stdin: bytes | int = b"",
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Result:
    """Run ``python -m chatd ARGS`` to completion (killed by trio if it overruns)."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [sys.executable, "-m", "chatd", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd,
            env=cli_env(db_url, env),
        )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def chatd_all(cwd: Path, db_url: str, *commands: tuple[str, ...], **kwargs: Any) -> list[Result]:
    """Run several independent commands at once (they take ~1 s each to start)."""
    results: list[Result | None] = [None] * len(commands)

    async def one(i: int, args: tuple[str, ...]) -> None:
        results[i] = await chatd(cwd, db_url, *args, **kwargs)

    async with trio.open_nursery() as nursery:
        for i, args in enumerate(commands):
            nursery.start_soon(one, i, args)
    return [r for r in results if r is not None]


async def add_users(cwd: Path, db_url: str, *names: str) -> None:
    for result in await chatd_all(
        cwd, db_url, *[("user", "add", name, "--password-stdin") for name in names], stdin=b"pw-" + b"x" * 8 + b"\n"
    ):
        assert result.rc == 0, result


def user_rows(result: Result) -> dict[str, tuple[int, str, str]]:
    """``user list`` as {username: (user_id, display_name, flags)}."""
    assert result.rc == 0, result
    rows = {}
    for line in result.lines:
        user_id, username, display_name, flags = line.split("\t")
        rows[username] = (int(user_id), display_name, flags)
    return rows


# --- direct database access for setting up and inspecting ----------------------------------


async def query(db_url: str, sql: str, *args: Any) -> list[Any]:
    async with open_db(db_url) as db:

        async def unit(conn: Connection) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await db.transaction(unit)


def _server_admin(db_url: str, statement: str) -> None:
    async def run() -> None:
        parts = urlsplit(db_url)
        conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


# --- user ----------------------------------------------------------------------------------


async def test_user_add_list_and_failures(tmp_path: Path, db_url: str) -> None:
    added = await chatd(
        tmp_path, db_url, "user", "add", "alice", "--password-stdin", "--display-name", "Alice Liddell", "--admin",
        stdin=b"wonderland\n",
    )
    assert added.rc == 0, added
    assert "alice" in added.out and added.err == ""
    await add_users(tmp_path, db_url, "bob")

    duplicate, no_user = await chatd_all(
        tmp_path,
        db_url,
        ("user", "add", "alice", "--password-stdin"),
        ("user", "passwd", "nobody", "--password-stdin"),
        stdin=b"another-secret\n",
    )
    no_tty, empty = await chatd_all(
        tmp_path,
        db_url,
        ("user", "add", "carol"),  # no --password-stdin and stdin is not a terminal
        ("user", "add", "dave", "--password-stdin"),  # stdin holds no password at all
        stdin=subprocess.DEVNULL,
    )
    duplicate.assert_one_line_error("alice", "already exists")
    no_tty.assert_one_line_error("--password-stdin")
    empty.assert_one_line_error("password")
    no_user.assert_one_line_error("nobody")
    assert duplicate.out == no_tty.out == empty.out == no_user.out == ""

    rows = user_rows(await chatd(tmp_path, db_url, "user", "list"))
    assert set(rows) == {"alice", "bob"}  # neither carol nor dave was created
    assert rows["alice"][1:] == ("Alice Liddell", "admin")
    assert rows["bob"][1:] == ("bob", "")  # the display name defaults to the user name
    assert rows["alice"][0] < rows["bob"][0]
    async with open_db(db_url) as db:
        found = await Stores.over(db).users.credentials("alice")
    assert found is not None and found.user.is_admin and found.user.user_id == rows["alice"][0]


async def test_user_passwd_and_disable_over_http(tmp_path: Path, db_url: str) -> None:
    assert (await chatd(tmp_path, db_url, "user", "add", "alice", "--password-stdin", stdin=b"old-secret\n")).rc == 0
    changed = await chatd(tmp_path, db_url, "user", "passwd", "alice", "--password-stdin", stdin=b"new-secret\n")
    assert changed.rc == 0 and changed.err == "", changed
    token = await chatd(tmp_path, db_url, "token", "create", "alice")
    assert token.rc == 0, token

    async with running_server(db_url) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as client:

        async def login(password: str) -> httpx.Response:
            return await client.post(
                "/v1/login", json={"username": "alice", "password": password, "device_name": "laptop"}
            )

        assert (await login("old-secret")).status_code == 401
        ok = await login("new-secret")
        assert ok.status_code == 200, ok.text
        login_token = ok.json()["token"]
        for bearer in (login_token, token.out.strip()):
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {bearer}"})
            assert me.status_code == 200 and me.json()["username"] == "alice", me.text

        disabled = await chatd(tmp_path, db_url, "user", "disable", "alice")
        assert disabled.rc == 0 and disabled.err == "", disabled
        for bearer in (login_token, token.out.strip()):
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {bearer}"})
            assert me.status_code == 401, me.text
        assert (await login("new-secret")).status_code == 401

    again, unknown = await chatd_all(
        tmp_path, db_url, ("token", "create", "alice"), ("user", "disable", "nobody")
    )
    again.assert_one_line_error("alice", "disabled")
    assert again.out == ""
    unknown.assert_one_line_error("nobody")
    assert user_rows(await chatd(tmp_path, db_url, "user", "list"))["alice"][2] == "disabled"


# --- token ---------------------------------------------------------------------------------


async def test_token_create_prints_only_the_token(tmp_path: Path, db_url: str) -> None:
    await add_users(tmp_path, db_url, "alice")
    first, second, unknown = await chatd_all(
        tmp_path,
        db_url,
        ("token", "create", "alice", "--device-name", "phone"),
        ("token", "create", "alice"),
        ("token", "create", "nobody"),
    )
    for result in (first, second):
        assert result.rc == 0 and result.err == "", result
        assert re.fullmatch(r"[A-Za-z0-9_-]{20,}\n", result.out), result  # one line: the token, nothing else
    unknown.assert_one_line_error("nobody")
    assert unknown.out == ""
    tokens = [first.out.strip(), second.out.strip()]
    assert tokens[0] != tokens[1]

    devices = await query(
        db_url, "SELECT token_hash, name, user_id FROM devices WHERE token_hash = ANY($1)", [token_hash(t) for t in tokens]
    )
    names = {bytes(r["token_hash"]): r["name"] for r in devices}
    assert names == {token_hash(tokens[0]): "phone", token_hash(tokens[1]): "cli"}

    async with running_server(db_url) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
        for token in tokens:
            me = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200, me.text
            assert me.json() == {"user_id": devices[0]["user_id"], "username": "alice", "display_name": "alice",
                                 "is_admin": False}
        bad = await client.get("/v1/me", headers={"Authorization": f"Bearer {tokens[0]}x"})
        assert bad.status_code == 401


# --- channel -------------------------------------------------------------------------------


def channel_rows(result: Result) -> dict[str, list[str]]:
    assert result.rc == 0, result
    return {line.split("\t")[2]: line.split("\t") for line in result.lines}


async def test_channel_create_list_add(tmp_path: Path, db_url: str) -> None:
    await add_users(tmp_path, db_url, "alice", "bob", "carol")
    created = await chatd(tmp_path, db_url, "channel", "create", "general", "--member", "alice", "bob")
    assert created.rc == 0 and created.err == "", created
    assert "general" in created.out and "2 members" in created.out

    listed = channel_rows(await chatd(tmp_path, db_url, "channel", "list"))
    assert list(listed) == ["general"]
    channel_id = int(listed["general"][0])
    assert listed["general"][1:] == ["group", "general", "2 members", "0 messages", "created by alice"]

    added = await chatd(tmp_path, db_url, "channel", "add", "general", "carol")
    assert added.rc == 0 and added.err == "", added
    assert "3 members" in added.out

    bad_create, bad_add, bad_channel, listed_after = await chatd_all(
        tmp_path,
        db_url,
        ("channel", "create", "random", "--member", "alice", "zed"),
        ("channel", "add", "general", "bob", "zed"),
        ("channel", "add", "nowhere", "bob"),
        ("channel", "list"),
    )
    bad_create.assert_one_line_error("zed")
    bad_add.assert_one_line_error("zed")
    bad_channel.assert_one_line_error("nowhere")
    # Nothing of the failed commands was stored: no "random" channel, general has 3 members.
    after = channel_rows(listed_after)
    assert list(after) == ["general"] and after["general"][3] == "3 members"

    members = await query(
        db_url,
        "SELECT u.username FROM members m JOIN users u ON u.id = m.user_id WHERE m.channel_id = $1 ORDER BY 1",
        channel_id,
    )
    assert [r["username"] for r in members] == ["alice", "bob", "carol"]
    # carol learns of the channel through her inbox (a member event), like any member added over HTTP.
    events = await query(
        db_url,
        "SELECT i.kind FROM inbox i JOIN users u ON u.id = i.user_id WHERE u.username = 'carol' AND i.channel_id = $1",
        channel_id,
    )
    assert [r["kind"] for r in events] == ["member"]


# --- migrate -------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_reports_status(tmp_path: Path, db_url: str) -> None:
    known = load_migrations()
    first, second = [await chatd(tmp_path, db_url, "migrate") for _ in range(2)]
    for result in (first, second):
        assert result.rc == 0 and result.err == "", result
        assert result.lines == ["schema is up to date"]
    state = await chatd(tmp_path, db_url, "migrate", "--status")
    assert state.rc == 0, state
    assert [line.split("\t")[0] for line in state.lines] == [f"{m.version:04d}_{m.name}" for m in known]
    assert state.lines[0].startswith("0001_init\t")
    for line in state.lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.split("\t")[1]), line


async def test_two_concurrent_migrates_on_an_empty_database(
    tmp_path: Path, databases: Databases, db_url: str
) -> None:
    name = urlsplit(db_url).path.lstrip("/") + "_empty"
    empty_url = with_database(db_url, name)
    await trio.to_thread.run_sync(_server_admin, db_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    databases.mark_broken(empty_url)  # never in the verified list anyway; dropped below
    try:
        known = load_migrations()
        pending = await chatd(tmp_path, empty_url, "migrate", "--status")
        assert pending.rc == 0, pending
        assert pending.lines == [f"{m.version:04d}_{m.name}\tpending" for m in known]

        both = await chatd_all(tmp_path, empty_url, ("migrate",), ("migrate",))
        for result in both:
            assert result.rc == 0 and result.err == "", result
        assert sorted(r.out for r in both) == [f"applied {len(known)} migration(s)\n", "schema is up to date\n"]

        rows = await query(empty_url, "SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in known]
        verified = await chatd(tmp_path, empty_url, "verify")
        assert verified.rc == 0, verified
    finally:
        await trio.to_thread.run_sync(_server_admin, db_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- stats and verify -------------------------------------------------------------------------


async def test_stats_and_verify_on_a_healthy_database(tmp_path: Path, db_url: str) -> None:
    await seed_channel(db_url, ("alice", "bob", "carol"), messages=3)
    stats, verified = await chatd_all(tmp_path, db_url, ("stats",), ("verify",))
    assert stats.rc == 0 and stats.err == "", stats
    counts = dict(line.split("\t", 1) for line in stats.lines if not line.startswith("node "))
    assert counts["users"] == "3" and counts["channels"] == "1" and counts["messages"] == "3"
    assert verified.rc == 0 and verified.err == "", verified
    assert verified.out.startswith("ok")


BREAKAGES = [
    pytest.param(
        "DELETE FROM messages WHERE seq = 1", "channel seq not contiguous", id="message-deleted"
    ),
    pytest.param(
        "UPDATE users SET inbox_head = inbox_head + 1 WHERE username = 'bob'",
        "user inbox_seq not contiguous",
        id="inbox-head-ahead",
    ),
    pytest.param(
        "UPDATE members SET read_seq = 99", "receipt watermark past the channel's last_seq", id="watermark-past"
    ),
    pytest.param(
        "UPDATE members SET read_seq = 2, delivered_seq = 1",
        "read watermark past the delivered one",
        id="read-past-delivered",
    ),
]


@pytest.mark.parametrize(("statement", "problem"), BREAKAGES)
async def test_verify_names_what_is_broken(
    tmp_path: Path, databases: Databases, db_url: str, statement: str, problem: str
) -> None:
    await seed_channel(db_url, ("alice", "bob"), messages=2)
    databases.mark_broken(db_url)
    await query(db_url, statement)
    result = await chatd(tmp_path, db_url, "verify")
    line = result.assert_one_line_error(problem)
    assert line.startswith(f"chatd: error: {problem}: "), line
    # Further problems are counted on that line and listed on stdout.
    more = re.search(r" \(and (\d+) more\)$", line)
    assert len(result.lines) == (int(more[1]) if more else 0), result
    assert all(not ln.startswith("ok") for ln in result.lines)


# --- usage and configuration errors ------------------------------------------------------------


async def test_usage_errors_exit_2(tmp_path: Path, db_url: str) -> None:
    results = await chatd_all(
        tmp_path,
        db_url,
        (),
        ("frobnicate",),
        ("user",),
        ("user", "add"),
        ("token", "create"),
        ("channel", "create", "general"),  # --member is required
        ("migrate", "--bogus"),
    )
    for result in results:
        assert result.rc == 2, result
        assert result.out == "" and "usage: chatd" in result.err, result


async def test_configuration_errors_name_the_key(tmp_path: Path, db_url: str) -> None:
    unknown_dir = tmp_path / "unknown"
    unknown_dir.mkdir()
    (unknown_dir / "chatd.toml").write_text("[server]\nprot = 8080\n")
    typed_dir = tmp_path / "typed"
    typed_dir.mkdir()
    (typed_dir / "chatd.toml").write_text('[limits]\nmax_text_chars = "4000"\n')
    ok_dir = tmp_path / "ok"
    ok_dir.mkdir()
    (ok_dir / "chatd.toml").write_text("# every key has a default\n")

    async with trio.open_nursery() as nursery:
        results: dict[str, Result] = {}

        async def run(key: str, cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
            results[key] = await chatd(cwd, db_url, *args, env=env)

        def run_with_env(key: str, env: Mapping[str, str], *args: str) -> None:
            nursery.start_soon(partial(run, key, tmp_path, *args, env=env))

        nursery.start_soon(run, "unknown", unknown_dir, "stats")
        nursery.start_soon(run, "unknown-serve", unknown_dir, "serve")
        nursery.start_soon(run, "typed", typed_dir, "stats")
        run_with_env("env", {"CHATD_SERVER_PORT": "abc"}, "stats")
        run_with_env("env-unknown", {"CHATD_SERVER_PROT": "1"}, "stats")
        nursery.start_soon(run, "missing", tmp_path, "--config", str(tmp_path / "nope.toml"), "stats")
        nursery.start_soon(run, "empty-file", ok_dir, "stats")

    results["unknown"].assert_one_line_error("server.prot")
    results["unknown-serve"].assert_one_line_error("server.prot")
    assert results["unknown-serve"].out == ""  # it never started listening
    results["typed"].assert_one_line_error("limits.max_text_chars")
    results["env"].assert_one_line_error("server.port", "CHATD_SERVER_PORT", "abc")
    results["env-unknown"].assert_one_line_error("server.prot", "CHATD_SERVER_PROT")
    results["missing"].assert_one_line_error("nope.toml")
    assert results["empty-file"].rc == 0 and results["empty-file"].err == "", results["empty-file"]


# --- serve -------------------------------------------------------------------------------------


async def test_serve_prints_its_url_answers_and_stops_on_sigint(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, {"CHATD_NODE_NAME": "cli-sigint"}) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        assert port not in (0, 8080)
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        stats = await chatd(tmp_path, db_url, "stats")
        assert stats.rc == 0, stats
        assert any(re.fullmatch(r"node cli-sigint\tdatabase connections [1-9]\d*", ln) for ln in stats.lines), stats
        rc, took = await srv.stop(signal.SIGINT)
        assert rc == 0, srv.stderr()
        assert took < 5
        assert srv.stdout.decode() == f"listening on {srv.url}\n"


async def test_stats_lists_only_the_nodes_of_its_own_database(
    tmp_path: Path, databases: Databases, db_url: str
) -> None:
    other_url = await trio.to_thread.run_sync(databases.fresh)
    async with serving(tmp_path, other_url, {"CHATD_NODE_NAME": "cli-other-db"}) as srv:
        stats = await chatd(tmp_path, db_url, "stats")
        assert stats.rc == 0, stats
        assert not any(line.startswith("node cli-other-db\t") for line in stats.lines), stats.out
        rc, _ = await srv.stop(signal.SIGTERM)
        assert rc == 0


async def test_signal_right_after_the_listening_line_still_drains(tmp_path: Path, db_url: str) -> None:
    """A supervisor may stop the server the moment it says it listens: that must be a clean stop, not a kill."""
    codes: list[int] = []

    async def start_and_stop(i: int) -> None:
        cwd = tmp_path / str(i)
        cwd.mkdir()
        async with serving(cwd, db_url) as srv:
            rc, _ = await srv.stop(signal.SIGTERM if i % 2 else signal.SIGINT)
            codes.append(rc)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(start_and_stop, i)
    assert codes == [0] * 6


@attrs.define
class DrainClient:
    """One WebSocket client's view of the drain: what it sent and what came back, in order."""

    index: int
    sent: list[str] = attrs.Factory(list)
    acked: dict[str, int] = attrs.Factory(dict)
    errors: dict[str, str] = attrs.Factory(dict)
    frames: list[dict[str, Any]] = attrs.Factory(list)
    close_code: int | None = None
    welcome: dict[str, Any] | None = None

    @property
    def answered(self) -> int:
        return len(self.acked) + len(self.errors)


async def drive_client(srv: Serving, token: str, channel_id: int, state: DrainClient) -> None:
    """Send continuously (a few in flight) until the server closes the connection."""
    async with open_websocket_url(srv.ws_url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]) as ws:
        state.welcome = json.loads(await ws.get_message())
        await ws.send_message(json.dumps({"type": "sync", "after": 0}))

        async def sender() -> None:
            k = 0
            while True:
                while len(state.sent) - state.answered >= 8:
                    await trio.sleep(0.002)
                cmid = f"c{state.index}-{k}"
                frame = {"type": "send", "channel_id": channel_id, "client_msg_id": cmid, "text": cmid, "ref": cmid}
                try:
                    await ws.send_message(json.dumps(frame))
                except ConnectionClosed:
                    return
                state.sent.append(cmid)
                k += 1
                await trio.sleep(0.003)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            while True:
                try:
                    frame = json.loads(await ws.get_message())
                except ConnectionClosed as exc:
                    state.close_code = exc.reason.code if exc.reason is not None else None
                    nursery.cancel_scope.cancel()
                    return
                state.frames.append(frame)
                if frame["type"] == "ack":
                    assert frame["ref"] == frame["client_msg_id"]
                    state.acked[frame["client_msg_id"]] = frame["seq"]
                elif frame["type"] == "error":
                    state.errors[frame["ref"]] = frame["code"]


async def test_sigterm_drains_websocket_clients_and_keeps_every_acked_send(tmp_path: Path, db_url: str) -> None:
    names = ("alice", "bob", "carol", "dave")
    ids, channel_id, tokens = await seed_channel(db_url, names)
    env = {
        "CHATD_NODE_NAME": "cli-drain",
        "CHATD_SERVER_HEARTBEAT_S": "2",
        "CHATD_LIMITS_SEND_RATE_PER_S": "100000",
        "CHATD_LIMITS_SEND_BURST": "100000",
    }
    clients = [DrainClient(i) for i in range(len(names))]
    async with serving(tmp_path, db_url, env) as srv:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for token, state in zip(tokens, clients):
                    nursery.start_soon(drive_client, srv, token, channel_id, state)
                while min(len(c.acked) for c in clients) < 15:
                    await trio.sleep(0.01)
                sent_before = [len(c.sent) for c in clients]
                rc, took = await srv.stop(signal.SIGTERM)
        assert rc == 0, srv.stderr()
        assert took < 5, took
        assert srv.stdout.decode() == f"listening on {srv.url}\n"

    for uid, state in zip(ids, clients):
        assert state.welcome is not None and state.welcome["type"] == "welcome"
        assert state.welcome["user_id"] == uid and state.welcome["node"] == "cli-drain"
        # They were still sending when the signal came.
        assert len(state.sent) > sent_before[state.index] or state.errors, state.index
        reconnects = [i for i, f in enumerate(state.frames) if f["type"] == "reconnect"]
        assert len(reconnects) == 1, state.frames[-5:]
        after_ms = state.frames[reconnects[0]]["after_ms"]
        assert isinstance(after_ms, int) and 0 <= after_ms <= 2000
        # ... then a clean close (the receive loop ends only on the close).
        assert state.close_code in CLEAN_CLOSE_CODES, state.close_code
        # Sends are refused only once the drain began, and as retryable.
        assert set(state.errors.values()) <= {"unavailable"}, state.errors
        assert all(f["type"] != "error" for f in state.frames[: reconnects[0]]), state.frames[: reconnects[0]]

    stored = await query(
        db_url, "SELECT sender_id, client_msg_id, seq FROM messages WHERE channel_id = $1 ORDER BY seq", channel_id
    )
    assert [r["seq"] for r in stored] == list(range(1, len(stored) + 1))
    by_sender: dict[int, dict[str, int]] = {uid: {} for uid in ids}
    for r in stored:
        by_sender[r["sender_id"]][r["client_msg_id"]] = r["seq"]
    for uid, state in zip(ids, clients):
        for cmid, seq in state.acked.items():
            assert by_sender[uid].get(cmid) == seq, (cmid, seq)
        assert not set(state.errors) & set(by_sender[uid]), "a refused send was stored"
        assert set(by_sender[uid]) <= set(state.sent)

    verified = await chatd(tmp_path, db_url, "verify")
    assert verified.rc == 0 and verified.out.startswith("ok"), verified
