"""Pieces every workload's worker half uses: clocks, connecting, acks, delivery checks.

Time: all deadlines that cross processes are ``time.monotonic()`` values
(CLOCK_MONOTONIC, one clock per machine); Trio sleeps on its own clock, so
:func:`sleep_until` converts.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from benchmarks.clients import CONNECT_ERRORS, Client, message_text, sent_at
from benchmarks.ledger import add_verdicts
from benchmarks.stats import Histogram, RunSet

if TYPE_CHECKING:
    from benchmarks.workers import Link

#: How many times a non-storm workload tries to open each connection.
CONNECT_ATTEMPTS = 5


async def sleep_until(monotonic_deadline: float) -> None:
    """Sleep until a time.monotonic() value (which may belong to another process's plan)."""
    await trio.sleep_until(trio.current_time() + (monotonic_deadline - time.monotonic()))


async def connect_all(
    clients: Sequence[Client],
    nursery: trio.Nursery,
    *,
    concurrency: int = 32,
    sync: bool = True,
    timeout_s: float = 120.0,
    after_connect: Callable[[Client], None] | None = None,
    tolerate: bool = False,
) -> list[Client]:
    """Connect (and ``sync`` from ``inbox_head``) every client, ``concurrency`` at a time.

    A refused or timed-out connection is retried a few times with a jittered
    pause (a loaded server may drop SYNs); after that the run fails, or, with
    ``tolerate``, the client is returned among the failed ones (the caller
    counts them, and the run still fails, but reports what it measured).
    """
    failed: list[Client] = []
    limit = trio.CapacityLimiter(concurrency)
    started = time.monotonic()
    done = [0]
    every = max(100, len(clients) // 10)

    async def one(client: Client) -> None:
        async with limit:
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    await client.connect(nursery)
                    if sync and await client.sync() < 0:
                        raise ConnectionError(f"closed before synced: {client.dropped}")
                    break
                except (*CONNECT_ERRORS, ConnectionError):
                    if attempt == CONNECT_ATTEMPTS - 1:
                        if not tolerate:
                            raise
                        failed.append(client)
                        return
                    await client.close()
                    await trio.sleep(random.uniform(0.2, 0.5) * 2**attempt)
            if after_connect is not None:
                after_connect(client)
        done[0] += 1
        if done[0] % every == 0:  # progress, in the worker's log
            elapsed = time.monotonic() - started
            print(f"{done[0]}/{len(clients)} connected in {elapsed:.1f} s", file=sys.stderr, flush=True)

    finished: set[int] = set()

    async def tracked(client: Client) -> None:
        await one(client)
        finished.add(id(client))

    with trio.move_on_after(timeout_s) as phase:
        async with trio.open_nursery() as inner:
            for client in clients:
                inner.start_soon(tracked, client)
    if phase.cancelled_caught:
        if not tolerate:
            raise trio.TooSlowError(f"{len(clients) - len(finished)} connections not open after {timeout_s:.0f} s")
        print(f"connect phase cut at {timeout_s:.0f} s: {len(clients) - len(finished)} not open",
              file=sys.stderr, flush=True)
        failed.extend(c for c in clients if id(c) not in finished)
    return failed


async def connect_and_keep_alive(clients: Sequence[Client], nursery: trio.Nursery) -> None:
    """:func:`connect_all`, then each client pings every ``heartbeat_s`` from a random phase."""
    await connect_all(clients, nursery)
    for client in clients:
        heartbeat = client.welcome["heartbeat_s"]
        nursery.start_soon(client.ping_forever, heartbeat, random.uniform(0, heartbeat))


async def await_go(link: Link, book: AckBook, window: list[float]) -> dict[str, Any]:
    """Report ``ready``, wait for ``go``; record its measured window. Returns the ``go`` command."""
    await link.report("ready")
    go = await link.receive("go")
    window[:] = [go["start"], go["stop"]]
    book.window = (go["start"], go["stop"])
    return go


async def close_all(clients: Iterable[Client], timeout_s: float = 10.0) -> None:
    """Close every connection politely, bounded in time (the caller cancels what is left)."""
    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.close)


class AckBook:
    """What one worker's senders got acknowledged: seqs per channel, latency, counts in a window."""

    def __init__(self) -> None:
        self.acked: dict[int, RunSet] = {}
        self.latency = Histogram()
        self.in_window = 0
        self.total = 0
        self.window = (0.0, float("inf"))

    def on_ack(self, client: Client, frame: dict[str, Any], latency_s: float, now: float) -> None:
        channel = frame["channel_id"]
        runs = self.acked.get(channel)
        if runs is None:
            runs = self.acked[channel] = RunSet()
        runs.add(frame["seq"])
        self.latency.add(latency_s)
        self.total += 1
        if self.window[0] <= now <= self.window[1]:
            self.in_window += 1

    def acked_json(self) -> dict[str, list[list[int]]]:
        return {str(ch): runs.to_json() for ch, runs in self.acked.items()}


def merge_acked(reports: Iterable[dict[str, list[list[int]]]]) -> dict[str, list[list[int]]]:
    """Union of the workers' acknowledged seqs per channel (as sent back in ``expect``)."""
    merged: dict[str, RunSet] = {}
    for report in reports:
        for channel, runs in report.items():
            merged.setdefault(channel, RunSet()).update(RunSet.from_json(runs))
    return {ch: runs.to_json() for ch, runs in merged.items()}


def expected_sets(acked: dict[str, list[list[int]]]) -> dict[int, RunSet]:
    return {int(ch): RunSet.from_json(runs) for ch, runs in acked.items()}


async def wait_delivered(
    members: Sequence[tuple[Client, Sequence[int]]], expected: dict[int, RunSet], timeout_s: float
) -> bool:
    """Wait until every client has seen every acknowledged message of its channels."""

    def done() -> bool:
        return all(
            c.ledger is not None and c.ledger.has_all({ch: expected[ch] for ch in chans if ch in expected})
            for c, chans in members
        )

    with trio.move_on_after(timeout_s):
        while not done():
            await trio.sleep(0.05)
        return True
    return False


def verdicts(members: Sequence[tuple[Client, Sequence[int]]], expected: dict[int, RunSet]) -> dict[str, Any]:
    """The correctness counts over these recipients, plus what else went wrong on their sockets."""
    total: dict[str, int] = {"lost": 0, "duplicated": 0, "out_of_order": 0, "events": 0}
    for client, chans in members:
        if client.ledger is None:
            total["lost"] += sum(len(expected[ch]) for ch in chans if ch in expected)
            continue
        add_verdicts(total, client.ledger.verdict({ch: expected[ch] for ch in chans if ch in expected}))
    return {**total, **problems(c for c, _ in members)}


def problems(clients: Iterable[Client]) -> dict[str, Any]:
    """Error frames, unanswered sends and unexpected closes: each fails the run."""
    errors: list[Any] = []
    error_count = unacked = dropped = 0
    drops: list[str] = []
    for client in clients:
        error_count += len(client.errors)
        errors.extend(client.errors[: max(0, 5 - len(errors))])
        unacked += len(client.pending)
        if client.dropped is not None:
            dropped += 1
            if len(drops) < 5:
                drops.append(f"user {client.user_id}: {client.dropped}")
    return {"error_frames": error_count, "error_samples": errors, "unacked": unacked, "dropped": dropped,
            "drop_samples": drops}


def sum_correctness(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up the workers' correctness reports (counts add, sample lists keep the first five)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                total[key] = (total.get(key, []) + value)[:5]
            else:
                total[key] = total.get(key, 0) + value
    return total


class PairTraffic:
    """The worker's half of the open-loop 1:1 load (steady, soak): both members of
    each DM pair on this worker, each sending into its DM on a fixed schedule
    (a random phase, then every ``1 / rate_per_user`` s) whether or not earlier
    sends were acknowledged. Latency counts from the time a send was *due*."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.book = AckBook()
        self.deliver = Histogram()
        self.lag = Histogram()
        self.sends = 0
        self.delivered_in_window = 0
        self.window = [0.0, float("inf")]
        self.members: list[tuple[Client, list[int]]] = []
        for a, b, channel in job["pairs"]:
            for creds in (a, b):
                client = Client(job["ws_url"], creds["user_id"], creds["token"], on_ack=self.book.on_ack,
                                on_message=self._on_message)
                self.members.append((client, [channel]))
        self.clients = [c for c, _ in self.members]
        self._filler = "x" * job["text_chars"]
        rate = job["rate_per_user"]
        self._period = 1.0 / rate if rate > 0 else float("inf")

    def _on_message(self, client: Client, frame: dict[str, Any], now: float) -> None:
        if frame["sender_id"] == client.user_id:
            return  # our own echo: checked by the ledger, not a delivery to the partner
        self.deliver.add(now - sent_at(frame["text"]))
        if self.window[0] <= now <= self.window[1]:
            self.delivered_in_window += 1

    def start_senders(self, nursery: trio.Nursery, start: float, stop: float) -> None:
        for index, (client, channels) in enumerate(self.members):
            nursery.start_soon(self._sender, client, channels[0], index, start, stop)

    async def _sender(self, client: Client, channel: int, index: int, start: float, stop: float) -> None:
        period, job = self._period, self.job
        due = start + random.uniform(0, period) if period != float("inf") else stop
        n = 0
        while due < stop:
            await sleep_until(due)
            self.lag.add(time.monotonic() - due)
            await client.send(channel, f"{job['tag']}-{job['index']}-{index}-{n}", message_text(due, self._filler), due)
            self.sends += 1
            n += 1
            due += period

    async def wait_acked(self, timeout_s: float = 30.0) -> None:
        """Until every send has its answer (or its connection dropped), bounded."""
        with trio.move_on_after(timeout_s):
            while any(c.pending and c.dropped is None for c in self.clients):
                await trio.sleep(0.05)

    def sent_report(self) -> dict[str, Any]:
        """The fields of the worker's ``sent`` report."""
        return {"acked": self.book.acked_json(), "ack": self.book.latency.to_json(), "lag": self.lag.to_json(),
                "acked_in_window": self.book.in_window, "acked_total": self.book.total, "sends": self.sends}
