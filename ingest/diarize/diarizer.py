"""The diarization contract: who spoke when, over a whole recording."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["Diarization", "Diarizer", "SpeakerTurn"]


@dataclass(frozen=True)
class SpeakerTurn:
    """Speaker ``speaker`` (0, 1, ...) speaks from ``start`` to ``end`` seconds. Turns may overlap."""

    start: float
    end: float
    speaker: int


@dataclass
class Diarization:
    """Turns of one recording, and one voice embedding per speaker where the backend has them."""

    turns: list[SpeakerTurn]
    embeddings: dict[int, NDArray[np.float32]] = field(default_factory=dict)

    @property
    def speakers(self) -> list[int]:
        """The speakers found, in order of first appearance."""
        seen: dict[int, None] = {}
        for t in sorted(self.turns, key=lambda t: t.start):
            seen.setdefault(t.speaker, None)
        return list(seen)


class Diarizer(ABC):
    """Finds who spoke when in 16 kHz mono float32 audio. Blocking; called from worker threads."""

    name: str = "unknown"

    @abstractmethod
    def diarize(
        self,
        audio: NDArray[np.float32],
        *,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> Diarization:
        """Diarize a whole recording; ``num_speakers`` fixes the count, otherwise it is estimated."""
