"""OMI transcript segments and the OMI rules for merging consecutive turns of one speaker."""

from __future__ import annotations

import uuid

import msgspec

__all__ = ["AbsoluteSegment", "TranscriptSegment", "combine_segments", "speaker_label", "speaker_name", "speaker_of"]

MERGE_GAP_S = 3.0
LONG_TEXT_CHARS = 125
TERMINAL = (".", "?", "!")


def speaker_label(speaker_id: int) -> str:
    """``SPEAKER_n``, as the OMI backend's Deepgram path writes it."""
    return f"SPEAKER_{speaker_id}"


def speaker_name(speaker_id: int, *, is_user: bool = False, name: str | None = None) -> str:
    """How a speaker reads to people: ``me`` for the wearer, a known person's name, else ``Speaker n``."""
    if is_user:
        return "me"
    return name or f"Speaker {speaker_id}"


class TranscriptSegment(msgspec.Struct, kw_only=True):
    """One transcript segment exactly as the OMI app expects it (times relative to the conversation)."""

    id: str = msgspec.field(default_factory=lambda: str(uuid.uuid4()))
    text: str
    speaker: str = "SPEAKER_0"
    speaker_id: int = 0
    is_user: bool = False
    person_id: str | None = None
    start: float
    end: float
    translations: list[dict[str, str]] = msgspec.field(default_factory=list)
    speech_profile_processed: bool = True
    stt_provider: str | None = None
    speaker_name: str | None = None  # ours: `me`, a known person's name, or `Speaker n`


def speaker_of(segment: TranscriptSegment) -> str:
    """The name a segment's speaker goes by: ``me``, a known person's name, or ``Speaker n``."""
    return segment.speaker_name or speaker_name(segment.speaker_id, is_user=segment.is_user)


class AbsoluteSegment(msgspec.Struct, frozen=True):
    """A recognised segment with epoch-second times, before it joins a conversation."""

    id: str
    text: str
    start: float
    end: float
    speaker_id: int
    is_user: bool
    stt_provider: str | None
    person_id: str | None = None
    speaker_name: str | None = None


def _mergeable(prev: TranscriptSegment, nxt: TranscriptSegment) -> bool:
    if prev.speaker != nxt.speaker or prev.is_user != nxt.is_user or prev.person_id != nxt.person_id:
        return False
    if prev.stt_provider != nxt.stt_provider or prev.speech_profile_processed != nxt.speech_profile_processed:
        return False
    if nxt.start - prev.end >= MERGE_GAP_S:
        return False
    text = prev.text.strip()
    starts_lower = nxt.text[:1].islower()
    return len(text) < LONG_TEXT_CHARS or not text.endswith(TERMINAL) or starts_lower


def combine_segments(
    existing: list[TranscriptSegment], new: list[TranscriptSegment]
) -> tuple[list[TranscriptSegment], list[TranscriptSegment]]:
    """Append ``new`` to ``existing`` by the OMI rules.

    A new segment merges into the one before it when the speaker is the same, the gap is under
    3 s, and that segment is short (< 125 characters), lacks terminal punctuation, or the new text
    starts in lower case. Segments of different ``stt_provider`` never merge.

    Returns:
        The full list, and the segments that changed or were added (to send and store).
    """
    combined = list(existing)
    changed: dict[str, TranscriptSegment] = {}
    for seg in new:
        if combined and _mergeable(combined[-1], seg):
            prev = combined[-1]
            merged = msgspec.structs.replace(
                prev, text=f"{prev.text.rstrip()} {seg.text.lstrip()}".strip(), end=max(prev.end, seg.end)
            )
            combined[-1] = merged
            changed[merged.id] = merged
        else:
            combined.append(seg)
            changed[seg.id] = seg
    return combined, list(changed.values())
