"""Conversation lifecycle: one in-progress conversation per user, closed after a silence timeout.

Segments arrive with absolute times (epoch seconds on the stream's audio clock). The first
segment fixes the conversation's ``started_at``; every segment is stored relative to it. A
finalized segment is committed to the database before anyone is told about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from core.conversation import Conversation
from core.segments import AbsoluteSegment, TranscriptSegment, combine_segments, speaker_label, speaker_name
from memory.store.conversation_store import ConversationStore
from memory.store.leases import Leases, LocalLeases

__all__ = ["ConversationManager", "Listener", "Refiner", "clamp_timeout"]

log = logging.getLogger(__name__)

Listener = Callable[[Any], Awaitable[None]]
"""Receives a user's OMI events (``memory_processing_started``, ``memory_created``, ...) and
segment arrays whose speakers changed."""

Refiner = Callable[[str, Conversation], Awaitable[list[TranscriptSegment]]]
"""Called as a conversation closes (with its segments); returns the segments it re-attributed."""


MAX_TIMEOUT_S = 14_400


def clamp_timeout(requested: int | None, *, default: int, minimum: int) -> int:
    """The OMI rule: ``-1`` means 4 hours, anything under the minimum is raised to it.

    Anything over 4 hours is lowered to it, as OMI documents the range (its code has no upper
    clamp); an unbounded value would not fit the database's integer column.
    """
    if requested is None:
        return default
    if requested == -1:
        return MAX_TIMEOUT_S
    return min(max(requested, minimum), MAX_TIMEOUT_S)


class ConversationManager:
    """Owns every user's in-progress conversation and closes them on time."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        sweep_interval_s: float = 5.0,
        refiner: Refiner | None = None,
        on_forget: Callable[[str], None] | None = None,
        leases: Leases | None = None,
        on_event: Callable[[str, Any], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.leases: Leases = leases or LocalLeases()
        self._on_event = on_event  # sees every user's events (the live fan-out of several workers)
        self._streaming: Counter[str] = Counter()  # users with a device stream here
        self._refiner = refiner
        self._on_forget = on_forget
        self._sweep_interval = sweep_interval_s
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._current: dict[str, Conversation] = {}
        self._listeners: defaultdict[str, set[Listener]] = defaultdict(set)
        self._flushing: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Close what timed out while we were down, then keep sweeping."""
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="conversation-sweeper")

    async def stop(self) -> None:
        """Stop sweeping. In-progress conversations stay stored and resume after a restart."""
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def subscribe(self, uid: str, listener: Listener) -> Callable[[], None]:
        """Register ``listener`` for the user's conversation events; returns the unsubscribe call."""
        self._listeners[uid].add(listener)
        return lambda: self._listeners[uid].discard(listener)

    async def connect(self, uid: str, *, timeout_s: int) -> Conversation | None:
        """A client connected: close the in-progress conversation if it timed out, else resume it.

        Returns the conversation that resumes, if any. Call :meth:`disconnect` when the client goes.
        """
        async with self._locks[uid]:
            if self.leases.shared and not self._streaming[uid]:
                self._current.pop(uid, None)  # another worker may have written it since
            self._streaming[uid] += 1
            try:
                current = await self._load(uid)
                if current is None:
                    return None
                if time.time() - current.last_speech_at >= current.timeout_s:
                    await self._close_locked(uid, current.id)
                    return None
                current.timeout_s = timeout_s
                await self.store.touch(current.id, timeout_s=timeout_s)
                return current
            except BaseException:
                self.disconnect(uid)
                raise

    async def add(
        self, uid: str, new: list[AbsoluteSegment], *, timeout_s: int, source: str, language: str
    ) -> list[TranscriptSegment]:
        """Store finalized segments in the user's conversation; return the segments that changed."""
        if not new:
            return []
        async with self._locks[uid]:
            current = await self._load(uid)
            now = time.time()
            if current is None:
                current = await self.store.create(
                    uid=uid, source=source, language=language, timeout_s=timeout_s, started_at=new[0].start, now=now
                )
                self._current[uid] = current
            combined, changed = combine_segments(current.segments, self._relative(current, new))
            current.segments = combined
            current.finished_at = max(current.finished_at, current.started_at + combined[-1].end)
            current.last_speech_at = now
            await self._save(uid, current, changed, last_speech_at=now, timeout_s=timeout_s)
            return changed

    async def upsert(
        self, uid: str, segments: list[TranscriptSegment], *, timeout_s: int, source: str, language: str
    ) -> list[TranscriptSegment]:
        """Store segments that come with ids of their own (the OMI cloud's), times in epoch seconds.

        Unlike :meth:`add`, nothing is merged. A segment whose id is stored already is updated where
        it is (its text, speaker and length; it keeps its start), in whichever of the user's
        conversations holds it; a new one joins the in-progress conversation. A segment sent again
        unchanged changes nothing.

        Returns:
            The segments of the in-progress conversation that changed (updates elsewhere are
            announced to the listeners as segment arrays, like relabelled speakers).
        """
        if not segments:
            return []
        async with self._locks[uid]:
            owners = await self.store.owners(uid, [s.id for s in segments])
            current = await self._load(uid)
            elsewhere: defaultdict[str, list[TranscriptSegment]] = defaultdict(list)
            here: list[TranscriptSegment] = []
            for seg in segments:
                holder = owners.get(seg.id)
                if holder is not None and (current is None or holder != current.id):
                    elsewhere[holder].append(seg)
                else:
                    here.append(seg)
            for conversation_id, updates in elsewhere.items():
                conversation = await self.store.get(uid, conversation_id)
                updated = self._update(conversation, updates)
                if updated:
                    await self.store.save_segments(conversation, updated, last_speech_at=conversation.last_speech_at)
                    await self._emit(uid, [msgspec.to_builtins(s) for s in updated])
            if not here:
                return []
            now = time.time()
            if current is None:
                current = await self.store.create(
                    uid=uid,
                    source=source,
                    language=language,
                    timeout_s=timeout_s,
                    started_at=min(s.start for s in here),
                    now=now,
                )
                self._current[uid] = current
            changed = self._update(current, here)
            if changed:
                last_end = max(s.end for s in current.segments)
                current.finished_at = max(current.finished_at, current.started_at + last_end)
                current.last_speech_at = now
                await self._save(uid, current, changed, last_speech_at=now, timeout_s=timeout_s)
            return changed

    async def import_completed(self, uid: str, conversation: Conversation) -> tuple[Conversation, bool]:
        """Store a finished conversation made elsewhere (the OMI cloud's), as one change.

        It replaces the conversation imported before under the same ``external_id``; else it takes
        over the user's conversation holding most of its segment ids (one the same cloud's
        realtime transcript built up), so the same words are not remembered twice; else it is
        stored under its own id. A conversation in progress that it takes over ends here. Listeners
        get ``memory_created`` when anything changed.

        Returns:
            The conversation as stored, and whether anything changed.
        """
        async with self._locks[uid]:
            target = await self.store.find_external(uid, conversation.external_id) if conversation.external_id else None
            if target is None and conversation.segments:
                owners = await self.store.owners(uid, [s.id for s in conversation.segments])
                for holder, _ in Counter(owners.values()).most_common():
                    if (await self.store.get(uid, holder)).external_id is None:
                        target = holder
                        break
            if target is not None:
                conversation = msgspec.structs.replace(conversation, id=target)
            stored, changed = await self.store.put_completed(conversation)
            current = self._current.get(uid)
            if changed and current is not None:
                del self._current[uid]  # it ended, or lost segments: read it again when next needed
                if current.id == stored.id and self._on_forget:
                    self._on_forget(uid)
        if changed:
            log.info("conversation %s imported with %d segments", stored.id, len(stored.segments))
            await self._emit(uid, {"type": "memory_created", "memory": stored.to_omi(), "messages": []})
        return stored, changed

    async def place(
        self, uid: str, recorded: list[AbsoluteSegment], *, source: str, language: str, window_s: float
    ) -> tuple[Conversation, bool]:
        """Put one piece of recorded speech (segments with epoch times) where it was said.

        It joins the user's conversation that already holds its segments (the same piece again),
        else the one that overlaps it, else the one nearest to it within ``window_s``: that
        conversation is re-timed (it may now start earlier) and extended, and only what changed is
        stored. Speakers of the piece that the conversation does not know get numbers of their
        own. Otherwise the piece is a new, completed conversation at its own time.

        Returns:
            The conversation, and whether it is new.
        """
        if not recorded:
            raise ValueError("a piece of speech has segments")
        start, end = min(s.start for s in recorded), max(s.end for s in recorded)
        async with self._locks[uid]:
            owners = await self.store.owners(uid, [s.id for s in recorded])
            target = Counter(owners.values()).most_common(1)[0][0] if owners else None
            target = target or await self.store.nearest(uid, start, end, window_s)
            if target is None:
                segments = [self._to_segment(s, start) for s in recorded]
                created = await self.store.add_completed(
                    uid=uid, source=source, language=language, started_at=start, segments=segments, now=time.time()
                )
                return created, True
            current = self._current.get(uid)
            conversation = current if current and current.id == target else await self.store.get(uid, target)
            changed = _extend(conversation, recorded)
            if changed:
                await self._save(uid, conversation, changed, last_speech_at=conversation.last_speech_at)
                await self._emit(uid, [msgspec.to_builtins(s) for s in changed])
            return conversation, False

    async def current(self, uid: str) -> Conversation | None:
        """The user's in-progress conversation, if any."""
        async with self._locks[uid]:
            return await self._load(uid)

    async def preview(self, uid: str, partial: list[AbsoluteSegment]) -> list[TranscriptSegment]:
        """How partial (not final) segments would look in the conversation; nothing is stored."""
        if not partial:
            return []
        current = self._current.get(uid)
        if current is None:
            started_at = partial[0].start
            rel = [self._to_segment(s, started_at) for s in partial]
            return combine_segments([], rel)[1]
        return combine_segments(current.segments, self._relative(current, partial))[1]

    @contextlib.asynccontextmanager
    async def flushing(self, uid: str) -> AsyncIterator[None]:
        """Mark a stream of ``uid``'s that ended as still storing its last words (see :meth:`finish`)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushing[uid].add(done)
        try:
            yield
        finally:
            self._flushing[uid].discard(done)
            if not self._flushing[uid]:
                del self._flushing[uid]
            done.set_result(None)

    async def finish(self, uid: str, *, wait_s: float) -> Conversation | None:
        """Close the user's in-progress conversation now, as the OMI app's "process now" asks.

        Streams of the user's that just ended may still be storing their last words: they are waited
        for, up to ``wait_s``. Returns the closed conversation, or None when none was in progress
        (or it held no speech).
        """
        pending = list(self._flushing.get(uid, ()))
        if pending:
            await asyncio.wait(pending, timeout=wait_s)
        current = await self.current(uid)
        return await self.close(uid, current.id) if current is not None else None

    async def close(self, uid: str, conversation_id: str) -> Conversation | None:
        """Close a conversation now; returns it, or None if it was empty (and deleted)."""
        async with self._locks[uid]:
            return await self._close_locked(uid, conversation_id)

    async def forget(self, uid: str, conversation_id: str) -> list[int]:
        """Delete a conversation (in progress or not) and its segments.

        Returns the ids of the outbox records that carry the deletion to the sinks.

        Raises:
            NotFoundError: the conversation is not the user's (or is gone already).
        """
        async with self._locks[uid]:
            records = await self.store.delete(uid, conversation_id)
            current = self._current.get(uid)
            if current is not None and current.id == conversation_id:
                del self._current[uid]
                if self._on_forget:
                    self._on_forget(uid)
            return records

    async def relabel(
        self, uid: str, conversation_id: str, change: Callable[[TranscriptSegment], TranscriptSegment]
    ) -> list[TranscriptSegment]:
        """Apply ``change`` to every segment of a conversation; store and announce those that changed.

        Raises:
            NotFoundError: the conversation is not the user's.
        """
        async with self._locks[uid]:
            current = self._current.get(uid)
            conversation = (
                current if current and current.id == conversation_id else await self.store.get(uid, conversation_id)
            )
            updated = [change(s) for s in conversation.segments]
            changed = [new for old, new in zip(conversation.segments, updated, strict=True) if new != old]
            if changed:
                conversation.segments = updated
                await self._save(uid, conversation, changed, last_speech_at=conversation.last_speech_at)
                await self._emit(uid, [msgspec.to_builtins(s) for s in changed])
            return changed

    def disconnect(self, uid: str) -> None:
        """A client of ``uid`` that :meth:`connect` saw has gone."""
        self._streaming[uid] -= 1
        if self._streaming[uid] <= 0:
            del self._streaming[uid]
            if self.leases.shared:
                self._current.pop(uid, None)  # the next worker to write it owns it

    async def sweep(self) -> int:
        """Close every conversation whose silence exceeded its timeout; returns how many.

        With shared leases, a user's conversation is closed only by a worker that holds their
        lease (the one their device streams to, or any while none does), read afresh.
        """
        closed = 0
        for uid, conversation_id in await self.store.due(time.time()):
            async with self._locks[uid]:
                borrowed = self.leases.shared and not self._streaming[uid]
                if borrowed:
                    if not await self.leases.try_hold(uid):
                        continue  # streaming to another worker
                    self._current.pop(uid, None)
                try:
                    current = await self._load(uid)
                    # Re-check under the lock: speech may have arrived since the query.
                    if (
                        current
                        and current.id == conversation_id
                        and time.time() - current.last_speech_at >= current.timeout_s
                    ):
                        await self._close_locked(uid, conversation_id)
                        closed += 1
                finally:
                    if borrowed:
                        self._current.pop(uid, None)
                        await self.leases.release(uid)
        return closed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("conversation sweep failed; retrying")

    async def _save(
        self,
        uid: str,
        conversation: Conversation,
        changed: list[TranscriptSegment],
        *,
        last_speech_at: float,
        timeout_s: int | None = None,
    ) -> None:
        """Store changed segments of ``conversation``, already applied to it in memory.

        If the write fails, the user's cached conversation is dropped, to be read again from the
        database: kept, it would be ahead of what is stored, and segments sent again (a retry after
        a full disk) would be merged into their own unstored copy.
        """
        try:
            await self.store.save_segments(conversation, changed, last_speech_at=last_speech_at, timeout_s=timeout_s)
        except BaseException:
            self._current.pop(uid, None)
            raise

    async def _load(self, uid: str) -> Conversation | None:
        current = self._current.get(uid)
        if current is None:
            current = await self.store.in_progress(uid)
            if current is not None:
                self._current[uid] = current
        return current

    async def _close_locked(self, uid: str, conversation_id: str) -> Conversation | None:
        closing = await self._load(uid)
        if closing is not None and closing.id == conversation_id:
            del self._current[uid]
            if closing.segments:
                event = {"type": "memory_processing_started", "memory": closing.to_omi(), "messages": []}
                await self._emit(uid, event)
                await self._refine(uid, closing)
        conversation = await self.store.complete(conversation_id)
        if conversation is None:
            return None
        log.info("conversation %s closed with %d segments", conversation.id, len(conversation.segments))
        await self._emit(uid, {"type": "memory_created", "memory": conversation.to_omi(), "messages": []})
        return conversation

    async def _refine(self, uid: str, closing: Conversation) -> None:
        """Let the refiner re-attribute speakers; store and announce what it changed."""
        if self._refiner is None:
            return
        try:
            changed = await self._refiner(uid, closing)
        except Exception:
            log.exception("the speaker refinement of conversation %s failed; keeping the live labels", closing.id)
            return
        if not changed:
            return
        by_id = {s.id: s for s in changed}
        closing.segments = [by_id.get(s.id, s) for s in closing.segments]
        await self.store.save_segments(closing, changed, last_speech_at=closing.last_speech_at)
        await self._emit(uid, [msgspec.to_builtins(s) for s in changed])
        log.info("conversation %s: %d segment(s) re-attributed at close", closing.id, len(changed))

    async def _emit(self, uid: str, event: Any) -> None:
        if self._on_event is not None:
            try:
                await self._on_event(uid, event)
            except Exception:
                log.warning("could not publish a conversation event of uid %s", uid)
        for listener in list(self._listeners.get(uid, ())):
            try:
                await listener(event)
            except Exception:
                kind = event.get("type") if isinstance(event, dict) else "segments"
                log.warning("could not deliver %s to a client of uid %s", kind, uid)

    @staticmethod
    def _update(conversation: Conversation, updates: list[TranscriptSegment]) -> list[TranscriptSegment]:
        """Apply segments with epoch-second times to ``conversation`` by id; returns those that changed."""
        index = {s.id: i for i, s in enumerate(conversation.segments)}
        changed: dict[str, TranscriptSegment] = {}
        for update in updates:
            i = index.get(update.id)
            if i is None:
                seg = msgspec.structs.replace(
                    update,
                    start=round(max(0.0, update.start - conversation.started_at), 3),
                    end=round(max(0.0, update.end - conversation.started_at), 3),
                )
                index[seg.id] = len(conversation.segments)
                conversation.segments.append(seg)
            else:
                old = conversation.segments[i]
                seg = msgspec.structs.replace(
                    update, start=old.start, end=round(old.start + max(0.0, update.end - update.start), 3)
                )
                if seg == old:
                    continue
                conversation.segments[i] = seg
            changed[seg.id] = seg
        return list(changed.values())

    def _relative(self, conversation: Conversation, new: list[AbsoluteSegment]) -> list[TranscriptSegment]:
        return [self._to_segment(s, conversation.started_at) for s in new]

    @staticmethod
    def _to_segment(seg: AbsoluteSegment, started_at: float) -> TranscriptSegment:
        return TranscriptSegment(
            id=seg.id,
            text=seg.text,
            speaker=speaker_label(seg.speaker_id),
            speaker_id=seg.speaker_id,
            is_user=seg.is_user,
            person_id=seg.person_id,
            start=round(max(0.0, seg.start - started_at), 3),
            end=round(max(0.0, seg.end - started_at), 3),
            stt_provider=seg.stt_provider,
            speaker_name=seg.speaker_name or speaker_name(seg.speaker_id, is_user=seg.is_user),
        )


def _extend(conversation: Conversation, recorded: list[AbsoluteSegment]) -> list[TranscriptSegment]:
    """Merge recorded segments into ``conversation`` in time order (in place); the segments that changed.

    A segment already there (by id) is replaced and keeps its speaker's number. Another recorded
    speaker is one the conversation knows when it is the same person (the wearer, or the same
    ``person_id``); anyone else gets a number after the conversation's own.
    """
    old = {s.id: (i, s) for i, s in enumerate(conversation.segments)}
    known = {(s.is_user, s.person_id): s.speaker_id for s in conversation.segments if s.is_user or s.person_id}
    next_id = max((s.speaker_id for s in conversation.segments), default=-1) + 1
    ours: dict[int, int] = {s.speaker_id: old[s.id][1].speaker_id for s in recorded if s.id in old}
    for seg in recorded:
        if seg.speaker_id not in ours:
            same = known.get((seg.is_user, seg.person_id)) if seg.is_user or seg.person_id else None
            if same is None:
                same, next_id = next_id, next_id + 1
            ours[seg.speaker_id] = same
    started_at = min([conversation.started_at, *(s.start for s in recorded)])
    mine = {r.id for r in recorded}
    timed = [(conversation.started_at + s.start, conversation.started_at + s.end, s) for s in conversation.segments]
    timed = [t for t in timed if t[2].id not in mine]
    for seg in recorded:
        speaker = ours[seg.speaker_id]
        named = seg.speaker_name if seg.is_user or seg.person_id else None  # an unknown speaker reads by number
        timed.append(
            (
                seg.start,
                seg.end,
                ConversationManager._to_segment(
                    msgspec.structs.replace(seg, speaker_id=speaker, speaker_name=named), started_at
                ),
            )
        )
    timed.sort(key=lambda t: (t[0], t[1]))
    merged = [
        msgspec.structs.replace(s, start=round(a - started_at, 3), end=round(b - started_at, 3)) for a, b, s in timed
    ]
    changed = [s for i, s in enumerate(merged) if s.id not in old or old[s.id][0] != i or old[s.id][1] != s]
    conversation.started_at = started_at
    conversation.segments = merged
    conversation.finished_at = max(conversation.finished_at, started_at + max(s.end for s in merged))
    return changed
