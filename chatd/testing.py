"""Pieces shared by chatd's test suite and its benchmarks; never imported by the server.

Both harnesses start ``chatd serve`` as a process of its own and learn its
URL from the first line it prints, and both create and drop databases by
running statements against the server's ``postgres`` database. Those two
protocols are defined once, here, in the package (the benchmarks must not
import the tests, nor the tests a benchmark module). The harnesses keep their
own process handling: the tests drive the process from Trio, the benchmarks
synchronously.
"""

from __future__ import annotations

import asyncio
import re
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

#: ``chatd serve``'s first line of output once it listens (chatd.cli prints it).
LISTENING_RE = re.compile(r"^listening on (http://\S+:\d+)$")


def serve_command() -> list[str]:
    """The command line that runs ``chatd serve`` with this interpreter, as an operator runs it."""
    return [sys.executable, "-m", "chatd", "serve"]


def listening_url(line: str | bytes) -> str | None:
    """The URL in ``chatd serve``'s ``listening on URL`` line, or None when the line is not that."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    match = LISTENING_RE.match(text.rstrip("\r\n"))
    return match[1] if match else None


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def admin(dsn: str, *statements: str) -> None:
    """Run statements, in order, on the ``postgres`` database of ``dsn``'s server (CREATE/DROP DATABASE).

    Plain asyncio with asyncpg in a fresh event loop (``asyncio.run``): callable
    from synchronous code, or from Trio through ``trio.to_thread.run_sync``.
    """

    async def run() -> None:
        conn = await asyncpg.connect(with_database(dsn, "postgres"))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())
