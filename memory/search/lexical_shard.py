"""One user's turns in memory for the lexical search: BM25F over each turn *in its place*.

A turn alone says little ("Yes, last Tuesday!"); what it means is in who said it, when, and the
turns around it. So each turn is scored as one document made of weighted fields (BM25F: a term's
frequency is the weighted sum of its counts, and so is the document's length):

- the turn's own words (weight 1);
- its speaker's name (``speaker``), so "What did Caroline research?" finds Caroline's turns;
- the day it was said, e.g. "8 May 2023" (``date``), so "in May" or "2023" finds that day's turns;
- the words of the turns one place before and after it in the same conversation (``near``) and
  two places away (``far``).

Only each turn's own words are stored (an inverted index of numpy arrays); the context is added
at query time: a turn holding a term lends it to its neighbours through four link columns
(``near_prev``, ``near_next``, ``far_prev``, ``far_next``), and the speaker's and day's terms come
from small per-speaker and per-day tables. Links follow the turns' start times within each
conversation: a turn appended at the end of its conversation is linked at once; any other change
relinks that conversation before the next search. Rows are appended; a replaced or deleted turn's
row is marked dead (its postings stay until :meth:`Shard.compact`, and are skipped). Documents
that are not turns (a conversation's summary, a fact: ids ``summary:...`` and ``fact:...``) are
scored on their own words, speaker label and day, without neighbours.

idf is Lucene's ``log(1 + (N - df + 0.5) / (df + 0.5))``, never negative; statistics count live
rows only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, pairwise

import numpy as np
from numpy.typing import NDArray

from memory.search.porter import stem
from memory.search.turn_columns import TurnColumns
from memory.search.vector_index import IndexHit, Turn, TurnFilter
from memory.search.words import STOPWORDS, content_terms, split_words

__all__ = ["DOCUMENT_PREFIXES", "LexicalView", "LexicalWeights", "Shard", "day_of", "is_document", "top_rows", "view"]

DOCUMENT_PREFIXES = ("summary:", "fact:")
"""Ids of searchable documents that are not turns: a conversation's summary, a fact about the user."""

_COMPACT_MIN = 1024  # rewrite a user's in-memory index once this many rows, and a quarter of all, are stale
_LINKS = ("near_prev", "near_next", "far_prev", "far_next")


@dataclass(frozen=True)
class LexicalWeights:
    """BM25's ``k1`` and ``b``, and the weight of each context field against the turn's own words.

    The defaults were measured on LoCoMo (docs/benchmarks.md, "Memory recall"); all context
    weights at 0 give plain BM25 over the turn's words.
    """

    k1: float = 1.2
    b: float = 0.75
    speaker: float = 1.0
    date: float = 0.5
    near: float = 0.5
    far: float = 0.5


def is_document(turn_id: str) -> bool:
    """Whether ``turn_id`` names a document (summary, fact) rather than a turn."""
    return turn_id.startswith(DOCUMENT_PREFIXES)


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of epoch second ``ts``."""
    return int(ts // 86_400)


def _day_terms(day: int) -> Counter[str]:
    d = datetime.fromtimestamp(day * 86_400, tz=UTC)
    return Counter(content_terms(f"{d.day} {d:%B %Y}"))


class _Postings:
    """The rows holding one term and the term's count in each (``[:n]`` used)."""

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
    """One user's turns in memory: row ``i`` of every array is the same turn (see the module docstring)."""

    alive: NDArray[np.bool_]
    doc: NDArray[np.bool_]
    own_len: NDArray[np.float64]  # terms in the row's own words
    day_code: NDArray[np.int32]  # code of the row's UTC day
    near_prev: NDArray[np.int32]  # row of the turn before it in its conversation, or -1
    near_next: NDArray[np.int32]
    far_prev: NDArray[np.int32]  # two places before, or -1
    far_next: NDArray[np.int32]

    def __init__(self, capacity: int = 1024) -> None:
        self.speaker_rows: list[int] = []  # live rows per speaker code
        self.speaker_terms: list[Counter[str]] = []  # terms of each speaker code's name
        extra: dict[str, tuple[tuple[int, ...], object]] = {
            "alive": ((), bool),
            "doc": ((), bool),
            "own_len": ((), np.float64),
            "day_code": ((), np.int32),
            **{name: ((), np.int32) for name in _LINKS},
        }
        super().__init__(capacity, extra)
        self.live = 0
        self.postings: dict[str, _Postings] = {}
        self.days: list[int] = []  # day number of each day code
        self.day_codes: dict[int, int] = {}
        self.day_terms: dict[str, list[int]] = {}  # term -> the day codes whose date holds it
        self.tail: dict[int, int] = {}  # conversation code -> row of its latest turn
        self.dirty: set[int] = set()  # conversations to relink before the next search
        self.version = 0  # changes with every write
        self._prepared: tuple[int, LexicalWeights] | None = None
        self._norm: NDArray[np.float64] = np.zeros(0)

    # --- writing ---------------------------------------------------------------------------

    def new_code(self, kind: str) -> None:
        if kind == "speaker":
            self.speaker_rows.append(0)
            self.speaker_terms.append(Counter(content_terms(self.names["speaker"][-1])))

    def _day(self, ts: float) -> int:
        day = day_of(ts)
        code = self.day_codes.get(day)
        if code is None:
            code = self.day_codes[day] = len(self.days)
            self.days.append(day)
            for term in _day_terms(day):
                self.day_terms.setdefault(term, []).append(code)
        return code

    def _kill(self, i: int) -> None:
        del self.row[self.ids[i]]
        self.alive[i] = False
        self.texts[i] = ""
        self.speaker_rows[self.speaker[i]] -= 1
        self.live -= 1
        if not self.doc[i]:
            self.dirty.add(int(self.conversation[i]))
        for name in _LINKS:
            getattr(self, name)[i] = -1
        self.version += 1

    def put(self, turn: Turn) -> None:
        """Add the turn, or replace the one with its id."""
        old = self.row.get(turn.turn_id)
        if old is not None:
            self._kill(old)
        terms = Counter(content_terms(turn.text))
        i = self.append(turn.turn_id, turn.text)
        self.alive[i] = True
        self.doc[i] = is_document(turn.turn_id)
        self.own_len[i] = sum(terms.values())
        self.set_meta(i, turn)
        self.day_code[i] = self._day(turn.start)
        for name in _LINKS:
            getattr(self, name)[i] = -1
        self.speaker_rows[self.speaker[i]] += 1
        self.live += 1
        self.version += 1
        for term, freq in terms.items():
            postings = self.postings.get(term)
            if postings is None:
                self.postings[term] = _Postings(np.array([i], dtype=np.int32), np.array([freq], dtype=np.float32))
            else:
                postings.append(i, freq)
        if not self.doc[i]:
            self._link_new(i)

    def _link_new(self, i: int) -> None:
        """Link row ``i`` after its conversation's latest turn, or have the conversation relinked."""
        conversation = int(self.conversation[i])
        if conversation in self.dirty:
            return
        last = self.tail.get(conversation)
        if last is not None and self.start[i] < self.start[last]:
            self.dirty.add(conversation)
            return
        self.tail[conversation] = i
        if last is None:
            return
        self.near_prev[i], self.near_next[last] = last, i
        before = int(self.near_prev[last])
        if before >= 0:
            self.far_prev[i], self.far_next[before] = before, i

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

    def _relink(self, conversations: set[int] | None) -> None:
        """Link the turns of ``conversations`` (None: all) in order of start time (then row)."""
        n = self.n
        turns = self.alive[:n] & ~self.doc[:n]
        if conversations is not None:
            turns &= np.isin(self.conversation[:n], np.fromiter(conversations, dtype=np.int32))
        rows = np.flatnonzero(turns)
        for name in _LINKS:
            getattr(self, name)[rows] = -1
        if conversations is None:
            self.tail.clear()
        else:
            for c in conversations:
                self.tail.pop(c, None)
        if len(rows) == 0:
            return
        conv = self.conversation[rows]
        order = rows[np.lexsort((rows, self.start[rows], conv))]  # (m,) by conversation, start, row
        conv = self.conversation[order]
        for step, (before, after) in ((1, ("near_prev", "near_next")), (2, ("far_prev", "far_next"))):
            if len(order) <= step:
                continue
            same = conv[step:] == conv[:-step]
            getattr(self, before)[order[step:][same]] = order[:-step][same]
            getattr(self, after)[order[:-step][same]] = order[step:][same]
        last = np.flatnonzero(np.append(conv[1:] != conv[:-1], True))
        self.tail.update(zip(conv[last].tolist(), order[last].tolist(), strict=True))

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
        shard.doc[:n] = [is_document(t) for t in ids]
        shard.conversation[:n] = [shard.code("conversation", c) for c in conversations]
        shard.speaker[:n] = [shard.code("speaker", s) for s in speakers]
        shard.start[:n], shard.end[:n], shard.is_user[:n] = start, end, is_user
        shard.day_code[:n] = [shard._day(t) for t in start]
        shard.speaker_rows = np.bincount(shard.speaker[:n], minlength=len(shard.names["speaker"])).tolist()

        said = [[w for w in split_words(text) if w not in STOPWORDS] for text in texts]
        said_len = np.fromiter(map(len, said), dtype=np.int64, count=n)  # (n,)
        shard.own_len[:n] = said_len
        flat = list(chain.from_iterable(said))
        vocab: dict[str, int] = {}  # term -> its number, in order of first sight
        surface: dict[str, int] = dict.fromkeys(flat, 0)  # word -> number of its term (each word stemmed once)
        for w in surface:
            surface[w] = vocab.setdefault(stem(w), len(vocab))
        term = np.fromiter(map(surface.__getitem__, flat), dtype=np.int64, count=len(flat))  # (tokens,)
        row = np.repeat(np.arange(n), said_len)
        shard._relink(None)
        if len(term) == 0:
            return shard
        key = np.sort(term * n + row)  # term-major, then row
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))  # one per (term, row)
        freq = np.diff(np.append(first, len(key))).astype(np.float32)
        terms, rows_of = np.divmod(key[first], n)
        rows_of = rows_of.astype(np.int32)
        bounds = np.flatnonzero(np.concatenate([[True], terms[1:] != terms[:-1], [True]]))
        words = list(vocab)
        shard.postings = {
            words[int(terms[a])]: _Postings(rows_of[a:b], freq[a:b]) for a, b in pairwise(bounds.tolist())
        }
        return shard

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
        self.dirty.clear()
        self._relink(None)
        self.version += 1

    # --- reading ---------------------------------------------------------------------------

    def speaker_name(self, speaker: str) -> str | None:
        """The stored spelling of a speaker who has live turns, compared without case."""
        folded = speaker.lower()
        for code, name in enumerate(self.names["speaker"]):
            if self.speaker_rows[code] > 0 and name.lower() == folded:
                return name
        return None

    def speakers(self) -> list[str]:
        """Names of the speakers who have live turns."""
        return [name for code, name in enumerate(self.names["speaker"]) if self.speaker_rows[code] > 0]

    def cost(self, terms: Sequence[str]) -> int:
        """How many postings a query for ``terms`` reads, with the context it lends (an estimate)."""
        return 5 * sum(p.n for p in (self.postings.get(t) for t in terms) if p is not None)

    def _prepare(self, w: LexicalWeights) -> NDArray[np.float64]:
        """Links up to date, and each row's BM25 length normalisation ``k1 * (1 - b + b * L / avgdl)``."""
        if self.dirty:
            self._relink(self.dirty)
            self.dirty.clear()
            self.version += 1
        if self._prepared == (self.version, w):
            return self._norm
        n = self.n
        own = np.append(self.own_len[:n], 0.0)  # own[-1] = 0: a missing neighbour adds nothing
        speaker_len = np.array([float(sum(c.values())) for c in self.speaker_terms] or [0.0], dtype=np.float64)
        length = own[:n] + w.speaker * speaker_len[self.speaker[:n]] + w.date * 3.0  # a date is 3 terms
        for name, weight in zip(_LINKS, (w.near, w.near, w.far, w.far), strict=True):
            if weight:
                length += weight * own[getattr(self, name)[:n]]
        alive = self.alive[:n]
        avgdl = float(length[alive].mean()) if alive.any() else 1.0
        self._norm = w.k1 * (1.0 - w.b + w.b * length / max(avgdl, 1e-9))
        self._prepared = (self.version, w)
        return self._norm

    def scores(self, terms: Sequence[str], w: LexicalWeights) -> NDArray[np.float64]:
        """Every row's BM25F score for ``terms`` (``(n,)``; 0 for dead rows and rows without them)."""
        n = self.n
        out = np.zeros(n, dtype=np.float64)
        if self.live == 0:
            return out
        norm = self._prepare(w)
        alive = self.alive[:n]
        links = [
            (getattr(self, name)[:n], weight)
            for name, weight in zip(_LINKS, (w.near, w.near, w.far, w.far), strict=True)
        ]
        for term in terms:
            rows: list[NDArray[np.int32]] = []
            freqs: list[NDArray[np.float64]] = []
            p = self.postings.get(term)
            if p is not None and p.n:
                r, f = p.rows[: p.n], p.freq[: p.n].astype(np.float64)
                rows.append(r)
                freqs.append(f)
                for link, weight in links:
                    if weight:
                        to = link[r]  # the rows that have row r as this neighbour
                        ok = to >= 0
                        rows.append(to[ok])
                        freqs.append(f[ok] * weight)
            by = np.array([c.get(term, 0) for c in self.speaker_terms], dtype=np.float64) if w.speaker else None
            days = self.day_terms.get(term) if w.date else None
            broad = (by is not None and bool(by.any())) or bool(days)
            held = sum(len(r) for r in rows)
            if not broad and 8 * held < n:  # a rare term: only the rows that hold it and their neighbours
                if not rows:
                    continue
                touched, where_in = np.unique(np.concatenate(rows), return_inverse=True)
                counts = np.bincount(where_in, np.concatenate(freqs))
                ok = alive[touched]
                touched, counts = touched[ok], counts[ok]
                if len(touched) == 0:
                    continue
                idf = math.log(1.0 + (self.live - len(touched) + 0.5) / (len(touched) + 0.5))
                out[touched] += idf * counts * (w.k1 + 1.0) / (counts + norm[touched])
                continue
            # A common term, a speaker's name or a date (every turn of theirs, or of that day): over every row.
            tf = np.zeros(n, dtype=np.float64)
            if rows:  # weighted counts are float64 (numpy's stubs say int)
                tf += np.bincount(np.concatenate(rows), np.concatenate(freqs), minlength=n)
            if by is not None and by.any():
                tf += w.speaker * by[self.speaker[:n]]
            if days:
                on = np.zeros(len(self.days), dtype=np.float64)
                on[days] = w.date
                tf += on[self.day_code[:n]]
            tf *= alive
            df = int(np.count_nonzero(tf))
            if df == 0:
                continue
            idf = math.log(1.0 + (self.live - df + 0.5) / (df + 0.5))
            gain = tf * (idf * (w.k1 + 1.0))  # 0 where tf is 0
            tf += norm
            gain /= tf
            out += gain
        return out

    def search(
        self, terms: Sequence[str], limit: int, where: TurnFilter, w: LexicalWeights | None = None
    ) -> list[IndexHit]:
        """The best ``limit`` live rows for ``terms`` by BM25F, best first; ties go to the later turn."""
        if self.live == 0 or limit <= 0:
            return []
        scores = self.scores(terms, w or LexicalWeights())
        found = np.flatnonzero(scores > 0.0)  # (m,)
        keep = self.mask(where, found)
        if keep is not None:
            found = found[keep]
        return [self.hit(int(i), float(scores[i])) for i in top_rows(found, scores[found], self.start[found], limit)]


def top_rows(
    rows: NDArray[np.intp], scores: NDArray[np.float64], start: NDArray[np.float64], k: int
) -> NDArray[np.intp]:
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


@dataclass
class LexicalView:
    """One query's lexical side, for fusion: the top hits, and what the fusion needs of every other row."""

    hits: list[IndexHit]  # the best rows that pass the filters, best first
    scores: NDArray[np.float64]  # (rows,) every row's score
    row: dict[str, int]  # turn id -> row
    mean: float  # of the scores over the rows that pass the filters
    sd: float
    speakers: list[str]  # the user's speakers
    days: list[int]  # the UTC day numbers of the user's turns, ascending
    latest: float  # start of the user's latest turn (epoch s), 0 without turns
    speaker_of: dict[str, str]  # turn id -> speaker, for the hits (dense hits carry their own)

    def score_of(self, turn_id: str) -> float:
        """The lexical score of any of the user's turns (0 when unknown)."""
        i = self.row.get(turn_id)
        return float(self.scores[i]) if i is not None and i < len(self.scores) else 0.0


def view(shard: Shard, terms: Sequence[str], limit: int, where: TurnFilter, w: LexicalWeights) -> LexicalView:
    """The shard's :class:`LexicalView` of a query for ``terms``."""
    n = shard.n
    scores = shard.scores(terms, w) if terms else np.zeros(n)
    eligible = shard.alive[:n].copy()
    keep = shard.mask(where)
    if keep is not None:
        eligible &= keep
    values = scores[eligible]
    found = np.flatnonzero((scores > 0.0) & eligible)
    top = top_rows(found, scores[found], shard.start[found], limit)
    hits = [shard.hit(int(i), float(scores[i])) for i in top]
    alive = shard.alive[:n]
    return LexicalView(
        hits=hits,
        scores=scores,
        row=shard.row,
        mean=float(values.mean()) if len(values) else 0.0,
        sd=float(values.std()) if len(values) else 0.0,
        speakers=shard.speakers(),
        days=sorted(shard.days),
        latest=float(shard.start[:n][alive].max()) if alive.any() else 0.0,
        speaker_of={h.turn_id: h.speaker for h in hits},
    )
