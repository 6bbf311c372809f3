"""The speech-to-text contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.schema import AsrSegment

__all__ = ["SpeechToText"]


class SpeechToText(ABC):
    """Transcribes a whole utterance of 16 kHz mono float32 audio.

    ``transcribe`` is blocking and is called from worker threads, several at once: an engine must
    be thread-safe or serialise internally. ``name`` goes into each segment's ``stt_provider``.
    """

    name: str = "unknown"

    @abstractmethod
    def transcribe(
        self, audio: NDArray[np.float32], language: str, *, timestamps: bool = True, words: bool = False
    ) -> list[AsrSegment]:
        """Recognise ``audio``; segment times are seconds from the start of ``audio``.

        With ``timestamps=False`` the caller accepts a single segment spanning the whole audio,
        which lets an engine take a faster path for short utterances. With ``words=True`` each
        segment also carries its words and their times, where the engine can tell them.
        """

    @abstractmethod
    def supports_language(self, language: str) -> bool:
        """Whether ``language`` (an ISO 639-1 code, or ``multi``/``auto``) can be transcribed."""
