"""The live fan-out to web pages: per-user, in order, never blocking ingest, and relaying conversation events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from app.service.live_hub import LiveEvent, LiveHub, Subscription
from core.segments import AbsoluteSegment, TranscriptSegment
from memory.store.conversation_store import ConversationStore
from memory.store.conversations import ConversationManager


def segments(*texts: str) -> LiveEvent:
    return LiveEvent("segments", [{"id": t, "text": t} for t in texts])


async def pending(subscription: Subscription) -> list[LiveEvent]:
    """What the subscription holds now, without waiting for more; stops at its end."""
    events: list[LiveEvent] = []
    while True:
        try:
            async with asyncio.timeout(0.05):
                event = await subscription.get()
        except TimeoutError:
            return events
        if event is None:
            return events
        events.append(event)


async def test_events_reach_every_listener_of_that_user_in_order() -> None:
    hub = LiveHub()
    hub.publish("alice", segments("before anyone listened"))
    async with hub.subscribe("alice") as first, hub.subscribe("alice") as second, hub.subscribe("bob") as bob:
        assert hub.listeners("alice") == 2
        for text in ("one", "two", "three"):
            hub.publish("alice", segments(text))
        expected = [segments("one"), segments("two"), segments("three")]
        assert await pending(first) == expected
        assert await pending(second) == expected
        assert await pending(bob) == []
    assert hub.listeners("alice") == 0 and hub.listeners("bob") == 0


async def test_a_listener_that_falls_behind_is_dropped_and_publishing_never_waits() -> None:
    hub = LiveHub(max_queued=3)
    async with hub.subscribe("alice") as slow, hub.subscribe("alice") as fast:
        started = time.perf_counter()
        for i in range(3):
            hub.publish("alice", segments(str(i)))
            assert await fast.get() == segments(str(i))
        hub.publish("alice", segments("3"))  # the slow one holds 3 already
        assert time.perf_counter() - started < 0.5
        assert slow.lagged and hub.dropped == 1 and hub.listeners("alice") == 1
        assert [e async for e in slow] == [], "a dropped listener ends at once, without stale events"
        assert await fast.get() == segments("3")
        hub.publish("alice", segments("4"))
        assert await pending(fast) == [segments("4")]
        assert await pending(slow) == []


async def test_close_ends_every_subscription() -> None:
    hub = LiveHub()
    async with hub.subscribe("alice") as subscription:
        hub.publish("alice", segments("last words"))
        hub.close()
        assert [e async for e in subscription] == [segments("last words")]
        assert await subscription.get() is None


async def test_a_timeout_while_waiting_loses_nothing() -> None:
    hub = LiveHub()
    async with hub.subscribe("alice") as subscription:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await subscription.get()
        hub.publish("alice", segments("after the ping"))
        assert await subscription.get() == segments("after the ping")


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ConversationManager]:
    store = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}")
    yield ConversationManager(store)
    await store.close()


async def test_conversation_events_are_relayed_only_while_someone_listens(manager: ConversationManager) -> None:
    hub = LiveHub(manager.subscribe)
    now = time.time()
    said = AbsoluteSegment(
        id="s1", text="Call the pharmacy.", start=now, end=now + 1, speaker_id=1, is_user=False, stt_provider=None
    )
    await manager.add("alice", [said], timeout_s=120, source="omi", language="en")
    current = await manager.current("alice")
    assert current is not None

    def rename(segment: TranscriptSegment) -> TranscriptSegment:
        return msgspec.structs.replace(segment, speaker_name="Diane")

    async with hub.subscribe("alice") as first, hub.subscribe("alice") as second:
        await manager.relabel("alice", current.id, rename)
        await manager.close("alice", current.id)
        for subscription in (first, second):
            relabel, started, created = await pending(subscription)
            assert relabel.kind == "relabel" and relabel.data[0]["speaker_name"] == "Diane"
            assert (started.kind, started.data["type"]) == ("conversation", "memory_processing_started")
            assert (created.kind, created.data["type"]) == ("conversation", "memory_created")
            assert created.data["memory"]["id"] == current.id
    assert not manager._listeners["alice"], "the hub stops listening with its last subscriber"
