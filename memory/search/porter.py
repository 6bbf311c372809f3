"""The Porter stemmer exactly as SQLite's FTS5 ``porter`` tokenizer runs it, so BM25 scores match FTS5's."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

__all__ = ["stem"]

# The Porter stemmer exactly as SQLite's FTS5 "porter" tokenizer runs it (fts5_tokenize.c), on
# the UTF-8 bytes of a token of 3 to 64 bytes. Each step tries its suffixes in order; the first
# that ends the word (and is shorter than it) is the only one tried, whether or not its condition
# holds. A rule is (suffix, condition on the stem, replacement).
_VOWELS = frozenset(b"aeiou")
_Y = ord("y")


def _is_vowel(c: int, y_is_vowel: bool) -> bool:
    return c in _VOWELS or (y_is_vowel and c == _Y)


def _gobble_vc(w: bytes, prev_consonant: bool) -> int:
    """Length of the leading [C]VC of ``w`` (0 if it has none)."""
    consonant = prev_consonant
    i = 0
    while i < len(w):
        consonant = not _is_vowel(w[i], consonant)
        if not consonant:
            break
        i += 1
    i += 1
    while i < len(w):
        consonant = not _is_vowel(w[i], consonant)
        if consonant:
            return i + 1
        i += 1
    return 0


def _m_gt0(stem: bytes) -> bool:
    return _gobble_vc(stem, False) > 0


def _m_gt1(stem: bytes) -> bool:
    n = _gobble_vc(stem, False)
    return n > 0 and _gobble_vc(stem[n:], True) > 0


def _m_eq1(stem: bytes) -> bool:
    n = _gobble_vc(stem, False)
    return n > 0 and _gobble_vc(stem[n:], True) == 0


def _o_star(stem: bytes) -> bool:
    """The stem ends consonant-vowel-consonant, the last not w, x or y."""
    if stem[-1] in b"wxy":
        return False
    mask = 0
    consonant = False
    for c in stem:
        consonant = not _is_vowel(c, consonant)
        mask = (mask << 1) + consonant
    return mask & 7 == 5


def _m_gt1_s_or_t(stem: bytes) -> bool:
    return stem[-1] in b"st" and _m_gt1(stem)


def _has_vowel(stem: bytes) -> bool:
    return any(_is_vowel(c, i > 0) for i, c in enumerate(stem))


_Rule = tuple[bytes, Callable[[bytes], bool] | None, bytes]
_STEP1B2: list[_Rule] = [(b"at", None, b"ate"), (b"bl", None, b"ble"), (b"iz", None, b"ize")]
_STEP2: list[_Rule] = [
    (b"ational", _m_gt0, b"ate"), (b"tional", _m_gt0, b"tion"), (b"enci", _m_gt0, b"ence"),
    (b"anci", _m_gt0, b"ance"), (b"izer", _m_gt0, b"ize"), (b"logi", _m_gt0, b"log"),
    (b"bli", _m_gt0, b"ble"), (b"alli", _m_gt0, b"al"), (b"entli", _m_gt0, b"ent"),
    (b"eli", _m_gt0, b"e"), (b"ousli", _m_gt0, b"ous"), (b"ization", _m_gt0, b"ize"),
    (b"ation", _m_gt0, b"ate"), (b"ator", _m_gt0, b"ate"), (b"alism", _m_gt0, b"al"),
    (b"iveness", _m_gt0, b"ive"), (b"fulness", _m_gt0, b"ful"), (b"ousness", _m_gt0, b"ous"),
    (b"aliti", _m_gt0, b"al"), (b"iviti", _m_gt0, b"ive"), (b"biliti", _m_gt0, b"ble"),
]  # fmt: skip
_STEP3: list[_Rule] = [
    (b"ical", _m_gt0, b"ic"), (b"ness", _m_gt0, b""), (b"icate", _m_gt0, b"ic"), (b"iciti", _m_gt0, b"ic"),
    (b"ful", _m_gt0, b""), (b"ative", _m_gt0, b""), (b"alize", _m_gt0, b"al"),
]  # fmt: skip
_STEP4: list[_Rule] = [
    (b"al", _m_gt1, b""), (b"ance", _m_gt1, b""), (b"ence", _m_gt1, b""), (b"er", _m_gt1, b""),
    (b"ic", _m_gt1, b""), (b"able", _m_gt1, b""), (b"ible", _m_gt1, b""), (b"ant", _m_gt1, b""),
    (b"ement", _m_gt1, b""), (b"ment", _m_gt1, b""), (b"ent", _m_gt1, b""), (b"ion", _m_gt1_s_or_t, b""),
    (b"ou", _m_gt1, b""), (b"ism", _m_gt1, b""), (b"ate", _m_gt1, b""), (b"iti", _m_gt1, b""),
    (b"ous", _m_gt1, b""), (b"ive", _m_gt1, b""), (b"ize", _m_gt1, b""),
]  # fmt: skip


def _apply(w: bytes, rules: list[_Rule]) -> tuple[bytes, bool]:
    """``w`` after the first of ``rules`` whose suffix ends it, and whether that rule matched and applied."""
    for suffix, condition, replacement in rules:
        if len(w) > len(suffix) and w.endswith(suffix):
            stem = w[: len(w) - len(suffix)]
            if condition is None or condition(stem):
                return stem + replacement, True
            return w, False
    return w, False


@lru_cache(maxsize=1 << 17)
def stem(token: str) -> str:
    """``token``'s Porter stem, as FTS5's ``porter`` tokenizer makes it (tokens outside 3-64 bytes are kept)."""
    w = token.encode("utf-8", "surrogatepass")
    if not 3 <= len(w) <= 64:
        return token
    # Step 1a: plurals.
    if w.endswith(b"s"):
        if w[-2:-1] == b"e":
            w = w[:-2] if (len(w) > 4 and w[-4:-2] == b"ss") or (len(w) > 3 and w[-3:-2] == b"i") else w[:-1]
        elif w[-2:-1] != b"s":
            w = w[:-1]
    # Step 1b: -eed, -ed, -ing.
    if len(w) > 3 and w.endswith(b"eed"):
        if _m_gt0(w[:-3]):
            w = w[:-1]
    elif (len(w) > 2 and w.endswith(b"ed") and _has_vowel(w[:-2])) or (
        len(w) > 3 and w.endswith(b"ing") and _has_vowel(w[:-3])
    ):
        w = w[:-2] if w.endswith(b"ed") else w[:-3]
        w, done = _apply(w, _STEP1B2)
        if not done:
            c = w[-1]
            if len(w) > 1 and not _is_vowel(c, False) and c not in b"lsz" and c == w[-2]:
                w = w[:-1]
            elif _m_eq1(w) and _o_star(w):
                w += b"e"
    # Step 1c: a final y after a vowel somewhere becomes i.
    if w.endswith(b"y") and _has_vowel(w[:-1]):
        w = w[:-1] + b"i"
    w = _apply(w, _STEP2)[0]
    w = _apply(w, _STEP3)[0]
    w = _apply(w, _STEP4)[0]
    # Step 5: a final e, and a final double l.
    if w.endswith(b"e") and (_m_gt1(w[:-1]) or (_m_eq1(w[:-1]) and not _o_star(w[:-1]))):
        w = w[:-1]
    if len(w) > 1 and w.endswith(b"ll") and _m_gt1(w[:-1]):
        w = w[:-1]
    return w.decode("utf-8", "surrogateescape")
