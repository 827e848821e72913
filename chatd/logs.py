"""Logging set-up (``log.format``, ``log.level``) and the per-connection context of log lines.

``log.format = "json"`` writes one JSON object per line to stderr (journald
and Loki parse it): ``time``, ``level``, ``logger``, ``message``, ``node`` and,
when the line was logged while serving a connection, ``conn_id``,
``user_id`` and ``device_id`` (``exc`` holds a traceback, when there is one).
``"text"`` writes the same as one readable line.

The context travels in :mod:`contextvars`: the WebSocket endpoint sets
``conn_id`` when a connection arrives and the session sets the user and
device once authenticated; Trio copies the context into every task a
connection starts, so every line logged while serving it carries them, with
no argument passed around.

What is never logged: tokens, passwords, message text, push URLs. Callers
log ids, codes and sizes only (tests/test_logs.py greps a run's log for the
secrets it used).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

CONN_ID: ContextVar[int | None] = ContextVar("chatd_conn_id", default=None)
USER_ID: ContextVar[int | None] = ContextVar("chatd_user_id", default=None)
DEVICE_ID: ContextVar[int | None] = ContextVar("chatd_device_id", default=None)

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


def bind_connection(conn_id: int) -> None:
    """Tag what the current task (and the tasks it starts) logs with this connection."""
    CONN_ID.set(conn_id)


def bind_principal(user_id: int, device_id: int) -> None:
    USER_ID.set(user_id)
    DEVICE_ID.set(device_id)


class _Context(logging.Filter):
    """Copies the node name and the connection context onto each record."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        record.conn_id = CONN_ID.get()
        record.user_id = USER_ID.get()
        record.device_id = DEVICE_ID.get()
        return True


_CONTEXT_KEYS = ("conn_id", "user_id", "device_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        node = getattr(record, "node", None)
        if node:
            line["node"] = node
        for key in _CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [conn=.. user=.. device=..]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{key.removesuffix('_id')}={value}"
            for key in _CONTEXT_KEYS
            if (value := getattr(record, key, None)) is not None
        )
        if not context:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the line
        return f"{head} [{context}]{sep}{tail}"


def _rfc3339(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def configure(fmt: str, level: str, node: str = "") -> None:
    """Send every logger's lines to stderr in ``fmt`` at ``level`` (replacing earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
