"""Running under systemd: the ``sd_notify`` protocol, without libsystemd.

With ``Type=notify`` systemd considers chatd started only when chatd says so
(``READY=1``), not when the process was forked: units ordered after chatd, and
``systemctl start`` itself, then wait until the port is really open and the
schema migrated. ``STOPPING=1`` tells it the drain began, and ``WATCHDOG=1``
pings let it restart a node whose event loop has hung (``WatchdogSec=``).

The protocol is small enough not to need a dependency (see sd_notify(3)):
newline-separated ``KEY=VALUE`` assignments in one datagram, sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Without that variable chatd is not under systemd (or
systemd does not want to hear from it) and every call here is a silent no-op,
so ``chatd serve`` behaves the same from a terminal, in tests or in a
container.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

__all__ = ["notify", "watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0
"""How long a send may block. systemd reads its socket promptly; should its
queue be full all the same, chatd's event loop must not stall on it for long."""


def _notify_address() -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None when there is none we can use.

    ``@name`` is Linux's abstract namespace (a leading NUL byte on the wire),
    which systemd uses inside some containers; anything but an absolute path
    or ``@`` (a relative path, ``vsock:...``) is refused, as libsystemd does
    for the forms it does not support.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=..."``) to systemd; True if it was sent.

    Never raises: being supervised is optional, so a missing or unusable
    socket only means False (with a warning in the log when ``NOTIFY_SOCKET``
    was set, since then systemd is waiting for something it will not get).
    """
    address = _notify_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds (``WatchdogSec=``), or None when there is no watchdog.

    systemd passes it as ``WATCHDOG_USEC``, with ``WATCHDOG_PID`` naming the
    process it is meant for: a child that inherited the environment (the
    embedded PostgreSQL, a ``chatd`` command started from a hook) must not
    ping on the main process' behalf, so a ``WATCHDOG_PID`` other than ours
    means no watchdog here. Malformed values also mean none, like
    sd_watchdog_enabled(3).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        interval = int(usec)
    except ValueError:
        return None
    return interval / 1_000_000 if interval > 0 else None


async def watchdog(interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval / 2`` seconds, until cancelled.

    Half the timeout, as systemd.service(5) advises, so one late ping is not
    a restart. The pings come from the Trio loop that serves the clients:
    when a blocking call or a busy loop stalls it, the pings stop and systemd
    restarts the node (``Restart=on-failure``). They do not depend on the
    database: a node whose PostgreSQL is down answers ``unavailable`` and
    recovers by itself, which a restart would not improve.
    """
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval / 2)
