"""Facts about the user (the OMI app's "memories"): what conversations reveal, and what the user writes.

Each change is committed with an outbox record (action ``facts``) for the Letta sink, which
rewrites the agent's ``facts_about_user`` block from the facts listed now: an edit or a delete in
the app reaches the agent, and a superseded fact is replaced there, not appended to.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from memory.store.models import FactRow
from memory.store.outbox import enqueue

__all__ = ["CATEGORIES", "FACTS_SINK", "MAX_FACT_CHARS", "Fact", "FactStore"]

CATEGORIES = ("interesting", "system", "manual", "core", "hobbies", "lifestyle", "work", "skills", "other")
"""The categories the OMI app knows for a memory; any other is stored as ``other``."""
FACTS_SINK = "letta"  # only the agent's block holds facts; the search index gets them another way
MAX_FACT_CHARS = 500


class Fact(msgspec.Struct, frozen=True, kw_only=True):
    """One fact as listed: its words, where it came from, and when."""

    id: str
    uid: str
    content: str
    category: str
    conversation_id: str | None
    manually_added: bool
    edited: bool
    created_at: float
    updated_at: float


def _fact(row: FactRow) -> Fact:
    return Fact(
        id=row.id,
        uid=row.uid,
        content=row.content,
        category=row.category,
        conversation_id=row.conversation_id,
        manually_added=row.manually_added,
        edited=row.edited,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _category(value: str | None) -> str:
    return value if value in CATEGORIES else "other"


def _content(value: str) -> str:
    text = " ".join(value.split())
    if not text:
        raise ValueError("a fact needs some words")
    if len(text) > MAX_FACT_CHARS:
        raise ValueError(f"a fact is at most {MAX_FACT_CHARS} characters")
    return text


class FactStore:
    """Reads and writes facts; every write is committed, with its outbox record, on return.

    Args:
        sinks: the configured delivery sinks; facts are queued only for the Letta one.
    """

    def __init__(self, engine: AsyncEngine, *, sinks: tuple[str, ...] = ()) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.sinks = tuple(s for s in sinks if s == FACTS_SINK)

    def _queue(self, session: AsyncSession, uid: str) -> None:
        enqueue(session, uid=uid, sinks=self.sinks, action="facts", conversation_id="")

    async def list(self, uid: str, *, limit: int = 100, offset: int = 0) -> list[Fact]:
        """The user's current facts (not superseded), newest first."""
        query = (
            select(FactRow)
            .where(FactRow.uid == uid, FactRow.superseded_by.is_(None))
            .order_by(FactRow.created_at.desc(), FactRow.id)
            .limit(limit)
            .offset(offset)
        )
        async with self._sessions() as session:
            return [_fact(r) for r in (await session.scalars(query)).all()]

    async def count(self, uid: str) -> int:
        """How many current facts the user has."""
        query = select(func.count()).select_from(FactRow).where(FactRow.uid == uid, FactRow.superseded_by.is_(None))
        async with self._sessions() as session:
            return int(await session.scalar(query) or 0)

    async def add(
        self,
        uid: str,
        content: str,
        *,
        category: str | None = None,
        conversation_id: str | None = None,
        manual: bool = True,
        supersedes: str | None = None,
    ) -> Fact:
        """Add a fact; with ``supersedes``, it replaces that fact of the user's (the old one is no longer listed).

        The same words as a current fact are not added twice: that fact is returned.

        Raises:
            ValueError: no words, or too many.
        """
        text = _content(content)
        now = time.time()
        async with self._sessions() as session, session.begin():
            current = (
                await session.scalars(select(FactRow).where(FactRow.uid == uid, FactRow.superseded_by.is_(None)))
            ).all()
            same = next((r for r in current if r.content.casefold() == text.casefold()), None)
            if same is not None:
                return _fact(same)
            row = FactRow(
                id=str(uuid.uuid4()),
                uid=uid,
                content=text,
                category="manual" if manual and category is None else _category(category),
                conversation_id=conversation_id,
                manually_added=manual,
                edited=False,
                superseded_by=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            if supersedes is not None:
                old = next((r for r in current if r.id == supersedes), None)
                if old is not None:
                    old.superseded_by = row.id
                    old.updated_at = now
            self._queue(session, uid)
            return _fact(row)

    async def update(self, uid: str, fact_id: str, content: str) -> Fact | None:
        """Change a fact's words (the user's edit); None if the user has no such current fact.

        Raises:
            ValueError: no words, or too many.
        """
        text = _content(content)
        async with self._sessions() as session, session.begin():
            row = await session.get(FactRow, fact_id)
            if row is None or row.uid != uid or row.superseded_by is not None:
                return None
            if row.content != text:
                row.content, row.edited, row.updated_at = text, True, time.time()
                self._queue(session, uid)
            return _fact(row)

    async def delete(self, uid: str, fact_id: str) -> bool:
        """Forget a fact (and what it superseded); False if the user has no such fact."""
        async with self._sessions() as session, session.begin():
            row = await session.get(FactRow, fact_id)
            if row is None or row.uid != uid:
                return False
            await session.execute(delete(FactRow).where(FactRow.uid == uid, FactRow.superseded_by == fact_id))
            await session.delete(row)
            self._queue(session, uid)
            return True

    async def delete_all(self, uid: str) -> int:
        """Forget every fact of ``uid``'s; how many there were (the agent is being erased too)."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(delete(FactRow).where(FactRow.uid == uid))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]
