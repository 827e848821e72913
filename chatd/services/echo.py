"""The echo probe: every few seconds this node sends a message to itself through the whole path.

Each round commits a message from the system user (id 0, migrations/0007_ops.sql)
in the system channel (id 0, its only member) through the group-commit
writer, like any send; waits for the commit's ``NOTIFY`` to come back on this
node's LISTEN connection; and waits for a live receiver (a task that follows
the system user's inbox exactly as a session's pump does: the hub's signal,
then memory or a database read) to have the message. The time from submit to
both is recorded in ``chatd_echo_roundtrip_seconds``; from submit to the
NOTIFY's arrival (commit included: PostgreSQL sends it at commit, often
before the writer has the transaction's answer) in ``chatd_notify_lag_seconds``. A round that fails (the send refused,
the database away, no NOTIFY, no delivery within :data:`ROUND_TIMEOUT_S`)
marks the probe failing, which ``/readyz`` reports in its body.

Id 0 is no client's to name: every id on the wire is 1 or more (PROTOCOL §1),
so no user can open, join, read or search the system channel or message the
system user, and the lists that admins and users see leave id 0 out.

The probe's messages (one per node per :data:`INTERVAL_S`: about 17,000 a day
per node) stay in the system channel for an hour: the retention job
(chatd/services/retention.py) prunes older ones.
"""

from __future__ import annotations

import logging
import secrets
import time

import attrs
import trio

from chatd import hints, metrics
from chatd.db.nodes import NodeStore
from chatd.errors import ChatdError, Unavailable
from chatd.hub import Hub
from chatd.models import SendRequest
from chatd.services.inbox import PAGE, InboxService
from chatd.services.writer import SendWriter

log = logging.getLogger(__name__)

#: The system user and channel (migrations/0007_ops.sql).
SYSTEM_USER = 0
SYSTEM_CHANNEL = 0
INTERVAL_S = 5.0
ROUND_TIMEOUT_S = 10.0
ECHO_TEXT = "echo"


@attrs.frozen
class EchoStatus:
    """The last round's outcome, for ``/readyz`` and ``chatd stats``."""

    #: None before the first round finished.
    ok: bool | None = None
    roundtrip_s: float | None = None
    error: str | None = None
    #: Wall-clock time of the last round (time.time()), None before it.
    at: float | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"ok": self.ok}
        if self.roundtrip_s is not None:
            out["last_roundtrip_s"] = round(self.roundtrip_s, 6)
        if self.at is not None:
            out["age_s"] = round(max(0.0, time.time() - self.at), 3)
        if self.error is not None:
            out["error"] = self.error
        return out


class EchoProbe:
    """Run with ``nursery.start(probe.run)``; feed it the LISTEN connection's hints (:meth:`hinted`)."""

    def __init__(
        self,
        writer: SendWriter,
        inbox: InboxService,
        hub: Hub,
        nodes: NodeStore,
        node: str,
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = ROUND_TIMEOUT_S,
    ) -> None:
        self.writer = writer
        self.inbox = inbox
        self.hub = hub
        self.nodes = nodes
        self.node = node
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.status = EchoStatus()
        self.notify_lag_s = 0.0
        self._boot = secrets.token_hex(4)
        self._round = 0
        self._active = False
        self._notify_head = 0
        self._notified = trio.Event()
        self._woken_all = False
        self._notify_at = 0.0
        self._want = ""
        self._delivered = trio.Event()

    # --- fed by others ---------------------------------------------------------------------

    def hinted(self, hint: hints.Hint) -> None:
        """A hint from the LISTEN connection (every hint: cheap unless a round is waiting)."""
        if not self._active:
            return
        if isinstance(hint, hints.WakeAll):  # too many users for one payload: it may be ours
            self._woken_all = True
            self._notify_at = trio.current_time()
            self._notified.set()
        elif isinstance(hint, hints.InboxHeads):
            for adv in hint.advances:
                if adv.user_id == SYSTEM_USER and adv.head > self._notify_head:
                    self._notify_head = adv.head
                    self._notify_at = trio.current_time()
                    self._notified.set()

    # --- the tasks ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The receiver and the rounds, until cancelled; the first round starts at once."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._receive)
            task_status.started()
            while True:
                await self._one_round()
                await trio.sleep(self.interval_s)

    async def _one_round(self) -> None:
        self._round += 1
        client_msg_id = f"echo:{self.node}:{self._boot}:{self._round}"[:64]
        self._want, self._delivered = client_msg_id, trio.Event()
        self._notified = trio.Event()
        self._woken_all = False
        self._active = True
        started = trio.current_time()
        error: str | None = None
        try:
            with trio.fail_after(self.timeout_s):
                step = "commit"
                outcome = await self.writer.submit(SendRequest(SYSTEM_USER, SYSTEM_CHANNEL, client_msg_id, ECHO_TEXT))
                target = max((a.head for a in outcome.advances if a.user_id == SYSTEM_USER), default=0)
                step = "NOTIFY"
                while self._notify_head < target and not self._woken_all:
                    await self._notified.wait()
                    self._notified = trio.Event()
                self.notify_lag_s = self._notify_at - started
                step = "delivery"
                await self._delivered.wait()
        except trio.TooSlowError:
            error = f"no {step} within {self.timeout_s:g} s"
        except ChatdError as exc:
            error = f"send refused: {exc.code}: {exc.message}"
        finally:
            self._active = False
        roundtrip = trio.current_time() - started
        if error is None:
            metrics.ECHO_ROUNDTRIP.observe(roundtrip)
            if self.status.ok is False:
                log.warning("echo probe recovered (round trip %.3fs)", roundtrip)
            self.status = EchoStatus(True, roundtrip, None, time.time())
        else:
            if self.status.ok is not False:
                log.warning("echo probe failing: %s", error)
            self.status = EchoStatus(False, self.status.roundtrip_s, error, time.time())
        try:
            with trio.move_on_after(self.timeout_s):
                await self.nodes.record_echo(self.node, self.status.roundtrip_s if error is None else None, error)
        except Unavailable:
            pass

    async def _receive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the system user's inbox as a session's pump follows a user's."""
        signal = self.hub.subscribe(SYSTEM_USER)
        try:
            cursor: int | None = None
            started = False
            while True:
                try:
                    if cursor is None:
                        cursor = await self.inbox.head(SYSTEM_USER)
                    if not started:
                        started = True
                        task_status.started()
                    wake = signal.event
                    events = signal.events_after(cursor)
                    if events is None:
                        events = await self.inbox.read(SYSTEM_USER, cursor, PAGE)
                except Unavailable:
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(1.0)
                    continue
                for event in events:
                    cursor = event.inbox_seq
                    if event.fields.get("client_msg_id") == self._want:
                        self._delivered.set()
                if len(events) == PAGE or signal.head > cursor:
                    continue
                await wake.wait()
        finally:
            self.hub.unsubscribe(SYSTEM_USER)
