"""Live state shared by several workers, in Redis (``REDIS_URL``): what one process keeps in memory.

- :class:`RedisConnectLimiter`: the per-user connect limit, as the OMI backend's
  ``users:{uid}:listen_rate_limit`` (``SET NX`` with an expiry);
- :class:`RedisLeases`: which worker owns a user's in-progress conversation (a key with a TTL,
  renewed by its holder, like the OMI backend's in-progress key);
- :meth:`RedisState.save_speakers` / :meth:`RedisState.load_speakers`: the live speaker state of
  an in-progress conversation, so a device that reconnects to another worker keeps its labels;
- :class:`RedisLiveBus`: the live transcript fanned out to every worker (pub/sub).

Nothing here is the source of truth: conversations and the outbox live in the database, so a
flushed or restarted Redis loses no turn. Transcript text and voice embeddings are encrypted
with the storage keyring before they reach Redis. A Redis outage never stops ingest: the
limiter lets connections in, leases are assumed held, and the error is logged (without text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from memory.store import crypto

__all__ = ["RedisConnectLimiter", "RedisLeases", "RedisLiveBus", "RedisState", "worker_id"]

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_HOLD = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def worker_id() -> str:
    """A name for this process that no other worker shares: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisState:
    """One Redis connection pool and this worker's name; the parts below share it."""

    def __init__(self, url: str, *, prefix: str = "omi-letta", worker: str | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.worker = worker or worker_id()
        self.client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=5.0, socket_connect_timeout=3.0, health_check_interval=15, retry_on_timeout=True
        )
        self._warned: set[str] = set()

    def key(self, *parts: str) -> str:
        """A key in our namespace: ``omi-letta:<part>:<part>``."""
        return ":".join((self.prefix, *parts))

    def failed(self, what: str, exc: BaseException) -> None:
        """Log a Redis failure once per kind until Redis answers again."""
        if what not in self._warned:
            self._warned.add(what)
            log.warning("Redis at %s failed while %s (%s); carrying on without it", self.host, what, type(exc).__name__)

    def recovered(self, what: str) -> None:
        """Redis answered again for ``what``."""
        if what in self._warned:
            self._warned.discard(what)
            log.info("Redis answers again (%s)", what)

    @property
    def host(self) -> str:
        """Where Redis is, without any password."""
        return self.url.rsplit("@", 1)[-1]

    async def ping(self) -> None:
        """Check Redis answers (at startup, to fail early with a clear message).

        Raises:
            RedisError: it does not.
        """
        await self.client.ping()

    async def save_speakers(self, conversation_id: str, state: bytes, ttl_s: int) -> None:
        """Keep the live speaker state of an in-progress conversation (encrypted) for ``ttl_s``."""
        sealed = crypto.installed().encrypt_bytes(state, "redis.speakers")
        try:
            await self.client.set(self.key("speakers", conversation_id), sealed, ex=max(ttl_s, 1))
            self.recovered("saving speaker state")
        except RedisError as exc:
            self.failed("saving speaker state", exc)

    async def load_speakers(self, conversation_id: str) -> bytes | None:
        """The live speaker state kept for a conversation, if any."""
        try:
            sealed = await self.client.get(self.key("speakers", conversation_id))
        except RedisError as exc:
            self.failed("loading speaker state", exc)
            return None
        if sealed is None:
            return None
        return crypto.installed().decrypt_bytes(
            sealed if isinstance(sealed, bytes) else sealed.encode(), "redis.speakers"
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class RedisConnectLimiter:
    """The per-user connect limit shared by every worker: ``SET users:{uid}:listen_rate_limit NX PX``."""

    def __init__(self, state: RedisState, interval_s: float) -> None:
        self.state = state
        self.interval_s = interval_s

    async def acquire(self, uid: str) -> bool:
        """Take ``uid``'s connect slot; False if it was taken less than the interval ago."""
        if self.interval_s <= 0:
            return True
        try:
            taken = await self.state.client.set(
                self.state.key("users", uid, "listen_rate_limit"), "1", nx=True, px=int(self.interval_s * 1000)
            )
            self.state.recovered("checking the connect limit")
        except RedisError as exc:
            self.state.failed("checking the connect limit", exc)
            return True  # fail open: an outage must not lock devices out
        return bool(taken)


class RedisLeases:
    """:class:`memory.store.leases.Leases` in Redis: ``omi-letta:in_progress:{uid}`` holds the owner's name."""

    shared = True

    def __init__(self, state: RedisState, ttl_s: float) -> None:
        self.state = state
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = state.client.register_script(_RENEW)
        self._release = state.client.register_script(_RELEASE)
        self._hold = state.client.register_script(_HOLD)

    def _key(self, uid: str) -> str:
        return self.state.key("in_progress", uid)

    async def acquire(self, uid: str, *, wait_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + wait_s
        try:
            while True:
                if await self.try_hold(uid):
                    return True
                if asyncio.get_running_loop().time() >= deadline:
                    holder = await self.state.client.get(self._key(uid))
                    log.warning("took over the stream of uid %s from worker %r", uid, holder)
                    await self.state.client.set(self._key(uid), self.state.worker, px=self.ttl_ms)
                    return False
                await asyncio.sleep(0.25)
        except RedisError as exc:
            self.state.failed("taking a lease", exc)
            return True

    async def try_hold(self, uid: str) -> bool:
        try:
            held = await self._hold(keys=[self._key(uid)], args=[self.state.worker, self.ttl_ms])
            self.state.recovered("taking a lease")
        except RedisError as exc:
            self.state.failed("taking a lease", exc)
            return True  # as if alone: the database still orders what is written
        return bool(held)

    async def renew(self, uid: str) -> bool:
        try:
            renewed = await self._renew(keys=[self._key(uid)], args=[self.state.worker, self.ttl_ms])
            if not renewed:  # expired while Redis was away, or taken over: take it again if free
                return await self.try_hold(uid)
            self.state.recovered("renewing a lease")
        except RedisError as exc:
            self.state.failed("renewing a lease", exc)
            return True
        return True

    async def release(self, uid: str) -> None:
        with contextlib.suppress(RedisError):
            await self._release(keys=[self._key(uid)], args=[self.state.worker])


LiveListener = Callable[[str, str, Any], Awaitable[None] | None]
"""Receives ``(uid, kind, data)`` of a live event published by any worker."""


class RedisLiveBus:
    """Live events of every user through Redis pub/sub, on channel ``omi-letta:live:{uid}``.

    :meth:`publish` sends an event (encrypted); :meth:`run` delivers every worker's events, this
    one's included, to ``listener`` until cancelled, resubscribing after an outage. Events
    published while Redis is away are lost (the page reloads stored conversations when it
    reconnects); stored turns are not affected.
    """

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.ready = asyncio.Event()

    def _channel(self, uid: str) -> str:
        return self.state.key("live", uid)

    async def publish(self, uid: str, kind: str, data: Any) -> None:
        """Send one event of ``uid`` to every worker."""
        payload = json.dumps({"uid": uid, "kind": kind, "data": data}, separators=(",", ":"))
        sealed = crypto.installed().encrypt_text(payload, "redis.live")
        try:
            await self.state.client.publish(self._channel(uid), sealed)
            self.state.recovered("publishing a live event")
        except RedisError as exc:
            self.state.failed("publishing a live event", exc)

    async def run(self, listener: LiveListener) -> None:
        """Deliver events to ``listener`` until cancelled."""
        pattern = self._channel("*")
        while True:
            pubsub = self.state.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                self.ready.set()
                self.state.recovered("listening for live events")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    try:
                        raw = message["data"]
                        text = crypto.installed().decrypt_text(
                            raw.decode() if isinstance(raw, bytes) else raw, "redis.live"
                        )
                        event = json.loads(text)
                        result = listener(event["uid"], event["kind"], event["data"])
                        if result is not None:
                            await result
                    except Exception as exc:  # one bad event must not stop the fan-out
                        log.warning("dropped a live event from Redis (%s)", type(exc).__name__)
            except asyncio.CancelledError:
                raise
            except RedisError as exc:
                self.ready.clear()
                self.state.failed("listening for live events", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
