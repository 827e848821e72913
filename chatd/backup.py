"""``chatd backup FILE`` and ``chatd restore FILE`` (PROTOCOL §8): pg_dump and pg_restore.

The dump is PostgreSQL's custom format (compressed, restorable table by
table), taken by the ``pg_dump`` of the same binaries chatd runs (the pinned
wheel's, or ``database.pg_bin_dir``'s), so the tool is never older than the
server. ``pg_dump`` reads one consistent snapshot, so a backup can be taken
while nodes serve: every message and inbox row of the dump belongs to
transactions committed before it started, and the invariants hold in it.

A restore goes only into an empty database (a fresh ``data_dir``, or an empty
external database): restoring over live data would mix two histories.

The password of a ``database.url`` travels to the tools in ``PGPASSWORD``,
never on their command line (which ``ps`` shows to every user).

Progress: on a terminal, one line rewritten in place (``table 3/9``); not on
a terminal, nothing but the result line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit


class BackupError(Exception):
    """A dump or restore failed; one line, the tool's own last words."""


def split_password(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password, and the password (for ``PGPASSWORD``)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    password = query.pop("password", None)
    if parts.password is not None:
        password = unquote(parts.password)
    if password is None:
        return dsn, None
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{host}" if parts.username is not None else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
    return clean, password


def dump(bin_dir: Path, dsn: str, target: Path, *, tables: int, progress: bool) -> int:
    """Write a custom-format dump of ``dsn`` to ``target`` (through a temporary file
    renamed at the end, so a failed dump leaves no half file); returns its size."""
    partial = target.with_name(target.name + ".partial")
    clean, password = split_password(dsn)
    command = [str(bin_dir / "pg_dump"), "--format=custom", "--verbose", f"--file={partial}", f"--dbname={clean}"]
    done = 0

    def on_line(line: str) -> str | None:
        nonlocal done
        if "dumping contents of table" in line:
            done += 1
            name = line.rsplit(" ", 1)[-1].strip('"')
            return f"backup: table {done}/{tables} {name}"
        return None

    try:
        _run(command, password, on_line if progress else None)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target.stat().st_size


def restore(bin_dir: Path, dsn: str, source: Path, *, progress: bool) -> None:
    """Restore a custom-format dump into ``dsn`` (which the caller checked is empty),
    in one transaction: a failed restore leaves the database empty."""
    clean, password = split_password(dsn)
    entries = _toc_entries(bin_dir, source)
    command = [
        str(bin_dir / "pg_restore"), "--verbose", "--exit-on-error", "--single-transaction", "--no-owner",
        "--no-privileges", f"--dbname={clean}", str(source),
    ]
    done = 0

    def on_line(line: str) -> str | None:
        nonlocal done
        if line.startswith(("pg_restore: processing", "pg_restore: creating")):
            done += 1
            return f"restore: {min(done, entries)}/{entries}"
        return None

    _run(command, password, on_line if progress else None)


def _toc_entries(bin_dir: Path, source: Path) -> int:
    """Entries in the dump's table of contents; also proves the file is a readable dump."""
    result = subprocess.run(
        [str(bin_dir / "pg_restore"), "--list", str(source)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(None),
    )
    if result.returncode != 0:
        raise BackupError(f"{source} is not a chatd backup: {_last_words(result.stderr)}")
    return max(1, sum(1 for line in result.stdout.splitlines() if line and not line.startswith(";")))


def _env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def _run(command: Sequence[str], password: str | None, on_line: Callable[[str], str | None] | None) -> None:
    """Run a tool; with ``on_line``, show each progress line it derives on stderr, in place."""
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=_env(password),
    )
    assert proc.stderr is not None
    lines: list[str] = []
    shown = False
    for raw in proc.stderr:
        line = raw.rstrip("\n")
        lines.append(line)
        del lines[:-20]
        status = on_line(line) if on_line is not None else None
        if status is not None:
            sys.stderr.write(f"\r\x1b[K{status}")
            sys.stderr.flush()
            shown = True
    rc = proc.wait()
    if shown:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    if rc != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {_last_words(chr(10).join(lines))}")


def _last_words(text: str) -> str:
    """The tool's error line (not its verbose chatter)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()
