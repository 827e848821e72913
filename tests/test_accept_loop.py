"""The accept loop takes every queued connection at each wake-up (chatd.web.listener.accept_loop).

Under a reconnect storm a scheduling round is long; accepting one connection
per round let the kernel's queue overflow and clients time out on SYN
retransmits (benchmarks/README.md, issue 14). These tests count scheduling
rounds, not seconds.
"""

from __future__ import annotations

import socket

import trio
import trio.testing

from chatd.web.listener import ACCEPT_BURST, accept_loop

QUEUED = 300


async def test_a_queue_of_connections_is_accepted_in_a_few_rounds() -> None:
    assert QUEUED <= ACCEPT_BURST
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(QUEUED)]  # queued by the kernel
    started: list[int] = []
    rounds = 0
    all_in = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        started.append(rounds)
        if len(started) == QUEUED:
            all_in.set()
        async with stream:
            await trio.sleep_forever()

    async def count_rounds() -> None:
        nonlocal rounds
        while True:
            await trio.lowlevel.checkpoint()
            rounds += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_rounds)
            nursery.start_soon(accept_loop, listener, nursery, handle)
            with trio.fail_after(30):
                await all_in.wait()
            # One accept per round (trio.serve_listeners) would take QUEUED rounds.
            assert max(started) <= 3, max(started)
            nursery.cancel_scope.cancel()
    finally:
        for c in clients:
            c.close()


async def test_a_cancelled_accept_loop_closes_the_listening_socket() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    served: list[trio.SocketStream] = []

    async def handle(stream: trio.SocketStream) -> None:
        served.append(stream)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, nursery, handle)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert len(served) == 1
        nursery.cancel_scope.cancel()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the port still accepts connections after the loop ended")
