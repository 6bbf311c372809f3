"""Errors raised by the ingest pipeline.

IngestError                 root; carries ``detail``
├── UnsupportedAudioError   codec, sample rate or language the stream cannot take
├── DecodeError             one frame or file could not be decoded
├── NotEnoughSpeechError    a voice enrollment has too little speech to build a profile from
├── MissingDependencyError  a system library (libopus) or model is not installed
└── SpeechToTextError       a streaming speech-to-text service refused or dropped a stream
"""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "IngestError",
    "MissingDependencyError",
    "NotEnoughSpeechError",
    "SpeechToTextError",
    "UnsupportedAudioError",
]


class IngestError(Exception):
    """Root of ingest errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnsupportedAudioError(IngestError):
    """The stream asks for a codec, sample rate or language we cannot handle."""


class DecodeError(IngestError):
    """A frame or file could not be decoded."""


class NotEnoughSpeechError(IngestError):
    """The audio holds too little speech to build a voice profile from."""


class MissingDependencyError(IngestError):
    """A system library or model is missing; the message says what to install."""


class SpeechToTextError(IngestError):
    """A streaming speech-to-text service refused or dropped a stream.

    ``retryable`` is false when trying again cannot help (a rejected API key, a bad option).
    """

    def __init__(self, detail: str, *, retryable: bool) -> None:
        super().__init__(detail)
        self.retryable = retryable
