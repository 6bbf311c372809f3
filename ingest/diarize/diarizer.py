"""The diarization contract: who spoke when, over a whole recording."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.schema import AsrSegment

__all__ = ["Diarization", "Diarizer", "SpeakerCount", "SpeakerTurn", "attribute", "solo_speech"]


@dataclass(frozen=True)
class SpeakerTurn:
    """Speaker ``speaker`` (0, 1, ...) speaks from ``start`` to ``end`` seconds. Turns may overlap."""

    start: float
    end: float
    speaker: int


@dataclass(frozen=True)
class SpeakerCount:
    """How many speakers a recording has: ``exact`` when it is known, else at most ``maximum`` (None: unbounded)."""

    exact: int | None = None
    maximum: int | None = None


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


def _speaker_at(start: float, end: float, turns: list[SpeakerTurn]) -> int | None:
    """The speaker whose turns overlap ``[start, end]`` most, else the nearest turn's speaker."""
    overlap: dict[int, float] = {}
    for t in turns:
        shared = min(end, t.end) - max(start, t.start)
        if shared > 0:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + shared
    if overlap:
        return max(overlap, key=lambda s: overlap[s])
    if not turns:
        return None
    middle = (start + end) / 2
    nearest = min(turns, key=lambda t: min(abs(t.start - middle), abs(t.end - middle)))
    return nearest.speaker


def attribute(seg: AsrSegment, turns: list[SpeakerTurn]) -> list[tuple[float, float, str, int]]:
    """Split a segment (times in the file) into ``(start, end, text, speaker)`` pieces at speaker changes.

    Words take the speaker they overlap most; a segment without words goes whole to one speaker.
    """
    if not seg.words:
        return [(seg.start, seg.end, seg.text, _speaker_at(seg.start, seg.end, turns) or 0)]
    pieces: list[tuple[float, float, str, int]] = []
    for word in seg.words:
        speaker = _speaker_at(word.start, word.end, turns) or 0
        if pieces and pieces[-1][3] == speaker:
            start, _, text, _ = pieces[-1]
            pieces[-1] = (start, word.end, text + word.text, speaker)
        else:
            pieces.append((word.start, word.end, word.text, speaker))
    return [(start, end, text.strip(), speaker) for start, end, text, speaker in pieces if text.strip()]


class Diarizer(ABC):
    """Finds who spoke when in 16 kHz mono float32 audio. Blocking; called from worker threads."""

    name: str = "unknown"

    def diarize(
        self,
        audio: NDArray[np.float32],
        *,
        num_speakers: int | None = None,
        max_speakers: int | None = None,
    ) -> Diarization:
        """Diarize a whole recording; ``num_speakers`` fixes the count, otherwise it is estimated."""
        return self.find(audio, SpeakerCount(exact=num_speakers or None, maximum=max_speakers or None))

    @abstractmethod
    def find(self, audio: NDArray[np.float32], count: SpeakerCount) -> Diarization:
        """:meth:`diarize`, with the speaker count in one value."""


def solo_speech(audio: NDArray[np.float32], turns: list[SpeakerTurn], max_s: float) -> dict[int, NDArray[np.float32]]:
    """Each speaker's speech (16 kHz) where they speak alone, else all of it, at most ``max_s`` s each.

    Speakers with no speech in ``audio`` are left out.
    """
    import numpy as np

    hop = 160  # 10 ms grid at 16 kHz
    n = audio.size // hop + 1
    speakers = sorted({t.speaker for t in turns})
    active = np.zeros((len(speakers), n), dtype=bool)  # (speakers, frames)
    for t in turns:
        active[speakers.index(t.speaker), round(t.start * 100) : round(t.end * 100)] = True
    alone = active & (active.sum(axis=0) == 1)
    out: dict[int, NDArray[np.float32]] = {}
    for i, speaker in enumerate(speakers):
        frames = np.flatnonzero(alone[i]) if alone[i].any() else np.flatnonzero(active[i])
        frames = frames[: int(max_s * 100)]
        samples = (frames[:, None] * hop + np.arange(hop)[None, :]).ravel()
        speech = audio[samples[samples < audio.size]]
        if speech.size:
            out[speaker] = speech
    return out
