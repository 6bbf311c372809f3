"""BM25 over turns that several workers write, read from the store they share (the pgvector table)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from memory.search.lexical import LexicalView, LexicalWeights, Shard, Turn, WordSearch, view
from memory.search.vector_index import IndexHit, TurnFilter

__all__ = ["SharedLexicalIndex", "TurnSource"]


class TurnSource(Protocol):
    """Where a :class:`SharedLexicalIndex` reads turns: a store shared by every worker (the pgvector table)."""

    async def version(self, uid: str) -> int:
        """A number that changes whenever the user's turns change."""
        ...

    async def turns(self, uid: str) -> tuple[int, list[tuple[str, str, str, bool, float, float, str]]]:
        """The user's version and all their turns."""
        ...


class SharedLexicalIndex(WordSearch):
    """BM25 over turns that several workers write: the words are read from a shared ``source``.

    The vector index (pgvector) already holds each turn's text, so writes here change nothing;
    a search first asks the source for the user's version and reloads the user's in-memory
    index when another write (by any worker) has moved it. The cost is one small query per
    search, and a reload (about 0.1 s per 10k turns) after each change.
    """

    def __init__(self, source: TurnSource) -> None:
        self.source = source
        self._shards: dict[str, tuple[int, Shard]] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def _shard(self, uid: str) -> Shard:
        version = await self.source.version(uid)
        cached = self._shards.get(uid)
        if cached is not None and cached[0] == version:
            return cached[1]
        async with self._loading.setdefault(uid, asyncio.Lock()):
            cached = self._shards.get(uid)
            if cached is not None and cached[0] >= version:
                return cached[1]
            loaded, rows = await self.source.turns(uid)
            shard = await asyncio.to_thread(Shard.load, [(*r[:3], int(r[3]), *r[4:]) for r in rows])
            self._shards[uid] = (loaded, shard)
            return shard

    async def upsert(self, turns: Sequence[Turn]) -> None:
        """Nothing to do: the shared source holds the turns once the vector index has them."""

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        """Nothing to do: the next search sees the source's new version."""

    async def speaker_name(self, uid: str, speaker: str) -> str | None:
        """The stored spelling of the user's speaker ``speaker`` (compared without case), if any."""
        return (await self._shard(uid)).speaker_name(speaker)

    async def scored(self, uid: str, terms: list[str], limit: int, where: TurnFilter) -> list[IndexHit]:
        shard = await self._shard(uid)
        return await asyncio.to_thread(shard.search, terms, limit, where)

    async def view(self, uid: str, terms: list[str], limit: int, where: TurnFilter, w: LexicalWeights) -> LexicalView:
        shard = await self._shard(uid)
        return await asyncio.to_thread(view, shard, terms, limit, where, w)

    async def count(self, uid: str) -> int:
        """How many of the user's turns are indexed."""
        return (await self._shard(uid)).live

    async def close(self) -> None:
        """Drop the in-memory indexes (the source is closed by its owner)."""
        self._shards.clear()
