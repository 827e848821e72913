"""``/v1/ws`` served by chatd's wsproto endpoint vs. by trio-websocket: server CPU per frame.

The question (issue 8): trio-websocket is a package the project was asked
to use, but chatd serves WebSocket connections with its own layer on wsproto
(:mod:`chatd.web.ws_wsproto`). If trio-websocket costs no more than 10% more
server CPU per frame, chatd should use it and delete its own layer; otherwise
chatd keeps wsproto and the README carries both figures.

What runs, in one invocation (``python -m benchmarks.ws_paths``):

- **Server** (a process of its own per round, ``ws_paths serve --impl X``):
  a trio accept loop on 127.0.0.1 that reads the request head exactly as
  chatd's listener does (:func:`chatd.web.listener.read_head`), then hands the
  socket and the head to one of

  - ``wsproto``: chatd's real :class:`chatd.web.ws_wsproto.WsprotoEndpoint`
    (its handshake, subprotocol choice, Origin check and
    :class:`~chatd.web.ws_wsproto.WsprotoTransport`), with an authenticator
    that accepts any token and a "session" that echoes every message back
    with ``transport.send``;
  - ``trio-websocket``: :func:`trio_websocket.wrap_server_stream` on the
    socket with the head put back in front (:class:`Replayed`), accepting
    ``chatd.v1.json``, with the same message limit and receive buffer as
    chatd's (64 KiB), echoing every message with ``send_message``.

  So this is an **echo server**, not ``chatd serve``: chatd's session, hub
  and database are left out on purpose, since they are the same whichever
  layer carries the frames, and would only dilute the difference being
  measured (it is an upper bound on what the switch could change in chatd).
- **Clients** (``--workers`` processes, separate from the server): N
  connections in all (``--connections``, default 200), each a minimal wsproto
  client that, once every connection of the run is open, sends a ~120-byte
  JSON text frame, waits for its echo (checked byte for byte), and repeats
  ``--frames`` times (closed loop, one frame in flight per connection).
- **Measure**: server CPU (utime+stime from ``/proc/<pid>/stat``) and wall time
  over the window from "every connection open" to "every client done";
  handshakes are outside it. CPU per frame = CPU / frames echoed.
- **Rounds**: ``--rounds`` (default 3) of each implementation, interleaved
  (A B, B A, A B...) so drifting machine load hits both alike; the summary
  gives the mean and the median per implementation and the ratio of means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import IO, Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("wsproto", "trio-websocket")
SUBPROTOCOL = "chatd.v1.json"
MAX_MESSAGE_BYTES = 65536  # chatd's limits.max_frame_bytes default
RECEIVE_BYTES = 65536  # chatd.web.ws_wsproto.RECEIVE_BYTES
THRESHOLD = 1.10  # the rule: at most 10% more CPU per frame


# ---------------------------------------------------------------- server side


class Replayed(trio.abc.Stream):
    """A socket stream with the already-read request head put back in front (nothing else added)."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class EchoSession:
    """Stands in for chatd's Session on the wsproto path: every message goes back as it came."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    async def run(self) -> None:
        while True:
            await self._transport.send(await self._transport.receive())


def wsproto_handler() -> Any:
    from chatd.web.ws_wsproto import WsprotoEndpoint

    async def authenticate(token: str | None) -> object:
        return object()

    return WsprotoEndpoint(authenticate, lambda transport, fmt, principal: EchoSession(transport), MAX_MESSAGE_BYTES)


def trio_websocket_handler() -> Any:
    from trio_websocket import ConnectionClosed, wrap_server_stream

    async def handle(stream: trio.SocketStream, head: bytes) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(
                nursery, Replayed(stream, head), max_message_size=MAX_MESSAGE_BYTES, receive_buffer_size=RECEIVE_BYTES
            )
            subprotocol = SUBPROTOCOL if SUBPROTOCOL in request.proposed_subprotocols else None
            ws = await request.accept(subprotocol=subprotocol)
            try:
                while True:
                    await ws.send_message(await ws.get_message())
            except ConnectionClosed:
                pass
            finally:
                await ws.aclose()

    return handle


async def serve(impl: str) -> None:
    from chatd.web.listener import read_head

    handler = wsproto_handler() if impl == "wsproto" else trio_websocket_handler()

    async def one(stream: trio.SocketStream) -> None:
        try:
            head = await read_head(stream)
            await handler(stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, one, 0, host="127.0.0.1"))
        print(f"listening {listeners[0].socket.getsockname()[1]}", flush=True)


# ---------------------------------------------------------------- client side


def payload(conn: int, i: int) -> str:
    body = f"frame {i} of connection {conn} " + "x" * 40
    return json.dumps({"type": "send", "id": f"c{conn}-{i}", "channel_id": 1, "client_msg_id": f"m{conn}-{i}", "body": body})


class Client:
    """One WebSocket connection speaking bare wsproto: little client CPU, exact echo checks."""

    def __init__(self, stream: trio.SocketStream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    async def next_event(self) -> Any:
        while not self.pending:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise RuntimeError(f"connection {self.number}: server closed")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def open(self, port: int) -> None:
        await self.stream.send_all(
            self.ws.send(
                Request(host=f"127.0.0.1:{port}", target="/v1/ws", subprotocols=[SUBPROTOCOL],
                        extra_headers=[(b"authorization", b"Bearer benchmark")])
            )
        )
        event = await self.next_event()
        if not isinstance(event, AcceptConnection):
            raise RuntimeError(f"connection {self.number}: handshake refused ({event!r})")

    async def echo(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))
        parts: list[str] = []
        while True:
            event = await self.next_event()
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    break
            elif isinstance(event, Ping):
                await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, (CloseConnection, RejectConnection)):
                raise RuntimeError(f"connection {self.number}: closed ({event!r})")
        if "".join(parts) != text:
            raise RuntimeError(f"connection {self.number}: echo differs")

    async def close(self) -> None:
        with trio.move_on_after(2):
            await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
            while not isinstance(await self.next_event(), CloseConnection):
                pass
        await trio.aclose_forcefully(self.stream)


async def client(port: int, first: int, count: int, frames: int) -> None:
    clients: list[Client] = []
    try:
        for n in range(first, first + count):
            c = Client(await trio.open_tcp_stream("127.0.0.1", port), n)
            await c.open(port)
            clients.append(c)
        print("ready", flush=True)
        go = await trio.to_thread.run_sync(sys.stdin.readline)
        if go.strip() != "go":
            return
        echoed = 0

        async def run(c: Client) -> None:
            nonlocal echoed
            for i in range(frames):
                await c.echo(payload(c.number, i))
                echoed += 1

        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(run, c)
        print(f"done {echoed} {time.monotonic() - start:.6f}", flush=True)
    finally:
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(c.close)


# ---------------------------------------------------------------- orchestrator


def cpu_seconds(pid: int) -> float:
    from benchmarks.proc import cpu_seconds as read

    return read(pid)


def rss_kib(pid: int) -> int:
    from benchmarks.proc import rss_kib as read

    return read(pid)


def read_line(proc: subprocess.Popen[str], what: str, timeout_s: float = 120.0) -> str:
    assert proc.stdout is not None
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"no {what!r} line from pid {proc.pid} (exit {proc.poll()})")
    return line.strip()


def spawn(args: list[str], stdin: int | IO[str] | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "benchmarks.ws_paths", *args], cwd=ROOT, env=env, text=True,
                            stdin=stdin, stdout=subprocess.PIPE)


def one_round(impl: str, connections: int, frames: int, workers: int) -> dict[str, Any]:
    server = spawn(["serve", "--impl", impl])
    clients: list[subprocess.Popen[str]] = []
    try:
        port = int(read_line(server, "listening").split()[1])
        rss_idle = rss_kib(server.pid)
        share, extra = divmod(connections, workers)
        first = 0
        for w in range(workers):
            count = share + (1 if w < extra else 0)
            args = ["client", "--port", str(port), "--first", str(first), "--count", str(count), "--frames", str(frames)]
            clients.append(spawn(args, stdin=subprocess.PIPE))
            first += count
        for c in clients:
            if read_line(c, "ready") != "ready":
                raise RuntimeError("a client did not get ready")
        rss_open = rss_kib(server.pid)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        echoed = 0
        for c in clients:
            kind, count_s, _elapsed = read_line(c, "done").split()
            echoed += int(count_s)
        cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        if echoed != connections * frames:
            raise RuntimeError(f"{impl}: {echoed} frames echoed, {connections * frames} expected")
        for c in clients:
            c.wait(30)
        return {
            "impl": impl,
            "frames": echoed,
            "seconds": t1 - t0,
            "server_cpu_s": cpu1 - cpu0,
            "cpu_us_per_frame": (cpu1 - cpu0) / echoed * 1e6,
            "frames_per_s": echoed / (t1 - t0),
            "rss_kib_per_connection": (rss_open - rss_idle) / connections,
        }
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
        server.wait()


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    print(f"{'round':>5} {'impl':<15} {'frames':>7} {'s':>6} {'CPU us/frame':>12} {'frames/s':>9} {'KiB/conn':>8}")
    for r in range(args.rounds):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
            res = one_round(impl, args.connections, args.frames, args.workers)
            res["round"] = r + 1
            rounds.append(res)
            print(f"{r + 1:>5} {impl:<15} {res['frames']:>7} {res['seconds']:>6.2f} {res['cpu_us_per_frame']:>12.1f}"
                  f" {res['frames_per_s']:>9.0f} {res['rss_kib_per_connection']:>8.1f}", flush=True)
    summary: dict[str, Any] = {}
    for impl in IMPLS:
        mine = [x for x in rounds if x["impl"] == impl]
        summary[impl] = {
            "cpu_us_per_frame_mean": statistics.mean(x["cpu_us_per_frame"] for x in mine),
            "cpu_us_per_frame_median": statistics.median(x["cpu_us_per_frame"] for x in mine),
            "frames_per_s_mean": statistics.mean(x["frames_per_s"] for x in mine),
            "rss_kib_per_connection_mean": statistics.mean(x["rss_kib_per_connection"] for x in mine),
        }
    tws, ws = (summary[impl]["cpu_us_per_frame_mean"] for impl in ("trio-websocket", "wsproto"))
    # A tiny run can measure 0 CPU for wsproto (process CPU time ticks in 10 ms): not a division.
    ratio = tws / ws if ws > 0 else math.inf
    verdict = "use trio-websocket" if ratio <= THRESHOLD else "keep wsproto"
    print()
    for impl in IMPLS:
        s = summary[impl]
        print(f"{impl:<15} CPU/frame mean {s['cpu_us_per_frame_mean']:.1f} us (median {s['cpu_us_per_frame_median']:.1f}),"
              f" {s['frames_per_s_mean']:.0f} frames/s, {s['rss_kib_per_connection_mean']:.1f} KiB/connection")
    print(f"ratio trio-websocket / wsproto (CPU per frame, means): {ratio:.2f}  -> {verdict}"
          f" (rule: switch if <= {THRESHOLD:.2f})")
    return {"params": vars(args), "rounds": rounds, "summary": summary, "ratio": ratio, "verdict": verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ws_paths", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="(internal) one echo server")
    s.add_argument("--impl", choices=IMPLS, required=True)
    c = sub.add_parser("client", help="(internal) one client process")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--first", type=int, default=0)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--frames", type=int, required=True)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--frames", type=int, default=150, help="frames each connection sends (and gets back)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each implementation, interleaved")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.command == "serve":
        trio.run(serve, args.impl)
    elif args.command == "client":
        trio.run(client, args.port, args.first, args.count, args.frames)
    else:
        result = orchestrate(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
