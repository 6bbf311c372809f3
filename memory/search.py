"""Memory search: lexical (SQLite FTS5, BM25) and vector results fused by reciprocal rank.

Names, places and dates are rare words that an embedding blurs, so every query runs twice: as
words against an FTS5 index of the turns' text and speaker names, and as a vector against the
:class:`~memory.index.VectorIndex`. The two rankings are merged with reciprocal rank fusion
(each list adds ``1 / (RRF_K + rank)``), which needs no score calibration between them.

Usage::

    search = MemorySearch(embedder, index, LexicalIndex(data_dir / "index"))
    await search.add([Turn(uid="alice", turn_id="t1", conversation_id="c1", speaker="Diane",
                           is_user=False, start=t0, end=t0 + 2.5, text="This is Diane in New Jersey.")])
    hits = await search.search("alice", "where does Diane live", limit=5)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from memory.embeddings import Embedder
from memory.index import IndexHit, IndexItem, VectorIndex
from memory.sqlite_file import SqliteFile

if TYPE_CHECKING:
    from app.settings import EmbeddingSettings, VectorIndexSettings

__all__ = ["RRF_K", "LexicalIndex", "MemorySearch", "Turn", "lexical_query", "open_search"]


RRF_K = 60  # the constant of Cormack et al. (2009); larger flattens the head of each list
CANDIDATES = 50  # each ranking contributes at least this many candidates to the fusion

# Words too common to say anything about a turn; dropped from lexical queries.
STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with
    would you your yours tell said say says""".split()  # noqa: SIM905 - a word list reads better as text
)
_WORD = re.compile(r"\w+", re.UNICODE)


class Turn(msgspec.Struct, kw_only=True):
    """A finalized turn to make searchable. Times are epoch seconds."""

    uid: str
    turn_id: str
    conversation_id: str
    speaker: str
    is_user: bool
    start: float
    end: float
    text: str


def lexical_query(text: str) -> str | None:
    """An FTS5 query matching any meaningful word of ``text`` (``None`` if it has no words).

    Stopwords are dropped unless nothing else is left; every word is quoted, so FTS5 syntax in
    the user's text is never interpreted.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOPWORDS] or words
    unique = list(dict.fromkeys(kept))
    return " OR ".join(f'"{w}"' for w in unique) if unique else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    speaker TEXT NOT NULL,
    is_user INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (uid, turn_id)
);
CREATE INDEX IF NOT EXISTS ix_turns_uid_conversation ON turns (uid, conversation_id);
CREATE VIRTUAL TABLE IF NOT EXISTS turns_fts USING fts5(
    text, speaker, content='turns', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS turns_ai AFTER INSERT ON turns BEGIN
    INSERT INTO turns_fts (rowid, text, speaker) VALUES (new.id, new.text, new.speaker);
END;
CREATE TRIGGER IF NOT EXISTS turns_ad AFTER DELETE ON turns BEGIN
    INSERT INTO turns_fts (turns_fts, rowid, text, speaker) VALUES ('delete', old.id, old.text, old.speaker);
END;
CREATE TRIGGER IF NOT EXISTS turns_au AFTER UPDATE ON turns BEGIN
    INSERT INTO turns_fts (turns_fts, rowid, text, speaker) VALUES ('delete', old.id, old.text, old.speaker);
    INSERT INTO turns_fts (rowid, text, speaker) VALUES (new.id, new.text, new.speaker);
END;
"""

# BM25 column weights: a word in what was said counts twice a word in who said it.
_BM25 = "bm25(turns_fts, 1.0, 0.5)"


class LexicalIndex(SqliteFile):
    """Turn texts and speaker names of every user in ``folder/lexical.db``, searched with FTS5 BM25."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "lexical.db", _SCHEMA, "lexical index")

    async def upsert(self, turns: Sequence[Turn]) -> None:
        """Add or replace turns."""
        await asyncio.to_thread(self.upsert_sync, turns)

    def upsert_sync(self, turns: Sequence[Turn]) -> None:
        """:meth:`upsert` in the calling thread (the caller holds no lock)."""
        rows = [(t.uid, t.turn_id, t.conversation_id, t.speaker, int(t.is_user), t.start, t.end, t.text) for t in turns]

        def write() -> None:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    'INSERT INTO turns (uid, turn_id, conversation_id, speaker, is_user, start, "end", text) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid, turn_id) DO UPDATE SET "
                    "conversation_id = excluded.conversation_id, speaker = excluded.speaker, "
                    'is_user = excluded.is_user, start = excluded.start, "end" = excluded."end", text = excluded.text',
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

        self.locked(write)

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        """Remove the user's turns ``ids``, or one conversation's, or (neither given) all."""

        def remove() -> None:
            if ids is not None:
                self._db.executemany("DELETE FROM turns WHERE uid = ? AND turn_id = ?", [(uid, t) for t in ids])
            elif conversation_id is not None:
                self._db.execute("DELETE FROM turns WHERE uid = ? AND conversation_id = ?", (uid, conversation_id))
            else:
                self._db.execute("DELETE FROM turns WHERE uid = ?", (uid,))

        await self.run(remove)

    async def speaker_name(self, uid: str, speaker: str) -> str | None:
        """The stored spelling of the user's speaker ``speaker`` (compared without case), if any."""

        def find() -> str | None:
            row = self._db.execute(
                "SELECT speaker FROM turns WHERE uid = ? AND speaker = ? COLLATE NOCASE LIMIT 1", (uid, speaker)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self.run(find)

    async def query(
        self,
        uid: str,
        text: str,
        *,
        limit: int,
        speaker: str | None = None,
        conversation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexHit]:
        """The user's best ``limit`` turns for the words of ``text``; ``score`` is -BM25 (higher is better)."""
        return await asyncio.to_thread(self.query_sync, uid, text, limit, speaker, conversation_id, since, until)

    def query_sync(
        self,
        uid: str,
        text: str,
        limit: int,
        speaker: str | None = None,
        conversation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexHit]:
        """:meth:`query` in the calling thread (the caller holds no lock)."""
        match = lexical_query(text)
        if match is None:
            return []
        sql = [
            f'SELECT t.turn_id, t.conversation_id, t.speaker, t.is_user, t.start, t."end", t.text, {_BM25} '
            "FROM turns_fts JOIN turns t ON t.id = turns_fts.rowid WHERE turns_fts MATCH ? AND t.uid = ?"
        ]
        params: list[object] = [match, uid]
        if speaker is not None:
            sql.append("AND t.speaker = ?")
            params.append(speaker)
        if conversation_id is not None:
            sql.append("AND t.conversation_id = ?")
            params.append(conversation_id)
        if since is not None:
            sql.append('AND t."end" >= ?')
            params.append(since)
        if until is not None:
            sql.append("AND t.start <= ?")
            params.append(until)
        sql.append(f"ORDER BY {_BM25} LIMIT ?")
        params.append(limit)
        rows = self.locked(lambda: self._db.execute(" ".join(sql), params).fetchall())
        return [
            IndexHit(
                turn_id=r[0],
                conversation_id=r[1],
                speaker=r[2],
                is_user=bool(r[3]),
                start=r[4],
                end=r[5],
                text=r[6],
                score=-float(r[7]),
            )
            for r in rows
        ]

    async def count(self, uid: str) -> int:
        """How many of the user's turns are indexed."""
        return await self.run(
            lambda: int(self._db.execute("SELECT count(*) FROM turns WHERE uid = ?", (uid,)).fetchone()[0])
        )

    async def close(self) -> None:
        """Close the database."""
        await self.run(self._db.close)


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
        lexical: LexicalIndex,
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

        ``speaker`` is compared without regard to case; an unknown speaker finds nothing.
        """
        if not query.strip():
            return []
        if speaker is not None:
            speaker = await self.lexical.speaker_name(uid, speaker)
            if speaker is None:
                return []
        depth = max(CANDIDATES, 2 * limit)
        embedder = await self.embedder()
        vector = await asyncio.to_thread(embedder.embed_one, query)
        semantic, lexical = await asyncio.gather(
            self.index.query(
                uid, vector, limit=depth, speaker=speaker, conversation_id=conversation_id, since=since, until=until
            ),
            self.lexical.query(
                uid, query, limit=depth, speaker=speaker, conversation_id=conversation_id, since=since, until=until
            ),
        )
        return fuse([lexical, semantic], limit)

    async def close(self) -> None:
        """Close both indexes."""
        await self.index.close()
        await self.lexical.close()


def open_search(embeddings: EmbeddingSettings, vector_index: VectorIndexSettings, data_dir: Path) -> MemorySearch:
    """Hybrid search as the settings choose it; the embedder loads on first use."""
    from memory.embeddings import load_embedder
    from memory.index import load_index

    return MemorySearch(
        lambda: load_embedder(embeddings), load_index(vector_index, data_dir), LexicalIndex(data_dir / "index")
    )
