"""Speaker diarization behind one small interface; settings choose one at startup."""

from __future__ import annotations

from ingest.diarize.base import Diarizer
from ingest.diarize.single import SingleSpeaker

__all__ = ["Diarizer", "SingleSpeaker", "load_diarizer"]


def load_diarizer() -> Diarizer:
    """The configured diarizer. Only the one-speaker placeholder exists so far."""
    return SingleSpeaker()
