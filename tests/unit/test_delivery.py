"""Delivery loops over a real SQLite outbox: in order per user, retried through an outage, nothing lost.

The sink here is a small in-memory store keyed by turn id, written for these tests: it stands
for an idempotent sink (the real Letta and vector-index sinks are tested against real servers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.conversation import Conversation
from core.metrics import Metrics
from core.segments import TranscriptSegment
from memory.delivery.deliverer import Deliverer, Delivery, Sink
from memory.store.conversation_store import ConversationStore
from memory.store.outbox import Outbox, OutboxRecord, RetryPolicy


class KeyedSink(Sink):
    """Keeps each turn's latest text by id; ``failures`` calls raise first, as an outage would."""

    name = "index"

    def __init__(self, failures: int = 0) -> None:
        self.turns: dict[str, str] = {}
        self.log: list[tuple[str, str, str]] = []  # (uid, action, conversation id) in delivery order
        self.failures = failures
        self.calls = 0

    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("sink is down")
        self.log.append((record.uid, record.action, record.conversation_id))
        if record.action == "deleted":
            for turn_id in record.turn_ids:
                self.turns.pop(turn_id, None)
        for turn in turns:
            self.turns[turn.id] = turn.text


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}", sinks=("index",))
    yield opened
    await opened.close()


async def talk(store: ConversationStore, uid: str, *texts: str) -> tuple[str, list[TranscriptSegment]]:
    now = time.time()
    conversation = await store.create(uid=uid, source="omi", language="en", timeout_s=120, started_at=now, now=now)
    segments = [TranscriptSegment(text=t, start=2.0 * i, end=2.0 * i + 1) for i, t in enumerate(texts)]
    conversation.segments = segments
    await store.save_segments(conversation, segments, last_speech_at=now)
    return conversation.id, segments


async def test_each_users_changes_arrive_in_order(store: ConversationStore) -> None:
    sink = KeyedSink()
    metrics = Metrics()
    deliverer = Deliverer(store, Outbox(store.engine), [sink], metrics=metrics)
    a1, _ = await talk(store, "ann", "Hello.")
    b1, _ = await talk(store, "bob", "Hi.")
    a2, _ = await talk(store, "ann", "Again.")
    await store.complete(a1)
    assert await deliverer.run_once(sink) == 4
    assert [e for e in sink.log if e[0] == "ann"] == [("ann", "turns", a1), ("ann", "turns", a2), ("ann", "closed", a1)]
    assert [e for e in sink.log if e[0] == "bob"] == [("bob", "turns", b1)]
    assert sorted(sink.turns.values()) == ["Again.", "Hello.", "Hi."]
    assert await deliverer.run_once(sink) == 0
    assert metrics.counters["delivered_total_index"] == 4


async def test_an_outage_delays_delivery_but_loses_and_repeats_nothing(store: ConversationStore) -> None:
    sink = KeyedSink(failures=3)
    metrics = Metrics()
    outbox = Outbox(store.engine, RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.05))
    deliverer = Deliverer(store, outbox, [sink], metrics=metrics, poll_s=0.02)
    ids = [await talk(store, "ann", f"Turn {i}.") for i in range(3)]
    deliverer.start()
    try:
        for _ in range(200):
            if not await outbox.records(status="pending"):
                break
            await asyncio.sleep(0.02)
    finally:
        await deliverer.stop()
    assert not await outbox.records(status="pending") and not await outbox.records(status="dead")
    assert [e[2] for e in sink.log] == [conversation_id for conversation_id, _ in ids]
    assert sorted(sink.turns.values()) == ["Turn 0.", "Turn 1.", "Turn 2."]
    assert sink.calls == 3 + 3
    assert metrics.counters["delivery_failures_total_index"] == 3
    await deliverer.report(sink)
    assert metrics.gauges["outbox_pending_index"] == 0


async def test_a_deleted_conversation_is_removed_from_the_sink(store: ConversationStore) -> None:
    sink = KeyedSink()
    deliverer = Deliverer(store, Outbox(store.engine), [sink], metrics=Metrics())
    conversation_id, segments = await talk(store, "ann", "Secret.", "Also secret.")
    await deliverer.run_once(sink)
    assert set(sink.turns) == {s.id for s in segments}
    await store.delete("ann", conversation_id)
    await deliverer.run_once(sink)
    assert sink.turns == {}


class BatchingSink(KeyedSink):
    """Records how many records each call carried."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(failures)
        self.batches: list[list[str]] = []

    async def deliver_batch(self, items: list[Delivery]) -> None:
        self.batches.append([item.record.action for item in items])
        await super().deliver_batch(items)


async def test_a_users_queued_records_go_to_the_sink_together_and_are_retried_together(
    store: ConversationStore,
) -> None:
    sink = BatchingSink(failures=1)
    outbox = Outbox(store.engine, RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=1.0))
    deliverer = Deliverer(store, outbox, [sink], metrics=Metrics(), per_user=3)
    first, _ = await talk(store, "ann", "One.")
    await talk(store, "ann", "Two.")
    await store.complete(first)
    await talk(store, "ann", "Three.")
    assert await deliverer.run_once(sink) == 3  # the first batch fails as a whole, then waits 0.5-1 s
    await asyncio.sleep(1.05)
    assert await deliverer.run_once(sink) == 4
    assert sink.batches == [["turns", "turns", "closed"], ["turns", "turns", "closed"], ["turns"]]
    assert sorted(sink.turns.values()) == ["One.", "Three.", "Two."]
    assert not await outbox.records(status="pending")
