"""The lexical side of memory search: BM25F over each turn with its context (speaker, day, neighbours).

Every turn is kept in ``DATA_DIR/index/lexical.db`` (SQLite, one transaction per call), and
searched through an inverted index held in memory, one per user, built from that file on the
user's first search and updated in place by every write (:class:`~memory.search.lexical_shard.Shard`:
how a turn is scored with its speaker's name, its day and the turns around it). A query scores
only the postings of its words, in numpy. Words are cut as SQLite FTS5's porter unicode61
tokenizer does (:mod:`memory.search.words`). The statistics are each user's own.

On disk each turn's text is encrypted (:mod:`memory.store.crypto`, the installed keyring); ids, speaker
names and times are not. The inverted index in memory is plaintext.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from memory.search.lexical_shard import LexicalView, LexicalWeights, Shard, view
from memory.search.vector_index import IndexHit, Turn, TurnFilter
from memory.search.words import lexical_query, query_terms, tokenize
from memory.store.crypto import installed
from memory.store.sqlite_file import SqliteFile

__all__ = [
    "TEXT_PLACE",
    "LexicalIndex",
    "LexicalView",
    "LexicalWeights",
    "Shard",
    "Turn",
    "WordSearch",
    "lexical_query",
    "query_terms",
    "tokenize",
]

TEXT_PLACE = "index/lexical.db:turns.text"
"""Where a turn's text is encrypted for (the associated data of its ciphertext)."""

T = TypeVar("T")

_INLINE_POSTINGS = 60_000  # a query reading fewer postings runs in the event loop (about 1 ms)


class WordSearch(ABC):
    """BM25 over each user's turns; :meth:`query` takes the words and filters, :meth:`scored` does the work."""

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
        """The user's best ``limit`` turns for the words of ``text``; ``score`` is BM25 (higher is better)."""
        terms = query_terms(text)
        if not terms:
            return []
        where = TurnFilter(speaker=speaker, conversation_id=conversation_id, since=since, until=until)
        return await self.scored(uid, terms, limit, where)

    @abstractmethod
    async def scored(self, uid: str, terms: list[str], limit: int, where: TurnFilter) -> list[IndexHit]:
        """The user's best ``limit`` turns holding any of the index terms ``terms``, that pass ``where``."""

    @abstractmethod
    async def view(self, uid: str, terms: list[str], limit: int, where: TurnFilter, w: LexicalWeights) -> LexicalView:
        """The user's :class:`LexicalView` of a query for ``terms`` (the hybrid search fuses it)."""


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
DROP TRIGGER IF EXISTS turns_ai;
DROP TRIGGER IF EXISTS turns_ad;
DROP TRIGGER IF EXISTS turns_au;
DROP TABLE IF EXISTS turns_fts;
"""
# Files written before the index moved into memory have an FTS5 table kept by triggers: dropped.


class LexicalIndex(SqliteFile, WordSearch):
    """Turn texts and speaker names of every user in ``folder/lexical.db``, searched by BM25 in memory.

    Every write is committed to the file before it returns, and is visible to the next search.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "lexical.db", _SCHEMA, "lexical index")
        self._shards: dict[str, Shard] = {}  # users whose turns are in memory

    def _shard(self, uid: str) -> Shard:
        """The user's in-memory index, read from the file on first use (the caller holds the lock)."""
        shard = self._shards.get(uid)
        if shard is None:
            keys = installed()
            rows = [
                (*row[:6], keys.decrypt_text(row[6], TEXT_PLACE))
                for row in self._db.execute(
                    'SELECT turn_id, conversation_id, speaker, is_user, start, "end", text FROM turns WHERE uid = ?',
                    (uid,),
                )
            ]
            shard = self._shards[uid] = Shard.load(rows)
        return shard

    async def _inline(self, uid: str, fn: Callable[[Shard], T], work: Callable[[Shard], int] | None = None) -> T:
        """``fn(shard)`` right in the event loop when it is quick: the user's index is in memory, the
        connection is free and ``work`` (postings to read) is small; otherwise in a worker thread."""
        if self._lock.acquire(blocking=False):
            try:
                shard = self._shards.get(uid)
                if shard is not None and (work is None or work(shard) <= _INLINE_POSTINGS):
                    return self.locked(fn, shard)
            finally:
                self._lock.release()
        return await self.run(lambda: fn(self._shard(uid)))

    async def upsert(self, turns: Sequence[Turn]) -> None:
        """Add or replace turns."""
        await asyncio.to_thread(self.upsert_sync, turns)

    def upsert_sync(self, turns: Sequence[Turn]) -> None:
        """:meth:`upsert` in the calling thread (the caller holds no lock)."""
        keys = installed()
        rows = [
            (
                t.uid,
                t.turn_id,
                t.conversation_id,
                t.speaker,
                int(t.is_user),
                t.start,
                t.end,
                keys.encrypt_text(t.text, TEXT_PLACE),
            )
            for t in turns
        ]

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
            changed: set[str] = set()
            for turn in turns:
                shard = self._shards.get(turn.uid)  # a user not in memory is read from the file when searched
                if shard is not None:
                    shard.put(turn)
                    changed.add(turn.uid)
            for uid in changed:
                self._shards[uid].maybe_compact()

        self.locked(write)

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        """Remove the user's turns ``ids``, or one conversation's, or (neither given) all."""

        def remove() -> None:
            shard = self._shards.get(uid)
            if ids is not None:
                self._db.executemany("DELETE FROM turns WHERE uid = ? AND turn_id = ?", [(uid, t) for t in ids])
                if shard is not None:
                    shard.remove(ids)
            elif conversation_id is not None:
                self._db.execute("DELETE FROM turns WHERE uid = ? AND conversation_id = ?", (uid, conversation_id))
                if shard is not None:
                    shard.remove_conversation(conversation_id)
            else:
                self._db.execute("DELETE FROM turns WHERE uid = ?", (uid,))
                self._shards[uid] = Shard()
                return
            if shard is not None:
                shard.maybe_compact()

        await self.run(remove)

    async def speaker_name(self, uid: str, speaker: str) -> str | None:
        """The stored spelling of the user's speaker ``speaker`` (compared without case), if any."""
        return await self._inline(uid, lambda shard: shard.speaker_name(speaker))

    async def scored(self, uid: str, terms: list[str], limit: int, where: TurnFilter) -> list[IndexHit]:
        return await self._inline(uid, lambda shard: shard.search(terms, limit, where), lambda shard: shard.cost(terms))

    async def view(self, uid: str, terms: list[str], limit: int, where: TurnFilter, w: LexicalWeights) -> LexicalView:
        return await self._inline(
            uid, lambda shard: view(shard, terms, limit, where, w), lambda shard: shard.cost(terms)
        )

    def view_sync(
        self, uid: str, text: str, limit: int, w: LexicalWeights, where: TurnFilter | None = None
    ) -> LexicalView:
        """:meth:`view` of a query text, in the calling thread (benchmarks)."""
        terms = query_terms(text)
        return self.locked(lambda: view(self._shard(uid), terms, limit, where or TurnFilter(), w))

    def query_sync(self, uid: str, text: str, limit: int, where: TurnFilter | None = None) -> list[IndexHit]:
        """:meth:`query` in the calling thread (the caller holds no lock)."""
        terms = query_terms(text)
        if not terms:
            return []
        return self.locked(lambda: self._shard(uid).search(terms, limit, where or TurnFilter()))

    async def count(self, uid: str) -> int:
        """How many of the user's turns are indexed."""

        def count() -> int:
            shard = self._shards.get(uid)
            if shard is not None:
                return shard.live
            return int(self._db.execute("SELECT count(*) FROM turns WHERE uid = ?", (uid,)).fetchone()[0])

        return await self.run(count)

    async def close(self) -> None:
        """Close the database and drop the in-memory indexes."""

        def close() -> None:
            self._shards.clear()
            self._db.close()

        await self.run(close)
