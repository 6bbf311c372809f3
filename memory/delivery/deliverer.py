"""Delivery workers: drain the outbox into each sink, in order per user, until every record is done.

One loop per sink. Each round takes the oldest due record of every user (:meth:`Outbox.heads`),
delivers those of different users concurrently and a user's own records one after another, then
marks each done or failed. A record is marked done only after its sink accepted it, so a crash
in between delivers it again: sinks make that harmless with deterministic ids, or by checking
what they already hold before writing (see :class:`Sink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from core.errors import NotFoundError, StorageError, StorageFullError

if TYPE_CHECKING:
    from core.conversation import Conversation
    from core.metrics import Metrics
    from core.segments import TranscriptSegment
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import Outbox, OutboxRecord

__all__ = ["Deliverer", "Delivery", "DeliveryLock", "Sink"]

log = logging.getLogger(__name__)

FULL_WAIT_S = 5.0  # pause of a delivery loop after the disk was found full


class Delivery(NamedTuple):
    """One record to apply, with its conversation as stored now (None once deleted) and its turns still there."""

    record: OutboxRecord
    conversation: Conversation | None
    turns: list[TranscriptSegment]


class Sink(ABC):
    """Somewhere turns must arrive exactly once: the user's Letta agent, or the vector index.

    ``deliver`` may be called again for a record it already applied (after a crash or a lost
    reply) and must then change nothing.
    """

    name: str = "sink"

    @abstractmethod
    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        """Apply one record. ``conversation`` is its current state (None once deleted) and ``turns``
        the record's turns as stored now (those still there). Raise to have it retried later."""

    async def deliver_batch(self, items: list[Delivery]) -> None:
        """Apply one user's consecutive records, in order (default: one by one).

        If it raises, all of them are tried again later; since :meth:`deliver` is idempotent,
        what was applied before the failure changes nothing the second time. Sinks override this
        to do the work of many records in fewer requests.
        """
        for item in items:
            await self.deliver(*item)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""

    async def tick(self) -> None:  # noqa: B027 - optional hook
        """Called after every delivery round, also when there was nothing to deliver."""


class Deliverer:
    """Runs one delivery loop per sink until stopped."""

    def __init__(
        self,
        store: ConversationStore,
        outbox: Outbox,
        sinks: list[Sink],
        *,
        metrics: Metrics,
        poll_s: float = 0.5,
        batch: int = 16,
        per_user: int = 64,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.sinks = sinks
        self.metrics = metrics
        self.poll_s = poll_s
        self.batch = batch  # users served at once
        self.per_user = per_user  # a user's consecutive records handed to a sink together
        self._wake = {s.name: asyncio.Event() for s in sinks}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the loops."""
        for sink in self.sinks:
            self.metrics.inc(f"delivered_total_{sink.name}", 0.0)
            self.metrics.inc(f"delivery_failures_total_{sink.name}", 0.0)
            self._tasks.append(asyncio.create_task(self._loop(sink), name=f"deliver-{sink.name}"))
        self._tasks.append(asyncio.create_task(self._report_forever(), name="outbox-gauges"))

    async def stop(self) -> None:
        """Stop the loops and close the sinks; undelivered records stay in the outbox for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sink in self.sinks:
            await sink.close()

    def wake(self) -> None:
        """New records were queued: look now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    async def run_once(self, sink: Sink) -> int:
        """Deliver every record now due for ``sink`` (each user's in order, in batches); how many were tried."""
        tried = 0
        while True:
            heads = await self.outbox.heads(sink.name, now=time.time(), limit=self.batch)
            if not heads:
                return tried
            tried += sum(await asyncio.gather(*(self._deliver(sink, record) for record in heads)))

    async def _deliver(self, sink: Sink, head: OutboxRecord) -> int:
        """Deliver ``head`` and the user's records queued behind it, as one batch; how many were tried."""
        records = [head]
        if self.per_user > 1:
            records += await self.outbox.following(head, limit=self.per_user - 1)
        try:
            conversations: dict[str, Conversation | None] = {}
            items: list[Delivery] = []
            for record in records:
                if record.conversation_id not in conversations:
                    conversations[record.conversation_id] = await self._conversation(record)
                conversation = conversations[record.conversation_id]
                wanted = set(record.turn_ids)
                turns = [s for s in conversation.segments if s.id in wanted] if conversation else []
                items.append(Delivery(record, conversation, turns))
            await sink.deliver_batch(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            transient = isinstance(exc, StorageError) and exc.transient
            status = await self.outbox.fail(head.id, f"{type(exc).__name__}: {exc}", transient=transient)
            self.metrics.inc(f"delivery_failures_total_{sink.name}")
            # Our errors say what failed without any transcript text; others are named by type only.
            why = exc.detail if isinstance(exc, StorageError) else type(exc).__name__
            log.warning("delivery to %s failed (%s); record %d is %s", sink.name, why, head.id, status)
            return len(records)
        await self.outbox.complete_many([r.id for r in records])
        now = time.time()
        for record in records:
            self.metrics.inc(f"delivered_total_{sink.name}")
            self.metrics.observe(f"delivery_delay_seconds_{sink.name}", now - record.created_at)
        return len(records)

    async def _conversation(self, record: OutboxRecord) -> Conversation | None:
        try:
            return await self.store.get(record.uid, record.conversation_id)
        except NotFoundError:
            return None

    async def _loop(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while True:
            wake.clear()
            try:
                await self.run_once(sink)
                await sink.tick()
                await self.report(sink)
            except asyncio.CancelledError:
                raise
            except StorageFullError as exc:
                # Nothing is lost (undelivered records stay pending); look again in a while, not every poll.
                log.error(
                    "the %s delivery loop cannot write: %s; retrying in %.0f s", sink.name, exc.detail, FULL_WAIT_S
                )
                await asyncio.sleep(FULL_WAIT_S)
            except Exception:
                log.exception("the %s delivery loop failed; retrying", sink.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_s)

    async def _report_forever(self) -> None:
        """Keep the gauges fresh even while a sink hangs on a slow request."""
        while True:
            with contextlib.suppress(Exception):
                for sink in self.sinks:
                    await self.report(sink)
            await asyncio.sleep(max(self.poll_s, 1.0))

    async def report(self, sink: Sink) -> None:
        """Refresh the outbox gauges of ``sink``."""
        stats = (await self.outbox.stats()).get(sink.name, {})
        self.metrics.set_gauge(f"outbox_pending_{sink.name}", stats.get("pending", 0.0))
        self.metrics.set_gauge(f"outbox_oldest_pending_age_seconds_{sink.name}", stats.get("oldest_pending_age_s", 0.0))
        self.metrics.set_gauge(f"outbox_dead_{sink.name}", stats.get("dead", 0.0))

    async def drain(
        self, ids: list[int], *, progress: Callable[[dict[str, int]], None] | None = None, poll_s: float = 0.2
    ) -> dict[str, int]:
        """Wait until records ``ids`` are delivered, dead, or failing (they then wait for a retry).

        The loops may run here or in another process; this only watches the outbox. Returns
        :meth:`Outbox.progress` at the end.
        """
        while True:
            state = await self.outbox.progress(ids)
            if progress is not None:
                progress(state)
            if state["pending"] == state["failing"]:
                return state
            self.wake()
            await asyncio.sleep(poll_s)


class DeliveryLock:
    """``DATA_DIR/delivery.lock``, held by the one process that delivers from that data directory.

    The local vector index keeps each user's vectors in memory, so only one process may write it:
    a running ``omi-letta serve`` delivers, and command-line tools only queue.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "delivery.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; whether we hold it."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        """Let go of the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None
