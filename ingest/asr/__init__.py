"""Speech-to-text engines behind one small interface; settings choose one at startup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.asr.base import SpeechToText

if TYPE_CHECKING:
    from app.settings import AsrSettings

__all__ = ["SpeechToText", "load_asr"]


def load_asr(settings: AsrSettings) -> SpeechToText:
    """Construct the engine named by ``STT_BACKEND``."""
    if settings.backend == "faster-whisper":
        from ingest.asr.faster_whisper import FasterWhisper

        return FasterWhisper.from_settings(settings)
    raise ValueError(f"STT_BACKEND must be one of: faster-whisper (got {settings.backend!r})")
