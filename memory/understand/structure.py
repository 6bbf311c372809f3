"""A closed conversation understood: OMI's ``structured`` summary, and the facts it reveals.

With the configured model (``LLM_BASE_URL``, OpenAI-compatible chat completions) one request
asks for a JSON object: title, overview, emoji, category, action items and events, and facts
about the user, each new or replacing one of the user's current facts (given by id). With no
model reachable, or an answer that is not such an object, :func:`extractive` still gives a
title and an overview from the conversation's own sentences (no facts: those need a model).

Usage::

    llm = Structurer(base_url, model, api_key)
    understood = await llm.understand(conversation, current_facts)
    understood.structured["title"], understood.facts, understood.by  # "llm" or "extractive"
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from core.conversation import Conversation
from core.segments import speaker_of
from memory.search.words import content_terms
from memory.store.facts import CATEGORIES, Fact, FactChange

__all__ = ["MARKER", "OMI_CATEGORIES", "Structurer", "Understood", "extractive", "parse_answer", "transcript"]

log = logging.getLogger(__name__)

MARKER = "omi-letta: understand a conversation"
"""The first words of the system prompt (the tests' stand-in model answers by it)."""
OMI_CATEGORIES = (
    "personal", "education", "health", "finance", "legal", "philosophy", "spiritual", "science",
    "entrepreneurship", "parenting", "romance", "travel", "inspiration", "technology", "business",
    "social", "work", "sports", "politics", "literature", "history", "architecture", "music",
    "weather", "news", "entertainment", "psychology", "real", "design", "family", "economics",
    "environment", "other",
)  # fmt: skip
MAX_TRANSCRIPT_CHARS = 24_000  # the start and the end of a longer conversation are sent
_ACTION = re.compile(
    r"\b(i'll|i will|i need to|i have to|i must|remind me|remember to|don't forget|we should|let's)\b", re.I
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

PROMPT = f"""{MARKER}.
You read the transcript of one conversation the user took part in (the user is "me" or the
speaker marked as the user). Answer with one JSON object and nothing else:
{{"title": "at most 8 words", "overview": "2-4 sentences: what was discussed and decided",
  "emoji": "one emoji", "category": "one of: {", ".join(OMI_CATEGORIES)}",
  "action_items": [{{"description": "a task someone committed to"}}],
  "events": [{{"title": "...", "description": "...", "start": "ISO 8601 date-time", "duration": minutes}}],
  "facts": [{{"content": "a lasting fact about the user, one short sentence", "category": "one of:
  {", ".join(CATEGORIES)}", "replaces": "the id of a current fact this one corrects or updates, or null"}}]}}
Facts are only about the user (who they are, people in their life, preferences, plans, work);
leave out what is already a current fact in the same words. Empty lists are fine."""


class Understood(msgspec.Struct, frozen=True, kw_only=True):
    """The ``structured`` summary (OMI's fields) and the facts proposed; ``by``: "llm" or "extractive"."""

    structured: dict[str, Any]
    facts: list[FactChange]
    by: str


def transcript(conversation: Conversation, limit: int = MAX_TRANSCRIPT_CHARS) -> str:
    """The conversation as "speaker: text" lines, with its date; the middle cut out when too long."""
    when = datetime.fromtimestamp(conversation.started_at, tz=UTC).strftime("%A %d %B %Y, %H:%M UTC")
    lines = [
        f"{'me' if s.is_user else speaker_of(s)}: {s.text.strip()}" for s in conversation.segments if s.text.strip()
    ]
    text = "\n".join(lines)
    if len(text) > limit:
        text = text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]
    return f"Conversation of {when}:\n{text}"


def extractive(conversation: Conversation) -> dict[str, Any]:
    """Title and overview from the conversation's own sentences, those whose words recur most."""
    sentences = [
        (speaker_of(s), part.strip())
        for s in conversation.segments
        for part in _SENTENCE.split(s.text.strip())
        if len(part.split()) >= 3
    ]
    if not sentences:
        words = " ".join(s.text.strip() for s in conversation.segments).strip()
        return _structured(title=_cut(words, 8) or "Conversation", overview=words[:400], action_items=[])
    freq = Counter(t for _, text in sentences for t in set(content_terms(text)))

    def weight(text: str) -> float:
        terms = set(content_terms(text))
        return sum(freq[t] - 1 for t in terms) / math.sqrt(len(terms) + 1)

    ranked = sorted(range(len(sentences)), key=lambda i: (-weight(sentences[i][1]), i))
    title = _cut(sentences[ranked[0]][1].rstrip(".!?"), 8)
    chosen = sorted(ranked[:3])
    overview = " ".join(sentences[i][1] for i in chosen)[:600]  # no names: a relabel would leave them stale
    actions = [{"description": text, "completed": False} for _, text in sentences if _ACTION.search(text)][:5]
    return _structured(title=title, overview=overview, action_items=actions)


def _cut(text: str, words: int) -> str:
    parts = text.split()
    out = " ".join(parts[:words])
    return out + ("…" if len(parts) > words else "")


def _structured(*, title: str, overview: str, action_items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "title": title[:1].upper() + title[1:],
        "overview": overview,
        "emoji": "🧠",
        "category": "other",
        "action_items": action_items,
        "events": [],
    }


def parse_answer(text: str, current: Sequence[Fact]) -> Understood | None:
    """The model's JSON answer as :class:`Understood`, or None when it is not the object asked for."""
    match = re.search(r"\{.*\}", text, re.S)
    if match is None:
        return None
    try:
        raw = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or not str(raw.get("title") or "").strip():
        return None
    known = {f.id for f in current}
    category = str(raw.get("category") or "other").strip().lower()
    actions = [
        {"description": str(a.get("description") if isinstance(a, dict) else a).strip(), "completed": False}
        for a in raw.get("action_items") or []
        if (a.get("description") if isinstance(a, dict) else a)
    ]
    events = [
        {
            "title": str(e.get("title") or "").strip(),
            "description": str(e.get("description") or "").strip(),
            "start": str(e.get("start") or ""),
            "duration": int(e.get("duration") or 30) if str(e.get("duration") or "30").isdigit() else 30,
            "created": False,
        }
        for e in raw.get("events") or []
        if isinstance(e, dict) and str(e.get("title") or "").strip()
    ]
    structured = {
        "title": str(raw["title"]).strip()[:120],
        "overview": str(raw.get("overview") or "").strip(),
        "emoji": str(raw.get("emoji") or "🧠").strip()[:8],
        "category": category if category in OMI_CATEGORIES else "other",
        "action_items": actions,
        "events": events,
    }
    facts = []
    for f in raw.get("facts") or []:
        content = str(f.get("content") if isinstance(f, dict) else f).strip()
        if not content:
            continue
        replaces = f.get("replaces") if isinstance(f, dict) else None
        facts.append(
            FactChange(
                content=content,
                category=str(f.get("category") or "other") if isinstance(f, dict) else "other",
                replaces=str(replaces) if replaces and str(replaces) in known else None,
            )
        )
    return Understood(structured=structured, facts=facts, by="llm")


class Structurer:
    """Asks the configured model to understand a conversation; falls back to :func:`extractive`.

    ``base_url`` empty means no model: every conversation gets the extractive summary at once.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "", *, timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = httpx.Timeout(timeout_s, connect=3.0)
        self._down_warned = False

    async def understand(self, conversation: Conversation, current: Sequence[Fact] = ()) -> Understood:
        """The conversation's ``structured`` summary and the facts it reveals (never raises for the model)."""
        if self.base_url:
            try:
                answer = await self._ask(conversation, current)
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
                if not self._down_warned:
                    log.warning("the model at LLM_BASE_URL did not answer (%s): extractive summaries", exc)
                    self._down_warned = True
                answer = None
            if answer is not None:
                return answer
        return Understood(structured=extractive(conversation), facts=[], by="extractive")

    async def _ask(self, conversation: Conversation, current: Sequence[Fact]) -> Understood | None:
        facts = "\n".join(f"- id {f.id}: {f.content}" for f in current[:200]) or "(none yet)"
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": f"The user's current facts:\n{facts}\n\n{transcript(conversation)}"},
            ],
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"] or ""
        parsed = parse_answer(text, current)
        if parsed is None:
            log.warning("the model's answer was not the JSON asked for: extractive summary of %s", conversation.id)
        return parsed
