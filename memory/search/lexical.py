"""The lexical side of memory search: BM25 over the turns' words and speaker names.

Every turn is kept in ``DATA_DIR/index/lexical.db`` (SQLite, one transaction per call), and
searched through an inverted index held in memory, one per user, built from that file on the
user's first search and updated in place by every write. A query scores only the postings of
its words, in numpy, so its cost follows how many turns hold those words, not how many turns
there are. Words are cut and scored as SQLite FTS5 would with
``tokenize='porter unicode61 remove_diacritics 2'`` and ``bm25(turns_fts, 1.0, 0.5)``: lower
case, accents removed, Porter stems; a word said counts twice a word of the speaker's name.
The BM25 statistics are each user's own (FTS5 counted every user in the file).

On disk each turn's text is encrypted (:mod:`memory.store.crypto`, the installed keyring); ids, speaker
names and times are not. The inverted index in memory is plaintext.
"""

from __future__ import annotations

import asyncio
import math
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import NDArray

from memory.search.turn_columns import TurnColumns
from memory.search.vector_index import IndexHit, Turn, TurnFilter
from memory.store.crypto import installed
from memory.store.sqlite_file import SqliteFile

if TYPE_CHECKING:
    pass

from memory.search.porter import stem

__all__ = [
    "TEXT_PLACE",
    "LexicalIndex",
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

# BM25 as SQLite FTS5 computes it: k1, b, and the weight of a word in each column.
K1 = 1.2
B = 0.75
TEXT_WEIGHT = 1.0
SPEAKER_WEIGHT = 0.5  # a word in what was said counts twice a word in who said it

_INLINE_POSTINGS = 60_000  # a query reading fewer postings runs in the event loop (1 ms at most)
_COMPACT_MIN = 1024  # rewrite a user's in-memory index once this many rows, and a quarter of all, are stale


# --- Words -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")  # letters and digits; FTS5's unicode61 also splits at "_"
_COMBINING = re.compile("[\u0300-\u036f]")  # what remove_diacritics strips once letters are decomposed


def tokenize(text: str) -> list[str]:
    """The index terms of ``text``, in order: lower case, accents removed, Porter stems."""
    return list(map(stem, _split(text)))


def _split(text: str) -> list[str]:
    """The words of ``text``, lower case and without accents, not yet stemmed."""
    folded = text.lower()
    if not folded.isascii():
        folded = unicodedata.normalize("NFC", _COMBINING.sub("", unicodedata.normalize("NFD", folded)))
    return _TOKEN.findall(folded)


def _words(text: str) -> list[str]:
    """The distinct lower-case words of a query, without stopwords unless nothing else is left."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))


def lexical_query(text: str) -> str | None:
    """An FTS5 query matching any meaningful word of ``text`` (``None`` if it has no words).

    Stopwords are dropped unless nothing else is left; every word is quoted, so FTS5 syntax in
    the user's text is never interpreted. (The index no longer uses FTS5; see :func:`query_terms`.)
    """
    unique = _words(text)
    return " OR ".join(f'"{w}"' for w in unique) if unique else None


def query_terms(text: str) -> list[str]:
    """The distinct index terms a query looks for: its words as :func:`lexical_query` keeps them, stemmed."""
    return list(dict.fromkeys(t for w in _words(text) for t in tokenize(w)))


# --- The lexical index -----------------------------------------------------------------------


class _Postings:
    """The rows holding one term and the term's weighted frequency in each (``[:n]`` used)."""

    __slots__ = ("freq", "n", "rows")

    def __init__(self, rows: NDArray[np.int32], freq: NDArray[np.float32]) -> None:
        self.rows = rows
        self.freq = freq
        self.n = len(rows)

    def append(self, row: int, freq: float) -> None:
        if self.n == len(self.rows):
            capacity = max(4, 2 * self.n)
            self.rows = np.concatenate([self.rows[: self.n], np.empty(capacity - self.n, np.int32)])
            self.freq = np.concatenate([self.freq[: self.n], np.empty(capacity - self.n, np.float32)])
        self.rows[self.n] = row
        self.freq[self.n] = freq
        self.n += 1


class Shard(TurnColumns):
    """One user's turns in memory: row ``i`` of every array is the same turn.

    Rows are appended; a replaced or deleted turn's row is only marked dead (its postings stay
    until :meth:`compact`, and are skipped). BM25 statistics count live rows only.
    """

    alive: NDArray[np.bool_]
    length: NDArray[np.float64]  # terms in the row's text and speaker name

    def __init__(self, capacity: int = 1024) -> None:
        self.speaker_rows: list[int] = []  # live rows per speaker code
        super().__init__(capacity, {"alive": ((), bool), "length": ((), np.float64)})
        self.live = 0
        self.total_length = 0.0  # terms in all live rows, for the average row length
        self.speaker_terms: dict[str, Counter[str]] = {}
        self.postings: dict[str, _Postings] = {}

    def new_code(self, kind: str) -> None:
        if kind == "speaker":
            self.speaker_rows.append(0)

    def _terms(self, turn: Turn) -> tuple[dict[str, float], int]:
        """Each term's weighted frequency in the turn, and the turn's length in terms (both columns)."""
        said = Counter(tokenize(turn.text))
        by = self.speaker_terms.get(turn.speaker)
        if by is None:
            by = self.speaker_terms[turn.speaker] = Counter(tokenize(turn.speaker))
        freqs = {term: TEXT_WEIGHT * count for term, count in said.items()}
        for term, count in by.items():
            freqs[term] = freqs.get(term, 0.0) + SPEAKER_WEIGHT * count
        return freqs, sum(said.values()) + sum(by.values())

    def _append(self, turn: Turn, length: int) -> int:
        i = self.append(turn.turn_id, turn.text)
        self.alive[i] = True
        self.length[i] = length
        self.set_meta(i, turn)
        self.speaker_rows[self.speaker[i]] += 1
        self.live += 1
        self.total_length += length
        return i

    def _kill(self, i: int) -> None:
        del self.row[self.ids[i]]
        self.alive[i] = False
        self.texts[i] = ""
        self.speaker_rows[self.speaker[i]] -= 1
        self.live -= 1
        self.total_length -= self.length[i]

    @classmethod
    def load(cls, rows: Sequence[tuple[str, str, str, int, float, float, str]]) -> Shard:
        """A shard of one user's turns as ``(turn_id, conversation_id, speaker, is_user, start, end,
        text)`` rows with distinct ids: words cut in one pass, postings built by one sort."""
        n = len(rows)
        shard = cls(capacity=max(1024, n))
        if n == 0:
            return shard
        ids, conversations, speakers, is_user, start, end, texts = zip(*rows, strict=True)
        shard.n = shard.live = n
        shard.ids, shard.texts = list(ids), list(texts)
        shard.row = {turn_id: i for i, turn_id in enumerate(ids)}
        shard.alive[:n] = True
        shard.conversation[:n] = [shard.code("conversation", c) for c in conversations]
        shard.speaker[:n] = [shard.code("speaker", s) for s in speakers]
        shard.start[:n], shard.end[:n], shard.is_user[:n] = start, end, is_user
        speaker = shard.speaker[:n]  # (n,)
        shard.speaker_rows = np.bincount(speaker, minlength=len(shard.names["speaker"])).tolist()

        said = [_split(text) for text in texts]  # each distinct word is stemmed once, below
        said_len = np.fromiter(map(len, said), dtype=np.int64, count=n)  # (n,)
        flat = list(chain.from_iterable(said))
        vocab: dict[str, int] = {}  # term -> its number, in order of first sight
        surface: dict[str, int] = dict.fromkeys(flat, 0)  # word -> number of its term
        for w in surface:
            surface[w] = vocab.setdefault(stem(w), len(vocab))
        said_term = np.fromiter(map(surface.__getitem__, flat), dtype=np.int64, count=len(flat))  # (tokens,)
        said_row = np.repeat(np.arange(n), said_len)
        # The speaker's name, once per row: its terms laid end to end, sliced per row by its code.
        names = [[vocab.setdefault(w, len(vocab)) for w in tokenize(name)] for name in shard.names["speaker"]]
        name_len = np.array([len(t) for t in names], dtype=np.int64)  # (speakers,)
        name_term = np.array([t for terms in names for t in terms], dtype=np.int64)
        by_len = name_len[speaker]  # (n,)
        by_row = np.repeat(np.arange(n), by_len)  # (speaker tokens,)
        offset = (np.cumsum(name_len) - name_len)[speaker[by_row]]
        within = np.arange(len(by_row)) - np.repeat(np.cumsum(by_len) - by_len, by_len)
        by_term = name_term[offset + within] if len(by_row) else np.zeros(0, dtype=np.int64)

        shard.length[:n] = said_len + by_len
        shard.total_length = float(shard.length[:n].sum())
        key = np.concatenate([said_term, by_term]) * n + np.concatenate([said_row, by_row])  # term-major
        if len(key) == 0:
            return shard
        weight = np.concatenate([np.full(len(said_term), TEXT_WEIGHT), np.full(len(by_term), SPEAKER_WEIGHT)])
        order = np.argsort(key, kind="stable")
        key, weight = key[order], weight[order]
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))  # one per (term, row)
        freq = np.add.reduceat(weight, first).astype(np.float32)
        term, row = np.divmod(key[first], n)
        row = row.astype(np.int32)
        bounds = np.flatnonzero(np.concatenate([[True], term[1:] != term[:-1], [True]]))
        words = list(vocab)
        shard.postings = {words[int(term[a])]: _Postings(row[a:b], freq[a:b]) for a, b in pairwise(bounds.tolist())}
        return shard

    def put(self, turn: Turn) -> None:
        """Add the turn, or replace the one with its id."""
        old = self.row.get(turn.turn_id)
        if old is not None:
            self._kill(old)
        counts, length = self._terms(turn)
        i = self._append(turn, length)
        for term, freq in counts.items():
            postings = self.postings.get(term)
            if postings is None:
                self.postings[term] = _Postings(np.array([i], dtype=np.int32), np.array([freq], dtype=np.float32))
            else:
                postings.append(i, freq)

    def remove(self, turn_ids: Iterable[str]) -> None:
        for turn_id in turn_ids:
            i = self.row.get(turn_id)
            if i is not None:
                self._kill(i)

    def remove_conversation(self, conversation_id: str) -> None:
        code = self.codes["conversation"].get(conversation_id)
        if code is not None:
            rows = np.flatnonzero((self.conversation[: self.n] == code) & self.alive[: self.n])
            self.remove(self.ids[i] for i in rows)

    def maybe_compact(self) -> None:
        dead = self.n - self.live
        if dead >= _COMPACT_MIN and 4 * dead >= self.n:
            self.compact()

    def compact(self) -> None:
        """Drop dead rows and their postings; live rows keep their order."""
        keep = np.flatnonzero(self.alive[: self.n])  # (live,) old row of each new row
        remap = np.full(self.n, -1, dtype=np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.resize(max(1024, 2 * len(keep)), keep)
        self.ids = [self.ids[i] for i in keep]
        self.texts = [self.texts[i] for i in keep]
        self.row = {turn_id: i for i, turn_id in enumerate(self.ids)}
        self.n = len(keep)
        postings: dict[str, _Postings] = {}
        for term, p in self.postings.items():
            rows = remap[p.rows[: p.n]]
            live = rows >= 0
            if live.any():
                postings[term] = _Postings(rows[live], p.freq[: p.n][live])
        self.postings = postings

    def speaker_name(self, speaker: str) -> str | None:
        """The stored spelling of a speaker who has live turns, compared without case."""
        folded = speaker.lower()
        for code, name in enumerate(self.names["speaker"]):
            if self.speaker_rows[code] > 0 and name.lower() == folded:
                return name
        return None

    def cost(self, terms: Sequence[str]) -> int:
        """How many postings a query for ``terms`` reads."""
        return sum(p.n for p in (self.postings.get(t) for t in terms) if p is not None)

    def search(self, terms: Sequence[str], limit: int, where: TurnFilter) -> list[IndexHit]:
        """The best ``limit`` live rows holding any of ``terms`` by BM25, best first; ties go to the later turn."""
        if self.live == 0 or limit <= 0:
            return []
        avgdl = self.total_length / self.live
        dead = self.n != self.live
        scores: NDArray[np.float64] | None = None  # (n,) summed over terms
        for term in terms:
            p = self.postings.get(term)
            if p is None:
                continue
            rows, freq = p.rows[: p.n], p.freq[: p.n]
            if dead:
                live = self.alive[rows]
                rows, freq = rows[live], freq[live]
            hits = len(rows)
            if hits == 0:
                continue
            idf = math.log((self.live - hits + 0.5) / (hits + 0.5))
            if idf <= 0.0:
                idf = 1e-6  # FTS5's floor for a term in more than half of all rows
            f = freq.astype(np.float64)
            # FTS5's bm25(): idf * f * (k1 + 1) / (f + k1 * (1 - b + b * D / avgdl))
            part = idf * ((f * (K1 + 1.0)) / (f + K1 * (1.0 - B + B * self.length[rows] / avgdl)))
            if scores is None:
                scores = np.zeros(self.n, dtype=np.float64)
            np.add.at(scores, rows, part)
        if scores is None:
            return []
        found = np.flatnonzero(scores > 0.0)  # (m,) rows holding a term (a bool mask is 10x faster)
        keep = self.mask(where, found)
        if keep is not None:
            found = found[keep]
        return [self.hit(int(i), float(scores[i])) for i in _top(found, scores[found], self.start[found], limit)]


def _top(rows: NDArray[np.intp], scores: NDArray[np.float64], start: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    """The ``k`` of ``rows`` with the highest ``scores``, best first; equal scores, the later ``start`` first."""
    if len(rows) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th highest score
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        need = k - len(above)
        if len(tied) > need:
            tied = tied[np.argpartition(-start[tied], need - 1)[:need]]
        pick = np.concatenate([above, tied])
        rows, scores, start = rows[pick], scores[pick], start[pick]
    return rows[np.lexsort((-start, -scores))[:k]]


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


# --- Hybrid search ---------------------------------------------------------------------------
