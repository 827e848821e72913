"""chatd under systemd: the sd_notify protocol against a real datagram socket.

The test plays systemd's part: it binds the ``AF_UNIX`` datagram socket that
``NOTIFY_SOCKET`` names and reads what chatd sends. The unit tests drive
:mod:`chatd.systemd` directly; the end-to-end test runs a real
``python -m chatd serve`` and checks the whole conversation, in order:
``READY=1`` once it listens, watchdog pings while it serves, ``STOPPING=1``
when SIGTERM starts the drain, then exit 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from chatd import systemd
from tests.processes import serving

SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(autouse=True)
def not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test outside systemd, even when pytest itself runs in a unit."""
    for var in SYSTEMD_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's side: a datagram socket bound in tmp_path, and its path."""
    path = str(tmp_path / "notify.sock")
    assert len(path.encode()) < 108, path  # sun_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield sock, path


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued on the socket, oldest first."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return out


def fields(datagram: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as a dict (each key at most once)."""
    pairs = [line.split("=", 1) for line in datagram.split("\n")]
    assert len({k for k, _ in pairs}) == len(pairs), datagram
    return dict(pairs)


# --- notify() --------------------------------------------------------------------------------


def test_notify_sends_the_state_as_one_datagram(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("READY=1\nSTATUS=listening on http://127.0.0.1:1\nMAINPID=42")
    assert systemd.notify("STATUS=ünïcode")
    assert pending(sock) == ["READY=1\nSTATUS=listening on http://127.0.0.1:1\nMAINPID=42", "STATUS=ünïcode"]


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"chatd-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # Linux's abstract namespace: no file anywhere
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert pending(sock) == ["WATCHDOG=1"]
        # The same name as a path is another socket altogether.
        monkeypatch.setenv("NOTIFY_SOCKET", "/" + name)
        assert not systemd.notify("WATCHDOG=1")
        assert pending(sock) == []


@pytest.mark.parametrize("value", [None, "", "@", "relative/notify.sock", "vsock:2:1234"])
def test_notify_is_a_silent_no_op_without_a_usable_socket(
    listener: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str | None,
) -> None:
    sock, _ = listener
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    with caplog.at_level(logging.DEBUG):
        assert systemd.notify("READY=1") is False
    assert caplog.records == []
    assert pending(sock) == []


def test_notify_never_raises_when_nobody_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "gone.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(gone))
    assert systemd.notify("READY=1") is False  # no such file
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(gone))
    assert systemd.notify("READY=1") is False  # a socket file whose owner closed it
    # NOTIFY_SOCKET was set, so systemd waits for us: say why it will not hear.
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
    assert str(gone) in caplog.records[0].getMessage()


# --- watchdog_interval() and watchdog() ------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("400000", None, 0.4),
        ("30000000", "self", 30.0),
        ("400000", "", 0.4),  # empty: not set
        ("400000", "1", None),  # meant for another process (we inherited it)
        ("400000", "abc", None),
        ("0", None, None),
        ("-5", None, None),
        ("", None, None),
        ("0.5", None, None),  # microseconds are an integer
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd.watchdog_interval() == expected


async def test_watchdog_pings_every_half_interval_until_cancelled(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    times: list[float] = []
    real_notify = systemd.notify

    def timed_notify(state: str) -> bool:
        times.append(trio.current_time())
        return real_notify(state)

    monkeypatch.setattr(systemd, "notify", timed_notify)
    start = trio.current_time()
    with trio.move_on_after(2.1):
        await systemd.watchdog(1.0)
    assert [round(t - start, 6) for t in times] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert pending(sock) == ["WATCHDOG=1"] * 5


async def test_watchdog_without_systemd_does_nothing(autojump_clock: trio.abc.Clock) -> None:
    with trio.move_on_after(10):
        await systemd.watchdog(1.0)  # no NOTIFY_SOCKET: no error, just sleeps


# --- chatd serve, end to end -----------------------------------------------------------------


async def test_serve_speaks_sd_notify(tmp_path: Path, db_url: str) -> None:
    path = str(tmp_path / "notify.sock")
    assert len(path.encode()) < 108, path
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(path)

        async def receive(timeout: float) -> str:
            with trio.fail_after(timeout):
                return (await sock.recv(4096)).decode()

        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "CHATD_NODE_NAME": "systemd-e2e"}
        async with serving(tmp_path, db_url, env) as srv:
            # READY=1 comes first, once listening: the server answers from then on.
            ready = fields(await receive(10))
            assert ready == {"READY": "1", "STATUS": f"listening on {srv.url}", "MAINPID": str(srv.proc.pid)}
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
                assert (await client.get("/healthz")).status_code == 200

            # Then watchdog pings, every 0.2 s (half of WATCHDOG_USEC).
            pings: list[str] = []
            with trio.move_on_after(1.0):
                while True:
                    pings.append(await receive(2))
            assert set(pings) == {"WATCHDOG=1"}, pings
            assert 2 <= len(pings) <= 7, pings

            rc, took = await srv.stop(signal.SIGTERM)
            assert rc == 0, srv.stderr()
            assert took < 5, took

        # What came after: maybe a last ping or two, then STOPPING=1, then nothing.
        rest: list[str] = []
        with trio.move_on_after(0.3):
            while True:
                rest.append(await receive(1))
        assert rest, "no STOPPING=1"
        assert all(d == "WATCHDOG=1" for d in rest[:-1]), rest
        assert fields(rest[-1]) == {"STOPPING": "1", "STATUS": "draining"}, rest
        # stdout is the same one line as without systemd, and nothing went wrong on the way.
        assert srv.stdout.decode() == f"listening on {srv.url}\n"
        assert "cannot notify" not in srv.stderr(), srv.stderr()
