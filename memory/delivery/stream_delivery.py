"""Delivery shared by several workers: the outbox's work handed out through Redis Streams.

The database outbox stays the source of truth; Redis only says *which user* has records due.
For each sink there is a stream ``omi-letta:outbox:<sink>`` read by the consumer group
``deliver``, one consumer per worker:

- every worker's *dispatcher* looks for users with due records (:meth:`Outbox.heads`) and adds
  one entry per user, unless one is already waiting (a marker key, ``SET NX`` with an expiry);
- a consumer that reads an entry takes the user's delivery lock (``SET NX PX``, renewed while it
  works), delivers that user's due records in order as the one-process loop does, then
  acknowledges the entry; if another worker holds the lock, the entry is acknowledged and the
  dispatcher adds a fresh one while records remain;
- entries of a worker that died stay pending in the group; after ``claim_idle_s`` another worker
  claims them (``XAUTOCLAIM``), and the dead worker's lock has expired by then.

A record is marked done only after its sink accepted it, and sinks are idempotent, so a worker
killed between the two makes the next one deliver again without a duplicate: exactly once in
effect. If Redis is flushed, the group is made again and the dispatchers re-add every user with
due records: nothing is lost. While Redis is away, nothing is delivered and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from memory.delivery.deliverer import Deliverer, Sink

if TYPE_CHECKING:
    from core.metrics import Metrics
    from memory.redis_state import RedisState
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import Outbox

__all__ = ["StreamDeliverer"]

log = logging.getLogger(__name__)

GROUP = "deliver"
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class StreamDeliverer(Deliverer):
    """:class:`Deliverer` whose work comes from a Redis stream per sink, shared by every worker."""

    def __init__(
        self,
        store: ConversationStore,
        outbox: Outbox,
        sinks: list[Sink],
        *,
        metrics: Metrics,
        redis: RedisState,
        poll_s: float = 0.5,
        claim_idle_s: float = 30.0,
        lock_ttl_s: float = 30.0,
        batch: int = 16,
        per_user: int = 64,
    ) -> None:
        super().__init__(store, outbox, sinks, metrics=metrics, poll_s=poll_s, batch=batch, per_user=per_user)
        self.redis = redis
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self._unlock = redis.client.register_script(_UNLOCK)
        self._extend = redis.client.register_script(_EXTEND)
        self._slots = asyncio.Semaphore(batch)

    def start(self) -> None:
        """Start a dispatcher, a consumer and a claimer per sink."""
        for sink in self.sinks:
            self.metrics.inc(f"delivered_total_{sink.name}", 0.0)
            self.metrics.inc(f"delivery_failures_total_{sink.name}", 0.0)
            for role, loop in (("dispatch", self._dispatch), ("consume", self._consume), ("claim", self._claim)):
                self._tasks.append(asyncio.create_task(self._forever(sink, role, loop), name=f"{role}-{sink.name}"))
        self._tasks.append(asyncio.create_task(self._report_forever(), name="outbox-gauges"))

    def _stream(self, sink: Sink) -> str:
        return self.redis.key("outbox", sink.name)

    async def _forever(self, sink: Sink, role: str, loop: Callable[[Sink], Awaitable[None]]) -> None:
        while True:
            try:
                await loop(sink)
                self.redis.recovered(f"delivery ({role})")
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group is gone (Redis flushed or restarted empty)
                    await self._make_group(sink)
                    continue
                self.redis.failed(f"delivery ({role})", exc)
                await asyncio.sleep(1.0)
            except RedisError as exc:
                self.redis.failed(f"delivery ({role})", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("the %s %s loop failed; retrying", sink.name, role)
                await asyncio.sleep(1.0)

    async def _make_group(self, sink: Sink) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: another worker made it first
            await self.redis.client.xgroup_create(self._stream(sink), GROUP, id="0", mkstream=True)

    async def _dispatch(self, sink: Sink) -> None:
        """Add an entry for every user with due records and none waiting; then wait for news."""
        await self._make_group(sink)
        wake = self._wake[sink.name]
        while True:
            wake.clear()
            heads = await self.outbox.heads(sink.name, now=time.time(), limit=1000)
            for uid in dict.fromkeys(h.uid for h in heads):
                marker = self.redis.key("outbox", sink.name, "queued", uid)
                if await self.redis.client.set(marker, self.redis.worker, nx=True, px=self.claim_idle_ms):
                    await self.redis.client.xadd(self._stream(sink), {"uid": uid})
            await sink.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.poll_s)

    async def _consume(self, sink: Sink) -> None:
        """Read new entries for this worker and deliver each user's records."""
        await self._make_group(sink)
        stream = self._stream(sink)
        running: set[asyncio.Task[None]] = set()
        while True:
            await self._slots.acquire()
            self._slots.release()
            replies: Any = await self.redis.client.xreadgroup(
                GROUP, self.redis.worker, {stream: ">"}, count=self.batch, block=1000
            )
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._handle(sink, entry_id, fields))
                    running.add(task)
                    task.add_done_callback(running.discard)

    async def _claim(self, sink: Sink) -> None:
        """Take over entries another worker read but never acknowledged (it died)."""
        await self._make_group(sink)
        stream = self._stream(sink)
        while True:
            await asyncio.sleep(max(self.claim_idle_ms / 2000, 0.5))
            start = "0-0"
            while True:
                reply: Any = await self.redis.client.xautoclaim(
                    stream, GROUP, self.redis.worker, min_idle_time=self.claim_idle_ms, start_id=start, count=32
                )
                start, entries = reply[0], reply[1]
                for entry_id, fields in entries:
                    if fields is None:  # deleted from the stream meanwhile
                        continue
                    log.info("claimed a delivery entry of %s left by another worker", sink.name)
                    await self._slots.acquire()
                    await self._handle(sink, entry_id, fields)
                if start in (b"0-0", "0-0"):
                    break

    async def _handle(self, sink: Sink, entry_id: bytes | str, fields: dict[bytes, bytes]) -> None:
        """Deliver the entry's user under their delivery lock, then acknowledge the entry."""
        try:
            raw = fields.get(b"uid") or fields.get("uid")  # type: ignore[call-overload]
            uid = raw.decode() if isinstance(raw, bytes) else str(raw)
            await self.redis.client.delete(self.redis.key("outbox", sink.name, "queued", uid))
            lock = self.redis.key("outbox", sink.name, "delivering", uid)
            if await self.redis.client.set(lock, self.redis.worker, nx=True, px=self.lock_ttl_ms):
                try:
                    await self._deliver_user(sink, uid, lock)
                finally:
                    with contextlib.suppress(RedisError):
                        await self._unlock(keys=[lock], args=[self.redis.worker])
            await self.redis.client.xack(self._stream(sink), GROUP, entry_id)
            with contextlib.suppress(RedisError):
                await self.redis.client.xdel(self._stream(sink), entry_id)
        except asyncio.CancelledError:
            raise
        except RedisError as exc:  # left pending: claimed again later
            self.redis.failed("delivering", exc)
        except Exception:
            log.exception("delivery of an entry for %s failed; it will be claimed again", sink.name)
        finally:
            self._slots.release()

    async def _deliver_user(self, sink: Sink, uid: str, lock: str) -> None:
        """Deliver ``uid``'s due records in order, keeping the lock alive, until none is due."""
        while True:
            heads = await self.outbox.heads(sink.name, now=time.time(), limit=1, uid=uid)
            if not heads:
                return
            await self._deliver(sink, heads[0])
            if not await self._extend(keys=[lock], args=[self.redis.worker, self.lock_ttl_ms]):
                return  # our lock expired and another worker has the user now
            await self.report(sink)
