"""Offline push (PROTOCOL §7) against real local HTTP receivers: webhook and Web Push
(decrypted with the subscription's key, VAPID JWT checked), retries, 410 removal, a restart
with a pending push, no push while online on another node, private targets refused."""

from __future__ import annotations

import json
from functools import partial
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from chatd.db.bridge import Connection
from chatd.services import push as push_service
from chatd.services.push_targets import is_public
from benchmarks.receivers import Receiver, WebPushReceiver
from tests.support import ChatUser, RunningServer, http, running_server, ws_client
from tests.test_metrics import scrape, value

PRIVATE_OK = {"push": {"allow_private_targets": True}}
PAYLOAD_KEYS = {"user_id", "channel_id", "seq", "sender_id", "sender_name", "channel_name", "mention", "preview"}


def node(db_url: str, name: str, overrides: Any = PRIVATE_OK) -> AbstractAsyncContextManager[RunningServer]:
    return running_server(db_url, overrides, node_name=name)


async def subscribe(srv: RunningServer, user: ChatUser, body: dict[str, Any]) -> int:
    async with http(srv, user.token) as api:
        answer = await api.post("/v1/push/subscriptions", body)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["subscription_id"])


async def dm_send(srv: RunningServer, sender: ChatUser, other: ChatUser, text: str, client_msg_id: str) -> int:
    async with http(srv, sender.token) as api:
        dm = (await api.post("/v1/channels", {"kind": "dm", "members": [other.user_id]})).json()["channel_id"]
        sent = await api.post(f"/v1/channels/{dm}/messages", {"client_msg_id": client_msg_id, "text": text})
        assert sent.status_code == 201, sent.text
        return int(dm)


async def outbox(srv: RunningServer) -> list[Any]:
    async def unit(conn: Connection) -> list[Any]:
        return list(await conn.fetch("SELECT * FROM push_outbox ORDER BY id"))

    return await srv.stores.db.read(unit)


async def test_webhook_push_to_an_offline_user_with_the_payload(db_url: str) -> None:
    async with Receiver().running() as hook, running_server(db_url, PRIVATE_OK) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url + "/hook"})
        async with http(srv, bob.token) as api:
            listed = (await api.get("/v1/push/subscriptions")).json()["subscriptions"]
            assert listed == [{"subscription_id": listed[0]["subscription_id"], "kind": "webhook",
                               "url": hook.url + "/hook"}]
        dm = await dm_send(srv, alice, bob, "x" * 150, "m1")
        [got] = await hook.wait_for(1)
        assert got.path == "/hook" and got.headers["content-type"] == "application/json"
        payload = json.loads(got.body)
        assert set(payload) == PAYLOAD_KEYS
        assert payload == {"user_id": bob.user_id, "channel_id": dm, "seq": 1, "sender_id": alice.user_id,
                           "sender_name": "Alice", "channel_name": None, "mention": False, "preview": "x" * 100}
        # The sender gets no push of its own message; the outbox is empty once delivered.
        with trio.fail_after(10):
            while await outbox(srv):
                await trio.sleep(0.05)
        assert len(hook.received) == 1


async def test_a_mention_is_flagged_in_the_push(db_url: str) -> None:
    """PROTOCOL §7/§10: the payload's ``mention`` is true for the recipient the text names."""
    async with Receiver().running() as hook, running_server(db_url, PRIVATE_OK) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
        await dm_send(srv, alice, bob, "plain words", "m1")
        await dm_send(srv, alice, bob, "@bob have a look", "m2")
        received = await hook.wait_for(2)
        flags = {json.loads(r.body)["seq"]: json.loads(r.body)["mention"] for r in received}
        assert flags == {1: False, 2: True}


async def test_preview_is_null_when_disabled(db_url: str) -> None:
    overrides = {"push": {"allow_private_targets": True, "include_preview": False}}
    async with Receiver().running() as hook, running_server(db_url, overrides) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
        await dm_send(srv, alice, bob, "secret", "m1")
        [got] = await hook.wait_for(1)
        assert json.loads(got.body)["preview"] is None


async def test_web_push_is_encrypted_and_signed_with_the_shared_vapid_key(db_url: str) -> None:
    async with WebPushReceiver().running() as service, running_server(db_url, PRIVATE_OK) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        async with http(srv, bob.token) as api:
            service.vapid_public_key = (await api.get("/v1/push/vapid")).json()["public_key"]
        assert len(push_service.b64url_decode(service.vapid_public_key)) == 65
        await subscribe(srv, bob, service.subscription())
        await dm_send(srv, alice, bob, "hello bob", "m1")
        [got] = await service.wait_for(1)
        assert "x-check-failed" not in got.headers, got.headers.get("x-check-failed")
        assert service.payloads[0]["preview"] == "hello bob" and service.payloads[0]["sender_name"] == "Alice"
        # A second node signs with the same key: it was kept in the database.
        async with node(db_url, "other") as other, http(other, bob.token) as api:
            assert (await api.get("/v1/push/vapid")).json()["public_key"] == service.vapid_public_key


async def test_retries_after_500s_then_delivers(db_url: str) -> None:
    async with Receiver([500, 503]).running() as hook, running_server(db_url, PRIVATE_OK) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
        await dm_send(srv, alice, bob, "again", "m1")
        received = await hook.wait_for(3, timeout=60)
        assert hook.answered == [500, 503, 201]
        # Backoff: the second retry waited longer than the first (1 s, then 2 s, each x0.5..1.5).
        assert received[1].at - received[0].at >= 0.4
        assert received[2].at - received[1].at >= 0.9
        assert [json.loads(r.body)["seq"] for r in received] == [1, 1, 1]


async def test_410_removes_the_subscription(db_url: str) -> None:
    async with Receiver([410]).running() as hook, running_server(db_url, PRIVATE_OK) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
        await dm_send(srv, alice, bob, "one", "m1")
        await hook.wait_for(1)
        async with http(srv, bob.token) as api:
            with trio.fail_after(10):
                while (await api.get("/v1/push/subscriptions")).json()["subscriptions"]:
                    await trio.sleep(0.05)
        assert await outbox(srv) == []
        await dm_send(srv, alice, bob, "two", "m2")
        assert await outbox(srv) == []  # nothing queued for a removed subscription
        assert len(hook.received) == 1


async def test_a_pending_push_survives_a_restart(db_url: str) -> None:
    async with Receiver([503]).running() as hook:
        async with running_server(db_url, PRIVATE_OK) as srv:
            alice, bob = await srv.user("alice"), await srv.user("bob")
            await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
            await dm_send(srv, alice, bob, "survive", "m1")
            await hook.wait_for(1)
            with trio.fail_after(10):
                while not (await outbox(srv))[0]["last_error"]:  # the worker records the failure
                    await trio.sleep(0.05)
            [pending] = await outbox(srv)
            assert pending["attempts"] == 1 and pending["last_error"] == "HTTP 503"
            # The queue shows on /metrics (read from the outbox, so every node sees every node's pushes).
            _, samples = await scrape(srv)
            assert value(samples, "chatd_push_queue_depth") == 1
            assert value(samples, "chatd_push_oldest_seconds") > 0
        # The node is gone; a new one finds the push in the database and delivers it.
        async with running_server(db_url, PRIVATE_OK) as again:
            await hook.wait_for(2, timeout=30)
            with trio.fail_after(10):
                while await outbox(again):
                    await trio.sleep(0.05)
        assert hook.answered == [503, 201]
        assert json.loads(hook.received[1].body)["preview"] == "survive"


async def test_no_push_while_the_user_is_online_on_another_node(db_url: str) -> None:
    async with Receiver().running() as hook, node(db_url, "node-a") as a, node(db_url, "node-b") as b:
        alice, bob = await a.user("alice"), await a.user("bob")
        await subscribe(a, bob, {"kind": "webhook", "url": hook.url})
        async with ws_client(b, bob.token):
            await b.services.registry.beat(b.url)  # node-b tells the registry bob is here
            await dm_send(a, alice, bob, "you are online", "m1")
            assert await outbox(a) == []
        await b.services.registry.beat(b.url)  # bob left node-b
        await dm_send(a, alice, bob, "now offline", "m2")
        [got] = await hook.wait_for(1)
        assert json.loads(got.body)["preview"] == "now offline"


async def test_private_targets_are_refused_at_delivery(db_url: str) -> None:
    async with Receiver().running() as hook, running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})  # accepted: checked when sending
        await dm_send(srv, alice, bob, "probe", "m1")
        with trio.fail_after(10):
            while True:
                rows = await outbox(srv)
                if rows and rows[0]["last_error"]:
                    break
                await trio.sleep(0.05)
        assert "non-public address (127.0.0.1)" in rows[0]["last_error"]
        assert hook.received == []


async def test_subscription_input_is_checked(db_url: str) -> None:
    async with running_server(db_url) as srv:
        bob = await srv.user("bob")
        async with http(srv, bob.token) as api:
            for body in ({"kind": "webhook", "url": "ftp://x"}, {"kind": "webhook"}, {"kind": "sms", "url": "http://x"},
                         {"kind": "webpush", "endpoint": "https://push.example/x", "keys": {"p256dh": "AA", "auth": "x"}},
                         {"kind": "webhook", "url": "http://user:pw@example.com/"}):
                answer = await api.post("/v1/push/subscriptions", body)
                assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid", body
            assert (await api.delete("/v1/push/subscriptions/12345")).status_code == 404
            sid = (await api.post("/v1/push/subscriptions", {"kind": "webhook", "url": "https://h.example/x"})).json()
            assert (await api.delete(f"/v1/push/subscriptions/{sid['subscription_id']}")).status_code == 204
            assert (await api.get("/v1/push/subscriptions")).json() == {"subscriptions": []}
            assert (await api.as_user(None).get("/v1/push/vapid")).status_code == 401


@pytest.mark.parametrize(
    ("address", "public"),
    [("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
     ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
     ("fe80::1", False), ("fd00:ec2::254", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
     ("8.8.8.8", True), ("2606:4700:4700::1111", True)],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_backoff_grows_with_jitter() -> None:
    first = [push_service.backoff_s(1) for _ in range(200)]
    third = [push_service.backoff_s(3) for _ in range(200)]
    assert 0.5 <= min(first) and max(first) < 1.5 and len(set(first)) > 100
    assert 2.0 <= min(third) and max(third) < 6.0
    assert push_service.backoff_s(100) < push_service.BACKOFF_MAX_S * 1.5


async def test_a_target_that_never_answers_holds_up_no_one_else(db_url: str) -> None:
    """A user's push target that accepts and then says nothing (until the request timeout)
    must not hold up other users' pushes: rounds run in lanes, each with its own claim."""
    hanging = trio.Event()
    gave_up = trio.Event()  # chatd closed carol's request (its timeout)

    async def tarpit(stream: trio.SocketStream) -> None:
        hanging.set()
        with trio.move_on_after(30):
            while await stream.receive_some(4096):  # read the request, answer nothing
                pass
            gave_up.set()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, tarpit, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with Receiver().running() as hook, running_server(db_url, PRIVATE_OK) as srv:
            alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
            await subscribe(srv, carol, {"kind": "webhook", "url": f"http://127.0.0.1:{port}/slow"})
            await subscribe(srv, bob, {"kind": "webhook", "url": hook.url})
            await dm_send(srv, alice, carol, "to the tarpit", "m1")
            with trio.fail_after(20):
                await hanging.wait()  # carol's push is in flight, and will hang
            await dm_send(srv, alice, bob, "to bob", "m2")
            [got] = await hook.wait_for(1, timeout=30)
            assert json.loads(got.body)["preview"] == "to bob"
            assert not gave_up.is_set()  # bob's came while carol's request still hung
        nursery.cancel_scope.cancel()
