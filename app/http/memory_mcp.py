"""The memory as an MCP server (streamable HTTP at ``/mcp``), for agents and other MCP clients.

Four tools, each answering in plain text written for a model to read: names rather than speaker
labels, times with their zone, a line per turn. Every call is scoped to the user of the bearer
token on the HTTP request (an API token or ``<ADMIN_KEY><uid>``); a request without a valid token
gets 401 before MCP sees it. Each tool call goes into the audit log (``mcp:<tool>``, never its
arguments but a conversation id). The server is stateless and answers JSON, so any number of
service processes can serve it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings

from app.http.http_audit import client_of
from app.service.auth import AuthError
from core.errors import NotFoundError
from core.segments import speaker_of
from memory.letta.passage_groups import summary_line
from memory.store.conversation_query import ConversationQuery

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from app.service.services import Services
    from core.conversation import Conversation
    from memory.search.vector_index import IndexHit

__all__ = ["MemoryMcp"]

INSTRUCTIONS = (
    "The memory of everything the user (`me`) heard and said, transcribed from their OMI wearable and "
    "grouped into conversations. Search it before answering questions about past conversations, and "
    "quote who said what and when."
)
MAX_LIMIT = 50
TOOL_ACTIONS = {
    "search_memory": "search",
    "who_said": "search",
    "get_conversation": "read",
    "list_conversations": "list",
}
"""The audit action of each tool."""


@dataclass
class _ToolCall:
    """One tool call: its caller and, once it ended, its outcome as an HTTP status (for the audit log)."""

    uid: str
    status: int = 200


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _who(hit: IndexHit) -> str:
    """Who a hit is by: the speaker of a turn; a conversation's summary or a fact about the user has none."""
    if hit.speaker:
        return hit.speaker
    return "fact about the user" if hit.turn_id.startswith("fact:") else "summary of the conversation"


def _epoch(text: str | None, name: str) -> float | None:
    """An ISO date or date-time (UTC unless it says otherwise) as epoch seconds."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be an ISO date such as 2025-10-28 or 2025-10-28T10:00") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _transcript(conversation: Conversation) -> str:
    lines = [f"Conversation {conversation.id} {summary_line(conversation)[2:]}"]
    lines += [
        f"[{_when(conversation.started_at + s.start)}] {speaker_of(s)}: {s.text.strip()}"
        for s in conversation.segments
        if s.text.strip()
    ]
    return "\n".join(lines)


class MemoryMcp:
    """The MCP server over the running service's memory, and the ASGI app that serves it."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services
        self.server = MCPServer("omi-letta memory", instructions=INSTRUCTIONS)
        self._register()
        # Bearer tokens guard every request, and the service may sit behind any host name.
        self._app = self.server.streamable_http_app(
            streamable_http_path="/",
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    def session_manager(self) -> Any:
        """Run this (``async with``) for as long as the app serves."""
        return self.server.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: 401 without a valid token, else MCP with the caller's uid on the request."""
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                uid = await self._authenticate(headers.get("authorization"))
            except AuthError as exc:
                body = json.dumps({"status_code": 401, "detail": str(exc)}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            scope = {**scope, "state": {**scope.get("state", {}), "omi_uid": uid}}
        app: ASGIApp = self._app
        await app(scope, receive, send)

    async def _authenticate(self, authorization: str | None) -> str:
        from app.service.auth import authenticate

        return await authenticate(authorization, self._services())

    @contextmanager
    def _call(self, ctx: Context, tool: str, *, conversation_id: str | None = None) -> Iterator[_ToolCall]:
        """A tool call of the caller: counts it (``mcp_calls_<tool>_total``) and audits it when it ends.

        Its status is 200, 400 for a bad argument (``ValueError``), 500 for another error, or what
        the tool set (404: no such conversation).
        """
        services = self._services()
        services.metrics.inc(f"mcp_calls_{tool}_total")
        call = _ToolCall(self._caller(ctx))
        try:
            yield call
        except ValueError:
            call.status = 400
            raise
        except Exception:
            call.status = 500
            raise
        finally:
            if services.storage.audit is not None:
                request = ctx.request_context.request
                services.storage.audit.record(
                    uid=call.uid,
                    action=TOOL_ACTIONS[tool],
                    route=f"mcp:{tool}",
                    client=client_of(getattr(request, "scope", {})),
                    status=call.status,
                    conversation_id=conversation_id,
                )

    @staticmethod
    def _caller(ctx: Context) -> str:
        request = ctx.request_context.request
        uid = getattr(getattr(request, "state", None), "omi_uid", None)
        if not uid:
            raise PermissionError("no authenticated user on this request")
        return str(uid)

    def _register(self) -> None:
        mcp = self.server
        services = self._services

        @mcp.tool()
        async def search_memory(
            query: str,
            ctx: Context,
            speaker: str | None = None,
            since: str | None = None,
            until: str | None = None,
            limit: int = 10,
        ) -> str:
            """Search the user's remembered conversations by words and meaning.

            Args:
                query: what to look for, e.g. "where does Diane live".
                speaker: only turns said by this person (a name, or "me" for the user).
                since: only turns at or after this ISO date or date-time (UTC unless given).
                until: only turns at or before this ISO date or date-time.
                limit: how many turns to return, 1 to 50.
            """
            memory = services().outbound.search
            if memory is None:
                return "Memory search is not configured on this service."
            with self._call(ctx, "search_memory") as call:
                hits = await memory.search(
                    call.uid,
                    query,
                    limit=max(1, min(limit, MAX_LIMIT)),
                    speaker=speaker,
                    since=_epoch(since, "since"),
                    until=_epoch(until, "until"),
                )
            if not hits:
                return f"Nothing in memory matches {query!r}."
            return "\n".join(
                f"[{_when(h.start)}] {_who(h)}: {h.text.strip()} (conversation {h.conversation_id})" for h in hits
            )

        @mcp.tool()
        async def get_conversation(id: str, ctx: Context) -> str:
            """One conversation in full: when, who, and every turn with its speaker and time.

            Args:
                id: the conversation id, as other tools print it.
            """
            with self._call(ctx, "get_conversation", conversation_id=id) as call:
                try:
                    conversation = await services().storage.store.get(call.uid, id)
                except NotFoundError:
                    call.status = 404
                    return f"There is no conversation {id}."
            return _transcript(conversation)

        @mcp.tool()
        async def list_conversations(
            ctx: Context, since: str | None = None, until: str | None = None, limit: int = 20
        ) -> str:
            """The user's conversations, newest first: when, how long, with whom, what about, and their ids.

            Args:
                since: only conversations ending at or after this ISO date or date-time.
                until: only conversations starting at or before this ISO date or date-time.
                limit: how many to return, 1 to 50.
            """
            with self._call(ctx, "list_conversations") as call:
                start, end = _epoch(since, "since"), _epoch(until, "until")
                page, _ = await services().storage.store.page(
                    call.uid, limit=200, offset=0, query=ConversationQuery(until=end), count=False
                )
            found = [
                c
                for c in page
                if c.segments and (start is None or c.finished_at >= start) and (end is None or c.started_at <= end)
            ][: max(1, min(limit, MAX_LIMIT))]
            if not found:
                return "No conversations in that time."
            return "\n".join(f"{summary_line(c)[2:]}" for c in found)

        @mcp.tool()
        async def who_said(text: str, ctx: Context) -> str:
            """Who said something, and when: the turns whose words best match ``text``.

            Args:
                text: the words, or part of them, e.g. "I'm in New Jersey now".
            """
            memory = services().outbound.search
            if memory is None:
                return "Memory search is not configured on this service."
            with self._call(ctx, "who_said") as call:
                found = await memory.lexical.query(call.uid, text, limit=10)
            hits = [h for h in found if h.speaker][:3]  # turns; summaries and facts have no speaker
            if not hits:
                return f"No one in memory said anything like {text!r}."
            return "\n".join(
                f"{h.speaker} said it on {_when(h.start)}: {h.text.strip()!r} (conversation {h.conversation_id})"
                for h in hits
            )
