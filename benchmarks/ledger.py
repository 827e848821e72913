"""What one connection received, checked against the contract as it arrives.

PROTOCOL §3: within one connection, ``event`` frames come in ``inbox_seq``
order with no gap and no repeat; §1: a channel's messages are ordered by
``seq``. Each recipient connection keeps a ledger; at the end the messages
every sender had acknowledged are compared with what each recipient saw.

Counting, per recipient connection:

- duplicated: an ``inbox_seq`` seen before, or a message (channel, seq) seen
  before under another ``inbox_seq``;
- out of order: an event that arrived after a higher ``inbox_seq`` (filling a
  gap late), or a message whose ``seq`` is below one already seen in its
  channel;
- lost: acknowledged messages of the recipient's channels it never saw, or
  ``inbox_seq`` values it skipped, whichever is larger (one lost message
  leaves one of each).
"""

from __future__ import annotations

from typing import Any

from benchmarks.stats import RunSet


class InboxLedger:
    __slots__ = ("cursor", "skipped", "duplicated", "out_of_order", "seen", "top_seq", "events")

    def __init__(self, cursor: int) -> None:
        #: The highest inbox_seq applied (the cursor a real client would keep).
        self.cursor = cursor
        self.skipped: set[int] = set()
        self.duplicated = 0
        self.out_of_order = 0
        self.seen: dict[int, RunSet] = {}
        self.top_seq: dict[int, int] = {}
        self.events = 0

    def on_event(self, frame: dict[str, Any]) -> bool:
        """Check one ``event`` frame; True when it is a message seen for the first time."""
        inbox_seq = frame["inbox_seq"]
        late = False
        if inbox_seq <= self.cursor:
            if inbox_seq in self.skipped:
                self.skipped.discard(inbox_seq)
                self.out_of_order += 1
                late = True
            else:
                self.duplicated += 1
                return False
        else:
            if inbox_seq > self.cursor + 1:
                self.skipped.update(range(self.cursor + 1, inbox_seq))
            self.cursor = inbox_seq
        self.events += 1
        if frame.get("kind") != "message":
            return False
        channel, seq = frame["channel_id"], frame["seq"]
        seen = self.seen.get(channel)
        if seen is None:
            seen = self.seen[channel] = RunSet()
        if not seen.add(seq):
            self.duplicated += 1
            return False
        top = self.top_seq.get(channel, 0)
        if seq < top:
            if not late:  # one event out of order counts once
                self.out_of_order += 1
        else:
            self.top_seq[channel] = seq
        return True

    def has_all(self, expected: dict[int, RunSet]) -> bool:
        for channel, runs in expected.items():
            seen = self.seen.get(channel)
            if seen is None:
                if len(runs):
                    return False
            elif seen.missing_from(runs):
                return False
        return True

    def verdict(self, expected: dict[int, RunSet]) -> dict[str, int]:
        """Counts for this recipient, given the acknowledged messages of its channels."""
        missing = 0
        for channel, runs in expected.items():
            seen = self.seen.get(channel, RunSet())
            missing += seen.missing_from(runs)
        return {
            "lost": max(missing, len(self.skipped)),
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "events": self.events,
        }


def add_verdicts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value
    return total
