"""Hostile tests of authentication and browser security (issue 7, findings 5, 7, 9, 15).

Real servers on port 0 (in-process, or a ``chatd serve`` process where its
memory is measured), raw HTTP over sockets where headers and peer addresses
matter, and a real WebSocket client.

- 5: a login flood is throttled per username and per client address (429
  with ``Retry-After``, answered without argon2 work) and argon2 runs in a
  few slots, so 50 concurrent wrong passwords cannot grow the process by
  gigabytes nor starve other requests;
- 7: a long-poll ``GET /v1/sync`` that began before its token was revoked
  answers 401, not the events committed after the revocation;
- 9: ``chatd user passwd`` revokes every token of the user and closes its
  live connections; ``security.token_ttl_days`` expires old tokens;
- 15: CORS preflight and headers for allowed origins only, and an ``Origin``
  check on both WebSocket upgrade paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from chatd.db.bridge import Connection
from chatd.db.stores import Stores
from chatd.hub import Hub
from chatd.services import auth as auth_module
from chatd.services.auth import HASH_SLOTS, MAX_LOGINS_QUEUED, AuthService, hash_password_sync
from tests.processes import serving
from tests.support import RunningServer, open_db, running_server, ws_client
from tests.test_cli import chatd

ARGON2_MIB = 64  # argon2-cffi's default memory cost, per running hash


# --- raw HTTP -------------------------------------------------------------------------


@attrs.frozen
class Raw:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        body = self.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        return str(body["error"]["code"])


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def connect(url: str, source: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection to the server from a chosen loopback address (the server sees it as the peer)."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(_address(url))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def request_bytes(url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    host, port = _address(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(stream: trio.SocketStream) -> Raw:
    """One response: the head, then ``Content-Length`` bytes of body (none for 101/204)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    status = int(status_line.split(" ")[1])
    length = 0 if status in (101, 204) else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed inside the body"
        rest += chunk
    return Raw(status, headers, rest[:length])


async def raw(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    source: str = "127.0.0.1",
    timeout: float = 30,
) -> Raw:
    with trio.fail_after(timeout):
        stream = await connect(url, source)
        async with stream:
            await stream.send_all(request_bytes(url, method, path, headers, body))
            return await read_response(stream)


async def raw_login(url: str, username: str, password: str, *, source: str = "127.0.0.1", timeout: float = 60) -> Raw:
    body = json.dumps({"username": username, "password": password, "device_name": "raw"}).encode()
    return await raw(url, "POST", "/v1/login", {"Content-Type": "application/json"}, body, source=source, timeout=timeout)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upgrade_headers(token: str, origin: str | None = None) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "chatd.v1.json",
        **bearer(token),
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


def retry_after(resp: Raw) -> int:
    assert resp.status == 429, resp
    assert resp.error_code() == "rate_limited"
    seconds = int(resp.headers["retry-after"])
    assert 1 <= seconds <= 60, resp.headers
    return seconds


# --- finding 5: login throttling and the argon2 bound ---------------------------------


async def _create_user(db_url: str, name: str, password: str | None) -> tuple[int, str]:
    """A user (with a password hash when given) and one device token: (user_id, token)."""
    async with open_db(db_url) as db:
        users = Stores.over(db).users
        user = await users.create(name, name.title(), hash_password_sync(password) if password else None, False)
        token, _ = await AuthService(users, Hub()).issue_token(user.user_id, "test")
    return user.user_id, token


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc")
async def test_login_flood_queues_for_argon2_instead_of_allocating(tmp_path: Path, db_url: str) -> None:
    """50 concurrent wrong logins (throttle set high, so each one runs argon2):
    the server's peak RSS grows by at most the argon2 slots' memory, and
    another user's request is answered while the flood is hashed."""
    await _create_user(db_url, "alice", "the-right-password")
    _bob_id, bob_token = await _create_user(db_url, "bob", None)
    env = {"CHATD_SECURITY_LOGIN_ATTEMPTS_PER_MIN": "1000"}
    async with serving(tmp_path, db_url, env) as srv:
        pid = srv.proc.pid
        me = await raw(srv.url, "GET", "/v1/me", bearer(bob_token))
        assert me.status == 200, me
        try:  # reset the peak to the current RSS (Linux >= 4.0); the process is ours
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
        before_kib = _status_kib(pid, "VmRSS")

        statuses: list[int] = []
        first_answer = trio.Event()

        async def wrong_login(i: int) -> None:
            resp = await raw_login(srv.url, "alice", f"wrong-{i}", timeout=120)
            statuses.append(resp.status)
            first_answer.set()

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(wrong_login, i)
            with trio.fail_after(60):
                await first_answer.wait()
            # The flood is being hashed now; another user is still served.
            for _ in range(3):
                me = await raw(srv.url, "GET", "/v1/me", bearer(bob_token), timeout=5)
                assert me.status == 200 and me.json()["username"] == "bob", me
        peak_kib = _status_kib(pid, "VmHWM")

    assert sorted(statuses) == [401] * 50
    grown_mib = (peak_kib - before_kib) / 1024
    bound_mib = ARGON2_MIB * HASH_SLOTS + 128  # the slots' hashes, plus room for buffers and allocator slack
    assert grown_mib < bound_mib, f"RSS grew by {grown_mib:.0f} MiB during the flood (bound {bound_mib} MiB)"


async def _hold_hash_slots(srv: RunningServer) -> list[trio.Semaphore]:
    """Take every argon2 slot: a login that needs argon2 now waits; a throttled one must not."""
    slots = srv.services.auth.hash_slots
    for _ in range(HASH_SLOTS):
        await slots.acquire()
    return [slots] * HASH_SLOTS


async def test_eleventh_failed_login_gets_429_without_argon2(db_url: str) -> None:
    async with running_server(db_url) as srv:
        for name in ("alice", "bob", "carol"):
            await srv.user(name, password=f"{name}-password")
        url = srv.url
        # login_attempts_per_min = 10 (the default): ten wrong passwords are plain 401s.
        for i in range(10):
            resp = await raw_login(url, "alice", f"guess-{i}")
            assert resp.status == 401 and resp.error_code() == "unauthorized", resp
        held = await _hold_hash_slots(srv)
        try:
            # With every argon2 slot taken, only an answer that skips argon2 can come back.
            eleventh = await raw_login(url, "alice", "guess-10", timeout=10)
            assert retry_after(eleventh) <= 60
            # The username is throttled, even with the right password and from another address...
            retry_after(await raw_login(url, "alice", "alice-password", timeout=10))
            retry_after(await raw_login(url, "alice", "alice-password", source="127.0.0.2", timeout=10))
            # ...and so is the address, for any username.
            retry_after(await raw_login(url, "bob", "bob-password", timeout=10))
        finally:
            for slots in held:
                slots.release()
        # Other users from other addresses log in as usual.
        ok = await raw_login(url, "bob", "bob-password", source="127.0.0.2")
        assert ok.status == 200 and set(ok.json()) == {"token", "user_id", "device_id"}, ok
        me = await raw(url, "GET", "/v1/me", bearer(ok.json()["token"]), source="127.0.0.2")
        assert me.status == 200 and me.json()["username"] == "bob"
        wrong = await raw_login(url, "carol", "nope", source="127.0.0.2")
        assert wrong.status == 401 and wrong.error_code() == "unauthorized"


async def test_address_throttle_counts_failures_over_all_usernames(db_url: str) -> None:
    async with running_server(db_url) as srv:
        await srv.user("dave", password="dave-password")
        for i in range(10):  # usernames that do not exist fail like wrong passwords
            resp = await raw_login(srv.url, f"nobody{i}", "x", source="127.0.0.3")
            assert resp.status == 401, resp
        retry_after(await raw_login(srv.url, "dave", "dave-password", source="127.0.0.3", timeout=10))
        resp = await raw_login(srv.url, "dave", "dave-password", source="127.0.0.4")
        assert resp.status == 200, resp


async def test_concurrent_wrong_logins_stop_at_the_limit(db_url: str) -> None:
    """50 wrong logins at once for one user: about ten are checked, the rest are 429."""
    async with running_server(db_url) as srv:
        await srv.user("erin", password="erin-password")
        statuses: list[int] = []

        async def wrong_login(i: int) -> None:
            statuses.append((await raw_login(srv.url, "erin", f"guess-{i}", source="127.0.0.5")).status)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(wrong_login, i)
        assert set(statuses) <= {401, 429} and len(statuses) == 50, statuses
        # Failures are counted as hashes finish; a login re-checks after waiting for a slot.
        assert 10 <= statuses.count(401) <= 10 + HASH_SLOTS, statuses
        assert srv.services.auth.throttle.retry_after([("user", "erin")]) > 0


async def test_logins_waiting_for_argon2_are_bounded(db_url: str) -> None:
    """With every slot busy, at most MAX_LOGINS_QUEUED logins wait; the next is 429 at once."""
    async with running_server(db_url) as srv:
        await srv.user("frank", password="frank-password")
        auth = srv.services.auth
        statuses: list[int] = []

        async def login(i: int) -> None:
            resp = await raw_login(srv.url, f"user{i}", "x", source=f"127.0.1.{i % 200 + 1}")
            statuses.append(resp.status)

        held = await _hold_hash_slots(srv)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(MAX_LOGINS_QUEUED):
                    nursery.start_soon(login, i)
                with trio.fail_after(30):
                    while auth._logins_queued < MAX_LOGINS_QUEUED:  # a condition, polled
                        await trio.sleep(0.01)
                over = await raw_login(srv.url, "frank", "frank-password", source="127.0.2.1", timeout=10)
                assert retry_after(over) == 1
                for slots in held:
                    slots.release()
                held = []
        finally:
            for slots in held:
                slots.release()
        assert sorted(statuses) == [401] * MAX_LOGINS_QUEUED
        ok = await raw_login(srv.url, "frank", "frank-password", source="127.0.2.1")
        assert ok.status == 200, ok


# --- finding 7: revocation ends a long-poll that is already waiting ------------------------


async def _wait_watchers(srv: RunningServer, user_id: int, count: int) -> None:
    """Until ``count`` long-polls of the user wait on this node's hub (a condition, polled)."""
    hub = srv.services.hub
    with trio.fail_after(20):
        while True:
            signal = hub._signals.get(user_id)
            if signal is not None and signal.users >= count:
                return
            await trio.sleep(0.01)


async def _group(srv: RunningServer, owner_token: str, *members: int) -> int:
    resp = await raw(
        srv.url,
        "POST",
        "/v1/channels",
        {**bearer(owner_token), "Content-Type": "application/json"},
        json.dumps({"kind": "group", "name": "team", "members": list(members)}).encode(),
    )
    assert resp.status == 201, resp
    return int(resp.json()["channel_id"])


async def _send(srv: RunningServer, token: str, channel_id: int, client_msg_id: str, text: str) -> None:
    resp = await raw(
        srv.url,
        "POST",
        f"/v1/channels/{channel_id}/messages",
        {**bearer(token), "Content-Type": "application/json"},
        json.dumps({"client_msg_id": client_msg_id, "text": text}).encode(),
    )
    assert resp.status == 201, resp


@pytest.mark.parametrize("revocation", ["logout", "disable", "passwd"])
async def test_long_poll_waiting_across_a_revocation_answers_401(db_url: str, revocation: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        bob = await srv.user("bob", password="bob-password")
        channel_id = await _group(srv, alice.token, bob.user_id)
        other_device = await srv.token(bob, "tablet")
        cursor = int((await raw(srv.url, "GET", "/v1/sync", bearer(bob.token))).json()["cursor"])
        answers: dict[str, Raw] = {}

        async def poll(name: str, token: str) -> None:
            path = f"/v1/sync?after={cursor}&timeout_ms=30000"
            answers[name] = await raw(srv.url, "GET", path, bearer(token), timeout=40)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, "revoked", bob.token)
            if revocation == "logout":
                nursery.start_soon(poll, "kept", other_device)
            await _wait_watchers(srv, bob.user_id, 2 if revocation == "logout" else 1)
            if revocation == "logout":
                out = await raw(srv.url, "POST", "/v1/logout", bearer(bob.token))
                assert out.status == 204, out
            elif revocation == "disable":
                await srv.stores.users.disable("bob")
            else:
                await srv.stores.users.set_password("bob", hash_password_sync("new-password"))
            await _send(srv, alice.token, channel_id, "after-revocation", "secret after revocation")

        revoked = answers["revoked"]
        assert revoked.status == 401 and revoked.error_code() == "unauthorized", revoked
        assert b"secret after revocation" not in revoked.body
        if revocation == "logout":  # the same wake-up delivers to the device still logged in
            kept = answers["kept"]
            assert kept.status == 200, kept
            assert [e.get("text") for e in kept.json()["events"]] == ["secret after revocation"]


# --- finding 9: passwd revokes; tokens may expire ------------------------------------------


async def test_cli_passwd_revokes_tokens_and_closes_connections(tmp_path: Path, db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice", password="old-password")
        bob = await srv.user("bob")
        second = await srv.token(alice, "laptop")
        async with ws_client(srv, alice.token) as live:
            changed = await chatd(
                tmp_path, db_url, "user", "passwd", "alice", "--password-stdin", stdin=b"new-password\n"
            )
            assert changed.rc == 0 and changed.err == "", changed
            assert "revoked" in changed.out
            assert await live.closed_code(timeout=20) == 4001
        for token in (alice.token, second):
            resp = await raw(srv.url, "GET", "/v1/me", bearer(token))
            assert resp.status == 401 and resp.error_code() == "unauthorized", resp
        assert (await raw(srv.url, "GET", "/v1/me", bearer(bob.token))).status == 200
        assert (await raw_login(srv.url, "alice", "old-password")).status == 401
        fresh = await raw_login(srv.url, "alice", "new-password")
        assert fresh.status == 200, fresh
        assert (await raw(srv.url, "GET", "/v1/me", bearer(fresh.json()["token"]))).status == 200


async def _age_device(srv: RunningServer, device_id: int, days: float) -> None:
    async def unit(conn: Connection) -> None:
        await conn.execute(
            "UPDATE devices SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
            device_id,
            days * 86400,
        )

    await srv.stores.db.transaction(unit)


async def test_token_older_than_ttl_is_refused(db_url: str) -> None:
    async with running_server(db_url, {"security": {"token_ttl_days": 2}}) as srv:
        alice = await srv.user("alice")
        young = await srv.user("bob")
        await _age_device(srv, alice.device_id, 2.1)
        await _age_device(srv, young.device_id, 1.9)
        old = await raw(srv.url, "GET", "/v1/me", bearer(alice.token))
        assert old.status == 401 and old.error_code() == "unauthorized", old
        with pytest.raises(ConnectionRejected) as rejected:
            async with ws_client(srv, alice.token):
                pass
        assert rejected.value.status_code == 401
        assert (await raw(srv.url, "GET", "/v1/me", bearer(young.token))).status == 200
        assert (await raw(srv.url, "GET", "/v1/me", bearer(await srv.token(alice)))).status == 200


async def test_tokens_do_not_expire_by_default(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        await _age_device(srv, alice.device_id, 3650)
        assert (await raw(srv.url, "GET", "/v1/me", bearer(alice.token))).status == 200


# --- finding 15: CORS and the WebSocket Origin check ---------------------------------------

APP = "https://app.example.com"
EVIL = "https://evil.example.net"


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def assert_no_cors(resp: Raw) -> None:
    assert not any(name.startswith("access-control-") for name in resp.headers), resp.headers


async def test_cors_preflight_and_answers_for_allowed_origins_only(db_url: str) -> None:
    async with running_server(db_url, {"security": {"allowed_origins": [APP]}}) as srv:
        await srv.user("alice", password="alice-password")
        url = srv.url
        own = f"http://{_address(url)[0]}:{_address(url)[1]}"
        for origin in (APP, "HTTPS://APP.example.com:443", own):
            pre = await raw(url, "OPTIONS", "/v1/login", preflight_headers(origin))
            assert pre.status == 204, (origin, pre)
            assert pre.headers["access-control-allow-origin"] == origin
            methods = {m.strip() for m in pre.headers["access-control-allow-methods"].split(",")}
            assert {"GET", "POST", "PATCH", "DELETE"} <= methods
            allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type"} <= allowed
            assert "origin" in pre.headers["vary"].lower()
        pre = await raw(url, "OPTIONS", "/v1/channels/5/messages", preflight_headers(APP, "GET"))
        assert pre.status == 204 and pre.headers["access-control-allow-origin"] == APP

        # A disallowed origin: no CORS headers at all, so the browser blocks it.
        for origin in (EVIL, "null", "http://app.example.com", "https://app.example.com.evil.net"):
            denied = await raw(url, "OPTIONS", "/v1/login", preflight_headers(origin))
            assert denied.status == 403 and denied.error_code() == "forbidden", denied
            assert_no_cors(denied)
        # No preflight for unknown paths; a plain OPTIONS stays 405.
        assert (await raw(url, "OPTIONS", "/v1/nowhere", preflight_headers(APP))).status == 404
        assert (await raw(url, "OPTIONS", "/v1/login")).status == 405

        # The real requests: the allowed origin may read answers, errors included.
        body = json.dumps({"username": "alice", "password": "alice-password", "device_name": "web"}).encode()
        login = await raw(url, "POST", "/v1/login", {"Origin": APP, "Content-Type": "application/json"}, body)
        assert login.status == 200 and login.headers["access-control-allow-origin"] == APP
        assert "origin" in login.headers["vary"].lower()
        token = login.json()["token"]
        bad = await raw(url, "GET", "/v1/me", {"Origin": APP, "Authorization": "Bearer nope"})
        assert bad.status == 401 and bad.headers["access-control-allow-origin"] == APP
        assert "retry-after" in bad.headers["access-control-expose-headers"].lower()
        # Another origin's request is answered (CORS is enforced by the browser) but not readable.
        other = await raw(url, "GET", "/v1/me", {"Origin": EVIL, **bearer(token)})
        assert other.status == 200
        assert_no_cors(other)
        native = await raw(url, "GET", "/v1/me", bearer(token))
        assert native.status == 200
        assert_no_cors(native)


async def test_cors_star_allows_any_origin(db_url: str) -> None:
    async with running_server(db_url, {"security": {"allowed_origins": ["*"]}}) as srv:
        pre = await raw(srv.url, "OPTIONS", "/v1/login", preflight_headers(EVIL))
        assert pre.status == 204 and pre.headers["access-control-allow-origin"] == EVIL


async def _upgrade(srv: RunningServer, headers: dict[str, str], *, keep_alive_first: bool) -> Raw:
    """A raw upgrade: on a fresh connection (chatd's wsproto path) or after a
    keep-alive HTTP request on the same connection (hypercorn's ASGI path)."""
    with trio.fail_after(20):
        stream = await connect(srv.url)
        async with stream:
            if keep_alive_first:
                await stream.send_all(request_bytes(srv.url, "GET", "/healthz"))
                health = await read_response(stream)
                assert health.status == 200, health
            await stream.send_all(request_bytes(srv.url, "GET", "/v1/ws", headers))
            return await read_response(stream)


@pytest.mark.parametrize("keep_alive_first", [False, True], ids=["wsproto", "asgi"])
async def test_websocket_upgrade_checks_origin(db_url: str, keep_alive_first: bool) -> None:
    async with running_server(db_url, {"security": {"allowed_origins": [APP]}}) as srv:
        alice = await srv.user("alice")
        host, port = _address(srv.url)
        for origin in (EVIL, "null", f"http://{host}:{port + 1}", f"http://localhost:{port}"):
            refused = await _upgrade(srv, upgrade_headers(alice.token, origin), keep_alive_first=keep_alive_first)
            assert refused.status == 403 and refused.error_code() == "forbidden", (origin, refused)
        # A page of another origin is refused before its token is even looked at.
        refused = await _upgrade(srv, upgrade_headers("not-a-token", EVIL), keep_alive_first=keep_alive_first)
        assert refused.status == 403 and refused.error_code() == "forbidden"
        allowed: tuple[str | None, ...] = (None, APP, f"http://{host}:{port}", f"https://{host}:{port}")
        for maybe_origin in allowed:
            accepted = await _upgrade(srv, upgrade_headers(alice.token, maybe_origin), keep_alive_first=keep_alive_first)
            assert accepted.status == 101, (maybe_origin, accepted)
        # Allowed origin, bad token: still the token's 401.
        denied = await _upgrade(srv, upgrade_headers("not-a-token", APP), keep_alive_first=keep_alive_first)
        assert denied.status == 401 and denied.error_code() == "unauthorized"


async def test_websocket_client_with_a_foreign_origin_is_refused(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        headers = [(b"Authorization", f"Bearer {alice.token}".encode()), (b"Origin", EVIL.encode())]
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(srv.ws_url, extra_headers=headers, subprotocols=["chatd.v1.json"]):
                pass
        assert rejected.value.status_code == 403
        assert rejected.value.body is not None and json.loads(rejected.value.body)["error"]["code"] == "forbidden"
        async with ws_client(srv, alice.token) as client:  # native clients send no Origin
            await client.send({"type": "ping", "t": 1})
            assert (await client.recv_type("pong"))["t"] == 1


def test_rss_bound_assumes_argon2_default_memory_cost() -> None:
    """The flood test's bound is argon2's memory cost times the slots."""
    assert auth_module._hasher.memory_cost == ARGON2_MIB * 1024  # KiB
    assert 1 <= HASH_SLOTS <= 2
