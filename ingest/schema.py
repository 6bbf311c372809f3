"""Typed contracts between the ingest stages."""

from __future__ import annotations

import msgspec

__all__ = ["AsrSegment", "AsrWord", "StreamingResult", "StreamingWord", "Utterance"]

SAMPLE_RATE = 16_000
"""Every stage after decoding works on 16 kHz mono float32 audio."""


class Utterance(msgspec.Struct, frozen=True):
    """A span of speech found by the VAD, in seconds since the stream began."""

    id: str
    start: float
    end: float
    final: bool


class AsrWord(msgspec.Struct, frozen=True):
    """One recognised word (with its leading space, as Whisper writes it); times as its segment's."""

    start: float
    end: float
    text: str


class AsrSegment(msgspec.Struct, frozen=True):
    """One piece of recognised text; times in seconds relative to the audio given to the engine."""

    start: float
    end: float
    text: str
    words: tuple[AsrWord, ...] = ()


class StreamingWord(msgspec.Struct, frozen=True):
    """One word from a streaming speech-to-text service, with the speaker it told apart."""

    start: float
    end: float
    text: str  # punctuated and formatted where the service does that
    speaker: int = 0


class StreamingResult(msgspec.Struct, frozen=True):
    """A streaming service's transcript of one span of the audio sent on a connection.

    Times are seconds since the first audio sent on that connection. A ``final`` result's words
    will not change, and the audio up to ``end`` is fully transcribed; a non-final (interim)
    result is superseded by later ones. ``speech_final`` marks the end of an utterance.
    """

    start: float
    end: float
    words: tuple[StreamingWord, ...]
    final: bool
    speech_final: bool = False
