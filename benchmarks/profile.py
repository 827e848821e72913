"""Optional: where the server spends its time during the measured window (``--profile``).

Runs ``py-spy record --format raw`` against the server's pid (sampling from
outside, no change to the server), then folds the stacks into the functions
with the most samples on top of the stack ("self") and anywhere on it
("total"). The raw file stays beside the JSON for flame graphs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE_HZ = 100


class Profiler:
    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def start(self) -> None:
        beside = Path(sys.executable).parent / "py-spy"  # installed into the same virtualenv
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            self.error = "py-spy not found"
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(RATE_HZ),
             "--nonblocking", "-o", str(self.out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the top functions by self and total samples."""
        if self.proc is None:
            return {"error": self.error}
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"}
        return summarize(self.out)


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        samples += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            total_samples[frame] += count

    def pct(n: int) -> float:
        return round(n / max(1, samples) * 100, 1)

    return {
        "samples": samples,
        "raw": str(path),
        "top_self_pct": [[f, pct(n)] for f, n in self_samples.most_common(top)],
        "top_total_pct": [[f, pct(n)] for f, n in total_samples.most_common(top)],
    }
