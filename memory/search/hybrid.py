"""Memory search: each turn scored by its words in their place and by its meaning, fused by z-score.

Every query runs twice: as words against the lexical index (BM25F over the turn with its
speaker's name, its day and its neighbours: :mod:`memory.search.lexical_shard`), and as a vector
against the :class:`~memory.search.vector_index.VectorIndex` (each turn embedded together with the
turn before it). Each list's scores are standardised over all the user's turns that pass the
filters (mean 0, sd 1) and added, the vector's weighted by ``dense_weight``: a turn both lists
like wins, and a list that is sure of one turn (far above its mean) can carry it alone. Then two
boosts read the question: turns of the one person it names (:func:`~memory.search.query_parse.named_speakers`)
and turns in the period it names (:func:`~memory.search.query_parse.period`: "last May", "two
weeks before the trip", relative to the user's conversations). The weights were measured on
LoCoMo (docs/benchmarks.md, "Memory recall"); ``fusion="rrf"`` gives the earlier reciprocal
rank fusion, kept for comparison.

Usage::

    search = MemorySearch(embedder, index, LexicalIndex(data_dir / "index"))
    await search.add([Turn(uid="alice", turn_id="t1", conversation_id="c1", speaker="Diane",
                           is_user=False, start=t0, end=t0 + 2.5, text="This is Diane in New Jersey.")])
    hits = await search.search("alice", "where does Diane live", limit=5)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from core.errors import VectorIndexError
from memory.search.embeddings import Embedder
from memory.search.lexical import LexicalIndex, LexicalView, LexicalWeights, Turn, lexical_query, query_terms, tokenize
from memory.search.lexical_shard import day_of
from memory.search.query_parse import named_speakers, period, relative_anchor
from memory.search.shared_lexical import SharedLexicalIndex
from memory.search.vector_index import DenseView, IndexHit, IndexItem, TurnFilter, VectorIndex

if TYPE_CHECKING:
    from memory.memory_settings import EmbeddingSettings, VectorIndexSettings

__all__ = [
    "RRF_K",
    "LexicalIndex",
    "MemorySearch",
    "SearchTuning",
    "Turn",
    "dense_text",
    "fuse",
    "lexical_query",
    "open_search",
    "query_terms",
    "tokenize",
]

log = logging.getLogger(__name__)

RRF_K = 60  # the constant of Cormack et al. (2009); larger flattens the head of each list
CANDIDATES = 100  # each list's best turns that go into the fusion
DATE_SLACK_S = 14 * 86_400  # a period also covers the conversations up to two weeks after it
DENSE_TEXT = "previous+current speaker lines, v1"
"""What a turn's vector embeds (:func:`dense_text`); vectors of another recipe are re-embedded."""
STAMP_FILE = "embedding.json"  # in the index folder: the model and recipe of the stored vectors


@dataclass(frozen=True)
class SearchTuning:
    """The measured weights of the search (docs/benchmarks.md, "Memory recall")."""

    lexical: LexicalWeights = field(default_factory=LexicalWeights)
    fusion: str = "z"  # "z": standardised scores added; "rrf": reciprocal rank fusion (the earlier search)
    dense_weight: float = 1.0  # the vector's z-score against the words'
    speaker_boost: float = 1.0  # added to turns of the one speaker a question names
    date_boost: float = 0.5  # added to turns in the period a question names
    candidates: int = CANDIDATES
    rrf_k: int = RRF_K


def dense_text(turn: Turn) -> str:
    """What a turn's vector embeds: the turn before it (if any) and the turn, as "speaker: text" lines."""
    line = f"{turn.speaker}: {turn.text}" if turn.speaker else turn.text
    return f"{turn.before}\n{line}" if turn.before else line


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


def fuse_z(
    lexical: LexicalView,
    dense: DenseView,
    limit: int,
    tuning: SearchTuning,
    *,
    speaker: str | None = None,
    when: tuple[float, float] | None = None,
) -> list[IndexHit]:
    """Standardised lexical and vector scores added (see the module docstring), with the boosts."""
    candidates: dict[str, IndexHit] = {h.turn_id: h for h in lexical.hits}
    for hit in dense.hits:
        candidates.setdefault(hit.turn_id, hit)
    if not candidates:
        return []
    floor = min(dense.scores.values(), default=dense.mean)  # a turn the index did not score: below its hits
    lsd, dsd = lexical.sd or 1.0, dense.sd or 1.0
    scored: list[tuple[float, float, str]] = []
    for turn_id, hit in candidates.items():
        s = (lexical.score_of(turn_id) - lexical.mean) / lsd
        if dense.hits:
            s += tuning.dense_weight * (dense.scores.get(turn_id, floor) - dense.mean) / dsd
        if speaker is not None and hit.speaker == speaker:
            s += tuning.speaker_boost
        if when is not None and when[0] <= hit.start <= when[1] + DATE_SLACK_S:
            s += tuning.date_boost
        scored.append((s, hit.start, turn_id))
    scored.sort(key=lambda x: (-x[0], -x[1]))
    return [msgspec.structs.replace(candidates[t], score=round(s, 6)) for s, _, t in scored[:limit]]


class MemorySearch:
    """Hybrid search over one :class:`VectorIndex` and one lexical index, with its embedder.

    ``embedder`` may be an :class:`Embedder` or a function that builds one; a function is called
    once, in a worker thread, the first time a text needs embedding (a local model takes a moment
    to load).
    """

    def __init__(
        self,
        embedder: Embedder | Callable[[], Embedder],
        index: VectorIndex,
        lexical: LexicalIndex | SharedLexicalIndex,
        *,
        tuning: SearchTuning | None = None,
        folder: Path | None = None,
    ) -> None:
        self._embedder = embedder if isinstance(embedder, Embedder) else None
        self._factory = None if isinstance(embedder, Embedder) else embedder
        self._loading = asyncio.Lock()
        self.index = index
        self.lexical = lexical
        self.tuning = tuning or SearchTuning()
        self.folder = folder  # where the embedding stamp is kept (memory.search.reembed)
        self._warned = False
        self._stamped = False

    async def embedder(self) -> Embedder:
        """The embedder, loaded on first use."""
        if self._embedder is None:
            async with self._loading:
                if self._embedder is None:
                    assert self._factory is not None
                    self._embedder = await asyncio.to_thread(self._factory)
        return self._embedder

    def _stamp_path(self) -> Path | None:
        return None if self.folder is None else self.folder / STAMP_FILE

    async def stale_embeddings(self, *, has_data: bool) -> str | None:
        """Why the stored vectors cannot be searched with the configured model (another model, or
        another recipe of :func:`dense_text`), or None when they can. An index without a stamp
        holds vectors of an earlier version when ``has_data`` (turns are stored)."""
        path = self._stamp_path()
        if path is None:
            return None
        embedder = await self.embedder()
        now = {"model": embedder.name, "text": DENSE_TEXT}
        try:
            before = msgspec.json.decode(path.read_bytes())
        except FileNotFoundError:
            if not has_data:
                return None
            before = {"model": "an earlier version's model", "text": "the bare turn text"}
        except msgspec.DecodeError:
            before = {"model": "unknown (the stamp is damaged)", "text": ""}
        if {k: before.get(k) for k in now} == now:
            return None
        return (
            f"the memory index holds vectors of {before.get('model')} ({before.get('text')}), "
            f"but EMBEDDINGS_MODEL gives {embedder.name} ({DENSE_TEXT})"
        )

    async def mark_embeddings(self) -> None:
        """Record that the index's vectors come from the configured model and recipe."""
        path = self._stamp_path()
        if path is None:
            return
        embedder = await self.embedder()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode({"model": embedder.name, "dim": embedder.dim, "text": DENSE_TEXT}))
        tmp.replace(path)
        self._stamped = True

    async def add(self, turns: Sequence[Turn]) -> None:
        """Embed and index turns (add or replace), in both indexes."""
        if not turns:
            return
        embedder = await self.embedder()
        if not self._stamped:
            path = self._stamp_path()
            if path is not None and not path.exists():  # a new index: its vectors are this model's
                await self.mark_embeddings()
            self._stamped = True
        vectors = await asyncio.to_thread(embedder.embed, [dense_text(t) for t in turns])
        fields = [msgspec.structs.asdict(t) for t in turns]
        await self.index.upsert([IndexItem(**f, vector=v) for f, v in zip(fields, vectors, strict=True)])
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
        tuning: SearchTuning | None = None,
    ) -> list[IndexHit]:
        """The user's ``limit`` best turns for ``query``, best first; ``score`` is the fused score.

        ``speaker`` is compared without regard to case; an unknown speaker finds nothing. The
        lexical search runs while the query is being embedded; the vector search follows.
        """
        if not query.strip():
            return []
        t = tuning or self.tuning
        if speaker is not None:
            speaker = await self.lexical.speaker_name(uid, speaker)
            if speaker is None:
                return []
        where = TurnFilter(speaker=speaker, conversation_id=conversation_id, since=since, until=until)
        depth = max(t.candidates, 2 * limit)
        embedder = await self.embedder()
        vector, lexical = await asyncio.gather(
            asyncio.to_thread(embedder.embed_query, query),
            self.lexical.view(uid, query_terms(query), depth, where, t.lexical),
        )
        try:
            dense = await self.index.scored(uid, vector, depth, where, [h.turn_id for h in lexical.hits])
        except VectorIndexError as exc:  # vectors of another model: words alone until they are re-embedded
            if not self._warned:
                log.warning("memory search uses words only: %s", exc.detail)
                self._warned = True
            dense = DenseView(hits=[], scores={}, mean=0.0, sd=0.0)
        if t.fusion == "rrf":
            return fuse([lexical.hits, dense.hits], limit, t.rrf_k)
        named = named_speakers(query, lexical.speakers)
        when = await self._period(uid, query, lexical, where, t) if t.date_boost else None
        return fuse_z(lexical, dense, limit, t, speaker=named[0] if len(named) == 1 else None, when=when)

    async def _period(
        self, uid: str, query: str, lexical: LexicalView, where: TurnFilter, t: SearchTuning
    ) -> tuple[float, float] | None:
        """The period the question names; an event it counts from ("before the trip") is looked up."""
        event: int | None = None
        relative = relative_anchor(query)
        if relative is not None:
            found = await self.lexical.view(uid, query_terms(relative[2]), 1, where, replace(t.lexical, near=0, far=0))
            event = day_of(found.hits[0].start) if found.hits else None
        return period(query, latest=lexical.latest, days=lexical.days, event_day=lambda _: event)

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
    return MemorySearch(lambda: load_embedder(embeddings), index, lexical, folder=data_dir / "index")
