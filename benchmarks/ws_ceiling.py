"""The WebSocket ceiling: what Trio and wsproto do on this machine with no chatd logic.

Every fan-out and storm figure is reported beside what the same machine
does, in the same run, for the same shape with nothing of chatd in it:

- **fan-out**: a Trio server holds M handshaken WebSocket connections (plain
  wsproto, as chatd's transport) and writes one pre-encoded event frame (the
  size of chatd's ``event`` for a 60-character message) to each of them in
  turn, one ``send_all`` per connection per message, as fast as it can, for
  ``--seconds``. The clients are the load generator's (trio-websocket in
  ``--workers`` processes, each frame parsed as JSON, as the workloads'
  clients do); deliveries/s = frames received by all clients / the time from
  the first to the last.
- **handshakes**: clients open connections as fast as they can
  (``--concurrency`` at a time per worker, raw sockets: the request is sent
  pre-encoded and the answer read up to its blank line, then the socket is
  closed) and the server accepts, parses the upgrade with wsproto and
  answers 101; handshakes/s = 101 answers received / ``--handshake-seconds``.

Server and clients are separate processes, like chatd's, so they share the
two cores the same way. ``run()`` is what benchmarks/harness.py calls.

    python -m benchmarks.ws_ceiling --connections 500 --seconds 2 --handshake-seconds 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

ROOT = Path(__file__).resolve().parents[1]

#: The size and shape of chatd's ``event`` frame for a group message of 60 characters.
EVENT = json.dumps({
    "type": "event", "inbox_seq": 123456, "kind": "message", "channel_id": 4242, "seq": 98765,
    "sender_id": 31337, "client_msg_id": "b1a2c3u17-000123", "text": "1234567890123456789 " + "x" * 40,
    "media": [], "created_at": "2026-11-30T08:00:00.000000Z",
}, separators=(",", ":"))
END = '{"type":"end"}'
UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: chatd.v1.json\r\n\r\n"
)


# --- the server -------------------------------------------------------------------------------


async def _handshake(stream: trio.SocketStream) -> WSConnection | None:
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection(subprotocol=event.subprotocols[0])))
                return ws


async def serve(connections: int, seconds: float, batch: int) -> None:
    """Hold ``connections`` handshaken connections, fan frames out to them, then serve handshakes."""
    held: list[tuple[trio.SocketStream, WSConnection]] = []
    all_held = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        ws = await _handshake(stream)
        if ws is None:
            return
        if not all_held.is_set():
            held.append((stream, ws))
            if len(held) == connections:
                all_held.set()
            await trio.sleep_forever()
        # Handshake phase: the client closes once it has the 101.
        while await stream.receive_some(65536):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        print(f"port {listeners[0].socket.getsockname()[1]}", flush=True)
        await all_held.wait()
        await trio.sleep(0.2)
        # The same bytes for every connection: ``batch`` frames per write, as when that many
        # messages are being fanned out at once (the fan-out workload's senders).
        frames = held[0][1].send(TextMessage(data=EVENT)) * batch
        streams = [stream for stream, _ in held]
        rounds = 0
        started = trio.current_time()
        deadline = started + seconds
        while trio.current_time() < deadline:
            for stream in streams:
                await stream.send_all(frames)
            rounds += 1
        written_s = trio.current_time() - started
        for stream, ws in held:
            await stream.send_all(ws.send(TextMessage(data=END)) + ws.send(CloseConnection(code=1000)))
        print(f"written {rounds * batch * connections / written_s:.0f}", flush=True)
        await trio.sleep_forever()  # serving handshakes until terminated


# --- the clients ------------------------------------------------------------------------------


async def receive_frames(port: int, connections: int) -> dict[str, Any]:
    from trio_websocket import ConnectionClosed, open_websocket_url

    count = ended = 0
    first = last = 0.0

    async def one() -> None:
        nonlocal count, first, last, ended
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/ws", subprotocols=["chatd.v1.json"]) as ws:
            while True:
                try:
                    data = await ws.get_message()
                except ConnectionClosed:
                    data = END
                if data == END:
                    break
                json.loads(data)
                now = time.monotonic()
                if not first:
                    first = now
                last = now
                count += 1
            # No closing handshake: the server has stopped reading. Everyone done: stop.
            ended += 1
            if ended == connections:
                nursery.cancel_scope.cancel()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    return {"frames": count, "first": first, "last": last}


async def open_many(port: int, concurrency: int, seconds: float) -> dict[str, Any]:
    done = failed = 0
    deadline = trio.current_time() + seconds

    async def loop() -> None:
        nonlocal done, failed
        while trio.current_time() < deadline:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(UPGRADE)
                    answer = b""
                    while b"\r\n\r\n" not in answer:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        answer += chunk
                if answer.startswith(b"HTTP/1.1 101") and trio.current_time() <= deadline:
                    done += 1
            except OSError:
                failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(loop)
    return {"handshakes": done, "failed": failed}


# --- orchestration ------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ws_ceiling", *args], cwd=ROOT, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )


def _results(procs: list[subprocess.Popen[str]], timeout_s: float) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"ws ceiling client failed ({proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run(connections: int, seconds: float, handshake_seconds: float, workers: int = 2, batch: int = 1,
        concurrency: int = 64, timeout_s: float = 120.0) -> dict[str, Any]:
    """Measure both ceilings (server and clients in their own processes); the figures."""
    from benchmarks.proc import raise_nofile

    raise_nofile(65536)
    server = _spawn("--role", "server", "--connections", str(connections), "--seconds", str(seconds),
                    "--batch", str(batch))
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        shares = [connections // workers + (1 if i < connections % workers else 0) for i in range(workers)]
        clients = [_spawn("--role", "receive", "--port", str(port), "--connections", str(n)) for n in shares if n]
        received = _results(clients, timeout_s)
        written = float(server.stdout.readline().split()[1])
        openers = [_spawn("--role", "open", "--port", str(port), "--concurrency", str(concurrency),
                          "--seconds", str(handshake_seconds)) for _ in range(workers)]
        opened = _results(openers, timeout_s)
    finally:
        server.terminate()
        server.wait(10)
    frames = sum(r["frames"] for r in received)
    span = max(r["last"] for r in received) - min(r["first"] for r in received if r["first"])
    return {
        "connections": connections,
        "fanout_deliveries_per_s": round(frames / max(span, 1e-9)),
        "fanout_written_per_s": round(written),
        "fanout_batch": batch,
        "handshakes_per_s": round(sum(r["handshakes"] for r in opened) / handshake_seconds),
        "handshake_failures": sum(r["failed"] for r in opened),
        "seconds_each": seconds,
        "workers": workers,
        "frame_bytes": len(EVENT),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("all", "server", "receive", "open"), default="all")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--handshake-seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="frames per connection per write")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        trio.run(serve, args.connections, args.seconds, args.batch)
    elif args.role == "receive":
        print(json.dumps(trio.run(receive_frames, args.port, args.connections)))
    elif args.role == "open":
        print(json.dumps(trio.run(open_many, args.port, args.concurrency, args.seconds)))
    else:
        print(json.dumps(run(args.connections, args.seconds, args.handshake_seconds, args.workers, args.batch,
                             args.concurrency)))


if __name__ == "__main__":
    main()
