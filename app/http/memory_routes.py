"""Memory search over the caller's turns, and OpenAI-compatible embeddings with the service's own model."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.params import Parameter

from app.service.services import Services
from memory.search.hybrid import MemorySearch

if TYPE_CHECKING:
    pass


__all__ = ["EmbeddingsController", "MemoryController"]

log = logging.getLogger(__name__)


MAX_SEARCH_QUERY_CHARS = 1000
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDINGS_BODY_BYTES = 8 * 1024 * 1024  # 2048 texts of 4 KB


def _memory(services: Services) -> MemorySearch:
    if services.outbound.search is None:
        raise ServiceUnavailableException(detail="memory search is not configured")
    return services.outbound.search


class MemoryController(Controller):
    """Search the caller's remembered turns: words and meaning, fused."""

    path = "/v1/memory"
    tags = ["memory"]

    @get("/search", summary="Search the caller's turns")
    async def search(
        self,
        services: Services,
        uid: str,
        q: Annotated[str, Parameter(min_length=1, max_length=MAX_SEARCH_QUERY_CHARS, description="What to look for.")],
        limit: Annotated[int, Parameter(ge=1, le=100)] = 10,
        speaker: Annotated[str | None, Parameter(description="Only turns of this speaker (any case).")] = None,
        conversation_id: Annotated[str | None, Parameter(description="Only turns of this conversation.")] = None,
        since: Annotated[
            float | None, Parameter(description="Only turns ending at or after this epoch second.")
        ] = None,
        until: Annotated[
            float | None, Parameter(description="Only turns starting at or before this epoch second.")
        ] = None,
    ) -> dict[str, Any]:
        """The caller's best turns for ``q``, best first.

        Each hit is ``{turn_id, conversation_id, text, speaker, is_user, start, end, score}``; times
        are epoch seconds and ``score`` is the fused reciprocal-rank score (higher is better).
        """
        if not q.strip():
            raise ValidationException(detail="q must not be blank")
        hits = await _memory(services).search(
            uid, q, limit=limit, speaker=speaker, conversation_id=conversation_id, since=since, until=until
        )
        return {"items": [msgspec.to_builtins(h) for h in hits], "query": q, "limit": limit}


class EmbeddingsRequest(msgspec.Struct):
    """An OpenAI-style embeddings request."""

    input: Annotated[str | list[str], msgspec.Meta(description="A text, or a list of texts.")]
    model: Annotated[str | None, msgspec.Meta(description="Ignored: the service's own model answers.")] = None
    encoding_format: Annotated[
        str | None, msgspec.Meta(description="`float` (default) or `base64` (little-endian float32, as OpenAI).")
    ] = None


class EmbeddingsController(Controller):
    """OpenAI-compatible embeddings with the service's own model, so a local Letta sends nothing out."""

    path = "/v1/embeddings"
    tags = ["memory"]

    @post(
        "/",
        summary="Embed texts (OpenAI-compatible)",
        status_code=200,
        request_max_body_size=MAX_EMBEDDINGS_BODY_BYTES,
    )
    async def embeddings(self, services: Services, uid: str, data: EmbeddingsRequest) -> dict[str, Any]:
        """``{"data": [{"object": "embedding", "embedding": [...], "index": i}], "model", "usage"}``."""
        texts = [data.input] if isinstance(data.input, str) else data.input
        if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValidationException(detail=f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts")
        if data.encoding_format not in (None, "float", "base64"):
            raise ValidationException(detail="encoding_format must be 'float' or 'base64'")
        embedder = await _memory(services).embedder()
        vectors = await asyncio.to_thread(embedder.embed, texts)
        tokens = sum(len(t.split()) for t in texts)  # an estimate; the usage block is informational
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "embedding": (
                        base64.b64encode(v.astype("<f4").tobytes()).decode()
                        if data.encoding_format == "base64"
                        else v.tolist()
                    ),
                    "index": i,
                }
                for i, v in enumerate(vectors)
            ],
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
