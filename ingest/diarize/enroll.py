"""Voice enrollment: a recording of one person speaking, to the embedding of their voice profile."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.errors import NotEnoughSpeechError, UnsupportedAudioError
from ingest.decode import audio_duration, load_audio_file
from ingest.diarize.diarizer import solo_speech
from ingest.diarize.encoder import FRAME_S

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

    from ingest.diarize.diarizer import SpeakerTurn
    from ingest.diarize.embedded import EmbeddedDiarizer

__all__ = [
    "MAX_RECORDING_S",
    "MIN_SPEECH_S",
    "load_enrollment_audio",
    "speaker_embeddings",
    "voice_embedding",
]

MIN_SPEECH_S = 2.0
"""Least speech a profile is built from."""
MAX_SPEECH_S = 300.0
"""Speech beyond this is not embedded: it adds little and keeps the encoder's batch small."""
MAX_RECORDING_S = 30 * 60.0
"""Longest recording accepted for enrollment."""
SPEAKER_EMBED_MAX_S = 60.0
"""Speech per conversation speaker that goes into its embedding."""


def voice_embedding(audio: NDArray[np.float32], *, diarizer: EmbeddedDiarizer) -> tuple[NDArray[np.float32], float]:
    """The voice embedding of one person's 16 kHz mono recording, and the seconds of speech in it.

    It is computed exactly as a conversation speaker's centroid is (the diarizer's speech
    regions, level normalisation and purity-weighted 1 s windows), so the two compare fairly.
    At most ``MAX_SPEECH_S`` of speech is used. Blocking; run it in a worker thread.

    Raises:
        NotEnoughSpeechError: less than ``MIN_SPEECH_S`` of speech.
    """
    windows, mask = diarizer.windows(audio)
    seconds = float(mask.sum()) * FRAME_S
    if seconds < MIN_SPEECH_S or len(windows.starts) == 0:
        raise NotEnoughSpeechError(
            f"only {seconds:.1f} s of speech found; enrolling a voice needs at least "
            f"{MIN_SPEECH_S:.0f} s of one person speaking"
        )
    keep = np.cumsum(windows.seconds) <= MAX_SPEECH_S
    keep[0] = True
    weight = (diarizer.purity(windows) * windows.seconds)[keep]
    total = (windows.embeddings[keep] * weight[:, None]).sum(axis=0)
    embedding = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)
    return embedding, min(seconds, MAX_SPEECH_S)


def speaker_embeddings(
    audio: NDArray[np.float32], turns: list[SpeakerTurn], diarizer: EmbeddedDiarizer
) -> dict[int, NDArray[np.float32]]:
    """One voice embedding per speaker of ``turns``, made as profiles are, from where they speak alone.

    Speakers with less than ``MIN_SPEECH_S`` of speech get none. Blocking.
    """
    out: dict[int, NDArray[np.float32]] = {}
    for speaker, speech in solo_speech(audio, turns, SPEAKER_EMBED_MAX_S).items():
        try:
            out[speaker] = voice_embedding(speech, diarizer=diarizer)[0]
        except NotEnoughSpeechError:
            continue
    return out


def load_enrollment_audio(path: Path) -> NDArray[np.float32]:
    """Read a WAV, FLAC, MP3 or Ogg recording for enrollment as 16 kHz mono float32.

    Raises:
        DecodeError: the file is not audio we can read.
        UnsupportedAudioError: the recording is longer than ``MAX_RECORDING_S``.
    """
    duration = audio_duration(path)
    if duration > MAX_RECORDING_S:
        raise UnsupportedAudioError(
            f"the recording is {duration / 60:.0f} min long; enroll from at most {MAX_RECORDING_S / 60:.0f} min "
            "of one person speaking"
        )
    return load_audio_file(path)
