"""``/v2/messages``: the OMI app's chat, answered by the user's Letta agent.

The app reads a bare list of messages, and a reply as a stream of lines it splits on blank lines:
``data: <text>`` (a piece of the answer), ``think: <text>`` (what the agent is doing), and last
``done: <base64 JSON message>``. Newlines inside a piece travel as ``__CRLF__``, every piece stays
under the 1024 characters the app reads as one, and nothing else is ever written: the app shows an
error for any other line. A reply that cannot be had (no Letta, an unreachable model) is still a
readable answer followed by ``done:``, never a silent or hanging stream.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import Parameter
from litestar.response import Stream

from app.service.services import Services
from core.conversation import iso
from memory.letta.letta_chat import ChatBusyError, ChatLine, ChatUnavailableError

__all__ = ["AppChatController", "app_message", "frames"]

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
MAX_PIECE_CHARS = 1000  # the app glues a piece of 1024 characters or more to the next one
MAX_THINK_CHARS = 300
GREETING = (
    "Hi! I'm your memory. I know the conversations your OMI heard: ask me who said what, when, or what was decided."
)
NO_LETTA = "Chat needs your Letta agent, and this server has no Letta server set up (LETTA_DELIVERY=false)."
THINKING = {"search_memory": "Searching your memories", "get_conversation": "Reading a conversation"}


def app_message(line: ChatLine) -> dict[str, Any]:
    """A chat message in the app's ``ServerMessage`` shape."""
    return {
        "id": line.id,
        "created_at": iso(line.created_at),
        "text": line.text,
        "sender": line.sender,
        "app_id": None,
        "plugin_id": None,
        "from_integration": False,
        "type": "text",
        "memories_id": [],
        "memories": [],
        "files_id": [],
        "files": [],
        "chat_session_id": None,
        "rating": None,
        "chart_data": None,
        "ask_for_nps": False,
    }


def _greeting(uid: str, at: float) -> ChatLine:
    key = hashlib.sha256(f"{uid}\n{at}".encode()).hexdigest()[:16]
    return ChatLine(id=f"greeting-{key}", created_at=at, text=GREETING, sender="ai")


def frames(prefix: str, text: str) -> list[bytes]:
    """``text`` as app stream events of one ``prefix`` (``data`` or ``think``), each under the size limit."""
    out: list[bytes] = []
    piece = ""
    for char in text:
        escaped = "__CRLF__" if char == "\n" else char
        if len(prefix) + 2 + len(piece) + len(escaped) > MAX_PIECE_CHARS:
            out.append(f"{prefix}: {piece}\n\n".encode())
            piece = ""
        piece += escaped
    if piece:
        out.append(f"{prefix}: {piece}\n\n".encode())
    return out


class ChatText(msgspec.Struct, kw_only=True):
    """A message from the app."""

    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
    file_ids: list[str] | None = None


class AppChatController(Controller):
    """The app's chat with the user's agent."""

    path = "/v2/messages"
    tags = ["chat"]

    @get("/", summary="The chat with your agent (the app's message list)")
    async def list_messages(
        self,
        services: Services,
        uid: str,
        app_id: Annotated[str | None, Parameter(description="Ignored: the agent answers every chat.")] = None,
        plugin_id: Annotated[str | None, Parameter(description="Ignored.")] = None,
        dropdown_selected: Annotated[bool | None, Parameter(description="Ignored.")] = None,
    ) -> list[dict[str, Any]]:
        """The messages since the chat was last cleared, oldest first; a greeting when there are none.

        The list is empty when the agent cannot be reached (the app then shows what it has).
        """
        cleared = (await services.storage.settings.get(uid)).chat_cleared_at
        chat = services.outbound.chat
        if chat is None:
            return [app_message(_greeting(uid, cleared or time.time()))]
        try:
            lines = await chat.history(uid, since=cleared)
        except ChatUnavailableError as exc:
            log.warning("could not read a chat history: %s", exc.detail)
            return []
        return [app_message(line) for line in lines or [_greeting(uid, cleared or time.time())]]

    @delete("/", summary="Clear the chat view", status_code=200)
    async def clear_messages(
        self,
        services: Services,
        uid: str,
        app_id: Annotated[str | None, Parameter(description="Ignored.")] = None,
    ) -> dict[str, Any]:
        """Hide the messages so far from the app (the agent keeps its memory of them); a new greeting."""
        now = time.time()
        await services.storage.settings.update(uid, chat_cleared_at=now)
        return app_message(_greeting(uid, now))

    @post("/", summary="Ask your agent; the answer streams in the app's format", status_code=200)
    async def send_message(
        self,
        services: Services,
        uid: str,
        data: ChatText,
        app_id: Annotated[str | None, Parameter(description="Ignored.")] = None,
        plugin_id: Annotated[str | None, Parameter(description="Ignored.")] = None,
    ) -> Stream:
        """Stream the agent's answer: ``think:`` lines while it searches, ``data:`` pieces, then ``done:``."""
        return Stream(
            _reply(services, uid, data.text),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _reply(services: Services, uid: str, text: str) -> AsyncIterator[bytes]:
    """The app's stream of one answer (see the module docstring)."""
    answer: list[str] = []
    message_id: str | None = None
    async for kind, piece in _answer(services, uid, text):
        if kind == "id":
            message_id = message_id or piece
            continue
        if kind == "data":
            answer.append(piece)
        for frame in frames(kind, piece):
            yield frame
    if not "".join(answer).strip():
        answer.append("(The agent gave no answer.)")
        for frame in frames("data", answer[-1]):
            yield frame
    line = ChatLine(id=message_id or str(uuid.uuid4()), created_at=time.time(), text="".join(answer), sender="ai")
    yield b"done: " + base64.b64encode(json.dumps(app_message(line)).encode()) + b"\n\n"


async def _answer(services: Services, uid: str, text: str) -> AsyncIterator[tuple[str, str]]:
    """``(kind, text)``: ``data`` pieces of the answer, ``think`` steps, and the answer's ``id`` in Letta."""
    chat = services.outbound.chat
    if not text.strip():
        yield "data", "Ask me something about your conversations."
        return
    if chat is None:
        yield "data", NO_LETTA
        return
    try:
        events = await chat.open(uid, text)
    except (ChatUnavailableError, ChatBusyError) as exc:
        yield "data", f"I can't answer right now: {exc.detail}."
        return
    async with contextlib.aclosing(events):  # a client that leaves frees the agent at once
        async for event in events:
            if event.event == "assistant":
                if event.data.get("id"):
                    yield "id", str(event.data["id"])
                yield "data", str(event.data.get("text", ""))
            elif event.event == "reasoning":
                yield "think", str(event.data.get("text", ""))[:MAX_THINK_CHARS]
            elif event.event == "tool_call":
                name = str(event.data.get("name", ""))
                yield "think", THINKING.get(name, f"Using {name}")
            elif event.event == "error":
                yield "data", f"I can't answer right now: {event.data.get('detail')}."
