"""WhisperX engine (``pip install 'omi-letta[whisperx]'``): batched Whisper on a GPU, with word alignment.

WhisperX runs faster-whisper's CTranslate2 models in batches over voice-active chunks, then aligns
each word with a wav2vec2 model. It suits whole recordings (``omi-letta ingest``) on a GPU. The
alignment model comes from torchaudio or the Hugging Face hub (``WHISPERX_ALIGN_MODEL``), so word
alignment needs those weights on the machine; without them words keep Whisper's own times.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from core.errors import MissingDependencyError
from ingest.asr.faster_whisper import resolve_model
from ingest.asr.stt import SpeechToText
from ingest.schema import SAMPLE_RATE, AsrSegment, AsrWord

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.ingest_settings import AsrSettings

__all__ = ["WhisperX", "segments_from_whisperx"]

INSTALL = "STT_BACKEND=whisperx needs WhisperX: pip install 'omi-letta[whisperx]'"


def segments_from_whisperx(segments: list[dict[str, Any]], *, words: bool) -> list[AsrSegment]:
    """WhisperX's segment dicts as ours. A word WhisperX could not align (digits, symbols) takes the
    end of the word before it, so every word keeps a time within its segment."""
    out: list[AsrSegment] = []
    for seg in segments:
        text = str(seg.get("text") or "")
        if not text.strip():
            continue
        start, end = float(seg["start"]), float(seg["end"])
        found: list[AsrWord] = []
        if words:
            last = start
            for w in seg.get("words") or []:
                w_start = float(w.get("start", last))
                w_end = float(w.get("end", w_start))
                found.append(AsrWord(start=w_start, end=max(w_end, w_start), text=" " + str(w["word"]).strip()))
                last = w_end
        out.append(AsrSegment(start=start, end=end, text=" " + text.strip(), words=tuple(found)))
    return out


class WhisperX(SpeechToText):
    """Whisper through WhisperX. Calls are serialized: one batched pass uses the whole device."""

    name = "whisperx"

    def __init__(self, model: Any, whisperx: Any, *, device: str, batch_size: int, english_only: bool) -> None:
        self._model = model
        self._whisperx = whisperx
        self._device = device
        self._batch_size = batch_size
        self._english_only = english_only
        self._aligners: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> WhisperX:
        """Load ``STT_MODEL`` (the packaged tiny.en, a model name, or a CTranslate2 directory) on ``STT_DEVICE``.

        Raises:
            MissingDependencyError: WhisperX is not installed.
        """
        try:
            import whisperx
        except ImportError as exc:
            raise MissingDependencyError(INSTALL) from exc
        device = settings.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        compute = settings.compute_type if settings.compute_type != "default" else "float16"
        if device == "cpu" and "float16" in compute:
            compute = "int8"
        english_only = settings.model.endswith(".en")
        model = whisperx.load_model(
            resolve_model(settings.model),
            device,
            compute_type=compute,
            language="en" if english_only else None,
            threads=settings.cpu_threads,
        )
        return cls(model, whisperx, device=device, batch_size=16, english_only=english_only)

    def supports_language(self, language: str) -> bool:
        return language == "en" if self._english_only else True

    def transcribe(
        self, audio: NDArray[np.float32], language: str, *, timestamps: bool = True, words: bool = False
    ) -> list[AsrSegment]:
        lang = None if language in ("multi", "auto") else language
        with self._lock:
            result = self._model.transcribe(audio, batch_size=self._batch_size, language=lang)
            segments = list(result.get("segments") or [])
            if words and segments:
                code = str(result.get("language") or lang or "en")
                aligner = self._aligner(code)
                if aligner is not None:
                    model, metadata = aligner
                    aligned = self._whisperx.align(
                        segments, model, metadata, audio, self._device, return_char_alignments=False
                    )
                    segments = list(aligned.get("segments") or segments)
        found = segments_from_whisperx(segments, words=words)
        if not timestamps and found:
            whole = " " + " ".join(s.text.strip() for s in found)
            return [AsrSegment(start=0.0, end=len(audio) / SAMPLE_RATE, text=whole)]
        return found

    def _aligner(self, language: str) -> tuple[Any, Any] | None:
        """The alignment model of ``language``, loaded once; None when its weights are not available."""
        if language not in self._aligners:
            try:
                self._aligners[language] = self._whisperx.load_align_model(language_code=language, device=self._device)
            except (OSError, ValueError):  # no weights here, or no model for the language
                return None
        return self._aligners[language]
