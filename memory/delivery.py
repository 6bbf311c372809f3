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
import logging
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from memory.errors import NotFoundError

if TYPE_CHECKING:
    from ingest.metrics import Metrics
    from ingest.segments import TranscriptSegment
    from memory.outbox import Outbox, OutboxRecord
    from memory.store import Conversation, ConversationStore

__all__ = ["Deliverer", "Sink"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.sinks = sinks
        self.metrics = metrics
        self.poll_s = poll_s
        self.batch = batch
        self._wake = {s.name: asyncio.Event() for s in sinks}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the loops."""
        for sink in self.sinks:
            self.metrics.inc(f"delivered_total_{sink.name}", 0.0)
            self.metrics.inc(f"delivery_failures_total_{sink.name}", 0.0)
            self._tasks.append(asyncio.create_task(self._loop(sink), name=f"deliver-{sink.name}"))

    async def stop(self) -> None:
        """Stop the loops; undelivered records stay in the outbox for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def wake(self) -> None:
        """New records were queued: look now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    async def run_once(self, sink: Sink) -> int:
        """Deliver every record now due for ``sink`` (each user's in order); returns how many were tried."""
        tried = 0
        while True:
            heads = await self.outbox.heads(sink.name, now=time.time(), limit=self.batch)
            if not heads:
                return tried
            await asyncio.gather(*(self._deliver(sink, record) for record in heads))
            tried += len(heads)

    async def _deliver(self, sink: Sink, record: OutboxRecord) -> None:
        try:
            conversation = await self._conversation(record)
            wanted = set(record.turn_ids)
            turns = [s for s in conversation.segments if s.id in wanted] if conversation else []
            await sink.deliver(record, conversation, turns)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = await self.outbox.fail(record.id, f"{type(exc).__name__}: {exc}")
            self.metrics.inc(f"delivery_failures_total_{sink.name}")
            log.warning("delivery to %s failed (%s); record %d is %s", sink.name, type(exc).__name__, record.id, status)
            return
        await self.outbox.complete(record.id)
        self.metrics.inc(f"delivered_total_{sink.name}")
        self.metrics.observe(f"delivery_delay_seconds_{sink.name}", time.time() - record.created_at)

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
                await self.report(sink)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the %s delivery loop failed; retrying", sink.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_s)

    async def report(self, sink: Sink) -> None:
        """Refresh the outbox gauges of ``sink``."""
        stats = (await self.outbox.stats()).get(sink.name, {})
        self.metrics.set_gauge(f"outbox_pending_{sink.name}", stats.get("pending", 0.0))
        self.metrics.set_gauge(f"outbox_oldest_pending_age_seconds_{sink.name}", stats.get("oldest_pending_age_s", 0.0))
        self.metrics.set_gauge(f"outbox_dead_{sink.name}", stats.get("dead", 0.0))
