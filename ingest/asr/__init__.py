"""Speech-to-text engines behind small interfaces; settings choose one at startup.

Local engines (:class:`SpeechToText`) transcribe whole utterances that the VAD cuts; streaming
services (:class:`StreamingSpeechToText`) take a live stream's audio as it arrives and tell its
speakers apart themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.asr.stt import SpeechToText, StreamingSpeechToText

if TYPE_CHECKING:
    from ingest.ingest_settings import AsrSettings

__all__ = ["SpeechToText", "StreamingSpeechToText", "load_asr", "load_refine_asr", "load_streaming"]


def load_asr(settings: AsrSettings) -> SpeechToText:
    """The local engine: live streams with ``faster-whisper`` or ``whisperx``, and files with any backend.

    Raises:
        MissingDependencyError: ``STT_BACKEND=whisperx`` without the extra installed.
    """
    if settings.backend == "whisperx":
        from ingest.asr.whisperx_backend import WhisperX

        return WhisperX.from_settings(settings)
    if settings.backend in ("faster-whisper", "deepgram"):
        from ingest.asr.faster_whisper import FasterWhisper

        return FasterWhisper.from_settings(settings)
    raise ValueError(f"STT_BACKEND must be one of: faster-whisper, whisperx, deepgram (got {settings.backend!r})")


def load_refine_asr(settings: AsrSettings) -> SpeechToText:
    """The engine of the refinement pass at close: ``STT_REFINE_BACKEND`` with ``STT_REFINE_MODEL``."""
    from dataclasses import replace

    return load_asr(
        replace(
            settings,
            backend=settings.refine_backend,
            model=settings.refine_model or settings.model,
            beam_size=settings.refine_beam_size,
        )
    )


def load_streaming(settings: AsrSettings) -> StreamingSpeechToText | None:
    """The streaming service live streams go to (``STT_BACKEND=deepgram``), or None for the local path."""
    if settings.backend == "deepgram":
        from ingest.asr.deepgram import Deepgram

        return Deepgram.from_settings(settings)
    return None
