"""Real ``chatd serve`` processes for tests: start, find their URL, stop by pid.

Shared by the command-line, cluster and systemd tests. Every process started
here is ended by its own pid when the ``serving`` block exits. The command
line and the ``listening on`` line are :mod:`chatd.testing`'s, shared with the
benchmarks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from chatd.db.stores import Stores
from chatd.hub import Hub
from chatd.services.auth import AuthService
from chatd.models import SendRequest
from chatd.testing import listening_url, serve_command
from tests.support import admin_group, open_db

REPO = Path(__file__).resolve().parent.parent


def cli_env(db_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without any CHATD_* setting, plus the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CHATD_DATABASE_URL"] = db_url
    env["CHATD_SERVER_PORT"] = "0"
    env.update(extra or {})
    return env


@attrs.define
class Serving:
    proc: trio.Process
    url: str
    stdout: bytearray
    stderr_path: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    async def stop(self, signum: int, within: float = 10) -> tuple[int, float]:
        """Send the signal; wait for the exit: (exit code, seconds it took)."""
        start = trio.current_time()
        self.proc.send_signal(signum)
        with trio.fail_after(within):
            rc = await self.proc.wait()
            await read_rest(self.proc, self.stdout)
        return rc, trio.current_time() - start

    def stderr(self) -> str:
        return self.stderr_path.read_text()


async def read_rest(proc: trio.Process, buffer: bytearray) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.receive_some():
        buffer.extend(chunk)


@asynccontextmanager
async def serving(cwd: Path, db_url: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Serving]:
    """``chatd serve`` as a subprocess, up once it printed its URL; killed by pid if still running."""
    stderr_path = cwd / f"serve-{len(list(cwd.glob('serve-*.log')))}.log"
    with stderr_path.open("wb") as stderr_file:
        proc = await trio.lowlevel.open_process(
            serve_command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            cwd=cwd,
            env=cli_env(db_url, env),
        )
    try:
        assert proc.stdout is not None
        buffer = bytearray()
        with trio.fail_after(20):
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"serve exited before listening: {stderr_path.read_text()}"
                buffer.extend(chunk)
        url = listening_url(buffer.split(b"\n", 1)[0].decode())
        assert url is not None and url.startswith("http://127.0.0.1:"), buffer
        yield Serving(proc, url, buffer, stderr_path)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def seed_channel(db_url: str, names: tuple[str, ...], messages: int = 0) -> tuple[list[int], int, list[str]]:
    """Users (with one token each) in one group, and some messages from the first: (ids, channel, tokens)."""
    async with open_db(db_url) as db:
        stores = Stores.over(db)
        auth = AuthService(stores.users, Hub())
        users = [await stores.users.create(n, n.title(), None, False) for n in names]
        ids = [u.user_id for u in users]
        channel = await admin_group(stores, ids[0], "general", ids)
        tokens = [(await auth.issue_token(uid, "test"))[0] for uid in ids]
        for i in range(messages):
            await stores.messages.send(SendRequest(ids[0], channel.channel_id, f"m{i}", f"message {i}"), 1000)
    return ids, channel.channel_id, tokens
