"""The caller's conversations, in the OMI app's shapes: listed, read, finished, searched and deleted.

``GET /v1/conversations`` answers a bare list, as the app decodes it; our own clients (the web
page, the CLI, MCP) read ``GET /v1/conversations/page``, the same filters with a total. Edits live
in :mod:`app.http.conversation_edits`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.params import Parameter

from app.http.deps import MAX_OFFSET
from app.http.memory_routes import MAX_SEARCH_QUERY_CHARS
from app.service.services import Services
from core.conversation import Conversation
from core.errors import NotFoundError
from memory.store.conversation_query import STATUSES, ConversationQuery

__all__ = ["MAX_LIST", "ConversationController", "SearchRequest", "parse_statuses"]

MAX_LIST = 10_000
"""Most conversations one list answers (the app's export asks for 10,000)."""
APP_STATUSES = ("processing", "completed")
"""What the app's home list shows when it names no statuses (the OMI backend's default)."""
MAX_SEARCH_HITS = 200
"""Turns a conversation search looks at; their conversations are the results."""
FINISH_WAIT_S = 5.0
"""How long finishing waits for a stream that just ended to store its last words."""


def parse_statuses(raw: str | None, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``statuses=a,b`` as a tuple; absent or empty means ``default``; 400 naming an unknown status."""
    wanted = tuple(s.strip() for s in (raw or "").split(",") if s.strip())
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown:
        raise ValidationException(detail=f"unknown status {unknown[0]!r}; statuses are {', '.join(STATUSES)}")
    return wanted or default


def _epoch(when: datetime | None) -> float | None:
    """A date of the app's (UTC unless it says otherwise) as epoch seconds."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


Statuses = Annotated[
    str | None,
    Parameter(
        description="Comma-separated statuses to list: in_progress, processing, completed, ... (empty: default)."
    ),
]
Since = Annotated[datetime | None, Parameter(description="Only conversations started at or after this time (ISO).")]
Until = Annotated[datetime | None, Parameter(description="Only conversations started at or before this time (ISO).")]


class SearchRequest(msgspec.Struct, kw_only=True):
    """The app's conversation search."""

    query: Annotated[str, msgspec.Meta(max_length=MAX_SEARCH_QUERY_CHARS, description="What was said; blank: all.")]
    page: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    per_page: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    include_discarded: bool = True
    start_date: datetime | None = None
    end_date: datetime | None = None


def _query(
    statuses: tuple[str, ...] | None,
    include_discarded: bool,
    starred: bool | None,
    start_date: datetime | None,
    end_date: datetime | None,
) -> ConversationQuery:
    return ConversationQuery(
        statuses=statuses,
        include_discarded=include_discarded,
        starred=starred,
        since=_epoch(start_date),
        until=_epoch(end_date),
    )


class ConversationController(Controller):
    """The caller's conversations, in the OMI ``Conversation`` shape."""

    path = "/v1/conversations"
    tags = ["conversations"]

    @get("/", summary="List conversations, newest first (the OMI app's bare list)")
    async def list_conversations(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIST)] = 100,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
        statuses: Statuses = None,
        include_discarded: bool = True,
        start_date: Since = None,
        end_date: Until = None,
        starred: bool | None = None,
        folder_id: Annotated[str | None, Parameter(description="Folders are not kept here: none matches.")] = None,
    ) -> list[dict[str, Any]]:
        """The caller's conversations that pass the filters, newest first, as a JSON array.

        Without ``statuses`` (or with it empty) the list holds ``processing`` and ``completed``
        ones, as the OMI backend's does; ``statuses=in_progress&limit=1`` is the one in progress.
        """
        if folder_id is not None:
            return []
        query = _query(parse_statuses(statuses, APP_STATUSES), include_discarded, starred, start_date, end_date)
        items, _ = await services.storage.store.page(uid, limit=limit, offset=offset, query=query, count=False)
        return [c.to_omi() for c in items]

    @get("/page", summary="A page of conversations with the total (for our own clients)")
    async def page_conversations(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIST)] = 25,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
        statuses: Statuses = None,
        include_discarded: bool = True,
        start_date: Since = None,
        end_date: Until = None,
        starred: bool | None = None,
    ) -> dict[str, Any]:
        """``{items, total, limit, offset}``: the filters of the list, and every status unless ``statuses`` says."""
        query = _query(parse_statuses(statuses, None), include_discarded, starred, start_date, end_date)
        items, total = await services.storage.store.page(uid, limit=limit, offset=offset, query=query)
        return {"items": [c.to_omi() for c in items], "total": total, "limit": limit, "offset": offset}

    @post("/", summary="Finish the conversation in progress now", status_code=200)
    async def finish_conversation(self, services: Services, uid: str) -> dict[str, Any]:
        """Close the caller's in-progress conversation, as the app's "process now" does.

        Answers ``{conversation, messages: []}``; 404 ``Conversation in progress not found`` when
        none is in progress. Any JSON body is accepted and ignored.
        """
        closed = await services.conversations.finish(uid, wait_s=FINISH_WAIT_S)
        if closed is None:
            raise NotFoundError("Conversation in progress not found")
        return {"conversation": closed.to_omi(), "messages": []}

    @post("/search", summary="Search conversations by what was said", status_code=200)
    async def search_conversations(self, services: Services, uid: str, data: SearchRequest) -> dict[str, Any]:
        """``{items, current_page, total_pages, per_page}``: conversations whose turns best match ``query``.

        A blank query pages through the conversations, newest first. 503 when memory search is off.
        """
        since, until = _epoch(data.start_date), _epoch(data.end_date)
        skip = (data.page - 1) * data.per_page
        if not data.query.strip():
            query = ConversationQuery(
                statuses=("completed",), include_discarded=data.include_discarded, since=since, until=until
            )
            items, total = await services.storage.store.page(uid, limit=data.per_page, offset=skip, query=query)
            found = items
            pages = math.ceil((total or 0) / data.per_page)
        else:
            memory = services.outbound.search
            if memory is None:
                raise ServiceUnavailableException(detail="memory search is not configured")
            hits = await memory.search(uid, data.query, limit=MAX_SEARCH_HITS, since=since, until=until)
            order = list(dict.fromkeys(h.conversation_id for h in hits))
            conversations = [c for c in [await _get(services, uid, cid) for cid in order] if c is not None]
            matching = [c for c in conversations if data.include_discarded or not c.discarded]
            found = matching[skip : skip + data.per_page]
            pages = math.ceil(len(matching) / data.per_page)
        return {
            "items": [c.to_omi() for c in found],
            "current_page": data.page,
            "total_pages": pages,
            "per_page": data.per_page,
        }

    @get("/{conversation_id:str}", summary="One conversation with its segments")
    async def get_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """The conversation, 404 if it is not the caller's."""
        return (await services.storage.store.get(uid, conversation_id)).to_omi()

    @post("/{conversation_id:str}/close", summary="Close an in-progress conversation now", status_code=200)
    async def close_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """Close it as the silence timeout would; a completed one is returned unchanged."""
        conversation = await services.storage.store.get(uid, conversation_id)
        if conversation.status == "in_progress":
            closed = await services.conversations.close(uid, conversation_id)
            if closed is None:
                raise NotFoundError(f"conversation {conversation_id} had no speech and was removed")
            conversation = closed
        return conversation.to_omi()

    @delete("/{conversation_id:str}", summary="Delete a conversation and its transcript")
    async def delete_conversation(self, services: Services, uid: str, conversation_id: str) -> None:
        """Delete it for good (204); the sinks forget it too."""
        await services.conversations.forget(uid, conversation_id)


async def _get(services: Services, uid: str, conversation_id: str) -> Conversation | None:
    try:
        return await services.storage.store.get(uid, conversation_id)
    except NotFoundError:
        return None  # deleted since it was indexed
