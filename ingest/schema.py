"""Typed contracts between the ingest stages."""

from __future__ import annotations

import msgspec

__all__ = ["AsrSegment", "AsrWord", "Utterance"]

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
