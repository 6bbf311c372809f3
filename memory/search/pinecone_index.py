"""The Pinecone vector index, through the ``pinecone`` SDK's data plane.

One namespace per user (the uid); vector ids are ``<uid>-<turn_id>``; metadata is
``uid, conversation_id, speaker, is_user, start, end, text``, as the OMI backend lays out its
own vectors. The index must exist already, with the embedder's dimension and the cosine
metric. The SDK is synchronous, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from core.errors import VectorIndexError
from memory.search.vector_index import IndexHit, IndexItem, TurnFilter, VectorIndex

__all__ = ["PineconeIndex"]

P = ParamSpec("P")
T = TypeVar("T")

UPSERT_BATCH = 100  # Pinecone's recommended vectors per upsert request
FETCH_BATCH = 100


@contextmanager
def map_pinecone_errors(action: str) -> Iterator[None]:
    """Turn the SDK's errors into :class:`VectorIndexError`."""
    from pinecone import PineconeError

    try:
        yield
    except PineconeError as exc:
        raise VectorIndexError(f"Pinecone {action} failed: {exc}") from exc


class PineconeIndex(VectorIndex):
    """A Pinecone index reached by its data-plane ``host`` (or looked up by ``index_name``)."""

    name = "pinecone"

    def __init__(self, *, api_key: str, host: str = "", index_name: str = "", index: Any = None) -> None:
        if index is None:
            from pinecone import Pinecone

            with map_pinecone_errors("connecting"):
                index = Pinecone(api_key=api_key).Index(name=index_name, host=host)
        self._index = index

    @staticmethod
    def vector_id(uid: str, turn_id: str) -> str:
        return f"{uid}-{turn_id}"

    async def _run(self, action: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def call() -> T:
            with map_pinecone_errors(action):
                return fn(*args, **kwargs)

        return await asyncio.to_thread(call)

    async def upsert(self, items: Sequence[IndexItem]) -> None:
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_uid.setdefault(item.uid, []).append(
                {
                    "id": self.vector_id(item.uid, item.turn_id),
                    "values": np.asarray(item.vector, dtype=np.float32).tolist(),
                    "metadata": {
                        "uid": item.uid,
                        "conversation_id": item.conversation_id,
                        "speaker": item.speaker,
                        "is_user": item.is_user,
                        "start": item.start,
                        "end": item.end,
                        "text": item.text,
                    },
                }
            )
        for uid, vectors in by_uid.items():
            for first in range(0, len(vectors), UPSERT_BATCH):
                await self._run(
                    "upsert", self._index.upsert, vectors=vectors[first : first + UPSERT_BATCH], namespace=uid
                )

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        if ids is not None:
            if ids:
                await self._run("delete", self._index.delete, ids=[self.vector_id(uid, t) for t in ids], namespace=uid)
        elif conversation_id is not None:
            await self._run(
                "delete",
                self._index.delete,
                filter={"conversation_id": {"$eq": conversation_id}},
                namespace=uid,
            )
        else:
            await self._run("delete", self._index.delete, delete_all=True, namespace=uid)

    async def nearest(self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        clauses: list[dict[str, Any]] = []
        if where.speaker is not None:
            clauses.append({"speaker": {"$eq": where.speaker}})
        if where.conversation_id is not None:
            clauses.append({"conversation_id": {"$eq": where.conversation_id}})
        if where.since is not None:
            clauses.append({"end": {"$gte": where.since}})
        if where.until is not None:
            clauses.append({"start": {"$lte": where.until}})
        response = await self._run(
            "query",
            self._index.query,
            vector=np.asarray(vector, dtype=np.float32).tolist(),
            top_k=limit,
            namespace=uid,
            filter=({"$and": clauses} if len(clauses) > 1 else clauses[0]) if clauses else None,
            include_metadata=True,
        )
        prefix = f"{uid}-"
        hits = []
        for match in response.matches:
            meta = match.metadata or {}
            hits.append(
                IndexHit(
                    turn_id=match.id.removeprefix(prefix),
                    conversation_id=str(meta.get("conversation_id", "")),
                    speaker=str(meta.get("speaker", "")),
                    is_user=bool(meta.get("is_user", False)),
                    start=float(meta.get("start", 0.0)),
                    end=float(meta.get("end", 0.0)),
                    text=str(meta.get("text", "")),
                    score=float(match.score),
                )
            )
        return hits

    async def fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        found: dict[str, IndexItem] = {}
        for first in range(0, len(ids), FETCH_BATCH):
            chunk = [self.vector_id(uid, t) for t in ids[first : first + FETCH_BATCH]]
            if not chunk:
                continue
            response = await self._run("fetch", self._index.fetch, ids=chunk, namespace=uid)
            for vector_id, vector in response.vectors.items():
                meta = vector.metadata or {}
                turn_id = vector_id.removeprefix(f"{uid}-")
                found[turn_id] = IndexItem(
                    uid=uid,
                    turn_id=turn_id,
                    conversation_id=str(meta.get("conversation_id", "")),
                    speaker=str(meta.get("speaker", "")),
                    is_user=bool(meta.get("is_user", False)),
                    start=float(meta.get("start", 0.0)),
                    end=float(meta.get("end", 0.0)),
                    text=str(meta.get("text", "")),
                    vector=np.asarray(vector.values, dtype=np.float32),
                )
        return [found[t] for t in ids if t in found]

    async def count(self, uid: str) -> int:
        stats = await self._run("describe_index_stats", self._index.describe_index_stats)
        summary = stats.namespaces.get(uid)
        return int(summary.vector_count) if summary is not None else 0

    async def close(self) -> None:
        close = getattr(self._index, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
