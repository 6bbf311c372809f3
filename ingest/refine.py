"""The text refinement pass: when a conversation closes, its speech is transcribed again by a stronger engine.

Live streams transcribe each utterance as it ends, with an engine fast enough for real time.
With ``STT_REFINE_BACKEND`` set, a stream also keeps the audio of its final utterances in memory
(:class:`KeptSpeech`, bounded per user), and when the conversation closes :class:`TextRefiner`
transcribes each segment's speech again (WhisperX on a GPU, say) and replaces the text where the
new transcript differs. Speakers, ids and times stay as they are. A segment that shares an
utterance with another segment (a speaker change inside one utterance) keeps its live text,
since the utterance's new transcript cannot be split between them. The audio is dropped once
the conversation is refined, and never written anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from core.conversation import Conversation
from core.segments import TranscriptSegment
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from core.metrics import Metrics
    from ingest.asr.stt import SpeechToText

__all__ = ["KeptSpeech", "Refiner", "TextRefiner", "chain"]

log = logging.getLogger(__name__)

Refiner = Callable[[str, Conversation], Awaitable[list[TranscriptSegment]]]


@dataclass(frozen=True)
class _Kept:
    start: float  # epoch seconds
    pcm: NDArray[np.int16]

    @property
    def end(self) -> float:
        return self.start + len(self.pcm) / SAMPLE_RATE


class KeptSpeech:
    """Each user's recent final utterances (16 kHz int16), at most ``max_seconds`` per user, oldest dropped."""

    def __init__(self, max_seconds: float = 7200.0) -> None:
        self.max_seconds = max_seconds
        self._kept: defaultdict[str, deque[_Kept]] = defaultdict(deque)
        self._seconds: defaultdict[str, float] = defaultdict(float)

    def add(self, uid: str, start: float, audio: NDArray[np.float32]) -> None:
        """Keep one utterance that starts at epoch ``start``."""
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        kept = self._kept[uid]
        kept.append(_Kept(start, pcm))
        self._seconds[uid] += len(pcm) / SAMPLE_RATE
        while self._seconds[uid] > self.max_seconds and len(kept) > 1:
            self._seconds[uid] -= len(kept.popleft().pcm) / SAMPLE_RATE

    def overlapping(self, uid: str, start: float, end: float) -> list[_Kept]:
        """The kept utterances that overlap ``[start, end]`` (epoch seconds), in order."""
        return [k for k in self._kept.get(uid, ()) if k.start < end and k.end > start]

    def forget(self, uid: str, until: float) -> None:
        """Drop the user's utterances that end by ``until``."""
        kept = self._kept.get(uid)
        if not kept:
            return
        left = deque(k for k in kept if k.end > until)
        self._kept[uid] = left
        self._seconds[uid] = sum(len(k.pcm) for k in left) / SAMPLE_RATE

    def expire(self, until: float) -> None:
        """Drop every user's utterances that end by ``until`` (older than the retention period)."""
        for uid in list(self._kept):
            self.forget(uid, until)

    def seconds(self, uid: str) -> float:
        """How much of the user's speech is kept."""
        return self._seconds.get(uid, 0.0)


class TextRefiner:
    """Transcribes a closing conversation's kept speech again with ``engine``; returns the changed segments."""

    def __init__(self, engine: SpeechToText, kept: KeptSpeech, *, language: str = "en", metrics: Metrics | None = None):
        self.engine = engine
        self.kept = kept
        self.language = language
        self.metrics = metrics

    async def __call__(self, uid: str, conversation: Conversation) -> list[TranscriptSegment]:
        try:
            return await self._refine(uid, conversation)
        finally:
            self.kept.forget(uid, conversation.finished_at + 1.0)

    async def _refine(self, uid: str, conversation: Conversation) -> list[TranscriptSegment]:
        base = conversation.started_at
        owners: defaultdict[int, list[str]] = defaultdict(list)  # utterance -> the segments it overlaps
        spans: dict[str, list[_Kept]] = {}
        for seg in conversation.segments:
            found = self.kept.overlapping(uid, base + seg.start, base + seg.end)
            spans[seg.id] = found
            for k in found:
                owners[id(k)].append(seg.id)
        language = conversation.language if self.engine.supports_language(conversation.language) else self.language
        changed: list[TranscriptSegment] = []
        redone = 0
        for seg in conversation.segments:
            found = spans[seg.id]
            if not found or any(owners[id(k)] != [seg.id] for k in found):
                continue
            audio = (np.concatenate([k.pcm for k in found]) / np.float32(32767)).astype(np.float32)
            pieces = await asyncio.to_thread(self.engine.transcribe, audio, language, timestamps=False)
            redone += 1
            text = " " + " ".join(p.text.strip() for p in pieces if p.text.strip())
            if text.strip() and text.strip() != seg.text.strip():
                changed.append(msgspec.structs.replace(seg, text=text, stt_provider=self.engine.name))
        if self.metrics is not None:
            self.metrics.inc("refine_segments_total", redone)
            self.metrics.inc("refine_segments_changed_total", len(changed))
        log.info(
            "conversation %s: %d segment(s) transcribed again by %s, %d changed",
            conversation.id,
            redone,
            self.engine.name,
            len(changed),
        )
        return changed


def chain(*refiners: Refiner) -> Refiner:
    """One refiner running ``refiners`` in turn, each on the segments as the ones before left them."""

    async def refine(uid: str, conversation: Conversation) -> list[TranscriptSegment]:
        changed: dict[str, TranscriptSegment] = {}
        for refiner in refiners:
            view = msgspec.structs.replace(conversation, segments=[changed.get(s.id, s) for s in conversation.segments])
            for seg in await refiner(uid, view):
                changed[seg.id] = seg
        return list(changed.values())

    return refine
