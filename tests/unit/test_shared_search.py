"""Memory search shared by several workers: pgvector for the vectors, and BM25 over its table's words.

Two :class:`MemorySearch` objects stand for two service workers on one PostgreSQL database: what one
writes or deletes, the other's next search finds or no longer finds, by meaning and by words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memory.memory_settings import EmbeddingSettings, VectorIndexSettings
from memory.search.hybrid import MemorySearch, open_search
from memory.search.pgvector_index import PgVectorIndex
from memory.search.shared_lexical import SharedLexicalIndex
from tests.memory_support import local_embedder, sample_turns


async def _worker(url: str, tmp_path: Path, name: str) -> MemorySearch:
    search = open_search(EmbeddingSettings(), VectorIndexSettings(backend="pgvector"), tmp_path / name, url)
    assert isinstance(search.index, PgVectorIndex) and isinstance(search.lexical, SharedLexicalIndex)
    search._embedder = local_embedder()  # one loaded model for both workers
    return search


@pytest.fixture
async def workers(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[MemorySearch, MemorySearch]]:
    a, b = await _worker(postgres_url, tmp_path, "a"), await _worker(postgres_url, tmp_path, "b")
    for uid in ("carol", "dave"):
        await a.delete(uid)
    yield a, b
    await a.close()
    await b.close()


async def test_what_one_worker_indexes_the_other_finds_by_words_and_meaning(
    workers: tuple[MemorySearch, MemorySearch],
) -> None:
    a, b = workers
    assert await b.lexical.count("carol") == 0  # b has loaded carol's (empty) words before a writes
    turns = sample_turns("carol")
    await a.add(turns)
    assert await b.lexical.count("carol") == len(turns)
    diane = next(t for t in turns if "New Jersey" in t.text)
    words = await b.lexical.query("carol", "New Jersey", limit=10)  # neighbours of its turns lend them the words
    assert diane.turn_id in [h.turn_id for h in words]
    hybrid = await b.search("carol", "Where does Diane live?", limit=3)
    assert diane.turn_id in [h.turn_id for h in hybrid]
    assert await b.search("dave", "New Jersey", limit=3) == []  # another user's turns stay theirs

    await a.delete("carol", ids=[diane.turn_id])
    assert diane.turn_id not in [h.turn_id for h in await b.search("carol", "New Jersey", limit=5)]
    assert await b.lexical.count("carol") == len(turns) - 1
