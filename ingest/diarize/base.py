"""The diarization contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.schema import AsrSegment

__all__ = ["Diarizer"]


class Diarizer(ABC):
    """Attributes each recognised segment of an utterance to a speaker.

    Called from worker threads with the utterance audio (16 kHz mono float32) and its segments.
    """

    @abstractmethod
    def assign(self, audio: NDArray[np.float32], segments: list[AsrSegment]) -> list[tuple[int, bool]]:
        """One ``(speaker_id, is_user)`` per segment."""
