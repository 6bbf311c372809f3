"""Day summaries the OMI cloud sends (its ``day_summary`` developer webhook), kept per user.

A summary is stored once: its id is a digest of the user, the time it was made and its text, so
a repeated delivery changes nothing. Summaries are only kept and listed; they are not delivered
to Letta or the index.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import DaySummaryRow

__all__ = ["DaySummary", "DaySummaryStore"]


class DaySummary(msgspec.Struct, frozen=True, kw_only=True):
    """One stored day summary (times in epoch seconds)."""

    id: str
    uid: str
    created_at: float
    summary: str
    summary_json: dict[str, Any] | None
    received_at: float


def _summary(row: DaySummaryRow) -> DaySummary:
    return DaySummary(
        id=row.id,
        uid=row.uid,
        created_at=row.created_at,
        summary=row.summary,
        summary_json=row.summary_json,
        received_at=row.received_at,
    )


class DaySummaryStore:
    """Stores and lists day summaries; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def key(uid: str, created_at: float, summary: str) -> str:
        """The id of a summary: the same user, time and text give the same id."""
        return hashlib.sha256(f"{uid}\0{created_at!r}\0{summary}".encode()).hexdigest()[:32]

    async def add(
        self, uid: str, *, created_at: float, summary: str, summary_json: dict[str, Any] | None
    ) -> tuple[DaySummary, bool]:
        """Store a summary unless it is stored already; returns it and whether it is new."""
        key = self.key(uid, created_at, summary)
        try:
            async with self._sessions() as session, session.begin():
                row = await session.get(DaySummaryRow, key)
                if row is not None:
                    return _summary(row), False
                row = DaySummaryRow(
                    id=key,
                    uid=uid,
                    created_at=created_at,
                    summary=summary,
                    summary_json=summary_json,
                    received_at=time.time(),
                )
                session.add(row)
            return _summary(row), True
        except IntegrityError:  # the same summary, stored by a concurrent delivery
            async with self._sessions() as session:
                stored = await session.get(DaySummaryRow, key)
                if stored is None:
                    raise
                return _summary(stored), False

    async def page(self, uid: str, *, limit: int, offset: int) -> tuple[list[DaySummary], int]:
        """The user's summaries, newest first, with the total count."""
        async with self._sessions() as session:
            total = await session.scalar(
                select(func.count()).select_from(DaySummaryRow).where(DaySummaryRow.uid == uid)
            )
            rows = await session.scalars(
                select(DaySummaryRow)
                .where(DaySummaryRow.uid == uid)
                .order_by(DaySummaryRow.created_at.desc(), DaySummaryRow.received_at.desc())
                .limit(limit)
                .offset(offset)
            )
            return [_summary(r) for r in rows.all()], int(total or 0)

    async def delete_all(self, uid: str) -> int:
        """Delete every summary of the user (their data is erased); how many there were."""
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(delete(DaySummaryRow).where(DaySummaryRow.uid == uid))
            return int(result.rowcount or 0)
