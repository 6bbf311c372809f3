"""The retention purge and erasing a user: through the outbox, and only what is due or the user's.

Erasing runs on SQLite and a real Postgres. The purge looks at every user, so its tests run on a
fresh SQLite database: the Postgres of the test session holds other tests' old conversations.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.ops.retention import DAY_S, Retention
from app.settings import SettingsError, load_settings
from core.segments import AbsoluteSegment, TranscriptSegment
from ingest.refine import KeptSpeech
from memory.store.conversation_store import ConversationStore
from memory.store.conversations import ConversationManager
from memory.store.day_summaries import DaySummaryStore
from memory.store.outbox import Outbox
from memory.store.tokens import TokenStore
from memory.store.voice_profiles import EMBEDDING_DIM, SpeakerStore

SINKS = ("letta", "index")
NOW = time.time()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url, sinks=SINKS)
    yield opened
    await opened.close()


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    """A database of this test's own, for the purge, which looks at every user."""
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", sinks=SINKS)
    yield opened
    await opened.close()


def retention_over(store: ConversationStore, **kwargs: Any) -> Retention:
    engine = store.engine
    manager = ConversationManager(store)
    return Retention(manager, SpeakerStore(engine), TokenStore(engine), DaySummaryStore(engine), **kwargs)


async def finished(store: ConversationStore, uid: str, days_ago: float, *texts: str) -> str:
    """A completed conversation that finished ``days_ago`` days ago; its id."""
    segments = [TranscriptSegment(text=t, start=2.0 * i, end=2.0 * i + 1) for i, t in enumerate(texts)]
    started = NOW - days_ago * DAY_S - 2.0 * len(texts)
    stored = await store.add_completed(
        uid=uid, source="omi", language="en", started_at=started, segments=segments, now=started
    )
    return stored.id


def heard(segment_id: str, text: str, start: float) -> list[AbsoluteSegment]:
    """One final live segment, as a stream hands it to the conversation manager."""
    segment = AbsoluteSegment(
        id=segment_id, text=text, start=start, end=start + 1, speaker_id=0, is_user=True, stt_provider=None
    )
    return [segment]


async def add(manager: ConversationManager, uid: str, segments: list[AbsoluteSegment]) -> None:
    assert await manager.add(uid, segments, timeout_s=120, source="omi", language="en")


def voice(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(EMBEDDING_DIM).astype(np.float32)


async def deletions(store: ConversationStore, uid: str) -> dict[str, list[str]]:
    """``{conversation id: turn ids}`` of the user's ``deleted`` outbox records, one per sink each."""
    found: dict[str, list[str]] = {}
    for record in await Outbox(store.engine).records(uid=uid, limit=1000):
        if record.action == "deleted":
            assert found.setdefault(record.conversation_id, record.turn_ids) == record.turn_ids
    return found


async def test_the_purge_deletes_only_completed_conversations_past_the_retention(own_store: ConversationStore):
    store = own_store
    alice, bob = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    old = await finished(store, alice, 10, "An old plan.", "Yes.")
    bobs_old = await finished(store, bob, 8, "Another old one.")
    recent = await finished(store, alice, 2, "A recent plan.")
    retention = retention_over(store, days=5)
    manager = retention.conversations
    await add(manager, alice, heard(f"{alice}-live", "Still talking.", NOW - 9 * DAY_S))  # in progress, begun long ago
    assert [k[1] for k in await retention.expired()] == [old, bobs_old]

    done = await retention.purge()
    assert (done.conversations, done.turns, len(done.records)) == (2, 3, 4)
    current = await store.in_progress(alice)
    assert current is not None and {k[1] for k in await store.keys(uid=alice)} == {recent, current.id}
    assert await store.keys(uid=bob) == []
    assert set(await deletions(store, alice)) == {old} and set(await deletions(store, bob)) == {bobs_old}
    records = await Outbox(store.engine).records(limit=1000)
    assert sorted(done.records) == sorted(r.id for r in records if r.action == "deleted")
    assert (await retention.purge()).conversations == 0, "nothing is due twice"


async def test_no_retention_keeps_everything(own_store: ConversationStore):
    store = own_store
    uid = f"k-{uuid.uuid4()}"
    await finished(store, uid, 3650, "Ten years ago.")
    retention = retention_over(store)
    assert retention.cutoff() is None and await retention.expired() == []
    assert (await retention.purge()).conversations == 0
    assert len(await store.keys(uid=uid)) == 1
    assert (await retention.purge(days=3000)).conversations == 1, "an explicit period still purges"


async def test_erasing_a_user_deletes_all_of_theirs_and_nothing_of_others(store: ConversationStore):
    alice, bob = f"ea-{uuid.uuid4()}", f"eb-{uuid.uuid4()}"
    kept = KeptSpeech()
    retention = retention_over(store, kept=kept)
    engine = store.engine
    for uid in (alice, bob):
        await finished(store, uid, 1, "The first talk.", "Right.")
        await finished(store, uid, 0.5, "The second talk.")
        await add(retention.conversations, uid, heard(f"{uid}-live", "Now.", NOW - 5))
        await SpeakerStore(engine).enroll(uid, name="Diane", embedding=voice(1), seconds=5)
        await SpeakerStore(engine).enroll(uid, is_user=True, embedding=voice(2), seconds=5)
        await TokenStore(engine).create(uid, "notebook")
        await DaySummaryStore(engine).add(uid, created_at=NOW, summary="A day.", summary_json=None)
        kept.add(uid, NOW - 5, np.zeros(16_000, dtype=np.float32))

    done = await retention.erase(alice)
    assert done.counts() == {
        "conversations": 3,
        "turns": 4,
        "speakers": 2,
        "tokens": 1,
        "day_summaries": 1,
        "deliveries_queued": 6,
    }
    assert await store.keys(uid=alice) == [] and await store.in_progress(alice) is None
    assert await SpeakerStore(engine).list(alice) == [] and await TokenStore(engine).list(alice) == []
    assert (await DaySummaryStore(engine).page(alice, limit=10, offset=0))[1] == 0
    assert kept.seconds(alice) == 0 and kept.seconds(bob) == 1.0
    assert len(await deletions(store, alice)) == 3

    assert len(await store.keys(uid=bob)) == 3 and len(await SpeakerStore(engine).list(bob)) == 2
    assert len(await TokenStore(engine).list(bob)) == 1
    assert (await DaySummaryStore(engine).page(bob, limit=10, offset=0))[1] == 1
    assert await deletions(store, bob) == {}

    # Speech after the erasure starts a new conversation.
    await add(retention.conversations, alice, heard(f"{alice}-after", "Hello again.", NOW))
    assert len(await store.keys(uid=alice)) == 1
    assert (await retention.erase(f"nobody-{uuid.uuid4()}")).counts()["conversations"] == 0


async def test_erasing_beside_a_running_service_can_keep_the_conversation_in_progress(store: ConversationStore):
    uid = f"ek-{uuid.uuid4()}"
    retention = retention_over(store)
    await finished(store, uid, 1, "Done.")
    await add(retention.conversations, uid, heard(f"{uid}-live", "Now.", NOW))
    done = await retention.erase(uid, keep_in_progress=True)
    assert done.conversations == 1
    current = await store.in_progress(uid)
    assert current is not None and [k[1] for k in await store.keys(uid=uid)] == [current.id]


async def test_the_service_purges_at_startup_and_then_on_its_interval(own_store: ConversationStore):
    store = own_store
    uid = f"s-{uuid.uuid4()}"
    first = await finished(store, uid, 40, "Long ago.")
    retention = retention_over(store, days=30, interval_s=0.2)
    retention.start()
    try:
        for _ in range(100):
            if not await store.keys(uid=uid):
                break
            await asyncio.sleep(0.05)
        assert await store.keys(uid=uid) == [], f"{first} was purged at startup"
        second = await finished(store, uid, 31, "Also long ago.")
        for _ in range(100):
            if not await store.keys(uid=uid):
                break
            await asyncio.sleep(0.05)
        assert await store.keys(uid=uid) == [], f"{second} was purged on the next round"
    finally:
        await retention.stop()


@pytest.mark.parametrize("value", ["-1", "36501", "soon"])
def test_a_bad_retention_names_the_setting(value: str):
    with pytest.raises(SettingsError, match="RETENTION_DAYS"):
        load_settings({"RETENTION_DAYS": value}, env_file=None)
