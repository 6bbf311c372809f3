"""Conversation storage over SQLAlchemy (async): SQLite by default, Postgres by URL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import lazyload

from core.conversation import Conversation
from core.errors import ConflictError, NotFoundError, StorageFullError, is_disk_full
from core.segments import TranscriptSegment
from memory.store.conversation_query import ConversationQuery
from memory.store.migrate import upgrade
from memory.store.models import ConversationRow, SegmentRow
from memory.store.outbox import enqueue

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext

__all__ = ["ConversationStore"]


def _segment_from_row(row: SegmentRow) -> TranscriptSegment:
    return TranscriptSegment(
        id=row.id,
        text=row.text,
        speaker=row.speaker,
        speaker_id=row.speaker_id,
        is_user=row.is_user,
        person_id=row.person_id,
        start=row.start,
        end=row.end,
        translations=list(row.translations or []),
        speech_profile_processed=row.speech_profile_processed,
        stt_provider=row.stt_provider,
        speaker_name=row.speaker_name,
    )


def _from_row(row: ConversationRow, *, with_segments: bool = True) -> Conversation:
    return Conversation(
        id=row.id,
        uid=row.uid,
        status=row.status,
        source=row.source,
        language=row.language,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        last_speech_at=row.last_speech_at,
        timeout_s=row.timeout_s,
        discarded=row.discarded,
        segments=[_segment_from_row(s) for s in row.segments] if with_segments else [],
        structured=row.structured,
        external_id=row.external_id,
        starred=bool(row.starred),
    )


def _segment_row(seg: TranscriptSegment, conversation_id: str, position: int) -> SegmentRow:
    return SegmentRow(
        id=seg.id,
        conversation_id=conversation_id,
        position=position,
        text=seg.text,
        speaker=seg.speaker,
        speaker_id=seg.speaker_id,
        is_user=seg.is_user,
        person_id=seg.person_id,
        start=seg.start,
        end=seg.end,
        translations=seg.translations,
        speech_profile_processed=seg.speech_profile_processed,
        stt_provider=seg.stt_provider,
        speaker_name=seg.speaker_name,
    )


async def _owned(session: AsyncSession, uid: str, conversation_id: str) -> ConversationRow:
    """The user's conversation row.

    Raises:
        NotFoundError: no such conversation for ``uid``.
    """
    row = await session.get(ConversationRow, conversation_id)
    if row is None or row.uid != uid:
        raise NotFoundError(f"conversation {conversation_id} not found")
    return row


def _disk_full(context: ExceptionContext) -> None:
    """An engine's ``handle_error`` hook: a full disk or database becomes :class:`StorageFullError`."""
    if is_disk_full(context.original_exception):
        raise StorageFullError(
            f"the disk is full: the database could not be written ({context.original_exception})"
        ) from context.original_exception


class ConversationStore:
    """Reads and writes conversations. Every write is committed before the call returns."""

    def __init__(self, engine: AsyncEngine, *, sinks: tuple[str, ...] = ()) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.sinks = sinks  # every change is queued in the outbox for each of these
        self.on_enqueue: Callable[[], None] | None = None  # told after a change was queued (wakes delivery)

    @classmethod
    async def open(cls, url: str, *, sinks: tuple[str, ...] = ()) -> ConversationStore:
        """Migrate the database at ``url`` to the newest schema and open it.

        Each stored change is also queued in the outbox for every sink in ``sinks``.
        """
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(upgrade, url)
        connect_args: dict[str, Any] = {}
        if parsed.drivername.startswith("sqlite"):
            connect_args["timeout"] = 30
        engine = create_async_engine(url, connect_args=connect_args)
        # Every store over this engine (outbox, ledger, audit, speakers) then fails the same clear way.
        event.listen(engine.sync_engine, "handle_error", _disk_full)
        return cls(engine, sinks=sinks)

    @property
    def engine(self) -> AsyncEngine:
        """The connection pool, for other stores over the same database."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    async def close(self) -> None:
        """Release the connection pool."""
        await self._engine.dispose()

    def _session(self) -> AsyncSession:
        return self._sessions()

    async def create(
        self, *, uid: str, source: str, language: str, timeout_s: int, started_at: float, now: float
    ) -> Conversation:
        """Create an in-progress conversation."""
        row = ConversationRow(
            id=str(uuid.uuid4()),
            uid=uid,
            status="in_progress",
            source=source,
            language=language,
            created_at=now,
            started_at=started_at,
            finished_at=started_at,
            last_speech_at=now,
            timeout_s=timeout_s,
            discarded=False,
        )
        async with self._session() as session:
            session.add(row)
            await session.commit()
        return _from_row(row, with_segments=False)

    async def save_segments(
        self,
        conversation: Conversation,
        changed: list[TranscriptSegment],
        *,
        last_speech_at: float,
        timeout_s: int | None = None,
    ) -> None:
        """Upsert ``changed`` segments and the conversation's times, in one transaction."""
        positions = {s.id: i for i, s in enumerate(conversation.segments)}
        async with self._session() as session, session.begin():
            row = await session.get(ConversationRow, conversation.id, options=[lazyload(ConversationRow.segments)])
            if row is None:
                raise NotFoundError(f"conversation {conversation.id} does not exist")
            row.started_at = conversation.started_at
            row.finished_at = conversation.finished_at
            row.last_speech_at = last_speech_at
            if timeout_s is not None:
                row.timeout_s = timeout_s
            for seg in changed:
                await session.merge(_segment_row(seg, conversation.id, positions.get(seg.id, len(positions))))
            if changed:
                enqueue(
                    session,
                    uid=row.uid,
                    sinks=self.sinks,
                    action="turns",
                    conversation_id=conversation.id,
                    turn_ids=[seg.id for seg in changed],
                )
        if changed:
            self._queued()

    async def touch(self, conversation_id: str, *, timeout_s: int) -> None:
        """Record a (re)connection: update the timeout the client asked for."""
        async with self._session() as session, session.begin():
            row = await session.get(ConversationRow, conversation_id, options=[lazyload(ConversationRow.segments)])
            if row is not None:
                row.timeout_s = timeout_s

    async def in_progress(self, uid: str) -> Conversation | None:
        """The user's in-progress conversation, if any."""
        async with self._session() as session:
            result = await session.execute(
                select(ConversationRow)
                .where(ConversationRow.uid == uid, ConversationRow.status == "in_progress")
                .order_by(ConversationRow.created_at.desc())
                .limit(1)
            )
            row = result.scalars().first()
            return _from_row(row) if row else None

    async def due(self, now: float) -> list[tuple[str, str]]:
        """``(uid, id)`` of in-progress conversations silent for longer than their timeout."""
        async with self._session() as session:
            result = await session.execute(
                select(ConversationRow.uid, ConversationRow.id).where(
                    ConversationRow.status == "in_progress",
                    ConversationRow.last_speech_at + ConversationRow.timeout_s <= now,
                )
            )
            return [(uid, cid) for uid, cid in result.all()]

    async def complete(self, conversation_id: str) -> Conversation | None:
        """Mark a conversation completed; delete it instead if it has no segments.

        Returns the completed conversation, or None if it was empty or already gone.
        """
        async with self._session() as session, session.begin():
            # Locked (PostgreSQL): when two workers close it at once, the second sees it completed.
            row = await session.get(ConversationRow, conversation_id, with_for_update=True)
            if row is None or row.status != "in_progress":
                return None
            if not row.segments:
                await session.delete(row)
                return None
            row.status = "completed"
            enqueue(session, uid=row.uid, sinks=self.sinks, action="closed", conversation_id=row.id)
            completed = _from_row(row)
        self._queued()
        return completed

    async def get(self, uid: str, conversation_id: str) -> Conversation:
        """One of the user's conversations with its segments.

        Raises:
            NotFoundError: no such conversation for ``uid``.
        """
        async with self._session() as session:
            row = await _owned(session, uid, conversation_id)
            return _from_row(row)

    async def set_structured(self, uid: str, conversation_id: str, structured: dict[str, Any]) -> bool:
        """Store a conversation's ``structured`` summary (title, overview, ...); False if it is gone."""
        async with self._session() as session, session.begin():
            row = await session.get(ConversationRow, conversation_id)
            if row is None or row.uid != uid:
                return False
            row.structured = structured
        return True

    async def page(
        self, uid: str, *, limit: int, offset: int, query: ConversationQuery | None = None, count: bool = True
    ) -> tuple[list[Conversation], int | None]:
        """The user's conversations that pass ``query``, newest first, and their count (None unless ``count``)."""
        query = query or ConversationQuery()
        async with self._session() as session:
            total = (
                await session.scalar(query.where(uid, select(func.count()).select_from(ConversationRow)))
                if count
                else None
            )
            result = await session.execute(query.rows(uid, limit=limit, offset=offset))
            return [_from_row(r) for r in result.scalars().all()], None if total is None else int(total)

    async def set_flags(
        self, uid: str, conversation_id: str, *, title: str | None = None, starred: bool | None = None
    ) -> Conversation:
        """Give a conversation a title (its summary's, re-delivered to the sinks) or a star.

        Raises:
            NotFoundError: no such conversation for ``uid``.
        """
        async with self._session() as session, session.begin():
            row = await _owned(session, uid, conversation_id)
            if starred is not None:
                row.starred = starred
            if title is not None and title != (row.structured or {}).get("title"):
                row.structured = {**(row.structured or {}), "title": title}
                turn_ids = [s.id for s in row.segments]
                enqueue(session, uid=uid, sinks=self.sinks, action="turns", conversation_id=row.id, turn_ids=turn_ids)
                if row.status == "completed":
                    enqueue(session, uid=uid, sinks=self.sinks, action="closed", conversation_id=row.id)
                changed = True
            else:
                changed = False
            conversation = _from_row(row)
        if changed:
            self._queued()
        return conversation

    async def recent(self, uid: str, limit: int) -> list[Conversation]:
        """The user's ``limit`` most recently finished completed conversations, newest first."""
        async with self._session() as session:
            result = await session.execute(
                select(ConversationRow)
                .where(ConversationRow.uid == uid, ConversationRow.status == "completed")
                .order_by(ConversationRow.finished_at.desc())
                .limit(limit)
            )
            return [_from_row(r) for r in result.scalars().all()]

    async def keys(
        self,
        *,
        uid: str | None = None,
        since: float | None = None,
        before: float | None = None,
        include_in_progress: bool = True,
    ) -> list[tuple[str, str, int]]:
        """``(uid, id, segment count)`` of stored conversations, oldest first, optionally filtered.

        ``since`` keeps those that finished at or after it, ``before`` those that finished before it.
        """
        query = (
            select(ConversationRow.uid, ConversationRow.id, func.count(SegmentRow.id))
            .outerjoin(SegmentRow, SegmentRow.conversation_id == ConversationRow.id)
            .group_by(ConversationRow.uid, ConversationRow.id, ConversationRow.started_at)
            .order_by(ConversationRow.started_at)
        )
        if uid is not None:
            query = query.where(ConversationRow.uid == uid)
        if since is not None:
            query = query.where(ConversationRow.finished_at >= since)
        if before is not None:
            query = query.where(ConversationRow.finished_at < before)
        if not include_in_progress:
            query = query.where(ConversationRow.status == "completed")
        async with self._session() as session:
            return [(u, c, int(n)) for u, c, n in (await session.execute(query)).all()]

    async def nearest(self, uid: str, start: float, end: float, window_s: float) -> str | None:
        """The user's conversation that overlaps ``[start, end]`` (epoch s), else the one nearest to it
        within ``window_s``; ties go to the one started last."""
        async with self._session() as session:
            rows = (
                await session.execute(
                    select(ConversationRow.id, ConversationRow.started_at, ConversationRow.finished_at)
                    .where(
                        ConversationRow.uid == uid,
                        ConversationRow.finished_at >= start - window_s,
                        ConversationRow.started_at <= end + window_s,
                    )
                    .order_by(ConversationRow.started_at.desc())
                )
            ).all()
        if not rows:
            return None

        def gap(row: Any) -> float:  # 0 when they overlap
            return max(0.0, row.started_at - end, start - row.finished_at)

        return str(min(rows, key=gap).id)

    async def last_completed_id(self, uid: str) -> str | None:
        """Id of the user's most recent completed conversation."""
        async with self._session() as session:
            return await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.uid == uid, ConversationRow.status == "completed")
                .order_by(ConversationRow.finished_at.desc())
                .limit(1)
            )

    async def delete(self, uid: str, conversation_id: str) -> list[int]:
        """Delete one of the user's conversations and its segments.

        Returns the ids of the outbox records that carry the deletion to the sinks (one per sink).

        Raises:
            NotFoundError: no such conversation for ``uid``.
        """
        async with self._session() as session, session.begin():
            row = await _owned(session, uid, conversation_id)
            turn_ids = [s.id for s in row.segments]
            await session.delete(row)  # segments go with it (ORM cascade)
            rows = enqueue(
                session, uid=uid, sinks=self.sinks, action="deleted", conversation_id=conversation_id, turn_ids=turn_ids
            )
            await session.flush()
            ids = [r.id for r in rows]
        self._queued()
        return ids

    def _queued(self) -> None:
        if self.sinks and self.on_enqueue is not None:
            self.on_enqueue()

    async def requeue(self, uid: str, conversation_id: str, sinks: tuple[str, ...]) -> list[int]:
        """Queue a stored conversation's turns (and its close) again for ``sinks``; the new record ids.

        Raises:
            NotFoundError: no such conversation for ``uid``.
        """
        async with self._session() as session, session.begin():
            row = await _owned(session, uid, conversation_id)
            turn_ids = [s.id for s in row.segments]
            rows = enqueue(
                session, uid=uid, sinks=sinks, action="turns", conversation_id=conversation_id, turn_ids=turn_ids
            )
            if row.status == "completed":
                rows += enqueue(session, uid=uid, sinks=sinks, action="closed", conversation_id=conversation_id)
            await session.flush()
            ids = [r.id for r in rows]
        if self.on_enqueue is not None:
            self.on_enqueue()
        return ids

    async def owners(self, uid: str, segment_ids: list[str]) -> dict[str, str]:
        """The user's conversation holding each of ``segment_ids`` that is stored: ``{segment id: conversation id}``."""
        found: dict[str, str] = {}
        async with self._session() as session:
            for i in range(0, len(segment_ids), 500):
                query = (
                    select(SegmentRow.id, SegmentRow.conversation_id)
                    .join(ConversationRow, ConversationRow.id == SegmentRow.conversation_id)
                    .where(SegmentRow.id.in_(segment_ids[i : i + 500]), ConversationRow.uid == uid)
                )
                found.update({sid: cid for sid, cid in (await session.execute(query)).all()})
        return found

    async def find_external(self, uid: str, external_id: str) -> str | None:
        """The id of the user's conversation imported from ``external_id`` (its id in the OMI cloud), if any."""
        async with self._session() as session:
            return await session.scalar(
                select(ConversationRow.id)
                .where(ConversationRow.uid == uid, ConversationRow.external_id == external_id)
                .order_by(ConversationRow.created_at)
                .limit(1)
            )

    async def put_completed(self, conversation: Conversation) -> tuple[Conversation, bool]:
        """Store a whole conversation exactly as given (an import), in one transaction.

        What is stored under its id is replaced: its fields, and its segments (added, changed,
        reordered or removed). A segment id that another of the user's conversations holds moves
        here; that conversation is queued first (as deleted if nothing is left of it), so the
        sinks see the turn leave it before it arrives here. Only what changed is queued: storing
        the same conversation again changes nothing and queues nothing. A conversation that
        becomes completed is also queued as closed.

        Returns:
            The conversation as stored, and whether anything changed.

        Raises:
            ConflictError: the id, or a segment id, belongs to another user.
        """
        new = conversation
        positions = {s.id: i for i, s in enumerate(new.segments)}
        if len(positions) != len(new.segments):
            raise ValueError("a conversation's segment ids must be unique")
        fields: dict[str, Any] = {
            "status": new.status,
            "source": new.source,
            "language": new.language,
            "started_at": new.started_at,
            "finished_at": new.finished_at,
            "last_speech_at": new.last_speech_at,
            "timeout_s": new.timeout_s,
            "discarded": new.discarded,
            "structured": new.structured,
            "external_id": new.external_id,
        }
        turns: list[str] = []  # this conversation's turns that changed
        async with self._session() as session, session.begin():
            row = await session.get(ConversationRow, new.id, options=[lazyload(ConversationRow.segments)])
            if row is None:
                row = ConversationRow(id=new.id, uid=new.uid, created_at=new.created_at, **fields)
                session.add(row)
                changed, closed = True, new.status == "completed"
            elif row.uid != new.uid:
                raise ConflictError(f"conversation {new.id} belongs to another user")
            else:
                changed = any(getattr(row, k) != v for k, v in fields.items())
                closed = row.status != "completed" and new.status == "completed"
                for key, value in fields.items():
                    setattr(row, key, value)

            ids = list(positions)
            rows: dict[str, SegmentRow] = {}
            for i in range(0, len(ids), 500):
                found = await session.scalars(select(SegmentRow).where(SegmentRow.id.in_(ids[i : i + 500])))
                rows.update({r.id: r for r in found.all()})
            mine = (await session.scalars(select(SegmentRow).where(SegmentRow.conversation_id == new.id))).all()
            rows.update({r.id: r for r in mine})

            # Segments that other conversations of the user hold leave them first.
            moved: dict[str, list[str]] = {}
            for seg in new.segments:
                held = rows.get(seg.id)
                if held is not None and held.conversation_id != new.id:
                    moved.setdefault(held.conversation_id, []).append(seg.id)
            for other_id, moving in moved.items():
                other = await session.get(ConversationRow, other_id, options=[lazyload(ConversationRow.segments)])
                if other is None or other.uid != new.uid:
                    raise ConflictError("a segment id of this conversation belongs to another user")
                for sid in moving:
                    rows[sid].conversation_id = new.id
                await session.flush()
                left = await session.scalar(
                    select(func.count()).select_from(SegmentRow).where(SegmentRow.conversation_id == other_id)
                )
                if not left:
                    await session.delete(other)
                action = "turns" if left else "deleted"
                enqueue(
                    session, uid=new.uid, sinks=self.sinks, action=action, conversation_id=other_id, turn_ids=moving
                )
            was_moved = {sid for moving in moved.values() for sid in moving}

            for seg_row in mine:
                if seg_row.id not in positions:
                    await session.delete(seg_row)
                    turns.append(seg_row.id)
            for seg in new.segments:
                held = rows.get(seg.id)
                if (
                    held is not None
                    and seg.id not in was_moved
                    and held.position == positions[seg.id]
                    and _segment_from_row(held) == seg
                ):
                    continue
                await session.merge(_segment_row(seg, new.id, positions[seg.id]))
                turns.append(seg.id)
            if turns:
                enqueue(session, uid=new.uid, sinks=self.sinks, action="turns", conversation_id=new.id, turn_ids=turns)
            if closed:
                enqueue(session, uid=new.uid, sinks=self.sinks, action="closed", conversation_id=new.id)
            created_at = row.created_at
        if turns or closed or moved:
            self._queued()
        return msgspec.structs.replace(new, created_at=created_at), changed or bool(turns) or bool(moved)

    async def add_completed(
        self, *, uid: str, source: str, language: str, started_at: float, segments: list[TranscriptSegment], now: float
    ) -> Conversation:
        """Store a whole conversation at once (batch ingest)."""
        # Created in progress for a moment: a long timeout keeps a running server's sweeper from closing it first.
        conversation = await self.create(
            uid=uid, source=source, language=language, timeout_s=14_400, started_at=started_at, now=now
        )
        conversation.segments = segments
        conversation.finished_at = started_at + (segments[-1].end if segments else 0.0)
        await self.save_segments(conversation, segments, last_speech_at=now)
        completed = await self.complete(conversation.id)
        assert completed is not None
        return completed
