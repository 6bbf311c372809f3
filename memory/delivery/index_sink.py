"""The index sink: turns into the hybrid memory search (vector index and lexical index)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import pairwise
from typing import TYPE_CHECKING

from core.segments import speaker_of
from memory.delivery.deliverer import Delivery, Sink
from memory.search.hybrid import MemorySearch, Turn

if TYPE_CHECKING:
    from core.conversation import Conversation
    from core.segments import TranscriptSegment
    from memory.store.outbox import OutboxRecord

__all__ = ["IndexSink", "turns_of"]


def turns_of(uid: str, conversation: Conversation, segments: list[TranscriptSegment]) -> list[Turn]:
    """Segments of a conversation as searchable turns (epoch-second times, the speaker's name), each
    with the line of the turn before it in the conversation (embedded with it)."""
    spoken = [s for s in conversation.segments if s.text.strip()]
    before = {s.id: f"{speaker_of(p)}: {p.text}" for p, s in pairwise(spoken)}
    return [
        Turn(
            uid=uid,
            turn_id=s.id,
            conversation_id=conversation.id,
            speaker=speaker_of(s),
            is_user=s.is_user,
            start=conversation.started_at + s.start,
            end=conversation.started_at + s.end,
            text=s.text,
            before=before.get(s.id, ""),
        )
        for s in segments
        if s.text.strip()
    ]


class IndexSink(Sink):
    """Keeps the memory search in step with the store. Upserts by turn id, so a repeat changes nothing."""

    name = "index"

    def __init__(
        self,
        search: MemorySearch,
        *,
        on_closed: Callable[[str, str], Awaitable[object]] | None = None,
        on_deleted: Callable[[str, str], Awaitable[object]] | None = None,
        on_facts: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.search = search
        self.on_closed = on_closed  # (uid, conversation id): the app understands the conversation here
        self.on_deleted = on_deleted
        self.on_facts = on_facts  # (uid): the user's facts changed; their documents follow

    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        await self.deliver_batch([Delivery(record, conversation, turns)])

    async def deliver_batch(self, items: list[Delivery]) -> None:
        """Index the turns of many records with one embedding pass; deleted conversations leave the index."""
        uid = items[0].record.uid
        wanted: dict[str, set[str]] = {}  # conversation id -> turn ids to refresh
        states: dict[str, Conversation | None] = {}
        closed: list[str] = []
        facts = False
        for record, conversation, _ in items:
            if record.action == "closed":
                closed.append(record.conversation_id)
                continue
            if record.action == "facts":  # the user edited their facts
                facts = True
                continue
            states[record.conversation_id] = None if record.action == "deleted" else conversation
            wanted.setdefault(record.conversation_id, set()).update(record.turn_ids)
        add: list[Turn] = []
        gone: list[str] = []
        for cid, conversation in states.items():
            if conversation is None:
                await self.search.delete(uid, conversation_id=cid)
                if self.on_deleted is not None:
                    await self.on_deleted(uid, cid)
                continue
            present = [s for s in conversation.segments if s.id in wanted[cid] and s.text.strip()]
            add += turns_of(uid, conversation, present)
            gone += sorted(wanted[cid] - {s.id for s in present})  # merged away, or emptied
        await self.search.add(add)
        if gone:
            await self.search.delete(uid, ids=gone)
        if facts and self.on_facts is not None:
            await self.on_facts(uid)
        if self.on_closed is not None:  # after its turns are indexed
            for cid in closed:
                if states.get(cid, True) is not None:
                    await self.on_closed(uid, cid)
