"""Words of turns and queries: folded, stemmed, without stopwords (the terms of the lexical index).

Words are cut and folded as SQLite FTS5's ``porter unicode61 remove_diacritics 2`` tokenizer
does: letters and digits, lower case, accents removed, Porter stems. Stopwords (the words too
common to say anything about a turn) are left out of turns and queries alike; a query made only
of stopwords keeps them.
"""

from __future__ import annotations

import re
import unicodedata

from memory.search.porter import stem

__all__ = ["STOPWORDS", "content_terms", "lexical_query", "query_terms", "split_words", "tokenize"]

STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with
    would you your yours tell said say says""".split()  # noqa: SIM905 - a word list reads better as text
)
_WORD = re.compile(r"\w+", re.UNICODE)
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits; FTS5's unicode61 also splits at "_"
_COMBINING = re.compile("[\u0300-\u036f]")  # what remove_diacritics strips once letters are decomposed


def split_words(text: str) -> list[str]:
    """The words of ``text``, lower case and without accents, not yet stemmed."""
    folded = text.lower()
    if not folded.isascii():
        folded = unicodedata.normalize("NFC", _COMBINING.sub("", unicodedata.normalize("NFD", folded)))
    return _TOKEN.findall(folded)


def tokenize(text: str) -> list[str]:
    """The terms of ``text``, in order: lower case, accents removed, Porter stems (stopwords kept)."""
    return list(map(stem, split_words(text)))


def content_terms(text: str) -> list[str]:
    """The terms of ``text`` that the index keeps: :func:`tokenize` without stopwords."""
    return [stem(w) for w in split_words(text) if w not in STOPWORDS]


def _words(text: str) -> list[str]:
    """The distinct lower-case words of a query, without stopwords unless nothing else is left."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))


def lexical_query(text: str) -> str | None:
    """An FTS5 query matching any meaningful word of ``text`` (``None`` if it has no words).

    Every word is quoted, so FTS5 syntax in the user's text is never interpreted (the bench's
    FTS5 baseline uses it; the index itself does not use FTS5, see :func:`query_terms`).
    """
    unique = _words(text)
    return " OR ".join(f'"{w}"' for w in unique) if unique else None


def query_terms(text: str) -> list[str]:
    """The distinct terms a query looks for: its words as :func:`lexical_query` keeps them, stemmed."""
    return list(dict.fromkeys(t for w in _words(text) for t in tokenize(w)))
