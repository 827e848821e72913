"""Reading processes and the machine from /proc, and raising the file limit.

The figures the suite reports beside throughput (server CPU, RSS, how busy
the machine was) come straight from the kernel, so they need nothing
installed and cost nothing to sample.
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_seconds(parent: int) -> float:
    """CPU of a process, its children that have exited (reaped) and its live children.

    For PostgreSQL's postmaster this is the whole cluster: every backend is
    its child, and a backend that ended during a window has been reaped into
    the postmaster's cutime/cstime by then. (A child alive at the window's
    start that exits within it is counted whole, slightly overstating.)
    """
    fields = _stat_fields(parent)
    total = sum(int(x) for x in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(int(entry.name))
        except (OSError, IndexError):
            continue
        if child[1] == str(parent):
            total += int(child[11]) + int(child[12])
    return total / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot; busy excludes idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the report."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` (the hard limit too, when allowed); returns the soft limit.

    Idle and storm runs hold tens of thousands of sockets; the default soft
    limit (often 1024) would end them early. Raising the hard limit needs
    CAP_SYS_RESOURCE (root): without it we stop at the hard limit, and the
    run sizes itself to what it got.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


