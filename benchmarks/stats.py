"""Latency histograms and sets of sequence numbers, small enough to cross processes.

Worker processes report what they measured as JSON; raw sample lists would
grow with the run (a fan-out run delivers hundreds of thousands of events),
so latencies go into a log-bucketed histogram with 1% resolution, which
merges by adding counts. Seen and acknowledged ``seq`` values go into run
sets (sorted closed intervals): delivery is in order, so a channel's whole
history is usually one interval however long the run.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any

#: Buckets per factor e: bucket i holds values in [e^(i/S), e^((i+1)/S)) microseconds (1% wide).
_SCALE = 100


class Histogram:
    """Latency samples in seconds, kept as counts of 1%-wide buckets of microseconds."""

    __slots__ = ("counts", "count", "min_s", "max_s", "sum_s")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.min_s = math.inf
        self.max_s = 0.0
        self.sum_s = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 1e-6)
        bucket = int(math.log(seconds * 1e6) * _SCALE)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.sum_s += seconds
        if seconds < self.min_s:
            self.min_s = seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: Histogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.count += other.count
        self.sum_s += other.sum_s
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)

    def percentile_ms(self, p: float) -> float | None:
        """The p-th percentile in milliseconds (the bucket's midpoint, clamped to the seen range)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                mid_us = math.exp((bucket + 0.5) / _SCALE)
                return round(min(max(mid_us / 1e6, self.min_s), self.max_s) * 1000, 3)
        return round(self.max_s * 1000, 3)

    def summary_ms(self, percentiles: Iterable[float] = (50, 95, 99, 99.9)) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"n": self.count}
        for p in percentiles:
            out[_label(p)] = self.percentile_ms(p)
        out["max"] = round(self.max_s * 1000, 3) if self.count else None
        out["mean"] = round(self.sum_s / self.count * 1000, 3) if self.count else None
        return out

    def to_json(self) -> dict[str, Any]:
        return {"counts": [[b, n] for b, n in self.counts.items()], "count": self.count,
                "min_s": self.min_s if self.count else None, "max_s": self.max_s, "sum_s": self.sum_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts = {int(b): int(n) for b, n in data["counts"]}
        h.count = int(data["count"])
        h.min_s = math.inf if data["min_s"] is None else float(data["min_s"])
        h.max_s = float(data["max_s"])
        h.sum_s = float(data["sum_s"])
        return h

    @classmethod
    def merged(cls, parts: Iterable[dict[str, Any]]) -> Histogram:
        total = cls()
        for part in parts:
            total.merge(cls.from_json(part))
        return total


def _label(p: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9'."""
    return "p" + (f"{p:g}")


class RunSet:
    """A set of positive integers as sorted, disjoint, non-adjacent closed intervals.

    ``add`` is O(1) for the next value in order (the common case: delivery is
    ordered), O(log n) otherwise.
    """

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, value: int) -> bool:
        """Add ``value``; False when it was already present."""
        starts, ends = self.starts, self.ends
        if ends and value == ends[-1] + 1:
            ends[-1] = value
            return True
        if not ends or value > ends[-1] + 1:
            starts.append(value)
            ends.append(value)
            return True
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == value - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = value
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value)
        return True

    def add_range(self, first: int, last: int) -> None:
        for value in range(first, last + 1):
            self.add(value)

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends))

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def missing_from(self, expected: RunSet) -> int:
        """How many values of ``expected`` this set lacks."""
        missing = 0
        for s, e in zip(expected.starts, expected.ends):
            covered = 0
            i = max(0, bisect.bisect_right(self.starts, s) - 1)
            while i < len(self.starts) and self.starts[i] <= e:
                lo, hi = max(s, self.starts[i]), min(e, self.ends[i])
                if lo <= hi:
                    covered += hi - lo + 1
                i += 1
            missing += (e - s + 1) - covered
        return missing

    def update(self, other: RunSet) -> None:
        for s, e in zip(other.starts, other.ends):
            if not self.ends or s > self.ends[-1] + 1:
                self.starts.append(s)
                self.ends.append(e)
            else:
                self.add_range(s, e)

    def to_json(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self.starts, self.ends)]

    @classmethod
    def from_json(cls, runs: Iterable[Iterable[int]]) -> RunSet:
        out = cls()
        for s, e in runs:
            out.update(_single(s, e))
        return out


def _single(first: int, last: int) -> RunSet:
    r = RunSet()
    r.starts, r.ends = [first], [last]
    return r
