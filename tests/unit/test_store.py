"""The conversation store's contract, run against every database we support."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from core.errors import NotFoundError
from core.segments import TranscriptSegment
from memory.store.conversation_store import ConversationStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url)
    yield opened
    await opened.close()


def seg(text: str, start: float) -> TranscriptSegment:
    return TranscriptSegment(text=text, start=start, end=start + 1)


async def test_segments_are_upserted_in_order(store: ConversationStore):
    now = time.time()
    uid = f"u{now}"
    conversation = await store.create(uid=uid, source="omi", language="en", timeout_s=120, started_at=now, now=now)
    first, second = seg("one", 0), seg("two", 2)
    conversation.segments = [first, second]
    await store.save_segments(conversation, [first, second], last_speech_at=now)
    grown = TranscriptSegment(id=first.id, text="one more", start=0, end=1.5)
    conversation.segments = [grown, second]
    await store.save_segments(conversation, [grown], last_speech_at=now)
    loaded = await store.in_progress(uid)
    assert loaded is not None and loaded.id == conversation.id
    assert [(s.id, s.text) for s in loaded.segments] == [(first.id, "one more"), (second.id, "two")]


async def test_due_complete_and_empty_conversations(store: ConversationStore):
    now = time.time()
    uid = f"d{now}"
    talk = await store.create(uid=uid, source="omi", language="en", timeout_s=5, started_at=now, now=now - 10)
    talk.segments = [seg("hi", 0)]
    await store.save_segments(talk, talk.segments, last_speech_at=now - 10)
    assert (uid, talk.id) in await store.due(now)
    assert (uid, talk.id) not in await store.due(now - 6)
    done = await store.complete(talk.id)
    assert done is not None and done.status == "completed"
    assert await store.last_completed_id(uid) == talk.id
    empty = await store.create(uid=uid, source="omi", language="en", timeout_s=5, started_at=now, now=now)
    assert await store.complete(empty.id) is None
    with pytest.raises(NotFoundError):
        await store.get(uid, empty.id)


async def test_users_only_see_their_own(store: ConversationStore):
    now = time.time()
    mine = await store.add_completed(
        uid=f"a{now}", source="omi", language="en", started_at=now, segments=[seg("x", 0)], now=now
    )
    with pytest.raises(NotFoundError):
        await store.get(f"b{now}", mine.id)
    with pytest.raises(NotFoundError):
        await store.delete(f"b{now}", mine.id)
    items, total = await store.page(f"b{now}", limit=10, offset=0)
    assert (items, total) == ([], 0)
    await store.delete(f"a{now}", mine.id)
    assert (await store.page(f"a{now}", limit=10, offset=0))[1] == 0
