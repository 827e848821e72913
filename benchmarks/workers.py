"""Client worker processes and the line protocol between them and the orchestrator.

One core of Python clients cannot keep chatd busy (each frame costs the
client about as much CPU as the server), so the load comes from several
worker processes. Each runs the worker side of one workload (the
``worker(job, link)`` coroutine of its module in benchmarks/workloads/) under
its own Trio loop, and talks to the orchestrator over its stdin/stdout, one
JSON object per line: the job first, then commands (``go``, ``expect``,
``step``...) and the worker's reports back (``ready``, results). Every report
is plain JSON (histograms, run sets, counts), merged by the orchestrator.

A worker that fails reports ``{"error": traceback}`` and exits non-zero; the
orchestrator then fails the run with that traceback and the worker's stderr.

    python -m benchmarks.workers   # started by WorkerPool, not by hand
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import trio

from benchmarks.proc import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
#: A line holds at most this much (a report with histograms is tens of KB).
MAX_LINE = 256 * 1024 * 1024


class WorkerFailed(RuntimeError):
    """A worker process reported an error or died."""


class LineStream:
    """JSON objects, one per line, over a pair of byte streams."""

    def __init__(self, receive: trio.abc.ReceiveStream | None, send: trio.abc.SendStream | None) -> None:
        self._receive = receive
        self._send = send
        self._buf = bytearray()

    async def receive(self) -> dict[str, Any] | None:
        """The next object, or None at end of stream."""
        assert self._receive is not None
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                obj: dict[str, Any] = json.loads(line)
                return obj
            if len(self._buf) > MAX_LINE:
                raise WorkerFailed("line too long")
            chunk = await self._receive.receive_some(1 << 16)
            if not chunk:
                return None
            self._buf += chunk

    async def send(self, obj: dict[str, Any]) -> None:
        assert self._send is not None
        await self._send.send_all(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


# --- the orchestrator's end ---------------------------------------------------------------


class _Worker:
    def __init__(self, index: int, process: trio.Process, log_path: Path) -> None:
        self.index = index
        self.process = process
        self.log_path = log_path
        self.lines = LineStream(process.stdout, process.stdin)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class WorkerPool:
    """``async with WorkerPool(workload, jobs, logdir) as pool``: one process per job."""

    def __init__(self, workload: str, jobs: list[dict[str, Any]], logdir: Path) -> None:
        self.workload = workload
        self.jobs = jobs
        self.logdir = logdir
        self.workers: list[_Worker] = []
        self._cpu_at_exit = 0.0

    def __len__(self) -> int:
        return len(self.jobs)

    async def __aenter__(self) -> WorkerPool:
        self.logdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        for index, job in enumerate(self.jobs):
            log_path = self.logdir / f"worker-{self.workload}-{index}.log"
            with log_path.open("wb") as log:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "benchmarks.workers"],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            worker = _Worker(index, process, log_path)
            self.workers.append(worker)
            await worker.lines.send({"workload": self.workload, "index": index, "workers": len(self.jobs), **job})
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cpu_at_exit = self.cpu_seconds()
        with trio.CancelScope(shield=True):
            for worker in self.workers:
                if worker.process.stdin is not None:
                    try:
                        await worker.process.stdin.aclose()
                    except trio.BrokenResourceError:
                        pass
            with trio.move_on_after(20):
                for worker in self.workers:
                    await worker.process.wait()
            for worker in self.workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()

    async def gather(self, timeout_s: float, expect: str | None = None) -> list[dict[str, Any]]:
        """One report from every worker, in worker order; raises WorkerFailed on an error or a timeout."""
        replies: list[dict[str, Any] | None] = [None] * len(self.workers)

        async def one(worker: _Worker) -> None:
            reply = await worker.lines.receive()
            if reply is None:
                await worker.process.wait()
                raise WorkerFailed(
                    f"worker {worker.index} exited ({worker.process.returncode}) while we waited for "
                    f"{expect or 'a report'}:\n{worker.log_tail()}"
                )
            if "error" in reply:
                raise WorkerFailed(f"worker {worker.index} failed:\n{reply['error']}\n{worker.log_tail()}")
            if expect is not None and reply.get("report") != expect:
                raise WorkerFailed(f"worker {worker.index}: expected {expect!r}, got {reply.get('report')!r}")
            replies[worker.index] = reply

        try:
            with trio.fail_after(timeout_s):
                async with trio.open_nursery() as nursery:
                    for worker in self.workers:
                        nursery.start_soon(one, worker)
        except trio.TooSlowError:
            late = [w.index for w, r in zip(self.workers, replies) if r is None]
            raise WorkerFailed(
                f"workers {late} sent no {expect or 'report'} within {timeout_s:.0f} s:\n{self.workers[late[0]].log_tail()}"
            ) from None
        return [r for r in replies if r is not None]

    async def tell(self, commands: list[dict[str, Any]]) -> None:
        """One command per worker, in worker order."""
        for worker, command in zip(self.workers, commands):
            await worker.lines.send(command)

    async def broadcast(self, command: dict[str, Any]) -> None:
        await self.tell([command] * len(self.workers))

    def cpu_seconds(self) -> float:
        """CPU used so far by all worker processes (the load generator's share of the machine)."""
        total = self._cpu_at_exit
        for worker in self.workers:
            if worker.process.returncode is None:
                try:
                    total += cpu_seconds(worker.process.pid)
                except OSError:
                    pass
        return total

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]


# --- the worker's end -----------------------------------------------------------------------


class Link:
    """The worker's end of the pipe: commands in on stdin, reports out on stdout."""

    def __init__(self) -> None:
        self._lines = LineStream(trio.lowlevel.FdStream(os.dup(0)), trio.lowlevel.FdStream(os.dup(1)))

    async def receive(self, expect: str | None = None) -> dict[str, Any]:
        command = await self._lines.receive()
        if command is None:
            raise SystemExit("the orchestrator went away")
        if expect is not None and command.get("cmd") != expect:
            raise RuntimeError(f"expected command {expect!r}, got {command!r}")
        return command

    async def report(self, report: str, **fields: Any) -> None:
        await self._lines.send({"report": report, **fields})

    async def fail(self, text: str) -> None:
        await self._lines.send({"error": text})


async def _worker_main() -> None:
    link = Link()
    job = await link.receive()
    try:
        from benchmarks.proc import raise_nofile

        raise_nofile(1 << 20)  # as high as allowed: a worker may hold thousands of sockets
        module = importlib.import_module(f"benchmarks.workloads.{job['workload']}")
        await module.worker(job, link)
    except Exception:
        await link.fail(traceback.format_exc())
        raise SystemExit(1) from None


def main() -> None:
    # stdout carries the protocol: anything printed by accident goes to stderr instead.
    sys.stdout = sys.stderr
    trio.run(_worker_main)


if __name__ == "__main__":
    main()
