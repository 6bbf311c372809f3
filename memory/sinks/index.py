"""The index sink: turns into the hybrid memory search (vector index and lexical index)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory.delivery import Sink
from memory.search import MemorySearch, Turn
from memory.sinks.passages import speaker_of

if TYPE_CHECKING:
    from ingest.segments import TranscriptSegment
    from memory.outbox import OutboxRecord
    from memory.store import Conversation

__all__ = ["IndexSink", "turns_of"]


def turns_of(uid: str, conversation: Conversation, segments: list[TranscriptSegment]) -> list[Turn]:
    """Segments of a conversation as searchable turns (epoch-second times, the speaker's name)."""
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
        )
        for s in segments
        if s.text.strip()
    ]


class IndexSink(Sink):
    """Keeps the memory search in step with the store. Upserts by turn id, so a repeat changes nothing."""

    name = "index"

    def __init__(self, search: MemorySearch) -> None:
        self.search = search

    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        if record.action == "closed":
            return
        if record.action == "deleted" or conversation is None:
            await self.search.delete(record.uid, conversation_id=record.conversation_id)
            return
        await self.search.add(turns_of(record.uid, conversation, turns))
        present = {t.id for t in turns if t.text.strip()}
        gone = [t for t in record.turn_ids if t not in present]  # merged away, or emptied
        if gone:
            await self.search.delete(record.uid, ids=gone)
