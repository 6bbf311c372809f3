"""Storing what the OMI cloud's webhooks send, on SQLite and a real Postgres: whole conversations,
segments with ids of their own, and day summaries; each repeat changes nothing and queues nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from core.conversation import Conversation
from core.errors import ConflictError
from core.segments import TranscriptSegment
from memory.store.conversation_store import ConversationStore
from memory.store.conversations import ConversationManager
from memory.store.day_summaries import DaySummaryStore
from memory.store.outbox import Outbox

SINKS = ("index",)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url, sinks=SINKS)
    yield opened
    await opened.close()


def seg(text: str, start: float, **fields: object) -> TranscriptSegment:
    return TranscriptSegment(id=str(uuid.uuid4()), text=text, start=start, end=start + 1, **fields)  # type: ignore[arg-type]


def imported(uid: str, segments: list[TranscriptSegment], **fields: object) -> Conversation:
    now = time.time()
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "uid": uid,
        "status": "completed",
        "source": "omi",
        "language": "en",
        "created_at": now,
        "started_at": now - 60,
        "finished_at": now,
        "last_speech_at": now,
        "timeout_s": 0,
        "segments": segments,
        "structured": {"title": "Lunch plans", "overview": "Where to eat."},
        "external_id": str(uuid.uuid4()),
    }
    values.update(fields)
    return Conversation(**values)  # type: ignore[arg-type]


async def records(store: ConversationStore, uid: str) -> list[tuple[str, str, list[str]]]:
    return [(r.conversation_id, r.action, r.turn_ids) for r in await Outbox(store.engine).records(uid=uid)]


async def test_a_whole_conversation_is_stored_once_and_changes_queue_only_themselves(store: ConversationStore):
    uid = f"u-{uuid.uuid4()}"
    first, second, third = seg("Shall we eat?", 0), seg("Yes, at noon.", 2, speaker_id=1), seg("Good.", 4)
    conversation = imported(uid, [first, second, third])
    _, changed = await store.put_completed(conversation)
    assert changed
    loaded = await store.get(uid, conversation.id)
    assert loaded.segments == [first, second, third]
    assert loaded.structured == {"title": "Lunch plans", "overview": "Where to eat."}
    assert loaded.to_omi()["structured"]["title"] == "Lunch plans"
    assert loaded.to_omi()["structured"]["emoji"] == "🧠"
    assert await store.find_external(uid, conversation.external_id or "") == conversation.id
    assert await records(store, uid) == [
        (conversation.id, "turns", [first.id, second.id, third.id]),
        (conversation.id, "closed", []),
    ]

    _, changed = await store.put_completed(conversation)
    assert not changed
    assert len(await records(store, uid)) == 2

    edited = msgspec.structs.replace(first, text="Shall we eat now?")
    _, changed = await store.put_completed(msgspec.structs.replace(conversation, segments=[edited, third]))
    assert changed
    assert (await store.get(uid, conversation.id)).segments == [edited, third]
    assert (await records(store, uid))[2:] == [(conversation.id, "turns", [second.id, edited.id, third.id])]

    _, changed = await store.put_completed(
        msgspec.structs.replace(conversation, segments=[edited, third], structured={})
    )
    assert changed, "a new summary is a change"
    assert len(await records(store, uid)) == 3, "but no turn changed"


async def test_segments_another_conversation_held_move_and_it_is_queued_first(store: ConversationStore):
    uid = f"u-{uuid.uuid4()}"
    now = time.time()
    live = await store.create(uid=uid, source="omi", language="en", timeout_s=120, started_at=now, now=now)
    kept, taken = seg("Kept here.", 0), seg("Taken over.", 2)
    live.segments = [kept, taken]
    await store.save_segments(live, live.segments, last_speech_at=now)
    emptied = await store.add_completed(
        uid=uid, source="omi", language="en", started_at=now, segments=[seg("Only one.", 0)], now=now
    )
    before = len(await records(store, uid))

    conversation = imported(uid, [taken, emptied.segments[0], seg("New.", 5)])
    _, changed = await store.put_completed(conversation)
    assert changed
    assert [s.id for s in (await store.get(uid, conversation.id)).segments] == [s.id for s in conversation.segments]
    assert [s.id for s in (await store.get(uid, live.id)).segments] == [kept.id]
    assert await store.owners(uid, [taken.id, kept.id]) == {taken.id: conversation.id, kept.id: live.id}
    assert (await store.page(uid, limit=10, offset=0))[1] == 2, "the emptied conversation is gone"
    assert (await records(store, uid))[before:] == [
        (live.id, "turns", [taken.id]),
        (emptied.id, "deleted", [emptied.segments[0].id]),
        (conversation.id, "turns", [s.id for s in conversation.segments]),
        (conversation.id, "closed", []),
    ]


async def test_another_users_ids_are_refused(store: ConversationStore):
    mine = imported(f"u-{uuid.uuid4()}", [seg("Mine.", 0)])
    await store.put_completed(mine)
    with pytest.raises(ConflictError):
        await store.put_completed(msgspec.structs.replace(mine, uid=f"u-{uuid.uuid4()}"))
    with pytest.raises(ConflictError):
        await store.put_completed(imported(f"u-{uuid.uuid4()}", mine.segments))
    assert await store.owners(f"u-{uuid.uuid4()}", [mine.segments[0].id]) == {}


async def test_upserted_segments_update_where_they_are_stored(store: ConversationStore):
    manager = ConversationManager(store)
    uid = f"u-{uuid.uuid4()}"
    now = time.time()
    hello = seg("Hello.", now)
    [added] = await manager.upsert(uid, [hello], timeout_s=120, source="omi", language="en")
    assert (added.start, added.end) == (0.0, 1.0)
    assert await manager.upsert(uid, [hello], timeout_s=120, source="omi", language="en") == []
    current = await manager.current(uid)
    assert current is not None
    await manager.close(uid, current.id)

    grown = msgspec.structs.replace(hello, text="Hello, everyone.", start=now + 100, end=now + 102)
    assert await manager.upsert(uid, [grown], timeout_s=120, source="omi", language="en") == []
    assert await manager.current(uid) is None, "no new conversation for an old segment"
    [updated] = (await store.get(uid, current.id)).segments
    assert (updated.text, updated.start, updated.end) == ("Hello, everyone.", 0.0, 2.0)


async def test_day_summaries_are_kept_once(store: ConversationStore):
    summaries = DaySummaryStore(store.engine)
    uid = f"u-{uuid.uuid4()}"
    first, new = await summaries.add(uid, created_at=1000.0, summary="A calm day.", summary_json=None)
    assert new
    again, new = await summaries.add(uid, created_at=1000.0, summary="A calm day.", summary_json=None)
    assert not new and again == first
    await summaries.add(uid, created_at=2000.0, summary="A busy day.", summary_json={"headline": "Busy"})
    items, total = await summaries.page(uid, limit=10, offset=0)
    assert total == 2 and [s.summary for s in items] == ["A busy day.", "A calm day."]
    assert items[0].summary_json == {"headline": "Busy"}
    assert (await summaries.page("someone-else", limit=10, offset=0))[1] == 0
