"""How often one user may open a device stream: the per-user connect limit of ``/v4/listen``.

:class:`ConnectLimiter` is the seam for the OMI backend's Redis lock
``users:{uid}:listen_rate_limit`` (``SET NX``, 7 s). The in-process :class:`LocalConnectLimiter`
serves one process; :class:`memory.redis_state.RedisConnectLimiter` serves several workers behind
the same one-method contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["RATE_LIMITED", "ConnectLimiter", "LocalConnectLimiter"]

RATE_LIMITED = "Rate limited, retry later"
"""The close reason (code 1008) of a connection refused by the connect limit, as the OMI backend words it."""


@runtime_checkable
class ConnectLimiter(Protocol):
    """Whether a user may open another stream now.

    ``acquire`` takes the user's slot for the limiter's interval and returns True, or returns
    False when the slot is taken. A refused attempt does not extend the interval (as ``SET NX``
    with an expiry), so a client that retries now and then gets in once the interval has passed.
    """

    async def acquire(self, uid: str) -> bool:
        """Take ``uid``'s connect slot; False if it was taken less than the interval ago."""
        ...


class LocalConnectLimiter:
    """:class:`ConnectLimiter` in this process: the time each user last connected, pruned as it expires.

    An interval of 0 lets every connection through.
    """

    __slots__ = ("_clock", "_last", "_next_prune", "interval_s")

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        """Users whose slot is held (or expired and not yet pruned)."""
        return len(self._last)

    async def acquire(self, uid: str) -> bool:
        """Take ``uid``'s connect slot; False if it was taken less than ``interval_s`` ago."""
        if self.interval_s <= 0:
            return True
        now = self._clock()
        if now >= self._next_prune:
            # Once per interval, forget every slot that has expired: the map holds only recent users.
            self._last = {u: t for u, t in self._last.items() if now - t < self.interval_s}
            self._next_prune = now + self.interval_s
        last = self._last.get(uid)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[uid] = now
        return True
