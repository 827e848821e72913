"""Media (PROTOCOL §2): streamed upload and download across two nodes, limits, authorization,
Range/ETag, nosniff, media in sends and message objects, `chatd media gc`, image headers."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from chatd import media_probe
from chatd.db.bridge import Connection
from chatd.db.media import CHUNK_BYTES
from tests.support import RunningServer, http, running_server, ws_client




def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@asynccontextmanager
async def two_nodes(db_url: str, overrides: Any = None) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    async with running_server(db_url, overrides) as a, running_server(db_url, overrides, node_name="node-b") as b:
        yield a, b


async def upload(srv: RunningServer, token: str, data: bytes, content_type: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        return await client.post("/v1/media", content=data, params=params,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})


async def download(srv: RunningServer, token: str, media_id: int, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        return await client.get(f"/v1/media/{media_id}", headers={"Authorization": f"Bearer {token}", **headers})


async def count(srv: RunningServer, query: str) -> int:
    async def unit(conn: Connection) -> int:
        return int(await conn.fetchval(query))

    return await srv.stores.db.read(unit)


async def test_upload_on_one_node_downloads_on_another_deduplicated(db_url: str) -> None:
    async with two_nodes(db_url) as (a, b):
        alice = await a.user("alice")
        data = os.urandom(3 * CHUNK_BYTES + 12345)
        first = await upload(a, alice.token, data, "application/zip", filename="../etc/pass wd.zip")
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["size"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
        assert body["content_type"] == "application/zip"
        got = await download(b, alice.token, body["media_id"])
        assert got.status_code == 200 and got.content == data
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-type"] == "application/octet-stream"  # not inline: attachment
        assert got.headers["content-disposition"].startswith('attachment; filename="pass wd.zip"')
        # The same bytes again (through the other node): a new upload, the same stored file.
        second = await upload(b, alice.token, data, "application/zip")
        assert second.status_code == 201 and second.json()["media_id"] != body["media_id"]
        assert await count(a, "SELECT count(*) FROM media_blobs") == 1
        assert await count(a, "SELECT count(*) FROM media_chunks") == 4
        assert await count(a, "SELECT count(*) FROM media") == 2


async def test_image_dimensions_inline_and_range_etag(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        image = png(37, 21)
        answer = await upload(srv, alice.token, image, "image/png")
        assert answer.status_code == 201
        media = answer.json()
        assert (media["width"], media["height"]) == (37, 21)
        full = await download(srv, alice.token, media["media_id"])
        assert full.headers["content-type"] == "image/png"
        assert full.headers["content-disposition"].startswith("inline")
        assert full.headers["accept-ranges"] == "bytes"
        etag = full.headers["etag"]
        assert etag == f'"{hashlib.sha256(image).hexdigest()}"'
        again = await download(srv, alice.token, media["media_id"], **{"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        part = await download(srv, alice.token, media["media_id"], Range="bytes=10-19")
        assert part.status_code == 206 and part.content == image[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(image)}"
        tail = await download(srv, alice.token, media["media_id"], Range="bytes=-5")
        assert tail.status_code == 206 and tail.content == image[-5:]
        past = await download(srv, alice.token, media["media_id"], Range=f"bytes={len(image)}-")
        assert past.status_code == 416 and past.json()["error"]["code"] == "bad_request"
        # A Range across stored chunks.
        big = os.urandom(2 * CHUNK_BYTES + 100)
        big_id = (await upload(srv, alice.token, big, "video/mp4")).json()["media_id"]
        span = await download(srv, alice.token, big_id, Range=f"bytes={CHUNK_BYTES - 3}-{CHUNK_BYTES * 2 + 3}")
        assert span.status_code == 206 and span.content == big[CHUNK_BYTES - 3:CHUNK_BYTES * 2 + 4]


async def test_uploaded_html_is_never_served_as_a_page(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        for kind, data in (("text/html", b"<script>alert(1)</script>"), ("image/svg+xml", b"<svg onload=x>")):
            media_id = (await upload(srv, alice.token, data, kind)).json()["media_id"]
            got = await download(srv, alice.token, media_id)
            assert got.headers["content-type"] == "application/octet-stream"
            assert got.headers["content-disposition"].startswith("attachment")
            assert got.headers["x-content-type-options"] == "nosniff"
            assert "sandbox" in got.headers["content-security-policy"]
            assert got.content == data


async def test_size_limit_while_streaming(db_url: str) -> None:
    async with running_server(db_url, {"limits": {"media_max_bytes": 3 * CHUNK_BYTES}}) as srv:
        alice = await srv.user("alice")
        declared = await upload(srv, alice.token, b"x" * (3 * CHUNK_BYTES + 1), "application/octet-stream")
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(8):
                yield os.urandom(CHUNK_BYTES // 2)

        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            try:
                answer = await client.post("/v1/media", content=stream(),
                                           headers={"Authorization": f"Bearer {alice.token}"})
                assert answer.status_code == 413
            except httpx.WriteError:
                pass  # the server answered and closed while the client was still sending
        # The partial file's chunks were removed; nothing was recorded.
        assert await count(srv, "SELECT count(*) FROM media") == 0
        assert await count(srv, "SELECT count(*) FROM media_chunks") == 0
        exact = await upload(srv, alice.token, os.urandom(3 * CHUNK_BYTES), "application/octet-stream")
        assert exact.status_code == 201


async def test_size_limit_under_a_slow_upload(db_url: str) -> None:
    """A client that trickles a chunked body gets its 413 as soon as it passes the limit, not at the end."""
    async with running_server(db_url, {"limits": {"media_max_bytes": 4096}}) as srv:
        alice = await srv.user("alice")
        host, port = srv.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        head = (f"POST /v1/media HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice.token}\r\n"
                "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await stream.send_all(head.encode())
        answer = b""
        sent = 0
        with trio.fail_after(60):
            while b"\r\n\r\n" not in answer:
                if sent < 100:  # never more than 100 KiB: far past the limit, far short of an end
                    piece = os.urandom(1024)
                    try:
                        await stream.send_all(b"400\r\n" + piece + b"\r\n")
                    except trio.BrokenResourceError:
                        sent = 100
                    sent += 1
                with trio.move_on_after(0.05):
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    answer += data
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 20  # answered after ~5 pieces of 1 KiB
        await stream.aclose()
        assert await count(srv, "SELECT count(*) FROM media") == 0


async def test_authorization_and_media_in_messages(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob, carol = await srv.user("alice"), await srv.user("bob"), await srv.user("carol")
        media_id = (await upload(srv, alice.token, png(4, 3), "image/png", filename="cat.png")).json()["media_id"]
        # Not posted yet: only the uploader sees it; others get 404 as for a missing id.
        assert (await download(srv, bob.token, media_id)).status_code == 404
        assert (await download(srv, bob.token, 999999)).status_code == 404
        assert (await download(srv, "nonsense", media_id)).status_code == 401
        async with http(srv, alice.token) as api:
            dm = (await api.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]})).json()["channel_id"]
            cid = f"/v1/channels/{dm}/messages"
            # Bob cannot post alice's upload; nothing is stored.
            refused = await api.as_user(bob.token).post(cid, {"client_msg_id": "b1", "text": "", "media_ids": [media_id]})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid"
            assert (await api.get(cid)).json()["messages"] == []
            async with ws_client(srv, bob.token) as ws:
                await ws.sync(0)
                sent = await api.post(cid, {"client_msg_id": "a1", "text": "", "media_ids": [media_id]})
                assert sent.status_code == 201, sent.text
                event = await ws.recv_type("event")
            expected = [{"media_id": media_id, "content_type": "image/png", "size": len(png(4, 3)),
                         "filename": "cat.png", "width": 4, "height": 3}]
            assert event["media"] == expected
            history = (await api.get(cid)).json()["messages"]
            assert history[0]["media"] == expected
            events = (await api.as_user(bob.token).get("/v1/sync", after=0)).json()["events"]
            assert [e["media"] for e in events if e["kind"] == "message"] == [expected]
        # Posted in the DM: bob (a member) may download it; carol may not.
        assert (await download(srv, bob.token, media_id)).status_code == 200
        assert (await download(srv, carol.token, media_id)).status_code == 404


async def test_send_over_websocket_with_media_and_someone_elses(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        mine = (await upload(srv, alice.token, b"hello", "text/plain")).json()["media_id"]
        theirs = (await upload(srv, bob.token, b"other", "text/plain")).json()["media_id"]
        async with http(srv, alice.token) as api:
            dm = (await api.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]})).json()["channel_id"]
        async with ws_client(srv, alice.token) as ws:
            await ws.send({"type": "send", "channel_id": dm, "client_msg_id": "w1", "text": "x",
                           "media_ids": [theirs], "ref": "w1"})
            assert (await ws.recv_type("error"))["code"] == "invalid"
            await ws.send({"type": "send", "channel_id": dm, "client_msg_id": "w2", "text": "x",
                           "media_ids": [mine], "ref": "w2"})
            ack = await ws.recv_type("ack")
            assert ack["seq"] == 1
        message = await srv.stores.messages.get(dm, 1)
        assert message is not None and [m.media_id for m in message.media] == [mine]


async def test_media_gc_removes_only_old_unposted_uploads(db_url: str) -> None:
    async with running_server(db_url) as srv:
        alice, bob = await srv.user("alice"), await srv.user("bob")
        posted = (await upload(srv, alice.token, os.urandom(1000), "image/png")).json()["media_id"]
        orphan = (await upload(srv, alice.token, os.urandom(CHUNK_BYTES + 1), "image/png")).json()["media_id"]
        fresh = (await upload(srv, alice.token, os.urandom(10), "image/png")).json()["media_id"]
        async with http(srv, alice.token) as api:
            dm = (await api.post("/v1/channels", {"kind": "dm", "members": [bob.user_id]})).json()["channel_id"]
            sent = await api.post(f"/v1/channels/{dm}/messages", {"client_msg_id": "g", "text": "", "media_ids": [posted]})
            assert sent.status_code == 201

        async def age(conn: Connection) -> None:
            await conn.execute("UPDATE media SET created_at = now() - interval '2 days' WHERE id <> $1", fresh)
            await conn.execute("UPDATE media_chunks SET touched_at = now() - interval '2 days'")
            await conn.execute("UPDATE media_blobs SET touched_at = now() - interval '2 days'")

        await srv.stores.db.transaction(age)
        freed = await srv.services.media.collect(86400)
        assert (freed.uploads, freed.files, freed.chunks) == (1, 1, 2)
        assert freed.bytes == CHUNK_BYTES + 1
        assert (await download(srv, alice.token, orphan)).status_code == 404
        assert (await download(srv, alice.token, posted)).status_code == 200
        assert (await download(srv, alice.token, fresh)).status_code == 200
        assert await srv.stores.checks.verify() == []


def test_media_gc_command(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from chatd.cli import main

    os.environ["CHATD_DATABASE_URL"] = db_url
    try:
        main(["media", "gc"])
    finally:
        del os.environ["CHATD_DATABASE_URL"]
    assert "removed 0 unposted uploads" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (png(640, 480), (640, 480)),
        (b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 10, (320, 200)),
        (b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (99).to_bytes(3, "little") + (49).to_bytes(3, "little"),
         (100, 50)),
        (b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f" + ((9) | (19 << 14)).to_bytes(4, "little"), (10, 20)),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
         b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 768, 1024) + b"\x03" + b"\x00" * 9, (1024, 768)),
        (b"\xff\xd8\xff\xe0\x00", None),  # cut short
        (b"<svg width='10' height='10'/>", None),
    ],
)
def test_image_size_from_the_header(head: bytes, size: tuple[int, int] | None) -> None:
    assert media_probe.image_size(head) == size


def test_filenames_and_types_are_cleaned() -> None:
    assert media_probe.filename('..\\..\\evil"\r\n.html') == "evil___.html"
    assert media_probe.filename("   ") is None
    assert media_probe.content_type("Image/PNG; charset=x") == "image/png"
    assert media_probe.content_type("text/html\r\nX-Evil: 1") == "application/octet-stream"
    assert not media_probe.is_inline("image/svg+xml") and media_probe.is_inline("application/pdf")


async def test_verify_names_a_stored_file_missing_a_chunk(db_url: str, databases: Any) -> None:
    databases.mark_broken(db_url)  # broken on purpose: the session's final verify skips it
    async with running_server(db_url) as srv:
        alice = await srv.user("alice")
        assert (await upload(srv, alice.token, os.urandom(CHUNK_BYTES + 5), "image/png")).status_code == 201
        assert await srv.stores.checks.verify() == []

        async def lose_a_chunk(conn: Connection) -> None:
            await conn.execute("DELETE FROM media_blob_chunks WHERE idx = 1")

        await srv.stores.db.transaction(lose_a_chunk)
        problems = await srv.stores.checks.verify()
        assert len(problems) == 1 and problems[0].startswith("stored file whose chunks do not add up to its size")
