"""The delivery outbox, on SQLite and a real Postgres: written with the change, delivered in order."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import IntegrityError

from core.segments import TranscriptSegment
from memory.store.conversation_store import ConversationStore
from memory.store.outbox import Outbox, RetryPolicy

SINKS = ("letta", "index")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url, sinks=SINKS)
    yield opened
    await opened.close()


def seg(text: str, start: float) -> TranscriptSegment:
    return TranscriptSegment(text=text, start=start, end=start + 1)


async def new_conversation(store: ConversationStore, uid: str, *texts: str) -> tuple[str, list[TranscriptSegment]]:
    now = time.time()
    conversation = await store.create(uid=uid, source="omi", language="en", timeout_s=120, started_at=now, now=now)
    segments = [seg(t, 2.0 * i) for i, t in enumerate(texts)]
    conversation.segments = segments
    await store.save_segments(conversation, segments, last_speech_at=now)
    return conversation.id, segments


async def test_every_change_is_queued_for_every_sink(store: ConversationStore) -> None:
    outbox = Outbox(store.engine)
    uid = f"u-{uuid.uuid4()}"
    conversation_id, segments = await new_conversation(store, uid, "Hello there.", "Hi.")
    await store.complete(conversation_id)
    records = await outbox.records(uid=uid)
    assert [(r.sink, r.action) for r in records] == [
        ("letta", "turns"),
        ("index", "turns"),
        ("letta", "closed"),
        ("index", "closed"),
    ]
    assert records[0].turn_ids == [s.id for s in segments]
    await store.delete(uid, conversation_id)
    deleted = [r for r in await outbox.records(uid=uid) if r.action == "deleted"]
    assert [(r.sink, r.turn_ids) for r in deleted] == [(sink, [s.id for s in segments]) for sink in SINKS]


async def test_a_change_that_fails_to_store_queues_nothing(store: ConversationStore) -> None:
    outbox = Outbox(store.engine)
    uid = f"u-{uuid.uuid4()}"
    conversation_id, segments = await new_conversation(store, uid, "First.")
    conversation = await store.get(uid, conversation_id)
    good = seg("Second.", 2.0)
    broken = TranscriptSegment(text=None, start=4.0, end=5.0)  # type: ignore[arg-type]  # violates NOT NULL
    conversation.segments = [*segments, good, broken]
    before = len(await outbox.records(uid=uid))
    with pytest.raises(IntegrityError):
        await store.save_segments(conversation, [good, broken], last_speech_at=time.time())
    assert len(await outbox.records(uid=uid)) == before
    assert [s.text for s in (await store.get(uid, conversation_id)).segments] == ["First."]


async def test_each_user_is_delivered_in_order_one_record_at_a_time(store: ConversationStore) -> None:
    outbox = Outbox(store.engine)
    a, b = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    first_a, _ = await new_conversation(store, a, "A one.")
    second_a, _ = await new_conversation(store, a, "A two.")
    first_b, _ = await new_conversation(store, b, "B one.")
    now = time.time() + 1
    heads = [r for r in await outbox.heads("letta", now=now, limit=100) if r.uid in (a, b)]
    assert [(r.uid, r.conversation_id) for r in heads] == [(a, first_a), (b, first_b)]
    await outbox.complete(heads[0].id)
    heads = [r for r in await outbox.heads("letta", now=now, limit=100) if r.uid in (a, b)]
    assert [(r.uid, r.conversation_id) for r in heads] == [(a, second_a), (b, first_b)]


async def test_failures_back_off_then_become_dead_letters_that_can_be_retried(store: ConversationStore) -> None:
    outbox = Outbox(store.engine, RetryPolicy(max_attempts=3, base_delay_s=10.0, max_delay_s=100.0))
    uid = f"u-{uuid.uuid4()}"
    await new_conversation(store, uid, "Hello.")
    now = time.time() + 1
    (head,) = [r for r in await outbox.heads("index", now=now, limit=100) if r.uid == uid]
    assert await outbox.fail(head.id, "connection refused", now=now) == "pending"
    # not due again until the backoff has passed: between 5 and 10 s after the first failure
    assert not [r for r in await outbox.heads("index", now=now + 4.9, limit=100) if r.uid == uid]
    (again,) = [r for r in await outbox.heads("index", now=now + 10.1, limit=100) if r.uid == uid]
    assert again.id == head.id and again.attempts == 1 and again.last_error == "connection refused"
    assert await outbox.fail(head.id, "still down", now=now + 11) == "pending"
    assert await outbox.fail(head.id, "still down", now=now + 40) == "dead"
    # a dead letter no longer holds up the user's later records
    assert not [r for r in await outbox.heads("index", now=now + 1e6, limit=100) if r.uid == uid]
    dead = await outbox.records(status="dead", uid=uid)
    assert [r.id for r in dead] == [head.id]
    stats = await outbox.stats()
    assert stats["index"]["dead"] >= 1
    assert await outbox.retry([head.id]) == 1
    (revived,) = [r for r in await outbox.heads("index", now=time.time() + 1, limit=100) if r.uid == uid]
    assert revived.id == head.id and revived.attempts == 0
    await outbox.fail(head.id, "x", now=now)
    await outbox.fail(head.id, "x", now=now)
    await outbox.fail(head.id, "x", now=now)
    assert await outbox.purge([head.id]) == 1
    assert not await outbox.records(status="dead", uid=uid)


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0)
    rng = random.Random(7)
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (20, 60.0)):
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jitter spreads retries out


async def test_stats_report_depth_and_age(store: ConversationStore) -> None:
    outbox = Outbox(store.engine)
    uid = f"u-{uuid.uuid4()}"
    await new_conversation(store, uid, "Hello.")
    stats = await outbox.stats(now=time.time() + 30)
    assert stats["letta"]["pending"] >= 1
    assert stats["letta"]["oldest_pending_age_s"] >= 29
