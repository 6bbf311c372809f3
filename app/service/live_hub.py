"""Fan-out of a user's live transcript to the web page: what the device's stream produces, as it happens.

The device's WebSocket session publishes the segments it sends; the conversation manager's events
(a conversation closing, speakers relabelled) are relayed while anyone of that user listens, as
the device would get them. Each
subscriber has a bounded queue: one that falls behind is dropped (its stream ends, and the page
reconnects and reloads), so a slow browser never holds up ingest. With several workers
(``REDIS_URL``) events go through a Redis pub/sub bus, so a page sees its user's conversation
whichever worker ingests or closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory.redis_state import RedisLiveBus

__all__ = ["LiveEvent", "LiveHub", "Subscription"]

log = logging.getLogger(__name__)

EventSource = Callable[[str, Callable[[Any], Awaitable[None]]], Callable[[], None]]
"""Subscribes a listener to one user's conversation events; returns the unsubscribe call
(:meth:`memory.store.conversations.ConversationManager.subscribe`)."""


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

    def __init__(
        self, source: EventSource | None = None, *, max_queued: int = 256, bus: RedisLiveBus | None = None
    ) -> None:
        self._source = None if bus is not None else source  # with a bus, every worker's events come through it
        self._max_queued = max_queued
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._relays: dict[str, Callable[[], None]] = {}
        self.dropped = 0  # subscribers dropped for falling behind
        self._bus = bus
        self._outgoing: asyncio.Queue[tuple[str, LiveEvent]] = asyncio.Queue(maxsize=10_000)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """With a bus: start sending this worker's events to it and delivering everyone's from it."""
        if self._bus is not None and not self._tasks:
            self._tasks = [
                asyncio.create_task(self._bus.run(self._from_bus), name="live-bus-in"),
                asyncio.create_task(self._send_forever(), name="live-bus-out"),
            ]

    async def _send_forever(self) -> None:
        assert self._bus is not None
        while True:
            uid, event = await self._outgoing.get()  # one sender keeps each user's events in order
            await self._bus.publish(uid, event.kind, event.data)

    def _from_bus(self, uid: str, kind: str, data: Any) -> None:
        self.deliver(uid, LiveEvent(kind, data))

    def forward(self, uid: str, event: Any) -> None:
        """A conversation event of ``uid`` (from any user's conversation manager) for every worker's listeners."""
        self.publish(uid, LiveEvent("relabel" if isinstance(event, list) else "conversation", event))

    def listeners(self, uid: str) -> int:
        """How many subscribers ``uid`` has."""
        return len(self._subscribers.get(uid, ()))

    def publish(self, uid: str, event: LiveEvent) -> None:
        """Give ``event`` to every subscriber of ``uid`` (on every worker, with a bus); never waits."""
        if self._bus is None:
            self.deliver(uid, event)
            return
        try:
            self._outgoing.put_nowait((uid, event))
        except asyncio.QueueFull:
            log.warning("the live bus is %d events behind; dropped one of uid %s", self._outgoing.maxsize, uid)

    def deliver(self, uid: str, event: LiveEvent) -> None:
        """Give ``event`` to this worker's subscribers of ``uid``; a subscriber whose queue is full is dropped."""
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
        """End every subscriber's iterator and stop using the bus (the service is stopping)."""
        for task in self._tasks:
            task.cancel()
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.offer(None)

    def _relay(self, uid: str) -> Callable[[Any], Awaitable[None]]:
        async def relay(event: Any) -> None:
            self.forward(uid, event)

        return relay
