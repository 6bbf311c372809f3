"""The durable outbox: every stored change, queued for each delivery sink in the same transaction.

A change to a conversation (turns stored or changed, the conversation closed, or deleted) adds
one record per configured sink, committed together with the change: if one is stored, so is the
other. Delivery takes the oldest pending record of each user and sink (:meth:`Outbox.heads`), so
one user's records reach a sink in order, one at a time. A failed attempt is retried after an
exponential backoff with jitter; after ``max_attempts`` the record is *dead* and no longer holds
up the records behind it. Dead records are listed, retried or purged by hand. A failure that
says the sink itself is unavailable (unreachable, timed out, overloaded) never makes a record
dead: an outage of any length is waited out, with at most ``max_delay_s`` between tries.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import OutboxRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["ACTIONS", "Outbox", "OutboxRecord", "RetryPolicy", "enqueue"]

ACTIONS = ("turns", "closed", "deleted", "facts")
"""``turns``: these turns are new or changed; ``closed``: the conversation ended; ``deleted``: it is gone."""


class OutboxRecord(msgspec.Struct, kw_only=True):
    """One change for one sink."""

    id: int
    uid: str
    sink: str
    action: str
    conversation_id: str
    turn_ids: list[str]
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float


class RetryPolicy(msgspec.Struct, frozen=True):
    """How failed deliveries are retried: exponential backoff with jitter, then a dead letter."""

    max_attempts: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failure: half the capped exponential, plus up to as much again."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(attempts - 1, 0))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def enqueue(
    session: AsyncSession,
    *,
    uid: str,
    sinks: tuple[str, ...],
    action: str,
    conversation_id: str,
    turn_ids: list[str] | None = None,
    now: float | None = None,
) -> list[OutboxRow]:
    """Add one record per sink to ``session``; the caller commits it with the change it describes.

    Returns the rows (their ids are set once the session flushes).
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown outbox action {action!r}")
    stamp = time.time() if now is None else now
    rows: list[OutboxRow] = []
    for sink in sinks:
        rows.append(
            OutboxRow(
                uid=uid,
                sink=sink,
                action=action,
                conversation_id=conversation_id,
                turn_ids=list(turn_ids or []),
                status="pending",
                attempts=0,
                next_attempt_at=stamp,
                last_error=None,
                created_at=stamp,
                updated_at=stamp,
            )
        )
    session.add_all(rows)
    return rows


def _record(row: OutboxRow) -> OutboxRecord:
    return OutboxRecord(
        id=row.id,
        uid=row.uid,
        sink=row.sink,
        action=row.action,
        conversation_id=row.conversation_id,
        turn_ids=list(row.turn_ids or []),
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
    )


class Outbox:
    """Reads and updates outbox records; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine, policy: RetryPolicy | None = None) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.policy = policy or RetryPolicy()

    async def heads(self, sink: str, *, now: float, limit: int = 16, uid: str | None = None) -> list[OutboxRecord]:
        """For each user (or only ``uid``), their oldest pending record for ``sink`` if it is due: what to
        deliver next."""
        oldest = select(func.min(OutboxRow.id)).where(OutboxRow.sink == sink, OutboxRow.status == "pending")
        if uid is not None:
            oldest = oldest.where(OutboxRow.uid == uid)
        oldest = oldest.group_by(OutboxRow.uid)
        query = (
            select(OutboxRow)
            .where(OutboxRow.id.in_(oldest), OutboxRow.next_attempt_at <= now)
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [_record(r) for r in (await session.scalars(query)).all()]

    async def following(self, head: OutboxRecord, *, limit: int) -> list[OutboxRecord]:
        """The pending records of ``head``'s user and sink queued after it, oldest first (at most ``limit``)."""
        query = (
            select(OutboxRow)
            .where(
                OutboxRow.sink == head.sink,
                OutboxRow.uid == head.uid,
                OutboxRow.status == "pending",
                OutboxRow.id > head.id,
            )
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [_record(r) for r in (await session.scalars(query)).all()]

    async def complete(self, record_id: int, *, now: float | None = None) -> None:
        """The record was delivered."""
        await self.complete_many([record_id], now=now)

    async def complete_many(self, record_ids: list[int], *, now: float | None = None) -> None:
        """The records were delivered."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(record_ids))
                .values(status="done", updated_at=time.time() if now is None else now, last_error=None)
            )

    async def fail(self, record_id: int, error: str, *, transient: bool = False, now: float | None = None) -> str:
        """A delivery attempt failed: schedule the next one, or mark the record dead. Returns the status.

        A ``transient`` failure (the sink was unavailable, not the record at fault) is always retried.
        """
        stamp = time.time() if now is None else now
        async with self._sessions() as session, session.begin():
            row = await session.get(OutboxRow, record_id)
            if row is None:
                return "gone"
            row.attempts += 1
            row.last_error = error[:2000]
            row.updated_at = stamp
            if row.attempts >= self.policy.max_attempts and not transient:
                row.status = "dead"
            else:
                row.next_attempt_at = stamp + self.policy.delay(row.attempts)
            return row.status

    async def records(
        self, *, status: str | None = None, uid: str | None = None, sink: str | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Records, oldest first, optionally filtered."""
        query = select(OutboxRow).order_by(OutboxRow.id).limit(limit)
        if status:
            query = query.where(OutboxRow.status == status)
        if uid:
            query = query.where(OutboxRow.uid == uid)
        if sink:
            query = query.where(OutboxRow.sink == sink)
        async with self._sessions() as session:
            return [_record(r) for r in (await session.scalars(query)).all()]

    async def retry(self, ids: list[int] | None = None, *, now: float | None = None) -> int:
        """Make dead records (``ids``, or all of them) pending again, due now. Returns how many."""
        stamp = time.time() if now is None else now
        query = update(OutboxRow).where(OutboxRow.status == "dead")
        if ids is not None:
            query = query.where(OutboxRow.id.in_(ids))
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(
                query.values(status="pending", attempts=0, next_attempt_at=stamp, updated_at=stamp)
            )
            return int(result.rowcount or 0)

    async def purge(self, ids: list[int] | None = None, *, status: str = "dead") -> int:
        """Delete records of ``status`` (``ids``, or all of them). Returns how many."""
        query = delete(OutboxRow).where(OutboxRow.status == status)
        if ids is not None:
            query = query.where(OutboxRow.id.in_(ids))
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(query)
            return int(result.rowcount or 0)

    async def progress(self, ids: list[int]) -> dict[str, int]:
        """How records ``ids`` stand: ``done``, ``dead``, ``pending`` and, of those, ``failing`` (tried and failed)."""
        out = {"done": 0, "dead": 0, "pending": 0, "failing": 0}
        async with self._sessions() as session:
            for i in range(0, len(ids), 500):
                query = select(OutboxRow.status, OutboxRow.attempts).where(OutboxRow.id.in_(ids[i : i + 500]))
                for status, attempts in (await session.execute(query)).all():
                    out[status] = out.get(status, 0) + 1
                    if status == "pending" and attempts > 0:
                        out["failing"] += 1
        return out

    async def undelivered(self, uid: str, conversation_ids: list[str]) -> int:
        """How many of the user's records of these conversations are not done yet (pending or dead)."""
        if not conversation_ids:
            return 0
        query = select(func.count()).where(
            OutboxRow.uid == uid,
            OutboxRow.conversation_id.in_(conversation_ids[:500]),
            OutboxRow.status != "done",
        )
        async with self._sessions() as session:
            return int(await session.scalar(query) or 0)

    async def last_error(self, ids: list[int]) -> str | None:
        """The most recent error among records ``ids``."""
        query = (
            select(OutboxRow.last_error)
            .where(OutboxRow.id.in_(ids[:500]), OutboxRow.last_error.is_not(None))
            .order_by(OutboxRow.updated_at.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            return await session.scalar(query)

    async def stats(self, *, now: float | None = None) -> dict[str, dict[str, float]]:
        """Per sink: pending records, the oldest pending one's age in seconds, and dead records."""
        stamp = time.time() if now is None else now
        query = select(OutboxRow.sink, OutboxRow.status, func.count(), func.min(OutboxRow.created_at)).group_by(
            OutboxRow.sink, OutboxRow.status
        )
        out: dict[str, dict[str, float]] = {}
        async with self._sessions() as session:
            for sink, status, count, oldest in (await session.execute(query)).all():
                entry = out.setdefault(sink, {"pending": 0.0, "oldest_pending_age_s": 0.0, "dead": 0.0})
                if status == "pending":
                    entry["pending"] = float(count)
                    entry["oldest_pending_age_s"] = max(0.0, stamp - float(oldest))
                elif status == "dead":
                    entry["dead"] = float(count)
        return out
