"""The OMI cloud's webhook bodies, validated whole, and turned into our segments and conversations.

Ids from the cloud are namespaced per user (:func:`local_id`), so a repeated delivery updates what
it delivered before and changes nothing when it is the same. A body that does not validate gets
422 naming the field at fault.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar.exceptions import HTTPException

from core.conversation import Conversation
from core.segments import TranscriptSegment, speaker_label, speaker_name

__all__ = [
    "OmiConversation",
    "OmiDaySummary",
    "OmiRealtime",
    "OmiSegment",
    "decode_body",
    "epoch",
    "imported",
    "local_id",
    "omi_segment",
    "segment_ids",
    "unprocessable",
]

UNPROCESSABLE = 422
MAX_SEGMENT_S = 7 * 86_400.0  # segment times count from the conversation's start; none lasts a week
LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()  # times must lie in 1970–2100, so they can be shown
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "omi-letta:omi-webhooks")
_SPEAKER = re.compile(r"SPEAKER_(\d{1,4})")


def local_id(uid: str, *parts: str) -> str:
    """Our id for something of ``uid``'s in the OMI cloud: the same for the same user and id, never another user's."""
    return str(uuid.uuid5(_NAMESPACE, "\n".join((uid, *parts))))


# --- payloads (OMI protocol notes §3.2–3.5) --------------------------------------------------


class OmiTranslation(msgspec.Struct):
    """A segment's text in another language."""

    lang: str
    text: str


class OmiSegment(msgspec.Struct, kw_only=True):
    """A ``TranscriptSegment`` as the OMI cloud sends it; times in seconds from the conversation's start."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    text: str
    speaker: Annotated[str, msgspec.Meta(max_length=32)] | None = "SPEAKER_00"
    speaker_id: Annotated[int, msgspec.Meta(ge=0, le=9999)] | None = None
    speaker_id_camel: Annotated[int, msgspec.Meta(ge=0, le=9999)] | None = msgspec.field(
        default=None, name="speakerId"
    )  # the docs' spelling
    is_user: bool = False
    person_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    start: Annotated[float, msgspec.Meta(ge=-MAX_SEGMENT_S, le=MAX_SEGMENT_S)]
    end: Annotated[float, msgspec.Meta(ge=-MAX_SEGMENT_S, le=MAX_SEGMENT_S)]
    translations: list[OmiTranslation] = []
    speech_profile_processed: bool = True
    stt_provider: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    speaker_name: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class OmiActionItem(msgspec.Struct, kw_only=True):
    """An action item of a conversation's summary."""

    description: str
    completed: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    due_at: str | None = None
    completed_at: str | None = None
    conversation_id: str | None = None


class OmiEvent(msgspec.Struct, kw_only=True):
    """A calendar event a conversation's summary proposes."""

    title: str
    description: str = ""
    start: str | None = None
    duration: float = 30
    created: bool = False


class OmiStructured(msgspec.Struct, kw_only=True):
    """A conversation's summary, as the OMI cloud made it."""

    title: str = ""
    overview: str = ""
    emoji: str = "🧠"
    category: str = "other"
    action_items: list[OmiActionItem] = []
    events: list[OmiEvent] = []


class OmiConversation(msgspec.Struct, kw_only=True):
    """The ``memory_created`` body: a whole ``Conversation`` (fields we do not keep are ignored)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    source: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    language: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    structured: OmiStructured = msgspec.field(default_factory=OmiStructured)
    transcript_segments: list[OmiSegment] = []
    discarded: bool = False


class OmiRealtime(msgspec.Struct, kw_only=True):
    """The ``realtime_transcript`` body as the cloud's code sends it (``session_id`` is the uid)."""

    segments: list[OmiSegment]
    session_id: str | None = None


class OmiDaySummary(msgspec.Struct, kw_only=True):
    """The ``day_summary`` body."""

    summary: str
    uid: str | None = None
    created_at: datetime | None = None
    summary_json: dict[str, Any] | None = None


def decode_body(body: bytes, kind: Any) -> Any:
    """``body`` as ``kind``, or 422 naming the field at fault."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in message else "$"
        missing = re.search(r"missing required field `([^`]+)`", message)
        field = f"{path}.{missing.group(1)}" if missing else path
        raise HTTPException(
            status_code=UNPROCESSABLE, detail=f"invalid body: {message}", extra={"field": field}
        ) from None
    except msgspec.DecodeError as exc:
        raise HTTPException(
            status_code=UNPROCESSABLE, detail=f"the body is not JSON: {exc}", extra={"field": "$"}
        ) from None


def unprocessable(detail: str, field: str) -> HTTPException:
    return HTTPException(status_code=UNPROCESSABLE, detail=detail, extra={"field": field})


def epoch(when: datetime | None, field: str) -> float | None:
    """``when`` (UTC unless it says otherwise) as epoch seconds; 422 naming ``field`` if it is not in 1970–2100."""
    if when is None:
        return None
    ts = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not 0 <= ts < LATEST:
        raise unprocessable(f"{field[2:]} must lie between 1970 and 2100, not {when.isoformat()}", field)
    return ts


def _speaker_id(seg: OmiSegment) -> int:
    """OMI recomputes ``speaker_id`` from the ``SPEAKER_n`` label; without one, the id sent."""
    match = _SPEAKER.fullmatch(seg.speaker or "")
    if match:
        return int(match.group(1))
    if seg.speaker_id is not None:
        return seg.speaker_id
    return seg.speaker_id_camel or 0


def omi_segment(seg: OmiSegment, segment_id: str, offset: float) -> TranscriptSegment:
    """Our segment of an OMI one, its times shifted by ``offset`` seconds."""
    speaker = _speaker_id(seg)
    start = max(0.0, seg.start)
    named = (seg.speaker_name or "").strip() or None
    return TranscriptSegment(
        id=segment_id,
        text=seg.text,
        speaker=speaker_label(speaker),
        speaker_id=speaker,
        is_user=seg.is_user,
        person_id=seg.person_id,
        start=offset + start,
        end=offset + max(start, seg.end),
        translations=[{"lang": t.lang, "text": t.text} for t in seg.translations],
        speech_profile_processed=seg.speech_profile_processed,
        stt_provider=seg.stt_provider,
        speaker_name=speaker_name(speaker, is_user=seg.is_user, name=named),
    )


def segment_ids(uid: str, segments: list[OmiSegment], *, scope: str | None = None) -> list[str]:
    """Our ids of the segments. One without an id is known by its place in ``scope`` (a conversation),
    else by its times, speaker and words."""
    return [
        local_id(uid, seg.id)
        if seg.id
        else local_id(uid, scope, f"#{i}")
        if scope
        else local_id(uid, "segment", repr((seg.start, seg.end, seg.speaker, seg.text)))
        for i, seg in enumerate(segments)
    ]


def imported(uid: str, memory: OmiConversation, now: float) -> Conversation:
    """The ``memory_created`` conversation as ours (not stored yet); 422 if its segment ids repeat."""
    ids = segment_ids(uid, memory.transcript_segments, scope=f"conversation:{memory.id}")
    seen: set[str] = set()
    for i, sid in enumerate(ids):
        if sid in seen:
            field = f"$.transcript_segments[{i}].id"
            raise unprocessable(f"segment id {memory.transcript_segments[i].id!r} repeats", field)
        seen.add(sid)
    segments = [omi_segment(seg, sid, 0.0) for seg, sid in zip(memory.transcript_segments, ids, strict=True)]
    created = epoch(memory.created_at, "$.created_at") or now
    started = epoch(memory.started_at, "$.started_at") or created
    finished = epoch(memory.finished_at, "$.finished_at") or started + max((s.end for s in segments), default=0.0)
    return Conversation(
        id=local_id(uid, "conversation", memory.id),
        uid=uid,
        status="completed",
        source=memory.source or "omi",
        language=memory.language or "en",
        created_at=created,
        started_at=started,
        finished_at=max(finished, started),
        last_speech_at=max(finished, started),
        timeout_s=0,
        discarded=memory.discarded,
        segments=segments,
        structured=msgspec.to_builtins(memory.structured),
        external_id=memory.id,
    )
