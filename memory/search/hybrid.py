"""Memory search: lexical (BM25) and vector results fused by reciprocal rank.

Names, places and dates are rare words that an embedding blurs, so every query runs twice: as
words against the BM25 :class:`~memory.search.lexical.LexicalIndex` of the turns' text and speaker
names, and as a vector against the :class:`~memory.search.index_choice.VectorIndex`. The two rankings are
merged with reciprocal rank fusion (each list adds ``1 / (RRF_K + rank)``), which needs no score
calibration between them.

Usage::

    search = MemorySearch(embedder, index, LexicalIndex(data_dir / "index"))
    await search.add([Turn(uid="alice", turn_id="t1", conversation_id="c1", speaker="Diane",
                           is_user=False, start=t0, end=t0 + 2.5, text="This is Diane in New Jersey.")])
    hits = await search.search("alice", "where does Diane live", limit=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from memory.search.embeddings import Embedder
from memory.search.vector_index import IndexHit, IndexItem, VectorIndex

if TYPE_CHECKING:
    from memory.memory_settings import EmbeddingSettings, VectorIndexSettings

from memory.search.lexical import LexicalIndex, Turn, lexical_query, query_terms, tokenize
from memory.search.shared_lexical import SharedLexicalIndex

__all__ = [
    "RRF_K",
    "LexicalIndex",
    "MemorySearch",
    "Turn",
    "fuse",
    "lexical_query",
    "open_search",
    "query_terms",
    "tokenize",
]


RRF_K = 60  # the constant of Cormack et al. (2009); larger flattens the head of each list
CANDIDATES = 50  # each ranking contributes at least this many candidates to the fusion


def fuse(rankings: Sequence[Sequence[IndexHit]], limit: int, k: int = RRF_K) -> list[IndexHit]:
    """Reciprocal rank fusion: each ranking adds ``1 / (k + rank)`` (rank from 1) to a turn's score."""
    scores: dict[str, float] = {}
    first: dict[str, IndexHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.turn_id] = scores.get(hit.turn_id, 0.0) + 1.0 / (k + rank)
            first.setdefault(hit.turn_id, hit)
    best = sorted(scores, key=lambda t: -scores[t])[:limit]
    return [msgspec.structs.replace(first[t], score=round(scores[t], 6)) for t in best]


class MemorySearch:
    """Hybrid search over one :class:`VectorIndex` and one :class:`LexicalIndex`, with its embedder.

    ``embedder`` may be an :class:`Embedder` or a function that builds one; a function is called
    once, in a worker thread, the first time a text needs embedding (the local model takes
    seconds to load).
    """

    def __init__(
        self,
        embedder: Embedder | Callable[[], Embedder],
        index: VectorIndex,
        lexical: LexicalIndex | SharedLexicalIndex,
    ) -> None:
        self._embedder = embedder if isinstance(embedder, Embedder) else None
        self._factory = None if isinstance(embedder, Embedder) else embedder
        self._loading = asyncio.Lock()
        self.index = index
        self.lexical = lexical

    async def embedder(self) -> Embedder:
        """The embedder, loaded on first use."""
        if self._embedder is None:
            async with self._loading:
                if self._embedder is None:
                    assert self._factory is not None
                    self._embedder = await asyncio.to_thread(self._factory)
        return self._embedder

    async def add(self, turns: Sequence[Turn]) -> None:
        """Embed and index turns (add or replace), in both indexes."""
        if not turns:
            return
        embedder = await self.embedder()
        vectors = await asyncio.to_thread(embedder.embed, [t.text for t in turns])
        await self.index.upsert(
            [IndexItem(**msgspec.structs.asdict(t), vector=v) for t, v in zip(turns, vectors, strict=True)]
        )
        await self.lexical.upsert(turns)

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        """Remove the user's turns ``ids``, or one conversation's, or (neither given) all, from both indexes."""
        await self.index.delete(uid, ids=ids, conversation_id=conversation_id)
        await self.lexical.delete(uid, ids=ids, conversation_id=conversation_id)

    async def search(
        self,
        uid: str,
        query: str,
        *,
        limit: int = 10,
        speaker: str | None = None,
        conversation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexHit]:
        """The user's ``limit`` best turns for ``query``, best first; ``score`` is the fused RRF score.

        ``speaker`` is compared without regard to case; an unknown speaker finds nothing. The
        lexical search runs while the query is being embedded; the vector search follows.
        """
        if not query.strip():
            return []
        if speaker is not None:
            speaker = await self.lexical.speaker_name(uid, speaker)
            if speaker is None:
                return []
        depth = max(CANDIDATES, 2 * limit)
        embedder = await self.embedder()
        vector, lexical = await asyncio.gather(
            asyncio.to_thread(embedder.embed_one, query),
            self.lexical.query(
                uid, query, limit=depth, speaker=speaker, conversation_id=conversation_id, since=since, until=until
            ),
        )
        semantic = await self.index.query(
            uid, vector, limit=depth, speaker=speaker, conversation_id=conversation_id, since=since, until=until
        )
        return fuse([lexical, semantic], limit)

    async def close(self) -> None:
        """Close both indexes."""
        await self.index.close()
        await self.lexical.close()


def open_search(
    embeddings: EmbeddingSettings, vector_index: VectorIndexSettings, data_dir: Path, database_url: str = ""
) -> MemorySearch:
    """Hybrid search as the settings choose it; the embedder loads on first use."""
    from memory.search.embeddings import load_embedder
    from memory.search.index_choice import load_index
    from memory.search.pgvector_index import PgVectorIndex

    index = load_index(vector_index, data_dir, database_url)
    lexical: LexicalIndex | SharedLexicalIndex
    if isinstance(index, PgVectorIndex):  # several workers may write it: the words come from its table
        lexical = SharedLexicalIndex(index)
    else:
        lexical = LexicalIndex(data_dir / "index")
    return MemorySearch(lambda: load_embedder(embeddings), index, lexical)
