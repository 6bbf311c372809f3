"""The audit log: who read, searched, changed, exported or deleted which conversation, when and from where.

An entry holds the actor's uid, an action, the conversation id (when there is one), the route
template or tool, the client's address and the status: never what was said, searched for or
typed, and never a token. :meth:`AuditLog.record` only queues an entry, so no request waits on
the database; a writer task inserts what is queued in batches, and :meth:`AuditLog.close`
writes the rest. The table is append-only: this module offers no way to change or delete an
entry, and database triggers refuse UPDATE and DELETE (migration 0008).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.errors import StorageFullError
from memory.store.models import AuditRow

__all__ = ["ACTIONS", "AuditEntry", "AuditLog", "conversation_ref"]

log = logging.getLogger(__name__)

ACTIONS = frozenset(
    {"read", "list", "search", "change", "delete", "export", "chat", "erase", "stream", "auth-failure", "rate-limited"}
)
"""``read``: one conversation (or the live transcript); ``list``: many; ``search``: the memory; ``change``:
a conversation, speaker or profile written; ``delete``; ``export``: the audit log or a user's data read out;
``chat``: a message to the agent; ``erase``: a user's data erased; ``stream``: a device stream (one per
connection); ``auth-failure``: a request refused for its token (uid empty); ``rate-limited``: a device
stream refused because its user opened another moments before."""

FLUSH_EVERY_S = 0.2  # how long the writer gathers entries into one insert
RETRY_AFTER_S = 2.0  # after a failed insert
MAX_QUEUED = 100_000  # entries kept while the database refuses them; older ones are dropped (and logged)

_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One audited access; ``id`` is 0 until it is stored, and orders entries."""

    id: int = 0
    at: float
    uid: str
    action: str
    conversation_id: str | None
    route: str
    client: str
    status: int


def _values(entry: AuditEntry) -> dict[str, object]:
    """An entry's columns for an insert; the database numbers it."""
    values = msgspec.structs.asdict(entry)
    del values["id"]
    return values


def conversation_ref(value: object) -> str | None:
    """``value`` if it has the shape of a conversation id, else None: a client-chosen path is not stored as is."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


class AuditLog:
    """Queues audit entries and writes them in batches; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine, *, flush_every_s: float = FLUSH_EVERY_S) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._flush_every_s = flush_every_s
        self._queued: list[AuditEntry] = []
        self._wake = asyncio.Event()  # something was queued
        self._stop = asyncio.Event()  # close() was called
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # entries lost: queued after close, or beyond MAX_QUEUED while the database refused them

    def record(
        self,
        *,
        uid: str,
        action: str,
        route: str,
        client: str,
        status: int,
        conversation_id: str | None = None,
        at: float | None = None,
    ) -> None:
        """Queue an entry; returns at once. ``conversation_id`` is kept only if it looks like an id.

        Raises:
            ValueError: ``action`` is not one of :data:`ACTIONS` (a programming error).
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if self._closed:
            self.dropped += 1
            log.error("an audit entry (%s %s) came after the audit log closed; it is lost", action, route)
            return
        self._queued.append(
            AuditEntry(
                at=time.time() if at is None else at,
                uid=uid[:128],
                action=action,
                conversation_id=conversation_ref(conversation_id),
                route=route[:128],
                client=client[:64],
                status=int(status),
            )
        )
        self._wake.set()

    def start(self) -> None:
        """Run the writer (on the running event loop) until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="audit-writer")

    async def close(self) -> None:
        """Stop the writer and write what is queued; later entries are dropped."""
        self._closed = True
        if self._task is not None:
            self._stop.set()
            self._wake.set()
            await asyncio.wait({self._task})  # it ends after its last batch (or was cancelled: nothing to re-raise)
            self._task = None
        if not await self.flush():
            self.dropped += len(self._queued)
            log.error("%d audit entries could not be written at shutdown", len(self._queued))
            self._queued.clear()

    async def flush(self) -> bool:
        """Write every queued entry now, in one transaction; False (entries kept queued) if the database refused."""
        async with self._lock:
            batch, self._queued = self._queued, []
            if not batch:
                return True
            try:
                async with self._sessions() as session, session.begin():
                    await session.execute(insert(AuditRow), [_values(e) for e in batch])
            except Exception as exc:
                if isinstance(exc, StorageFullError):
                    log.error("could not write %d audit entries (%s); retrying", len(batch), exc.detail)
                else:
                    log.exception("could not write %d audit entries; retrying", len(batch))
                self._queued[:0] = batch
                excess = len(self._queued) - MAX_QUEUED
                if excess > 0:
                    del self._queued[:excess]
                    self.dropped += excess
                    log.error("dropped the %d oldest unwritten audit entries", excess)
                return False
            return True

    async def _write_forever(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await self._pause(self._flush_every_s)  # let a burst gather into one insert
            if not await self.flush():
                await self._pause(RETRY_AFTER_S)
                self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until :meth:`close`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def entries(
        self, *, uid: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[AuditEntry]:
        """Stored entries in the order they were written; only ``uid``'s (as the actor), or in ``[since, until]``."""
        query = select(AuditRow).order_by(AuditRow.id)
        if uid is not None:
            query = query.where(AuditRow.uid == uid)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if until is not None:
            query = query.where(AuditRow.at <= until)
        async with self._sessions() as session:
            return [
                AuditEntry(
                    id=r.id,
                    at=r.at,
                    uid=r.uid,
                    action=r.action,
                    conversation_id=r.conversation_id,
                    route=r.route,
                    client=r.client,
                    status=r.status,
                )
                for r in (await session.scalars(query)).all()
            ]
