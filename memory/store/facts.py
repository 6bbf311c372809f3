"""Facts about the user (OMI's "memories"): what conversations reveal, and what the user writes.

A conversation's extraction proposes facts (:meth:`FactStore.apply`): one whose words match a
current fact is not stored again; one that says it replaces a current fact (``replaces``, its
id) supersedes it: the old row stays, marked, and only the new one is current. The user may add,
edit and delete facts by hand (the OMI app's ``/v3/memories``). Contents are encrypted at rest.

Usage::

    facts = FactStore(store.engine)
    fact = await facts.add("alice", "Lives in Lisbon", category="core")
    await facts.update("alice", fact.id, "Lives in Porto")
    current = await facts.list("alice", limit=50, offset=0)
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from memory.store.models import FactRow
from memory.store.outbox import enqueue

__all__ = ["CATEGORIES", "Fact", "FactChange", "FactStore", "same_words"]

CATEGORIES = ("core", "hobbies", "lifestyle", "interests", "work", "skills", "learnings", "other")
"""OMI's memory categories; anything else is stored as ``other``."""


Changes = dict[str, list["Fact"]]
"""What :meth:`FactStore.apply` did: ``added``, ``superseded`` and ``kept`` facts."""


class Fact(msgspec.Struct, frozen=True, kw_only=True):
    """One fact. ``superseded`` or ``removed`` ones are kept for the record, not current."""

    id: str
    uid: str
    content: str
    category: str
    conversation_id: str | None  # where it came from; None: written by the user
    manual: bool  # added by the user (OMI's manually_added)
    edited: bool = False  # rewritten by the user since (OMI's edited)
    created_at: float
    updated_at: float
    superseded_by: str | None = None
    removed: bool = False

    @property
    def current(self) -> bool:
        """Neither superseded nor removed."""
        return self.superseded_by is None and not self.removed


class FactChange(msgspec.Struct, frozen=True, kw_only=True):
    """A fact a conversation proposes; ``replaces`` is the id of the current fact it supersedes."""

    content: str
    category: str = "other"
    replaces: str | None = None


def same_words(a: str, b: str) -> bool:
    """Whether two facts say the same words (case, punctuation and spacing aside)."""
    return _norm(a) == _norm(b)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _category(value: str) -> str:
    value = (value or "").strip().lower()
    return value if value in CATEGORIES else "other"


def _fact(row: FactRow) -> Fact:
    return Fact(
        id=row.id,
        uid=row.uid,
        content=row.content,
        category=row.category,
        conversation_id=row.conversation_id,
        manual=row.manual,
        edited=bool(row.edited),
        created_at=row.created_at,
        updated_at=row.updated_at,
        superseded_by=row.superseded_by,
        removed=row.removed_at is not None,
    )


class FactStore:
    """Stores, lists and changes facts; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine, *, sinks: tuple[str, ...] = ()) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.sinks = sinks  # the user's own changes are queued for these (the index and the agent's block)

    def _queued(self, session: AsyncSession, uid: str) -> None:
        """An outbox record (action ``facts``) for each sink, committed with the user's change."""
        enqueue(session, uid=uid, sinks=self.sinks, action="facts", conversation_id="")

    async def list(self, uid: str, limit: int = 100, offset: int = 0, *, include_old: bool = False) -> list[Fact]:
        """The user's current facts, newest first (with ``include_old`` also superseded and removed ones)."""
        query = select(FactRow).where(FactRow.uid == uid)
        if not include_old:
            query = query.where(FactRow.superseded_by.is_(None), FactRow.removed_at.is_(None))
        query = query.order_by(FactRow.created_at.desc(), FactRow.id).limit(limit).offset(offset)
        async with self._sessions() as session:
            return [_fact(r) for r in (await session.scalars(query)).all()]

    async def get(self, uid: str, fact_id: str) -> Fact | None:
        """One of the user's facts, current or not; None if there is no such fact of theirs."""
        async with self._sessions() as session:
            row = await session.get(FactRow, fact_id)
            return _fact(row) if row is not None and row.uid == uid else None

    async def add(self, uid: str, content: str, category: str = "other", *, conversation_id: str | None = None) -> Fact:
        """Add a fact (by hand when ``conversation_id`` is None); ValueError if ``content`` is blank.

        By hand, the same words as a current fact return that fact instead of a second one.
        """
        content = content.strip()
        if not content:
            raise ValueError("a fact needs some content")
        if conversation_id is None:
            same = next((f for f in await self.list(uid, limit=10_000) if same_words(f.content, content)), None)
            if same is not None:
                return same
        now = time.time()
        row = FactRow(
            id=str(uuid.uuid4()),
            uid=uid,
            content=content,
            category=_category(category),
            conversation_id=conversation_id,
            manual=conversation_id is None,
            edited=False,
            created_at=now,
            updated_at=now,
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
            if conversation_id is None:
                self._queued(session, uid)
        return _fact(row)

    async def update(self, uid: str, fact_id: str, content: str, category: str | None = None) -> Fact | None:
        """Rewrite a current fact of the user's (the user edited it); None if there is none."""
        content = content.strip()
        if not content:
            raise ValueError("a fact needs some content")
        async with self._sessions() as session, session.begin():
            row = await session.get(FactRow, fact_id)
            if row is None or row.uid != uid or row.superseded_by is not None or row.removed_at is not None:
                return None
            row.content = content
            if category is not None:
                row.category = _category(category)
            row.edited = True
            row.updated_at = time.time()
            self._queued(session, uid)
        return _fact(row)

    async def delete(self, uid: str, fact_id: str) -> bool:
        """Remove a current fact (kept, marked removed, so extraction does not bring it back)."""
        async with self._sessions() as session, session.begin():
            row = await session.get(FactRow, fact_id)
            if row is None or row.uid != uid or row.removed_at is not None:
                return False
            row.removed_at = row.updated_at = time.time()
            self._queued(session, uid)
        return True

    async def apply(self, uid: str, conversation_id: str, changes: Sequence[FactChange]) -> Changes:
        """Store what a conversation revealed: ``added`` (new facts), ``superseded`` (the facts they
        replace) and ``kept`` (proposals that match a fact already stored, current or removed: not
        stored again). Applying the same changes twice adds nothing the second time."""
        out: Changes = {"added": [], "superseded": [], "kept": []}
        async with self._sessions() as session, session.begin():
            rows = list((await session.scalars(select(FactRow).where(FactRow.uid == uid))).all())
            for change in changes:
                content = change.content.strip()
                if not content:
                    continue
                same = next((r for r in rows if same_words(r.content, content) and r.superseded_by is None), None)
                if same is not None:
                    out["kept"].append(_fact(same))
                    continue
                now = time.time()
                row = FactRow(
                    id=str(uuid.uuid4()),
                    uid=uid,
                    content=content,
                    category=_category(change.category),
                    conversation_id=conversation_id,
                    manual=False,
                    edited=False,
                    created_at=now,
                    updated_at=now,
                )
                old = next((r for r in rows if r.id == change.replaces), None) if change.replaces else None
                if old is not None and old.superseded_by is None and old.removed_at is None:
                    old.superseded_by = row.id
                    old.updated_at = now
                    out["superseded"].append(_fact(old))
                session.add(row)
                rows.append(row)
                out["added"].append(_fact(row))
        return out

    async def forget_conversation(self, uid: str, conversation_id: str) -> int:
        """Delete the facts a (deleted) conversation revealed, and bring back those they superseded."""
        async with self._sessions() as session, session.begin():
            rows = list((await session.scalars(select(FactRow).where(FactRow.uid == uid))).all())
            gone = {r.id for r in rows if r.conversation_id == conversation_id and not r.manual}
            for r in rows:
                if r.superseded_by in gone:
                    r.superseded_by = None
            if gone:
                await session.execute(delete(FactRow).where(FactRow.id.in_(gone)))
            return len(gone)

    async def delete_all(self, uid: str) -> int:
        """Delete every fact of the user (their data is erased); how many there were."""
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(delete(FactRow).where(FactRow.uid == uid))
            return int(result.rowcount or 0)
