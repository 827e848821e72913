"""Real local HTTP receivers (used by tests/test_push.py and the push benchmark): a webhook sink, and a Web Push
service that decrypts each message with the subscription's private key and checks the VAPID JWT."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import h11
import http_ece
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1:0 that records each POST and answers from ``statuses`` (then 201)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[Received] = []
        self.answered: list[int] = []
        self.port = 0
        self.arrived = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        with trio.fail_after(timeout):
            while len(self.received) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()
        return self.received

    def check(self, request: Received) -> None:
        """Raise to answer 400 (a Web Push receiver's checks)."""

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                head: Any = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is not h11.DONE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                request = Received(head.target.decode(), headers, body, time.monotonic())
                status = self.statuses.pop(0) if self.statuses else 201
                try:
                    self.check(request)
                except Exception as exc:  # a failed check is the test's finding: answer 400 with it
                    status = 400
                    request.headers["x-check-failed"] = repr(exc)
                self.received.append(request)
                self.answered.append(status)
                self.arrived.set()
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[("content-length", "0")])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
            self.port = listeners[0].socket.getsockname()[1]
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()


class WebPushReceiver(Receiver):
    """A push service endpoint: checks the VAPID JWT (RFC 8292) against ``vapid_public_key``
    and decrypts the aes128gcm body (RFC 8291) with the subscription's own keys."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__(statuses)
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = os.urandom(16)
        self.vapid_public_key: str | None = None
        self.payloads: list[dict[str, Any]] = []
        self.claims: list[dict[str, Any]] = []

    def subscription(self, path: str = "/push/abc") -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"kind": "webpush", "endpoint": self.url + path,
                "keys": {"p256dh": b64url(public), "auth": b64url(self.auth_secret)}}

    def check(self, request: Received) -> None:
        scheme, _, params = request.headers["authorization"].partition(" ")
        assert scheme == "vapid"
        parts = dict(p.strip().split("=", 1) for p in params.split(","))
        assert self.vapid_public_key is not None and parts["k"] == self.vapid_public_key
        signing_input, _, signature = parts["t"].rpartition(".")
        raw = unb64url(signature)
        assert len(raw) == 64
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        try:
            key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise AssertionError("bad VAPID signature") from exc
        header = json.loads(unb64url(signing_input.split(".")[0]))
        claims = json.loads(unb64url(signing_input.split(".")[1]))
        assert header["alg"] == "ES256"
        assert claims["aud"] == self.url and claims["exp"] > time.time() and claims["sub"].startswith("mailto:")
        assert request.headers["content-encoding"] == "aes128gcm" and int(request.headers["ttl"]) > 0
        plain = http_ece.decrypt(request.body, private_key=self.private_key, auth_secret=self.auth_secret,
                                 version="aes128gcm")
        self.claims.append(claims)
        self.payloads.append(json.loads(plain))
