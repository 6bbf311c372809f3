"""Fan-out of a user's live transcript to the web page: what the device's stream produces, as it happens.

The device's WebSocket session publishes the segments it sends; the conversation manager's events
(a conversation closing, speakers relabelled) are relayed while anyone of that user listens, as
the device would get them. Each
subscriber has a bounded queue: one that falls behind is dropped (its stream ends, and the page
reconnects and reloads), so a slow browser never holds up ingest.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["LiveEvent", "LiveHub", "Subscription"]

log = logging.getLogger(__name__)

EventSource = Callable[[str, Callable[[Any], Awaitable[None]]], Callable[[], None]]
"""Subscribes a listener to one user's conversation events; returns the unsubscribe call
(:meth:`ingest.conversations.ConversationManager.subscribe`)."""


@dataclass(frozen=True)
class LiveEvent:
    """One event for the page.

    ``segments``: OMI segment dicts the device's stream sent (new or grown); ``relabel``: stored
    segments whose speaker changed (they may belong to any of the user's conversations);
    ``conversation``: an OMI conversation event dict (``memory_created``, ...).
    """

    kind: str
    data: Any


class Subscription:
    """One listener's events, in order: an async iterator that ends once the listener is dropped or the hub closes."""

    __slots__ = ("_ended", "_queue", "lagged")

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(maxsize=size)
        self._ended = False
        self.lagged = False  # dropped for falling behind

    async def get(self) -> LiveEvent | None:
        """The next event, or None once the subscription has ended. Safe to cancel (a timeout loses nothing)."""
        if self._ended:
            return None
        event = await self._queue.get()
        self._ended = event is None
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LiveEvent:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def offer(self, event: LiveEvent | None) -> bool:
        """Queue ``event`` (None ends the subscription) without waiting; False if the listener fell behind."""
        if self.lagged:
            return False
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            self.lagged = True
            # Make room for the end marker, so the reader stops at once instead of replaying stale events.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            return False


class LiveHub:
    """Per-user fan-out of live events; publishing never waits.

    Args:
        source: where to subscribe for a user's conversation events while they have listeners.
        max_queued: events a subscriber may fall behind by before it is dropped.
    """

    def __init__(self, source: EventSource | None = None, *, max_queued: int = 256) -> None:
        self._source = source
        self._max_queued = max_queued
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._relays: dict[str, Callable[[], None]] = {}
        self.dropped = 0  # subscribers dropped for falling behind

    def listeners(self, uid: str) -> int:
        """How many subscribers ``uid`` has."""
        return len(self._subscribers.get(uid, ()))

    def publish(self, uid: str, event: LiveEvent) -> None:
        """Give ``event`` to every subscriber of ``uid``; a subscriber whose queue is full is dropped."""
        subscribers = self._subscribers.get(uid, set())
        for subscriber in list(subscribers):
            if not subscriber.offer(event):
                subscribers.discard(subscriber)
                self.dropped += 1
                log.warning("dropped a live subscriber of uid %s that fell %d events behind", uid, self._max_queued)

    @asynccontextmanager
    async def subscribe(self, uid: str) -> AsyncIterator[Subscription]:
        """Listen to ``uid``'s events while the context is open.

        Events published after entry arrive in order; the subscription ends when it falls behind
        or the hub closes.
        """
        subscriber = Subscription(self._max_queued)
        if self._source is not None and uid not in self._relays:
            self._relays[uid] = self._source(uid, self._relay(uid))
        self._subscribers[uid].add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers[uid].discard(subscriber)
            if not self._subscribers[uid]:
                del self._subscribers[uid]
                unsubscribe = self._relays.pop(uid, None)
                if unsubscribe is not None:
                    unsubscribe()

    def close(self) -> None:
        """End every subscriber's iterator (the service is stopping)."""
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.offer(None)

    def _relay(self, uid: str) -> Callable[[Any], Awaitable[None]]:
        async def relay(event: Any) -> None:
            kind = "relabel" if isinstance(event, list) else "conversation"
            self.publish(uid, LiveEvent(kind, event))

        return relay
