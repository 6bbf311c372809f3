"""How a conversation reads in a Letta agent's archival memory: grouped turns, and a summary line.

Turns are grouped greedily from the conversation's start into passages of at most ``max_chars``,
one line per turn (``[2025-10-28 10:02] Diane: …``) under a header naming the conversation.
A group's key is a hash of its text, so the same turns read the same way always give the same
key: the sink compares keys with what the agent holds, inserts what is missing and deletes what
is stale. Appending a turn changes only the last group; a relabel rewrites the groups it touches.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import UTC, datetime

import msgspec

from core.conversation import Conversation
from core.segments import TranscriptSegment, speaker_of

__all__ = ["PassageGroup", "group_turns", "recent_block", "summary_group", "summary_line"]

_WORD = re.compile(r"[^\W\d_][\w'-]{2,}", re.UNICODE)
# Words too common to say what a conversation was about.
_COMMON = frozenset(
    """about above after again against all also and any are because been before being below between both but can
    could did does doing down during each even every few for from further had has have having her here hers him his
    how into its itself just know like little lot made make many may might more most much must now off once only
    other our ours out over own really right said same say says see she should some something still such than that
    the their them then there these they thing things think this those though through too under until very was way
    well were what when where which while who whom why will with would yeah yes you your yours okay going get got
    gonna want one two well oh hello sure thank thanks""".split()  # noqa: SIM905 - a word list reads better as text
)


class PassageGroup(msgspec.Struct, frozen=True, kw_only=True):
    """One archival passage: consecutive turns of one conversation."""

    key: str
    text: str
    tags: list[str]
    created_at: str  # ISO 8601, when its first words were spoken
    turn_ids: list[str]


def _minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _header(conversation: Conversation) -> str:
    return f"Conversation {conversation.id[:8]} ({_minute(conversation.started_at)} UTC):"


def group_turns(conversation: Conversation, max_chars: int) -> list[PassageGroup]:
    """The conversation's turns as passages of at most ``max_chars`` (a longer single turn stands alone)."""
    header = _header(conversation)
    groups: list[list[tuple[TranscriptSegment, str]]] = []
    size = 0
    for segment in conversation.segments:
        text = segment.text.strip()
        if not text:
            continue
        line = f"[{_minute(conversation.started_at + segment.start)}] {speaker_of(segment)}: {text}"
        if not groups or size + 1 + len(line) > max_chars:
            groups.append([])
            size = len(header)
        groups[-1].append((segment, line))
        size += 1 + len(line)
    return [_group(conversation, header, lines) for lines in groups]


def _group(conversation: Conversation, header: str, lines: list[tuple[TranscriptSegment, str]]) -> PassageGroup:
    text = "\n".join([header, *(line for _, line in lines)])
    turn_ids = [segment.id for segment, _ in lines]
    key = hashlib.sha256("\0".join([conversation.id, text, *turn_ids]).encode()).hexdigest()[:32]
    speakers = sorted({speaker_of(segment) for segment, _ in lines})
    first = conversation.started_at + lines[0][0].start
    return PassageGroup(
        key=key,
        text=text,
        tags=[
            "omi",
            f"conv:{conversation.id}",
            *(f"speaker:{s}" for s in speakers),
            *(f"turn:{t}" for t in turn_ids),
            f"grp:{key}",
        ],
        created_at=datetime.fromtimestamp(first, tz=UTC).isoformat(),
        turn_ids=turn_ids,
    )


def summary_group(conversation: Conversation) -> PassageGroup | None:
    """The conversation's ``structured`` summary (title, overview, action items, events) as one
    passage tagged ``summary``, or None when it has none."""
    structured = conversation.structured or {}
    title = str(structured.get("title") or "").strip()
    overview = str(structured.get("overview") or "").strip()
    if not title and not overview:
        return None
    lines = [f"Summary of conversation {conversation.id[:8]} ({_minute(conversation.started_at)} UTC): {title}"]
    lines += [overview] if overview else []
    for item in structured.get("action_items") or []:
        text = str(item.get("description", "") if isinstance(item, dict) else item).strip()
        lines += [f"Action item: {text}"] if text else []
    for event in structured.get("events") or []:
        if isinstance(event, dict) and str(event.get("title") or "").strip():
            lines.append(f"Event: {event['title']} {event.get('start') or ''}".rstrip())
    text = "\n".join(lines)
    key = hashlib.sha256("\0".join(["summary", conversation.id, text]).encode()).hexdigest()[:32]
    return PassageGroup(
        key=key,
        text=text,
        tags=["omi", f"conv:{conversation.id}", "summary", f"grp:{key}"],
        created_at=datetime.fromtimestamp(conversation.started_at, tz=UTC).isoformat(),
        turn_ids=[],
    )


def _topics(conversation: Conversation, count: int = 5) -> list[str]:
    """The conversation's most frequent uncommon words, a cheap stand-in for what it was about."""
    names = {speaker_of(s).lower() for s in conversation.segments}
    words = Counter(
        w.lower()
        for s in conversation.segments
        for w in _WORD.findall(s.text)
        if w.lower() not in _COMMON and w.lower() not in names
    )
    return [w for w, _ in words.most_common(count)]


def summary_line(conversation: Conversation) -> str:
    """One line for the ``recent_conversations`` block: when, who, how long, what about."""
    minutes = max(1, round((conversation.finished_at - conversation.started_at) / 60))
    speakers = sorted({speaker_of(s) for s in conversation.segments}, key=lambda n: (n != "me", n))
    end = datetime.fromtimestamp(conversation.finished_at, tz=UTC).strftime("%H:%M")
    title = str((conversation.structured or {}).get("title") or "").strip()
    topics = title or ", ".join(_topics(conversation)) or "(no words)"  # OMI's own title, when it sent one
    return (
        f"- {_minute(conversation.started_at)}–{end} UTC ({minutes} min, {len(conversation.segments)} turns) "
        f"with {', '.join(speakers)}; about: {topics} [conv:{conversation.id}]"
    )


def recent_block(conversations: list[Conversation], limit_chars: int) -> str:
    """The ``recent_conversations`` block value: newest first, cut to ``limit_chars``."""
    lines = ["Recent conversations heard by the wearer's OMI device (newest first; `me` is the wearer):"]
    size = len(lines[0])
    for conversation in conversations:
        line = summary_line(conversation)
        if size + 1 + len(line) > limit_chars:
            break
        lines.append(line)
        size += 1 + len(line)
    if len(lines) == 1:
        lines.append("(none yet)")
    return "\n".join(lines)
