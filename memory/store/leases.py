"""Who owns a user's in-progress conversation: the seam that lets several workers share users.

A worker holds a user's lease while a device of that user streams to it; the conversation
sweeper closes a user's conversation only while it can hold the lease. In one process nobody
else can own anything, so :class:`LocalLeases` grants everything; with ``REDIS_URL`` the leases
are Redis keys with a TTL (:class:`memory.redis_state.RedisLeases`), like the OMI backend's
in-progress key.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Leases", "LocalLeases"]


class Leases(Protocol):
    """Per-user ownership with a time to live, renewed by its holder."""

    shared: bool
    """True when other processes hold leases too (cached conversation state may then be stale)."""

    async def acquire(self, uid: str, *, wait_s: float) -> bool:
        """Take ``uid``'s lease, waiting up to ``wait_s`` for its holder to let go.

        Returns False when another worker still held it after ``wait_s``; the lease is then taken
        over anyway (a device that moved is the one that counts), and the old holder's
        :meth:`renew` fails.
        """
        ...

    async def try_hold(self, uid: str) -> bool:
        """Take ``uid``'s lease only if nobody holds it (or we do); whether we hold it now."""
        ...

    async def renew(self, uid: str) -> bool:
        """Extend our lease; False if another worker has taken it."""
        ...

    async def release(self, uid: str) -> None:
        """Let go of our lease (nothing happens if another worker holds it)."""
        ...


class LocalLeases:
    """One process: every lease is ours."""

    shared = False

    async def acquire(self, uid: str, *, wait_s: float) -> bool:
        return True

    async def try_hold(self, uid: str) -> bool:
        return True

    async def renew(self, uid: str) -> bool:
        return True

    async def release(self, uid: str) -> None:
        return None
