"""``POST /v1/chat``: ask your agent about your past conversations; the reply streams as server-sent events."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from app.service.services import Services
from memory.letta.letta_chat import ChatEvent, ChatUnavailableError

__all__ = ["ChatController", "ChatRequest"]

MAX_MESSAGE_CHARS = 4000


class ChatRequest(msgspec.Struct):
    """A message to the caller's agent."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS, examples=["Where is Diane from?"])]


async def _sse(events: AsyncGenerator[ChatEvent, None]) -> AsyncIterator[ServerSentEventMessage]:
    async with contextlib.aclosing(events):  # a client that leaves frees the agent at once
        async for event in events:
            yield ServerSentEventMessage(event=event.event, data=json.dumps(event.data))


class ChatController(Controller):
    """Chat with the caller's Letta agent, which searches the memory with its tools."""

    path = "/v1/chat"
    tags = ["chat"]

    @post(
        "/",
        summary="Send a message to your agent; the reply streams as server-sent events",
        status_code=200,
        responses=None,
    )
    async def chat(self, services: Services, uid: str, data: ChatRequest) -> ServerSentEvent:
        """Stream the agent's reply to ``message``.

        Events (``event:`` name, ``data:`` JSON): ``reasoning`` ``{text}``, ``tool_call`` ``{name,
        arguments}``, ``tool_return`` ``{name, status, text}``, ``assistant`` ``{text}`` (a chunk of the
        answer), then ``done`` ``{stop_reason}``, or ``error`` ``{detail}``. Messages to one agent
        wait for each other (409 if the wait is too long); 503 when Letta or the model is unreachable.
        """
        if not data.message.strip():
            raise ValidationException(detail="message must not be blank")
        if services.outbound.chat is None:
            raise ServiceUnavailableException(detail="chat needs a Letta server: set LETTA_DELIVERY=true")
        try:
            events = await services.outbound.chat.open(uid, data.message)
        except ChatUnavailableError as exc:
            raise ServiceUnavailableException(detail=exc.detail) from exc
        return ServerSentEvent(_sse(events), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
