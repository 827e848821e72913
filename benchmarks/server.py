"""Start, watch and stop ``chatd serve`` as a process of its own.

The server gets the highest file limit the machine allows (RLIMIT_NOFILE up
to its hard limit, beyond it when we may): a connection storm leaves more
sockets open than there are clients (attempts given up by the client are still
held by the server until it gets to them), and EMFILE would measure the limit,
not the server.

The server under test runs exactly as an operator runs it (``python -m
chatd serve``), configured only through ``CHATD_*`` variables, with its own
temporary data_dir and working directory (so no ``chatd.toml`` is picked
up), on port 0. The suite reads its real port from the ``listening on`` line
(the command and that line are :mod:`chatd.testing`'s, shared with the tests),
and measures it from outside through /proc. It is stopped with SIGTERM (its
graceful drain), and killed only if it does not exit in time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from benchmarks.proc import cpu_seconds, raise_nofile, rss_kib
from chatd.testing import listening_url, serve_command

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
#: Send-rate limits high enough never to refuse a benchmark send.
UNLIMITED_RATE = "1000000"


class ServerError(RuntimeError):
    """The server did not start, or died during the run (with the tail of its log)."""


class ChatdServer:
    """One ``chatd serve`` process; ``start()`` returns when it listens."""

    def __init__(self, dsn: str, workdir: Path, *, env: dict[str, str] | None = None, nofile: int = 1 << 20) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.extra_env = env or {}
        self.nofile = nofile
        self.url = ""
        self.log_path = workdir / "server.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/v1/ws"

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            CHATD_DATABASE_URL=self.dsn,
            CHATD_SERVER_HOST="127.0.0.1",
            CHATD_SERVER_PORT="0",
            CHATD_DATA_DIR=str(self.workdir / "var"),
            CHATD_LIMITS_SEND_RATE_PER_S=UNLIMITED_RATE,
            CHATD_LIMITS_SEND_BURST=UNLIMITED_RATE,
            CHATD_LIMITS_CHANNEL_OPS_PER_MIN=UNLIMITED_RATE,
            CHATD_LIMITS_CHANNEL_OPS_BURST=UNLIMITED_RATE,
            CHATD_LIMITS_CHANNEL_INVITES_PER_MIN=UNLIMITED_RATE,
            CHATD_LIMITS_CHANNEL_INVITES_BURST=UNLIMITED_RATE,
        )
        env.update(self.extra_env)
        nofile = self.nofile
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            serve_command(),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=lambda: raise_nofile(nofile),
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout, START_TIMEOUT_S)
        url = listening_url(line)
        if url is None:
            self.stop()
            raise ServerError(f"chatd serve did not start ({line!r}):\n{self.log_tail()}")
        self.url = url
        return self.url

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(f"chatd serve exited (status {code}) during the run:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def nofile_limit(self) -> int:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        return 0

    def stop(self) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL past STOP_TIMEOUT_S; returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_warnings(self, limit: int = 20) -> list[str]:
        """WARNING/ERROR lines the server logged (slow consumers, refused batches...)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        found = [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line or "Traceback" in line]
        return found[:limit]


def _read_line(stream: IO[bytes], timeout_s: float) -> str:
    """One line from a pipe, or '' when the process closes it or the time runs out."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
