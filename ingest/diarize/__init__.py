"""Who spoke when: diarization backends behind one small interface, chosen by settings at startup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.diarize.diarizer import Diarization, Diarizer, SpeakerTurn
from ingest.diarize.single import SingleSpeaker

if TYPE_CHECKING:
    from ingest.diarize.embedded import EmbeddedDiarizer
    from ingest.ingest_settings import DiarizationSettings
    from ingest.vad import SileroVad

__all__ = ["Diarization", "Diarizer", "SingleSpeaker", "SpeakerTurn", "load_diarizer", "load_embedded"]


def load_embedded(settings: DiarizationSettings, vad: SileroVad) -> EmbeddedDiarizer:
    """The embedded GE2E diarizer (also used for live labels and voice profiles)."""
    from ingest.diarize.embedded import EmbeddedDiarizer
    from ingest.diarize.encoder import VoiceEncoder

    return EmbeddedDiarizer(VoiceEncoder(threads=settings.threads), vad)


def load_diarizer(settings: DiarizationSettings, vad: SileroVad, embedded: EmbeddedDiarizer | None = None) -> Diarizer:
    """The whole-recording diarizer that ``DIARIZER`` names.

    Raises:
        MissingDependencyError: the backend's package or weights are missing; the message says what to do.
    """
    if settings.backend == "none":
        return SingleSpeaker()
    if settings.backend == "pyannote":
        from ingest.diarize.pyannote_backend import load_pyannote

        return load_pyannote(settings, embedded)
    if settings.backend == "campplus":
        from ingest.diarize.campplus_diarizer import CamDiarizer

        return CamDiarizer(voices=embedded, threads=settings.threads)
    return embedded or load_embedded(settings, vad)
