"""Soak: hostile sockets, idle connections and a steady 1:1 load at once; /healthz must stay fast.

For ``--seconds`` (default 60), against one ``chatd serve``, all of:

- ``--slowloris`` raw TCP sockets (default 200) that stay hostile for the
  whole window, four kinds in turn: *silent* (connect, send nothing), *head*
  (the request head dripped one byte every ``--drip`` seconds from its first
  byte, then an endless header value), *body* (a whole ``POST /v1/login``
  head with ``Content-Length: 1000000``, then the body dripped a byte at a
  time) and *upgrade* (a ``GET /v1/ws`` upgrade head sent without its final
  blank line, then an endless header dripped). When the server closes one, it
  reconnects after 0.5-1.5 s, as an attacker keeping the pressure on would;
  every close is counted with how long the server had held that socket (per
  kind: that shows each per-phase timeout at work). 127.0.0.1 only; every
  loop ends by itself at the end of the window.
- ``--idle`` authenticated WebSocket connections (default 2000), synced and
  pinging every ``--heartbeat`` seconds (the server's heartbeat, default 10)
  as in the idle workload; every ping must be answered once, in order.
- the steady workload's open-loop 1:1 load: ``--users`` in DM pairs sending
  ``--rate`` msg/s in total (default 200), latency from the time each send
  was due, every acknowledged message checked delivered exactly once and in
  order to both members of its DM.
- ``GET /healthz`` every ``--healthz-every`` seconds (default 0.05) from the
  orchestrating process, each probe on a **fresh** TCP connection
  (``Connection: close``), as a load balancer's or orchestrator's health check
  connects: it measures whether a new client still gets in and served, not
  only whether a warm connection is. Latency runs from the time the probe was
  due to the end of the response; a probe that fails to connect, times out
  (``--healthz-timeout``) or is not ``200 {"status": "ok"}`` is a failure.

Passes only if healthz p99 < ``--healthz-p99-ms`` (100), no healthz probe
failed, no acknowledged message was lost, duplicated or reordered, no ping
went unanswered, and no friendly connection was closed by the server.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from typing import Any
from urllib.parse import urlsplit

import trio

from benchmarks.clients import Client
from benchmarks.fixtures import open_dms
from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt, ms
from benchmarks.stats import Histogram
from benchmarks.workers import Link
from benchmarks.workloads.common import (
    PairTraffic,
    await_go,
    close_all,
    connect_all,
    expected_sets,
    merge_acked,
    problems,
    sleep_until,
    sum_correctness,
    verdicts,
    wait_delivered,
)

HELP = "slowloris sockets + idle connections + steady 1:1 load at once: /healthz latency, no message lost"
PERCENTILES = ("p50", "p99", "p99.9")
KINDS = ("silent", "head", "body", "upgrade")
#: Pause before a hostile socket reconnects after the server closed it (or refused it).
RECONNECT_PAUSE_S = (0.5, 1.5)
#: The longest a hostile socket waits for its TCP connect.
CONNECT_TIMEOUT_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="length of the soak window (default 60)")
    p.add_argument("--rate", type=float, default=200.0, help="offered msg/s in total, 1:1 (default 200)")
    p.add_argument("--users", type=int, default=200, help="sending users, in DM pairs (default 200)")
    p.add_argument("--idle", type=int, default=2000, help="idle heartbeating WebSocket connections (default 2000)")
    p.add_argument("--slowloris", type=int, default=200, help="hostile raw TCP sockets (default 200)")
    p.add_argument("--drip", type=float, default=2.0, help="a dripping socket sends one byte every this (default 2 s)")
    p.add_argument("--heartbeat", type=int, default=10, help="server heartbeat_s, pings every that (default 10)")
    p.add_argument("--healthz-every", type=float, default=0.05, help="seconds between /healthz probes (default 0.05)")
    p.add_argument("--healthz-timeout", type=float, default=5.0, help="a probe fails after this (default 5 s)")
    p.add_argument("--healthz-p99-ms", type=float, default=100.0, help="pass only under this p99 (default 100 ms)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    p.add_argument("--text-chars", type=int, default=60, help="message text length (default 60)")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CHATD_SERVER_HEARTBEAT_S": str(args.heartbeat)}


def _loopback(url: str) -> tuple[str, int]:
    """Host and port of the server under test; hostile traffic goes to 127.0.0.1 only."""
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise RuntimeError(f"soak runs against 127.0.0.1 only, not {url}")
    return parts.hostname, parts.port


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    host, port = _loopback(ctx.server.url)
    senders = args.users - args.users % 2
    users = await ctx.seed_users(senders + args.idle)
    talkers, idlers = users[:senders], users[senders:]
    pairs = [(talkers[i], talkers[i + 1]) for i in range(0, len(talkers), 2)]
    channels = await open_dms(ctx.server.url, pairs)
    workers = max(1, args.workers)
    jobs: list[dict[str, Any]] = [
        {"pairs": [], "idle": idlers[i::workers], "rate_per_user": args.rate / max(1, senders),
         "text_chars": args.text_chars, "host": host, "port": port, "drip": args.drip,
         "slowloris": [k for k in range(args.slowloris) if k % workers == i]}
        for i in range(workers)
    ]
    for i, ((a, b), channel) in enumerate(zip(pairs, channels)):
        jobs[i % workers]["pairs"].append([a, b, channel])
    healthz = Histogram()
    probe_failures: list[str] = []
    probes = [0]
    slowest: list[tuple[float, float]] = []
    per_second: dict[int, float] = {}
    async with ctx.pool(jobs) as pool:
        await pool.gather(300, "ready")
        start = time.monotonic() + 0.5
        stop = start + args.seconds
        await pool.broadcast({"cmd": "go", "start": start, "stop": stop})
        await sleep_until(start)
        profiler = ctx.profiler()
        if profiler:
            profiler.start()
        async with trio.open_nursery() as probing:  # the last probes may finish after the window
            probing.start_soon(probe_healthz, host, port, args.healthz_every, args.healthz_timeout, start, stop,
                               healthz, probe_failures, probes, slowest, per_second)
            async with ctx.window(pool) as window:
                await sleep_until(stop)
        profile = profiler.stop() if profiler else None
        sent = await pool.gather(args.seconds + 60, "sent")
        await pool.broadcast({"cmd": "expect", "acked": merge_acked(r["acked"] for r in sent), "timeout": 30})
        done = await pool.gather(90, "delivered")
    ack = Histogram.merged(r["ack"] for r in sent).summary_ms()
    deliver = Histogram.merged(r["deliver"] for r in done).summary_ms()
    lag = Histogram.merged(r["lag"] for r in sent).summary_ms()
    hz = healthz.summary_ms((50, 95, 99, 99.9))
    slow_seconds = [sec for sec, took in sorted(per_second.items()) if took * 1000 >= args.healthz_p99_ms]
    acked_in_window = sum(r["acked_in_window"] for r in sent)
    hostile = merge_hostile([r["hostile"] for r in sent])
    server = window.figures()
    figures: dict[str, Any] = {
        "offered_msg_per_s": args.rate,
        "achieved_msg_per_s": round(acked_in_window / window.seconds, 1),
        "delivered_msg_per_s": round(sum(r["delivered_in_window"] for r in done) / window.seconds, 1),
        "sends": sum(r["sends"] for r in sent),
        "acked": sum(r["acked_total"] for r in sent),
        "send_ack_ms": ack,
        "send_deliver_ms": deliver,
        "send_lag_ms": lag,
        "healthz_ms": hz,
        "healthz_probes": probes[0],
        "healthz_failures": len(probe_failures),
        "healthz_failure_samples": probe_failures[:5],
        "healthz_connection": "fresh TCP connection per probe (Connection: close)",
        "healthz_max_ms_per_second": [round(per_second.get(sec, 0.0) * 1000, 1)
                                      for sec in range(int(args.seconds) + 1)],
        "healthz_slow_seconds": slow_seconds,
        "healthz_slowest": [{"ms": round(t * 1000, 1), "at_s": round(at, 2)} for t, at in sorted(slowest, reverse=True)],
        "idle_connected": sum(r["idle_connected"] for r in sent),
        "pings": sum(r["pings"] for r in done),
        "slowloris": hostile,
        "server_cpu_ms_per_msg": round(window.server_cpu_s / max(1, acked_in_window) * 1000, 3),
    }
    if profile is not None:
        figures["profile"] = profile
    correctness = sum_correctness(r["correctness"] for r in done)
    criteria: list[str] = []
    if probe_failures:
        criteria.append(f"{len(probe_failures)} of {probes[0]} /healthz probes failed ({probe_failures[0]})")
    if hz["p99"] is None or hz["p99"] >= args.healthz_p99_ms:
        criteria.append(f"/healthz p99 {hz['p99']} ms, not under {fmt(args.healthz_p99_ms)} ms")
    for key in ("pongs_missing", "pongs_duplicated", "pongs_out_of_order"):
        if correctness.get(key):
            criteria.append(f"{correctness[key]} {key.replace('_', ' ')}")
    correctness["criteria_failed"] = criteria
    kinds = hostile["by_kind"]
    rows = [
        ("senders (pairs) / idle / slowloris / workers",
         f"{senders} ({len(pairs)}) / {figures['idle_connected']:,} of {args.idle:,} / {args.slowloris} / {workers}"),
        ("offered / achieved (acked) / delivered", f"{fmt(args.rate)} / {fmt(figures['achieved_msg_per_s'])} / "
                                                   f"{fmt(figures['delivered_msg_per_s'])} msg/s"),
        ("send->ack p50 / p99 / p99.9", ms(ack, *PERCENTILES)),
        ("send->deliver p50 / p99 / p99.9", ms(deliver, *PERCENTILES)),
        ("client send lag p99 (due -> written)", ms(lag, "p99")),
        ("/healthz (fresh conn) p50 / p95 / p99 / p99.9 / max", ms(hz, "p50", "p95", "p99", "p99.9", "max")),
        ("/healthz probes / failed", f"{probes[0]:,} / {len(probe_failures)}"),
        ("/healthz slowest (ms at +s into the window)",
         ", ".join(f"{p['ms']:g} at +{p['at_s']:g}" for p in figures["healthz_slowest"]) or "-"),
        (f"seconds with a probe >= {fmt(args.healthz_p99_ms)} ms", f"{len(slow_seconds)}: "
         + (", ".join(f"+{sec}" for sec in slow_seconds[:20]) + (" ..." if len(slow_seconds) > 20 else "") or "-")),
        ("slowloris opened / closed by server / open at end / refused",
         f"{hostile['opened']:,} / {hostile['closed']:,} / {hostile['open_at_end']:,} / "
         f"{hostile['connect_failed']:,}"),
    ]
    for kind in KINDS:
        k = kinds.get(kind)
        if k:
            held = (f"{fmt(_s(k['held_ms'], 'p50'))}, {fmt(_s(k['held_ms'], 'max'))} s" if k["closed"] else "-")
            rows.append((f"  {kind}: closed / held p50, max / open at end / said",
                         f"{k['closed']:,} / {held} / {k['open_at_end']} / "
                         f"{', '.join(f'{a} x{n}' for a, n in k['answers'].items()) or '-'}"))
    rows += [
        ("idle pings sent (all answered in order?)", f"{figures['pings']:,} "
         f"({'yes' if not any(correctness.get(k) for k in ('pongs_missing', 'pongs_duplicated', 'pongs_out_of_order')) else 'NO'})"),
        ("server CPU per message", f"{fmt(figures['server_cpu_ms_per_msg'])} ms"),
    ]
    params = {"seconds": args.seconds, "rate": args.rate, "users": senders, "idle": args.idle,
              "slowloris": args.slowloris, "drip": args.drip, "heartbeat": args.heartbeat,
              "healthz_every": args.healthz_every, "healthz_timeout": args.healthz_timeout,
              "healthz_p99_ms": args.healthz_p99_ms, "workers": workers, "text_chars": args.text_chars}
    return Outcome(params, figures, correctness, rows, server)


def _s(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else round(value / 1000, 1)


async def probe_healthz(host: str, port: int, every: float, timeout: float, start: float, stop: float,
                        latency: Histogram, failures: list[str], probes: list[int],
                        slowest: list[tuple[float, float]], per_second: dict[int, float]) -> None:
    """``GET /healthz`` every ``every`` s from ``start`` to ``stop``, each on a fresh connection, open loop.

    A probe is started when due whether or not earlier ones have answered (at
    most timeout/every in flight), so a stalled server shows up as latency
    and failures, not as fewer probes. ``slowest`` keeps the five slowest
    answered probes as (seconds, offset into the window), to set beside
    what happened then (e.g. the hostile sockets' timeouts firing together);
    ``per_second`` the slowest answered probe of each second of the window.
    """
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()

    async def one(due: float) -> None:
        response = b""
        error = ""
        with trio.move_on_after(timeout) as scope:
            try:
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(request)
                    while not _complete(response) and len(response) < 65536:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        response += chunk
            except (OSError, trio.BrokenResourceError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - due
        if scope.cancelled_caught:
            error = f"no answer within {timeout:g} s"
        elif not error:
            status, _, rest = response.partition(b"\r\n")
            if not status.startswith(b"HTTP/1.1 200") or b'"status":"ok"' not in rest.replace(b" ", b""):
                error = f"answered {status[:80]!r}"
        if error:
            failures.append(f"at +{due - start:.2f} s: {error}")
        else:
            latency.add(took)
            second = int(due - start)
            per_second[second] = max(per_second.get(second, 0.0), took)
            heapq.heappush(slowest, (took, due - start))
            if len(slowest) > 5:
                heapq.heappop(slowest)

    async with trio.open_nursery() as nursery:
        due = start
        while due < stop:
            await sleep_until(due)
            probes[0] += 1
            nursery.start_soon(one, due)
            due += every


def _complete(response: bytes) -> bool:
    """A whole HTTP response: the head and Content-Length bytes of body.

    The probe reads by length and then closes its end, as HTTP clients do:
    chatd answers ``Connection: close`` with that header but leaves the
    socket open (hypercorn waits for the client to close), so reading to EOF
    would time out.
    """
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or b"0")
    return False


def merge_hostile(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' hostile-socket counts added up, held-time histograms merged, per kind."""
    by_kind: dict[str, Any] = {}
    for part in parts:
        for kind, k in part.items():
            into = by_kind.setdefault(kind, {"opened": 0, "closed": 0, "connect_failed": 0, "open_at_end": 0,
                                             "answers": {}, "held": Histogram()})
            for key in ("opened", "closed", "connect_failed", "open_at_end"):
                into[key] += k[key]
            for status, n in k["answers"].items():
                into["answers"][status] = into["answers"].get(status, 0) + n
            into["held"].merge(Histogram.from_json(k["held"]))
    out: dict[str, Any] = {"by_kind": {}}
    for kind, k in by_kind.items():
        held = k.pop("held")
        out["by_kind"][kind] = {**k, "held_ms": held.summary_ms((50, 99))}
    for key in ("opened", "closed", "connect_failed", "open_at_end"):
        out[key] = sum(k[key] for k in out["by_kind"].values())
    return out


# --- the worker's half ------------------------------------------------------------------------


class HostileStats:
    """One kind's hostile sockets in one worker: opened, closed by the server (and after how long)."""

    def __init__(self) -> None:
        self.opened = self.closed = self.connect_failed = 0
        #: First line of what the server said before closing ('nothing' when it closed without a word).
        self.answers: dict[str, int] = {}
        self.held = Histogram()

    def to_json(self) -> dict[str, Any]:
        return {"opened": self.opened, "closed": self.closed, "connect_failed": self.connect_failed,
                "open_at_end": self.opened - self.closed, "answers": self.answers, "held": self.held.to_json()}


def hostile_bytes(kind: str, host: str, port: int) -> tuple[bytes, bytes]:
    """(sent at once after connecting, then dripped a byte at a time, repeated forever) for one kind."""
    origin = f"{host}:{port}"
    if kind == "silent":
        return b"", b""
    if kind == "head":  # the whole head one byte at a time, then a header that never ends
        return b"", f"GET /healthz HTTP/1.1\r\nHost: {origin}\r\nX-Slowloris: ".encode()
    if kind == "body":
        head = (f"POST /v1/login HTTP/1.1\r\nHost: {origin}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 1000000\r\n\r\n").encode()
        return head, b" "
    if kind == "upgrade":
        head = (f"GET /v1/ws HTTP/1.1\r\nHost: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").encode()
        return head, b"X-Slowloris: a"
    raise ValueError(kind)


async def hostile_socket(kind: str, host: str, port: int, drip: float, stop: float, stats: HostileStats) -> None:
    """One hostile socket slot until ``stop``: connect, misbehave, and reconnect whenever the server closes it."""
    first, dripped = hostile_bytes(kind, host, port)
    with trio.move_on_at(trio.current_time() + (stop - time.monotonic())):
        await trio.sleep(random.uniform(0, max(drip, 0.5)))  # spread the slots' first connects
        while True:
            try:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError):
                stats.connect_failed += 1
                await trio.sleep(random.uniform(*RECONNECT_PAUSE_S))
                continue
            stats.opened += 1
            opened = time.monotonic()
            answer: list[bytes] = []
            async with stream:  # the window's end cancels here: that socket counts as open at the end
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_misbehave, stream, first, dripped, drip)
                    await _until_closed(stream, answer)
                    nursery.cancel_scope.cancel()
            stats.closed += 1
            stats.held.add(time.monotonic() - opened)
            line = answer[0].partition(b"\r\n")[0][:40].decode(errors="replace") if answer else "nothing"
            stats.answers[line] = stats.answers.get(line, 0) + 1
            await trio.sleep(random.uniform(*RECONNECT_PAUSE_S))


async def _misbehave(stream: trio.SocketStream, first: bytes, dripped: bytes, drip: float) -> None:
    """Send ``first``, then ``dripped`` one byte every ``drip`` s, forever; stop quietly once the socket breaks."""
    try:
        if first:
            await stream.send_all(first)
        if not dripped:
            await trio.sleep_forever()
        while True:
            for i in range(len(dripped)):
                await trio.sleep(drip)
                await stream.send_all(dripped[i:i + 1])
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.sleep_forever()  # the reader sees the close and ends the connection


async def _until_closed(stream: trio.SocketStream, answer: list[bytes]) -> None:
    """Read until the server closes (EOF or reset), keeping the start of whatever it said."""
    got = b""
    try:
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            if len(got) < 200:
                got += chunk
    except (trio.BrokenResourceError, OSError):
        pass
    if got:
        answer.append(got)


async def worker(job: dict[str, Any], link: Link) -> None:
    traffic = PairTraffic(job)
    members, talkers = traffic.members, traffic.clients
    idlers = [Client(job["ws_url"], u["user_id"], u["token"]) for u in job["idle"]]
    everyone = talkers + idlers
    hostile = {kind: HostileStats() for kind in KINDS}

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as pings:

            def start_heartbeat(client: Client) -> None:
                beat = float(client.welcome["heartbeat_s"])
                pings.start_soon(client.ping_forever, beat, random.uniform(0, beat))

            await connect_all(talkers, nursery, after_connect=start_heartbeat)
            await connect_all(idlers, nursery, after_connect=start_heartbeat, timeout_s=240)
            go = await await_go(link, traffic.book, traffic.window)
            async with trio.open_nursery() as load:
                for slot in job["slowloris"]:
                    kind = KINDS[slot % len(KINDS)]
                    load.start_soon(hostile_socket, kind, job["host"], job["port"], job["drip"], go["stop"],
                                    hostile[kind])
                traffic.start_senders(load, go["start"], go["stop"])
            await traffic.wait_acked()
            await link.report("sent", **traffic.sent_report(),
                              idle_connected=sum(1 for c in idlers if c.ws is not None),
                              hostile={k: s.to_json() for k, s in hostile.items() if s.opened or s.connect_failed})
            expect = await link.receive("expect")
            expected = expected_sets(expect["acked"])
            caught_up = await wait_delivered(members, expected, expect["timeout"])
            pings.cancel_scope.cancel()
        with trio.move_on_after(10):
            while any(c.pongs < c.pings_sent and c.dropped is None for c in everyone):
                await trio.sleep(0.1)
        correctness = verdicts(members, expected)
        correctness.update(problems(everyone))
        correctness["not_caught_up"] = 0 if caught_up else 1
        correctness["pongs_missing"] = sum(c.pings_sent - c.pongs for c in everyone)
        correctness["pongs_duplicated"] = sum(c.pong_duplicated for c in everyone)
        correctness["pongs_out_of_order"] = sum(c.pong_out_of_order for c in everyone)
        await link.report("delivered", deliver=traffic.deliver.to_json(), correctness=correctness,
                          delivered_in_window=traffic.delivered_in_window,
                          pings=sum(c.pings_sent for c in everyone))
        await close_all(everyone)
        nursery.cancel_scope.cancel()
