"""HTTP API: health, metrics, and the caller's conversations."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import Parameter
from litestar.response import Response

from app.auth import AuthError, resolve_uid
from app.services import Services
from memory.errors import NotFoundError

__all__ = ["ConversationController", "health", "metrics"]


def provide_services(request: Request[Any, Any, Any]) -> Services:
    """The services built at startup."""
    services: Services = request.app.state.services
    return services


def provide_uid(request: Request[Any, Any, Any], services: Services) -> str:
    """The caller's uid from ``Authorization: Bearer <ADMIN_KEY><uid>``; 401 otherwise."""
    try:
        return resolve_uid(request.headers.get("authorization"), services.settings.auth)
    except AuthError as exc:
        raise NotAuthorizedException(detail=str(exc)) from exc


@get("/health", tags=["service"], summary="Liveness and what is loaded")
async def health(services: Services) -> dict[str, Any]:
    """Whether the service is up, with its speech-to-text engine and database."""
    return {
        "status": "ok",
        "stt": services.transcriber.asr.name,
        "database": services.store.dialect,
        "streams_active": int(services.metrics.gauges.get("streams_active", 0)),
    }


@get("/metrics", tags=["service"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(services: Services) -> str:
    """Counters and latency quantiles in the Prometheus text format."""
    return services.metrics.render()


class ConversationController(Controller):
    """The caller's conversations, in the OMI ``Conversation`` shape."""

    path = "/v1/conversations"
    tags = ["conversations"]

    @get("/", summary="List conversations, newest first")
    async def list_conversations(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 25,
        offset: Annotated[int, Parameter(ge=0)] = 0,
    ) -> dict[str, Any]:
        """A page of the caller's conversations with their segments, and the total count."""
        items, total = await services.store.page(uid, limit=limit, offset=offset)
        return {"items": [c.to_omi() for c in items], "total": total, "limit": limit, "offset": offset}

    @get("/{conversation_id:str}", summary="One conversation with its segments")
    async def get_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """The conversation, 404 if it is not the caller's."""
        return (await services.store.get(uid, conversation_id)).to_omi()

    @post("/{conversation_id:str}/close", summary="Close an in-progress conversation now", status_code=200)
    async def close_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """Close it as the silence timeout would; a completed one is returned unchanged."""
        conversation = await services.store.get(uid, conversation_id)
        if conversation.status == "in_progress":
            closed = await services.conversations.close(uid, conversation_id)
            if closed is None:
                raise NotFoundError(f"conversation {conversation_id} had no speech and was removed")
            conversation = closed
        return conversation.to_omi()

    @delete("/{conversation_id:str}", summary="Delete a conversation and its transcript")
    async def delete_conversation(self, services: Services, uid: str, conversation_id: str) -> None:
        """Delete it for good."""
        await services.conversations.forget(uid, conversation_id)


def not_found(request: Request[Any, Any, Any], exc: NotFoundError) -> Response[dict[str, Any]]:
    """Map :class:`NotFoundError` to 404, the one place domain errors become HTTP."""
    return Response({"status_code": 404, "detail": exc.detail}, status_code=404)
