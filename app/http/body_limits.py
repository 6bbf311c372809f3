"""How large a request body may be: the limit of a mounted app (``/mcp``), and sizes put for people."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
    from litestar.types.asgi_types import HTTPRequestEvent, HTTPResponseBodyEvent, HTTPResponseStartEvent

__all__ = ["describe_size", "limit_body"]


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
