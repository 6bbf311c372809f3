"""The OMI app's memories (``/v3/memories``): the facts about the user, which the agent's block holds too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter

from app.service.services import Services
from memory.store.facts import Fact

__all__ = ["MemoriesController", "app_memory"]

OK = {"status": "ok"}
MAX_FACT_CHARS = 500


class NewMemory(msgspec.Struct, kw_only=True):
    """A fact the user writes in the app."""

    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FACT_CHARS)]
    category: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    visibility: Annotated[str, msgspec.Meta(max_length=16)] | None = None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def app_memory(fact: Fact) -> dict[str, Any]:
    """A fact in the shape of the app's ``Memory.fromJson``."""
    return {
        "id": fact.id,
        "uid": fact.uid,
        "content": fact.content,
        "category": fact.category,
        "created_at": _iso(fact.created_at),
        "updated_at": _iso(fact.updated_at),
        "conversation_id": fact.conversation_id,
        "reviewed": fact.manual,
        "user_review": None,
        "manually_added": fact.manual,
        "edited": fact.edited,
        "deleted": False,
        "visibility": "private",
        "is_locked": False,
    }


class MemoriesController(Controller):
    """Facts about the caller: listed, added, edited and forgotten; each change reaches their agent."""

    path = "/v3/memories"
    tags = ["memories"]

    @get("/", summary="The facts about you, newest first")
    async def list_memories(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=5000)] = 100,
        offset: Annotated[int, Parameter(ge=0, le=1_000_000)] = 0,
    ) -> list[dict[str, Any]]:
        """A bare list, as the app reads it."""
        return [app_memory(f) for f in await services.storage.facts.list(uid, limit=limit, offset=offset)]

    @post("/", summary="Add a fact about you", status_code=200)
    async def add_memory(self, services: Services, uid: str, data: NewMemory) -> dict[str, Any]:
        """The new fact (or the same words already kept); your agent's facts block gets it."""
        try:
            fact = await services.storage.facts.add(uid, data.content, data.category or "other")
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from exc
        return app_memory(fact)

    @patch("/{memory_id:str}", summary="Change a fact's words")
    async def edit_memory(
        self,
        services: Services,
        uid: str,
        memory_id: str,
        value: Annotated[str, Parameter(min_length=1, max_length=MAX_FACT_CHARS, description="The new words.")],
    ) -> dict[str, str]:
        """``?value=``, as the app sends it; 404 if you have no such fact."""
        try:
            fact = await services.storage.facts.update(uid, memory_id, value)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from exc
        if fact is None:
            raise NotFoundException(detail=f"memory {memory_id} not found")
        return OK

    @delete("/{memory_id:str}", summary="Forget a fact", status_code=200)
    async def delete_memory(self, services: Services, uid: str, memory_id: str) -> dict[str, str]:
        """Gone from the list and from your agent's facts block; 404 if you have no such fact."""
        if not await services.storage.facts.delete(uid, memory_id):
            raise NotFoundException(detail=f"memory {memory_id} not found")
        return OK
