"""Placing recorded speech where it was said (issue "Offline audio"): into the conversation it overlaps or lies
next to, re-timing and extending it, or as a new conversation at its own time; the same piece twice changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from core.segments import AbsoluteSegment
from memory.store.conversation_store import ConversationStore
from memory.store.conversations import ConversationManager
from memory.store.outbox import Outbox

T0 = 1_760_000_000.0
WINDOW_S = 120.0


@pytest.fixture
async def manager(database_url: str) -> AsyncIterator[ConversationManager]:
    store = await ConversationStore.open(database_url, sinks=("index",))
    yield ConversationManager(store)
    await store.close()


def spoken(text: str, start: float, speaker: int = 0, person: str | None = None) -> AbsoluteSegment:
    return AbsoluteSegment(
        id=str(uuid.uuid4()),
        text=text,
        start=start,
        end=start + 2.0,
        speaker_id=speaker,
        is_user=False,
        stt_provider="test",
        person_id=person,
        speaker_name="Diane" if person else None,
    )


async def existing(manager: ConversationManager, uid: str) -> str:
    """A stored conversation from T0 to T0 + 32 s: speakers 0 and 1 (1 is Diane)."""
    placed, new = await manager.place(
        uid,
        [spoken("Hello there.", T0), spoken("Hi, I am Diane.", T0 + 10, 1, "p-diane"), spoken("Bye.", T0 + 30)],
        source="omi",
        language="en",
        window_s=WINDOW_S,
    )
    assert new and placed.status == "completed" and placed.started_at == T0
    return placed.id


async def place(manager: ConversationManager, uid: str, *segments: AbsoluteSegment) -> tuple[str, bool]:
    placed, new = await manager.place(uid, list(segments), source="omi", language="en", window_s=WINDOW_S)
    return placed.id, new


async def test_speech_inside_a_conversation_joins_it_in_time_order(manager: ConversationManager):
    uid = f"inside-{uuid.uuid4()}"
    conversation_id = await existing(manager, uid)
    placed, new = await place(manager, uid, spoken("Stranger in the middle.", T0 + 20, speaker=0))
    assert (placed, new) == (conversation_id, False)
    stored = await manager.store.get(uid, conversation_id)
    assert [s.text for s in stored.segments] == ["Hello there.", "Hi, I am Diane.", "Stranger in the middle.", "Bye."]
    stranger = stored.segments[2]
    assert stranger.start == 20.0 and stranger.speaker_id == 2 and stranger.speaker == "SPEAKER_2"
    assert stranger.speaker_name == "Speaker 2", "someone the conversation did not know gets a number of their own"


async def test_speech_just_after_or_before_extends_and_re_times_the_conversation(manager: ConversationManager):
    uid = f"next-{uuid.uuid4()}"
    conversation_id = await existing(manager, uid)
    after, _ = await place(manager, uid, spoken("One more thing.", T0 + 32 + 60, 1, "p-diane"))
    before, _ = await place(manager, uid, spoken("Earlier words.", T0 - 100))
    assert after == before == conversation_id
    stored = await manager.store.get(uid, conversation_id)
    assert stored.started_at == T0 - 100 and stored.finished_at == T0 + 94
    assert [(s.text, s.start) for s in stored.segments] == [
        ("Earlier words.", 0.0),
        ("Hello there.", 100.0),
        ("Hi, I am Diane.", 110.0),
        ("Bye.", 130.0),
        ("One more thing.", 192.0),
    ]
    diane = {s.speaker_id for s in stored.segments if s.person_id == "p-diane"}
    assert diane == {1}, "a known person keeps the conversation's number for them"


async def test_speech_far_from_any_conversation_is_a_new_one_at_its_own_time(manager: ConversationManager):
    uid = f"far-{uuid.uuid4()}"
    conversation_id = await existing(manager, uid)
    placed, new = await place(manager, uid, spoken("An hour later.", T0 + 3600))
    assert new and placed != conversation_id
    stored = await manager.store.get(uid, placed)
    assert stored.started_at == T0 + 3600 and stored.source == "omi" and stored.status == "completed"
    assert len((await manager.store.get(uid, conversation_id)).segments) == 3


async def test_the_same_piece_again_changes_and_queues_nothing(manager: ConversationManager):
    uid = f"again-{uuid.uuid4()}"
    conversation_id = await existing(manager, uid)
    piece = [spoken("Stored once.", T0 + 50), spoken("Said twice.", T0 + 53, 3)]
    await place(manager, uid, *piece)
    outbox = Outbox(manager.store.engine)
    queued = len(await outbox.records(uid=uid, limit=1000))
    before = await manager.store.get(uid, conversation_id)
    assert await place(manager, uid, *piece) == (conversation_id, False)
    assert await manager.store.get(uid, conversation_id) == before
    assert len(await outbox.records(uid=uid, limit=1000)) == queued
