"""The retention job: on every node, once a minute, old history becomes tombstones.

A pass first prunes the echo probe's messages older than
:data:`SYSTEM_MAX_AGE_S` from the system channel (always, even with
``retention.days = 0``, so that channel does not grow for ever), then, when
``retention.days`` > 0, tombstones every channel's messages older than that,
channel by channel, one short transaction per batch (chatd/db/retention.py).
Several nodes may run passes at once: each channel is worked on by one node
at a time, the others skip it.

A pass that fails (database away, a deadlock with a concurrent deletion) is
logged and the next pass starts over: the cursors say where each channel was.
"""

from __future__ import annotations

import logging

import trio

from chatd.db.retention import RetentionStore

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
#: The echo probe's messages are kept this long (for a look at recent rounds).
SYSTEM_MAX_AGE_S = 3600.0
DAY_S = 86400.0


class RetentionJob:
    """Run with ``nursery.start(job.run)``; :meth:`run_pass` is one pass (for tests and ``run``)."""

    def __init__(self, store: RetentionStore, days: int, *, interval_s: float = INTERVAL_S,
                 system_max_age_s: float = SYSTEM_MAX_AGE_S) -> None:
        self.store = store
        self.days = days
        self.interval_s = interval_s
        self.system_max_age_s = system_max_age_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            try:
                removed = await self.run_pass()
            except Exception:  # the database away, a deadlock: the next pass resumes from the cursors
                log.warning("retention pass failed; retried in %gs", self.interval_s, exc_info=True)
                continue
            if removed:
                log.info("retention: %d messages removed", removed)

    async def run_pass(self) -> int:
        """One pass over the system channel and (retention.days > 0) every channel;
        the number of messages tombstoned or pruned."""
        removed = 0
        cutoff = await self.store.cutoff(self.system_max_age_s)
        while (step := await self.store.prune_system_batch(cutoff)) is not None:
            removed += step.removed
            if not step.more:
                break
        if self.days <= 0:
            return removed
        cutoff = await self.store.cutoff(self.days * DAY_S)
        after: int | None = 0  # channel 0 is the system channel, done above
        while after is not None:
            due, after = await self.store.channels_due(after, cutoff)
            for channel_id in due:
                while (step := await self.store.tombstone_batch(channel_id, cutoff)) is not None:
                    removed += step.removed
                    if not step.more:
                        break
        return removed
