"""Media: upload and download of a file of ``--mb`` MB through chatd, against a plain ``cp`` of it.

Each round uploads fresh random bytes (``POST /v1/media``, streamed in 64 KiB
pieces; random, so content addressing cannot skip the writes) and downloads
them back (``GET /v1/media/{id}``), checking the SHA-256 both ways. ``cp`` of
the same file on the same disk, timed the same way (a process, page cache
warm, no fsync), is the machine's limit for moving those bytes; chatd's
figures include the database's WAL writes and fsync at each chunk's commit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from benchmarks.harness import Outcome, RunContext
from benchmarks.report import fmt
from benchmarks.workers import Link

HELP = "upload/download MB/s of one file through chatd vs a plain cp of it"
PIECE = 64 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mb", type=float, default=10.0, help="file size in MB (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="uploads and downloads (default 5)")
    p.add_argument("--workers", type=int, default=1, help="unused: this workload runs in one process")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CHATD_LIMITS_MEDIA_MAX_BYTES": str(int(args.mb * 1_000_000) + 1)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def orchestrate(ctx: RunContext) -> Outcome:
    args = ctx.args
    size = int(args.mb * 1_000_000)
    (user,) = await ctx.seed_users(1)
    auth = {"Authorization": f"Bearer {user['token']}"}
    up: list[float] = []
    down: list[float] = []
    mismatches = 0
    async with httpx.AsyncClient(base_url=ctx.server.url, timeout=120) as client:
        async with ctx.window(None) as window:
            for _ in range(args.rounds):
                data = os.urandom(size)
                digest = hashlib.sha256(data).hexdigest()

                async def body() -> AsyncIterator[bytes]:
                    for at in range(0, size, PIECE):
                        yield data[at:at + PIECE]

                started = time.monotonic()
                r = await client.post("/v1/media", content=body(),
                                      headers={**auth, "Content-Type": "application/octet-stream"})
                up.append(time.monotonic() - started)
                assert r.status_code == 201, r.text
                media: dict[str, Any] = r.json()
                mismatches += media["sha256"] != digest
                started = time.monotonic()
                got = hashlib.sha256()
                async with client.stream("GET", f"/v1/media/{media['media_id']}", headers=auth) as answer:
                    async for piece in answer.aiter_bytes():
                        got.update(piece)
                down.append(time.monotonic() - started)
                mismatches += got.hexdigest() != digest
    source, target = ctx.workdir / "media-src.bin", ctx.workdir / "media-dst.bin"
    source.write_bytes(os.urandom(size))
    copies = []
    for _ in range(args.rounds):
        started = time.monotonic()
        subprocess.run(["cp", str(source), str(target)], check=True)
        copies.append(time.monotonic() - started)
        target.unlink()
    source.unlink()
    mb = size / 1_000_000
    figures = {
        "file_mb": mb,
        "upload_mb_per_s": round(mb / _median(up), 1),
        "download_mb_per_s": round(mb / _median(down), 1),
        "cp_mb_per_s": round(mb / _median(copies), 1),
        "upload_s": [round(t, 3) for t in up],
        "download_s": [round(t, 3) for t in down],
        "cp_s": [round(t, 4) for t in copies],
    }
    rows = [
        (f"file / rounds", f"{fmt(mb)} MB / {args.rounds}"),
        ("upload MB/s (median round)", fmt(figures["upload_mb_per_s"])),
        ("download MB/s (median round)", fmt(figures["download_mb_per_s"])),
        ("plain cp of the same file MB/s (median)", fmt(figures["cp_mb_per_s"])),
    ]
    correctness = {"lost": mismatches, "duplicated": 0, "out_of_order": 0}
    return Outcome({"mb": mb, "rounds": args.rounds}, figures, correctness, rows, window.figures())


async def worker(job: dict[str, Any], link: Link) -> None:
    """No worker processes: one client in the orchestrator."""
