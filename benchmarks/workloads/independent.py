"""1:1 at an offered rate, measured by an independent client (``websockets``, benchmarks/independent.py).

The same shape as ``steady`` (U users in DM pairs, open loop at R msg/s in
total), but the clients are asyncio + the ``websockets`` library in one
process of their own that imports neither chatd nor the load generator: how
a user with another client library would measure chatd. Figures: send->ack
and send->deliver p50/p95/p99/p99.9 from the time each send was due,
achieved and delivered msg/s, and the same exactly-once, in-order checks. Flags: steady's (``--workers`` is
ignored: the independent client is one process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import trio

from benchmarks.fixtures import open_dms
from benchmarks.harness import ROOT, Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.workloads.steady import PERCENTILES, add_arguments, server_env  # noqa: F401 (the same flags)

HELP = "1:1 at R msg/s measured by an independent websockets client"


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    users = await ctx.seed_users(args.users - args.users % 2)
    pairs = [(users[i], users[i + 1]) for i in range(0, len(users), 2)]
    channels = await open_dms(ctx.server.url, pairs)
    job = {
        "ws_url": ctx.server.ws_url, "rate": args.rate, "seconds": args.seconds, "text_chars": args.text_chars,
        "pairs": [[a["user_id"], a["token"], b["user_id"], b["token"], c] for (a, b), c in zip(pairs, channels)],
    }

    def client() -> dict[str, Any]:
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "independent.py")], input=json.dumps(job),
                              capture_output=True, text=True, timeout=args.seconds + 180)
        if done.returncode != 0:
            raise RuntimeError(f"independent client failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    async with ctx.window(None) as window:
        result = await trio.to_thread.run_sync(client)
    ack, deliver = result["send_ack_ms"], result["send_deliver_ms"]
    figures = {key: result[key] for key in ("achieved_msg_per_s", "delivered_msg_per_s", "sends", "acked",
                                           "send_ack_ms", "send_deliver_ms")}
    figures["offered_msg_per_s"] = args.rate
    figures["client"] = "websockets (asyncio), benchmarks/independent.py"
    c = result["correctness"]
    correctness = {"lost": max(c["lost"], c["inbox_gaps"]), "duplicated": c["duplicated"],
                   "out_of_order": c["out_of_order"], "error_frames": c["error_frames"], "unacked": result["unacked"]}
    rows = [
        ("client", figures["client"]),
        ("users / offered / achieved / delivered", f"{result['users']} / {fmt(args.rate)} / "
                                                   f"{fmt(result['achieved_msg_per_s'])} / "
                                                   f"{fmt(result['delivered_msg_per_s'])} msg/s"),
        ("send->ack p50 / p95 / p99 / p99.9", ms(ack, *PERCENTILES)),
        ("send->deliver p50 / p95 / p99 / p99.9", ms(deliver, *PERCENTILES)),
    ]
    params = {"users": result["users"], "rate": args.rate, "seconds": args.seconds, "text_chars": args.text_chars}
    return Outcome(params, figures, correctness, rows, window.figures())
