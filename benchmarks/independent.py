"""An independent 1:1 client: asyncio + the ``websockets`` library, no chatd or load-generator code.

chatd's own load generator is Trio + trio-websocket; users measure chatd with
whatever client they have. This script speaks PROTOCOL §3 with ``websockets``
only (and the standard library), so the 1:1 figures can be checked with a
client library chatd does not own. It reads one JSON job on stdin:

    {"ws_url", "pairs": [[user_a, token_a, user_b, token_b, channel_id], ...],
     "rate": total msg/s, "seconds", "text_chars"}

connects every user, ``sync``s from ``welcome.inbox_head``, then each user
sends into its DM on a clock (open loop, rate / users msg/s each, random
phase; latency counts from the time a send was *due*), and prints one JSON
line: send->ack and send->deliver p50/p99/p99.9, achieved and delivered msg/s,
and the exactly-once, in-order check (each recipient's ``inbox_seq`` goes up
by one; every acknowledged message reaches the partner once, in ``seq``
order). Run by benchmarks/workloads/independent.py, or by hand with a job.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from websockets.asyncio.client import connect


def percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"n": len(ordered), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "p99.9": at(0.999),
            "max": round(ordered[-1] * 1000, 2)}


class User:
    def __init__(self, user_id: int, token: str, channel: int) -> None:
        self.user_id, self.token, self.channel = user_id, token, channel
        self.ws: Any = None
        self.cursor = 0
        self.synced = asyncio.Event()
        self.due: dict[str, float] = {}
        self.acked: list[int] = []  # seqs of this user's messages, acknowledged
        self.seen: dict[int, int] = {}  # partner's messages: seq -> times seen
        self.last_seq = 0
        self.out_of_order = self.duplicated = self.gaps = self.errors = 0


async def run(job: dict[str, Any]) -> dict[str, Any]:
    users: list[User] = []
    partner: dict[int, User] = {}
    for a, token_a, b, token_b, channel in job["pairs"]:
        ua, ub = User(a, token_a, channel), User(b, token_b, channel)
        users += [ua, ub]
        partner[a], partner[b] = ub, ua
    ack_lat: list[float] = []
    deliver_lat: list[float] = []
    window: dict[str, float] = {}

    async def reader(user: User) -> None:
        async for raw in user.ws:
            now = time.monotonic()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "event":
                if frame["inbox_seq"] != user.cursor + 1:
                    user.gaps += 1
                user.cursor = frame["inbox_seq"]
                if frame.get("kind") == "message" and frame.get("sender_id") != user.user_id:
                    seq = frame["seq"]
                    user.seen[seq] = user.seen.get(seq, 0) + 1
                    if user.seen[seq] > 1:
                        user.duplicated += 1
                    elif seq < user.last_seq:
                        user.out_of_order += 1
                    user.last_seq = max(user.last_seq, seq)
                    if window and window["start"] <= now <= window["stop"] + 1:
                        deliver_lat.append(now - int(frame["text"].split(" ", 1)[0]) / 1e9)
            elif kind == "ack":
                due = user.due.pop(frame["ref"], None)
                user.acked.append(frame["seq"])
                if due is not None and due <= window["stop"]:
                    ack_lat.append(now - due)
            elif kind == "synced":
                user.cursor = frame["cursor"]
                user.synced.set()
            elif kind == "welcome":
                user.cursor = frame["inbox_head"]
                await user.ws.send(json.dumps({"type": "sync", "after": user.cursor}))
            elif kind in ("error", "reconnect"):
                user.errors += 1

    async def sender(user: User, per_user: float, start: float, stop: float) -> int:
        period = 1.0 / per_user
        due = start + random.random() * period
        filler = "x" * job["text_chars"]
        n = 0
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            ref = f"{user.user_id}-{n}"
            user.due[ref] = due
            await user.ws.send(json.dumps({"type": "send", "channel_id": user.channel, "client_msg_id": ref,
                                           "text": f"{int(due * 1e9)} {filler}", "ref": ref}))
            n += 1
            due += period
        return n

    async def open_one(user: User) -> None:
        user.ws = await connect(job["ws_url"], subprotocols=["chatd.v1.json"],  # type: ignore[list-item]
                                additional_headers={"Authorization": f"Bearer {user.token}"},
                                max_queue=None, open_timeout=60)

    gate = asyncio.Semaphore(32)

    async def opened(user: User) -> None:
        async with gate:
            await open_one(user)

    await asyncio.gather(*(opened(u) for u in users))
    readers = [asyncio.create_task(reader(u)) for u in users]
    await asyncio.wait_for(asyncio.gather(*(u.synced.wait() for u in users)), 60)
    start = time.monotonic() + 0.5
    stop = start + job["seconds"]
    window.update(start=start, stop=stop)
    sends = sum(await asyncio.gather(*(sender(u, job["rate"] / len(users), start, stop) for u in users)))
    # Every acknowledged message must reach the partner: wait (bounded) for the last ones.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(u.due == {} for u in users) and all(
                all(seq in partner[u.user_id].seen for seq in u.acked) for u in users):
            break
        await asyncio.sleep(0.2)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(u.ws.close() for u in users), return_exceptions=True)
    acked_in_window = len(ack_lat)
    lost = sum(1 for u in users for seq in u.acked if seq not in partner[u.user_id].seen)
    return {
        "users": len(users),
        "sends": sends,
        "acked": sum(len(u.acked) for u in users),
        "unacked": sum(len(u.due) for u in users),
        "achieved_msg_per_s": round(acked_in_window / job["seconds"], 1),
        "delivered_msg_per_s": round(len(deliver_lat) / job["seconds"], 1),
        "send_ack_ms": percentiles(ack_lat),
        "send_deliver_ms": percentiles(deliver_lat),
        "correctness": {
            "lost": lost,
            "duplicated": sum(u.duplicated for u in users),
            "out_of_order": sum(u.out_of_order for u in users),
            "inbox_gaps": sum(u.gaps for u in users),
            "error_frames": sum(u.errors for u in users),
        },
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(job))))


if __name__ == "__main__":
    main()
