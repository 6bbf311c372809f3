"""Placeholder diarizer: everything is speaker 0."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.diarize.base import Diarizer

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.schema import AsrSegment

__all__ = ["SingleSpeaker"]


class SingleSpeaker(Diarizer):
    """Attributes every segment to ``SPEAKER_0``, not known to be the wearer."""

    def assign(self, audio: NDArray[np.float32], segments: list[AsrSegment]) -> list[tuple[int, bool]]:
        """``(0, False)`` for every segment."""
        return [(0, False) for _ in segments]
