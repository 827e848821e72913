"""One run of one workload, from an empty database to a JSON file.

The steps, in order: a database for the run (benchmarks/database.py); the
machine's background load; the PostgreSQL ceiling, measured before the server
starts so nothing competes with it; ``chatd serve`` (benchmarks/server.py);
the workload's own orchestration, which seeds users, creates channels over
HTTP and drives worker processes; the server stopped with SIGTERM; ``chatd
verify`` on the database; the report. Any failure, including a correctness
count above zero, makes the run fail loudly (non-zero exit).
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from benchmarks import ceiling, report, seed, ws_ceiling
from benchmarks.database import Databases, postmaster_pid
from benchmarks.profile import Profiler
from benchmarks.proc import machine
from benchmarks.sampler import Window, background_busy_pct
from benchmarks.server import ChatdServer
from benchmarks.workers import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    """What a workload's orchestration measured."""

    params: dict[str, Any]
    figures: dict[str, Any]
    correctness: dict[str, Any]
    #: (label, value) lines for the printed table, in order.
    rows: list[tuple[str, str]]
    server: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunContext:
    """What a workload's ``orchestrate`` gets: the server, its arguments and a few helpers."""

    workload: str
    args: argparse.Namespace
    dsn: str
    server: ChatdServer
    workdir: Path
    postmaster: int | None = None
    #: Unique per run: user names and client_msg_ids carry it.
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    notes: list[str] = field(default_factory=list)

    async def seed_users(self, n: int) -> list[seed.Credentials]:
        return await trio.to_thread.run_sync(seed.run, self.dsn, n, f"b{self.tag}u")

    def pool(self, jobs: list[dict[str, Any]]) -> WorkerPool:
        common = {"ws_url": self.server.ws_url, "tag": self.tag}
        return WorkerPool(self.workload, [{**common, **job} for job in jobs], self.workdir / "logs")

    def window(self, pool: WorkerPool | None) -> Window:
        return Window(self.server, pool, self.postmaster)

    def profiler(self) -> Profiler | None:
        """A py-spy sampler of the server for the measured window, when ``--profile`` asks for one."""
        if not self.args.profile:
            return None
        return Profiler(self.server.pid, self.args.results_dir / f"profile-{self.tag}-{self.workload}.txt")


def chatd_revision() -> str:
    """The server's code the run measured: commit, and '+dirty' when chatd/ or migrations/ have local changes.

    Read-only git queries; the working tree is what ``python -m chatd`` runs.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "chatd", "migrations"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def load(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.workloads.{name}")


def chatd_verify(dsn: str, workdir: Path) -> str:
    """``chatd verify`` on the run's database: 'ok', or its complaint."""
    done = subprocess.run(
        [sys.executable, "-m", "chatd", "verify"],
        cwd=workdir,
        env=dict(os.environ, PYTHONPATH=str(ROOT), CHATD_DATABASE_URL=dsn, CHATD_DATA_DIR=str(workdir / "var")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode == 0:
        return "ok"
    return f"FAILED: {(done.stderr or done.stdout).strip()[-500:]}"


def profile_notes(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return []
    if profile.get("error"):
        return [f"profile: {profile['error']}"]
    top = "; ".join(f"{f} {p}%" for f, p in profile.get("top_self_pct", [])[:8])
    return [f"py-spy, server, self time: {top} (raw stacks: {profile.get('raw')})"]


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: what to tell the user."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def measure_ws_ceiling(module: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """The WebSocket ceiling (benchmarks/ws_ceiling.py) for the shape the workload asks for, if any."""
    shape = getattr(module, "ws_ceiling_shape", None)
    if shape is None or args.ceiling_seconds <= 0:
        return {}
    try:
        # At least a second each: shorter windows are mostly process start-up on a busy machine.
        seconds = max(1.0, args.ceiling_seconds)
        return ws_ceiling.run(seconds=seconds, handshake_seconds=seconds, **shape(args))
    except Exception as exc:  # the ceiling is context; its failure must not hide chatd's figures
        return {"error": f"{type(exc).__name__}: {exc}"}


def of_ws_ceiling(module: ModuleType, figures: dict[str, Any], ws: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows 'chatd's figure as a fraction of the WebSocket ceiling of the same run' (and into ``figures``)."""
    rows = []
    for label, figure_key, ceiling_key in getattr(module, "WS_CEILING_FRACTIONS", ()):
        figure, limit = figures.get(figure_key), ws.get(ceiling_key)
        if not figure or not limit:
            continue
        fraction = figure / limit
        figures.setdefault("of_ws_ceiling", {})[figure_key] = round(fraction, 3)
        rows.append((f"{label}: chatd / WS ceiling", f"{report.fmt(figure)} / {report.fmt(limit)} = {fraction:.0%}"))
    return rows


def run_one(name: str, args: argparse.Namespace, databases: Databases, tmp: Path) -> bool:
    """Run one workload and report it; True when it passed."""
    module = load(name)
    workdir = tmp / name
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rep: dict[str, Any] = {
        "workload": name,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "started_at": started,
        "machine": machine(),
        "database": databases.kind,
        "chatd_revision": chatd_revision(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    ok = False
    with databases.database(name) as dsn:
        rep["background_busy_pct"] = background_busy_pct(0.5)
        rep["ceiling"] = ceiling.run(dsn, args.ceiling_seconds) if args.ceiling_seconds > 0 else {}
        rep["ws_ceiling"] = measure_ws_ceiling(module, args)
        server = ChatdServer(dsn, workdir, env=module.server_env(args))
        outcome: Outcome | None = None
        try:
            server.start()
            rep["server_nofile"] = server.nofile_limit()
            ctx = RunContext(name, args, dsn, server, workdir, postmaster=postmaster_pid(dsn))
            orchestrate: Callable[[RunContext], Awaitable[Outcome]] = module.orchestrate
            outcome = trio.run(orchestrate, ctx)
        except Exception as exc:
            first = _first_leaf(exc)
            rep["error"] = f"{type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}"
            rep["traceback"] = traceback.format_exc()
            print(traceback.format_exc(), file=sys.stderr)
        finally:
            code = server.stop()
            rep["server_exit_code"] = code
            warnings = server.log_warnings()
            if warnings:
                rep["server_log_warnings"] = warnings
        rep["verify"] = chatd_verify(dsn, workdir)
    if outcome is not None:
        rep["params"] = outcome.params
        rep["figures"] = outcome.figures
        rep["correctness"] = outcome.correctness
        rep["server"] = outcome.server
        rep["rows"] = outcome.rows + of_ws_ceiling(module, outcome.figures, rep["ws_ceiling"])
        rep["notes"] = outcome.notes + profile_notes(outcome.figures.get("profile"))
        fails = report.failures(outcome.correctness)
        if rep["verify"] != "ok":
            fails.append(f"chatd verify: {rep['verify']}")
        if code not in (0, None):
            fails.append(f"chatd serve exited {code} on SIGTERM")
        rep["failures"] = fails
        ok = not fails
    rep["passed"] = ok
    path = report.write(rep, args.results_dir)
    print(report.render(rep) if outcome is not None else f"{name}: {rep.get('error')}")
    for note in rep.get("notes", []):
        print(f"note: {note}")
    print(f"results: {path}")
    if outcome is not None:
        print(f"correctness: {report.correctness_line(outcome.correctness)}")
    if not ok:
        print(f"FAILED: {'; '.join(rep.get('failures') or [rep.get('error', 'error')])}")
    print()
    return ok
