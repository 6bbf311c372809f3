"""Diarization turned off: everyone is one speaker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.diarize.diarizer import Diarization, Diarizer, SpeakerCount, SpeakerTurn
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["SingleSpeaker"]


class SingleSpeaker(Diarizer):
    """Attributes all audio to speaker 0 (``DIARIZER=none``)."""

    name = "none"

    def find(self, audio: NDArray[np.float32], count: SpeakerCount) -> Diarization:
        """One turn spanning the whole recording."""
        return Diarization([SpeakerTurn(0.0, audio.size / SAMPLE_RATE, 0)] if audio.size else [])
