"""Limits on clients: how often one user may open a device stream, and how large a request body may be.

:class:`ConnectLimiter` is the seam for the per-user connect limit of ``/v4/listen``, the
OMI backend's Redis lock ``users:{uid}:listen_rate_limit`` (``SET NX``, 7 s). The in-process
:class:`LocalConnectLimiter` serves one process; a shared store can take its place behind the
same one-method contract.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
    from litestar.types.asgi_types import HTTPRequestEvent, HTTPResponseBodyEvent, HTTPResponseStartEvent

__all__ = ["RATE_LIMITED", "ConnectLimiter", "LocalConnectLimiter", "describe_size", "limit_body"]

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


def describe_size(size: int) -> str:
    """A byte count for people: ``16 MiB``, ``512 KiB`` or ``1000 bytes``."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def limit_body(app: ASGIApp, max_bytes: int) -> ASGIApp:
    """Wrap an ASGI app that reads request bodies on its own (a mounted app) in a body size limit.

    A larger body is answered with 413 and a JSON ``detail`` before ``app`` sees the request;
    a smaller one is handed on whole. Later ``receive`` calls (disconnects) pass through.
    """

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), b"")
        body = b""
        too_large = declared.isdigit() and int(declared) > max_bytes
        while not too_large:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            too_large = len(body) > max_bytes
            if not message.get("more_body", False):
                break
        if too_large:
            detail = f"the request body is larger than the {describe_size(max_bytes)} this route accepts"
            content = json.dumps({"status_code": 413, "detail": detail}).encode()
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())],
            }
            end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": content, "more_body": False}
            await send(start)
            await send(end)
            return
        delivered = False

        async def replay() -> ReceiveMessage:
            nonlocal delivered
            if not delivered:
                delivered = True
                whole: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
                return whole
            return await receive()

        await app(scope, replay, send)

    return limited
