"""What a question says besides its words: the people it names, and the period of time it names.

Both are read against the user's own memory: names against the speakers of their turns (a first
name, a full name, a possessive such as "Caroline's", or a nickname that starts a name, such as
"Mel" for Melanie); periods against the dates of their conversations ("in May" is the latest May
among them, "last week" the week before their latest conversation), so that a question means
what it meant when the conversations took place.

    named_speakers("What did Mel paint?", ["Caroline", "Melanie"])   # ["Melanie"]
    period("What did she do last May?", latest=..., days=[...])      # (start, end) epoch seconds
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

__all__ = ["Period", "named_speakers", "period", "relative_anchor"]

Period = tuple[float, float]
"""A span of time, epoch seconds ``(start, end)``."""

_MON = (
    r"(January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
_MNUM = {m: i for i, m in enumerate(calendar.month_name) if m}
_MNUM.update({m: i for i, m in enumerate(calendar.month_abbr) if m})
_MNUM["Sept"] = 9
_SEASONS = {"spring": (3, 5), "summer": (6, 8), "fall": (9, 11), "autumn": (9, 11), "winter": (12, 2)}
_UNITS = {"day": 1, "week": 7, "fortnight": 14, "month": 30, "year": 365}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "few": 3, "couple": 2}
_WEEKDAYS = {d.lower(): i for i, d in enumerate(calendar.day_name)}
_NAME = re.compile(r"[^\W\d_]+(?:'s)?", re.UNICODE)


def named_speakers(question: str, speakers: Sequence[str]) -> list[str]:
    """The speakers whose name the question holds as a word: a first or full name in any case, or a
    capitalised nickname of three letters or more that starts their first name ("Mel" for Melanie)."""
    words = [w.removesuffix("'s") for w in _NAME.findall(question)]
    folded = {w.lower() for w in words}
    found = []
    for name in speakers:
        parts = [p.lower() for p in _NAME.findall(name)]
        if not parts:
            continue
        first = parts[0]
        if first in folded or any(
            len(w) >= 3 and w[0].isupper() and first.startswith(w.lower()) and w.lower() not in _COMMON for w in words
        ):
            found.append(name)
    return found


_COMMON = frozenset("the what when who how did was his her she they and for with can will".split())  # noqa: SIM905


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _span(a: datetime, b: datetime) -> Period:
    return a.timestamp(), b.timestamp()


def _day(d: datetime) -> Period:
    start = d.replace(hour=0, minute=0, second=0, microsecond=0)
    return _span(start, start + timedelta(days=1) - timedelta(seconds=1))


def _month(year: int, month: int) -> Period:
    last = calendar.monthrange(year, month)[1]
    return _span(datetime(year, month, 1, tzinfo=UTC), datetime(year, month, last, 23, 59, 59, tzinfo=UTC))


def _amount(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS.get(word.lower(), 1)


def relative_anchor(question: str) -> tuple[int, int, str] | None:
    """``(days, sign, event)`` of "two weeks before the trip" (sign -1, before) or "a day after the
    party" (+1); None when the question has no such phrase."""
    m = re.search(
        r"\b(\d+|an?|one|two|three|four|five|six|few|couple)\s+(?:of\s+)?(day|week|fortnight|month|year)s?\s+"
        r"(before|after)\s+(?:the\s+|her\s+|his\s+|their\s+|my\s+|our\s+)?([\w' ]{3,40}?)(?:[?.,!]|$)",
        question,
        re.I,
    )
    if not m:
        return None
    days = _amount(m.group(1)) * _UNITS[m.group(2).lower()]
    return days, (-1 if m.group(3).lower() == "before" else 1), m.group(4).strip()


def period(
    question: str,
    *,
    latest: float,
    days: Sequence[int] = (),
    event_day: Callable[[str], int | None] | None = None,
) -> Period | None:
    """The span of time the question names, or None.

    ``latest`` is the start of the user's latest conversation (what "last week" counts back from),
    ``days`` the UTC day numbers of their conversations (which year "in May" means), and
    ``event_day`` finds the day of an event the question names ("two weeks before the trip").
    """
    if latest <= 0:
        return None
    anchor = _utc(latest)
    dates = [_utc(d * 86_400.0) for d in days]

    def year_for(month: int) -> int:
        years = sorted({d.year for d in dates if d.month == month})
        return years[-1] if years else anchor.year

    q = question
    relative = relative_anchor(q)
    if relative is not None and event_day is not None:
        found = event_day(relative[2])
        if found is not None:
            centre = _utc(found * 86_400.0) + timedelta(days=relative[1] * relative[0])
            slack = max(2, relative[0] // 4)  # "two weeks before" is rarely to the day
            return _span(centre - timedelta(days=slack), centre + timedelta(days=slack + 1))
    m = re.search(_MON + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", q)
    if m:
        return _day(datetime(int(m.group(3)), _MNUM[m.group(1)], int(m.group(2)), tzinfo=UTC))
    m = re.search(r"(\d{1,2})(?:st|nd|rd|th)?\s+" + _MON + r",?\s+(\d{4})", q)
    if m:
        return _day(datetime(int(m.group(3)), _MNUM[m.group(2)], int(m.group(1)), tzinfo=UTC))
    m = re.search(_MON + r",?\s+(\d{4})", q)
    if m:
        return _month(int(m.group(2)), _MNUM[m.group(1)])
    m = re.search(r"\blast\s+" + _MON + r"\b", q)
    if m:  # the latest such month before the latest conversation's month
        month = _MNUM[m.group(1)]
        year = anchor.year if month < anchor.month else anchor.year - 1
        return _month(year, month)
    m = re.search(r"\b(?:in|during|of|since|early|late|mid|this)\s+" + _MON + r"\b", q)
    if m:
        month = _MNUM[m.group(1)]
        return _month(year_for(month), month)
    lower = q.lower()
    if re.search(r"\byesterday\b", lower):
        return _day(anchor - timedelta(days=1))
    if re.search(r"\btoday\b", lower):
        return _day(anchor)
    m = re.search(r"\blast\s+(monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", lower)
    if m:
        back = (anchor.weekday() - _WEEKDAYS[m.group(1)]) % 7 or 7
        return _day(anchor - timedelta(days=back))
    m = re.search(r"\blast\s+(week|month|year|weekend)\b", lower)
    if m:
        unit = m.group(1)
        if unit == "month":
            first = anchor.replace(day=1) - timedelta(days=1)
            return _month(first.year, first.month)
        if unit == "year":
            return _span(
                datetime(anchor.year - 1, 1, 1, tzinfo=UTC), datetime(anchor.year - 1, 12, 31, 23, 59, tzinfo=UTC)
            )
        monday = (anchor - timedelta(days=anchor.weekday() + 7)).replace(hour=0, minute=0, second=0, microsecond=0)
        start = monday + timedelta(days=5) if unit == "weekend" else monday
        return _span(start, monday + timedelta(days=7) - timedelta(seconds=1))
    m = re.search(
        r"\b(\d+|an?|one|two|three|four|five|six|few|couple)\s+(?:of\s+)?(day|week|month|year)s?\s+ago\b", lower
    )
    if m:
        days_back = _amount(m.group(1)) * _UNITS[m.group(2)]
        centre = anchor - timedelta(days=days_back)
        slack = max(1, days_back // 4)
        return _span(centre - timedelta(days=slack), centre + timedelta(days=slack + 1))
    m = re.search(r"\b(spring|summer|fall|autumn|winter)\b(?:\s+of\s+(\d{4}))?", q, re.I)
    if m and not re.search(r"\bplans?\b", q, re.I):  # "plans for the summer" is about the future
        a, b = _SEASONS[m.group(1).lower()]
        year = int(m.group(2)) if m.group(2) else year_for(a)
        if a <= b:
            return _span(datetime(year, a, 1, tzinfo=UTC), datetime.fromtimestamp(_month(year, b)[1], tz=UTC))
        return _span(datetime(year, 12, 1, tzinfo=UTC), datetime.fromtimestamp(_month(year + 1, 2)[1], tz=UTC))
    m = re.search(r"\b(?:in|during|of)\s+((?:19|20)\d\d)\b", q)
    if m:
        year = int(m.group(1))
        return _span(datetime(year, 1, 1, tzinfo=UTC), datetime(year, 12, 31, 23, 59, tzinfo=UTC))
    return None
