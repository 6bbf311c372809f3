"""Chat with a user's agent about their past conversations, streamed from Letta's messages API.

Letta leaves concurrent messages to one agent undefined, so a message waits here until the
agent's previous one is answered (:meth:`~memory.letta.agents.AgentRegistry.message_lock`, shared with
the sink's close notifications). The reply arrives as :class:`ChatEvent` items: what the agent
reasons, which tools it calls and what they return, and its answer in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from letta_client import APIConnectionError, APIError, APIStatusError, APITimeoutError, NotFoundError

from core.errors import ConflictError, DeliveryError

if TYPE_CHECKING:
    from memory.letta.agents import AgentRegistry

__all__ = ["NOTE_PREFIX", "AgentChat", "ChatBusyError", "ChatEvent", "ChatLine", "ChatUnavailableError"]

NOTE_PREFIX = "[automated note from omi-letta]"
"""How the service's own messages to an agent begin (a conversation ended, ...); they are not the user's."""
HISTORY_PAGE = 100

log = logging.getLogger(__name__)


class ChatBusyError(ConflictError):
    """The agent is still answering an earlier message after the wait."""


class ChatUnavailableError(DeliveryError):
    """Letta or the agent's model cannot answer now; the message says which and is safe to show."""


@dataclass(frozen=True)
class ChatEvent:
    """One server-sent event of a reply: ``reasoning``, ``tool_call``, ``tool_return``, ``assistant``,
    ``done`` or ``error``."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatLine:
    """One message of the chat between a user and their agent: ``sender`` is ``human`` or ``ai``."""

    id: str
    created_at: float  # epoch seconds
    text: str
    sender: str


def _content_text(content: Any) -> str:
    text = content if isinstance(content, str) else "".join(getattr(c, "text", "") or "" for c in content or [])
    if text.startswith("{"):  # older agents wrap what the user said: {"type": "user_message", "message": ...}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            wrapped = json.loads(text)
            if isinstance(wrapped, dict) and isinstance(wrapped.get("message"), str):
                return str(wrapped["message"])
    return text


def chat_lines(messages: list[Any], since: float | None = None) -> list[ChatLine]:
    """The user's and the agent's messages of a Letta message history (oldest first), from ``since`` on.

    The service's own notes, and the agent's replies to them, are left out: they are not the chat.
    """
    notes: set[str] = set()
    lines: list[ChatLine] = []
    noted = False  # the last user-side message was a note (for messages without a run id)
    for message in messages:
        kind = getattr(message, "message_type", None)
        if kind not in ("user_message", "assistant_message"):
            continue
        text = _content_text(message.content)
        run = getattr(message, "run_id", None)
        if kind == "user_message":
            noted = text.startswith(NOTE_PREFIX)
            if noted:
                if run:
                    notes.add(run)
                continue
        elif (run in notes) if run else noted:
            continue
        when = message.date.timestamp()
        if not text.strip() or (since is not None and when <= since):
            continue
        lines.append(
            ChatLine(id=message.id, created_at=when, text=text, sender="human" if kind == "user_message" else "ai")
        )
    return lines


def _unavailable(exc: APIError) -> ChatUnavailableError:
    if isinstance(exc, APITimeoutError):
        return ChatUnavailableError("the Letta server did not answer in time")
    if isinstance(exc, APIConnectionError):
        return ChatUnavailableError("the Letta server is unreachable")
    if isinstance(exc, APIStatusError):
        return ChatUnavailableError(f"the Letta server answered {exc.status_code}: {_detail(exc)}")
    return ChatUnavailableError(f"the Letta server failed: {type(exc).__name__}")


def _detail(exc: APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("detail") or body.get("message") or exc.message)[:300]


def to_event(item: Any) -> ChatEvent | None:
    """A Letta streaming item as a chat event; None for what a person need not see (pings, usage)."""
    kind = getattr(item, "message_type", None)
    if kind == "assistant_message":
        content = item.content
        text = content if isinstance(content, str) else "".join(getattr(c, "text", "") or "" for c in content)
        return ChatEvent("assistant", {"text": text, "id": getattr(item, "id", None)}) if text else None
    if kind == "reasoning_message":
        return ChatEvent("reasoning", {"text": item.reasoning or ""}) if item.reasoning else None
    if kind in ("tool_call_message", "approval_request_message"):
        call = item.tool_call
        if call is None or not (call.name or call.arguments):
            return None
        return ChatEvent("tool_call", {"name": call.name or "", "arguments": call.arguments or ""})
    if kind == "tool_return_message":
        return ChatEvent(
            "tool_return", {"name": getattr(item, "name", None) or "", "status": item.status, "text": item.tool_return}
        )
    if kind == "stop_reason":
        return ChatEvent("done", {"stop_reason": item.stop_reason})
    if kind == "error_message":
        return ChatEvent("error", {"detail": getattr(item, "message", None) or "the agent failed"})
    return None


class AgentChat:
    """Sends a user's message to their agent and streams the reply."""

    def __init__(self, agents: AgentRegistry, *, timeout_s: float = 300.0) -> None:
        self.agents = agents
        self.timeout_s = timeout_s
        self.model_url = "" if agents.spec.model else agents.spec.llm.base_url  # named in model errors

    async def open(self, uid: str, message: str) -> AsyncGenerator[ChatEvent, None]:
        """Start a reply: wait for the agent to be free, send ``message``, and return the reply's events.

        The events must be read to the end (or the iterator closed): the agent stays reserved until then.

        Raises:
            ChatBusyError: the agent was still busy after ``timeout_s``.
            ChatUnavailableError: the agent or the Letta server cannot be reached.
        """
        try:
            agent = await self.agents.agent_for(uid)
        except DeliveryError as exc:
            raise ChatUnavailableError(exc.detail) from exc
        lock = self.agents.message_lock(agent)
        try:
            await asyncio.wait_for(lock.acquire(), self.timeout_s)
        except TimeoutError:
            raise ChatBusyError("the agent is still answering an earlier message; try again shortly") from None
        try:
            stream = await self.agents.client.agents.messages.create(
                agent,
                messages=[{"role": "user", "content": message}],
                streaming=True,
                stream_tokens=True,
                include_pings=True,
                timeout=self.timeout_s,
            )
        except APIError as exc:
            lock.release()
            if isinstance(exc, NotFoundError):  # the agent is gone (deleted, merged): find it again next time
                self.agents.forget(uid)
            raise _unavailable(exc) from exc
        except BaseException:
            lock.release()
            raise
        return self._events(stream, lock)

    async def history(self, uid: str, *, since: float | None = None, limit: int = HISTORY_PAGE) -> list[ChatLine]:
        """The last ``limit`` messages of the user's chat with their agent, oldest first, from ``since`` on.

        Raises:
            ChatUnavailableError: the agent or the Letta server cannot be reached.
        """
        try:
            agent = await self.agents.agent_for(uid)
            page = await self.agents.client.agents.messages.list(agent, limit=4 * limit, order="desc")
        except DeliveryError as exc:
            raise ChatUnavailableError(exc.detail) from exc
        except APIError as exc:
            raise _unavailable(exc) from exc
        return chat_lines(list(reversed(page.items)), since)[-limit:]

    async def _events(self, stream: Any, lock: asyncio.Lock) -> AsyncGenerator[ChatEvent, None]:
        done = False
        try:
            async for item in stream:
                event = to_event(item)
                if event is None:
                    continue
                done = done or event.event == "done"
                yield event
            if not done:
                yield ChatEvent("done", {"stop_reason": "end_turn"})
        except APIStatusError as exc:
            detail = str(_unavailable(exc))
            if exc.status_code == 200:  # a failed run, reported inside the stream: mostly an unreachable model
                detail = f"the agent's language model failed: {_detail(exc)}"
                if self.model_url:
                    detail += f" (LLM_BASE_URL is {self.model_url})"
            yield ChatEvent("error", {"detail": detail})
        except APIError as exc:
            yield ChatEvent("error", {"detail": str(_unavailable(exc))})
        except json.JSONDecodeError:
            yield ChatEvent("error", {"detail": "the Letta server sent a malformed stream"})
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
            lock.release()
