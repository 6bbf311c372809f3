"""Recorded audio (a file, the device's offline recordings) through the stages live speech goes through.

Voice activity, speech-to-text and diarization run over the whole recording (``ingest.batch``),
then each speaker is compared with the user's voice profiles and named where one matches. The
command line's ``ingest`` and offline sync both hear recordings this way; only where the
segments are stored differs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from app.service.pipeline import vad_params
from core.segments import AbsoluteSegment
from ingest.batch import ProgressHook, transcribe_audio
from ingest.identity import VoiceProfiles, identity_fields, identity_of, match_profiles

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from app.service.pipeline import Pipeline
    from app.settings import Settings
    from ingest.diarize.diarizer import Diarization
    from ingest.diarize.tracker import Identity

__all__ = ["Heard", "hear"]


@dataclass(frozen=True)
class Heard:
    """What a recording holds: its segments (epoch times, speakers named where known), who spoke when."""

    segments: list[AbsoluteSegment]
    diarization: Diarization  # seconds from the recording's start
    identities: dict[int, Identity]  # speakers that matched a voice profile


async def hear(
    pipeline: Pipeline,
    settings: Settings,
    profiles: VoiceProfiles,
    audio: NDArray[np.float32],
    *,
    uid: str,
    origin: float,
    language: str,
    num_speakers: int | None = None,
    hook: ProgressHook | None = None,
    ids: Callable[[int], str] | None = None,
    gate: Callable[[], None] | None = None,
    executor: Executor | None = None,
) -> Heard:
    """Transcribe, diarize and identify ``audio`` (16 kHz mono) that began at epoch ``origin``.

    ``ids`` names the segments (default: random ids), ``gate`` runs before each transcription
    (see :func:`ingest.batch.transcribe_audio`); the work runs on ``executor`` (default: asyncio's threads).
    """
    work = functools.partial(
        transcribe_audio,
        audio,
        asr=pipeline.transcriber.asr,
        diarizer=pipeline.diarizer,
        vad=pipeline.vad,
        params=vad_params(settings.stream),
        language=language,
        origin=origin,
        hook=hook,
        workers=settings.asr.workers,
        num_speakers=num_speakers or settings.diarization.num_speakers or None,
        max_speakers=settings.diarization.max_speakers,
        ids=ids,
        gate=gate,
    )
    found, diarization = await asyncio.get_running_loop().run_in_executor(executor, work)
    matched = match_profiles(
        diarization.embeddings, await profiles.list(uid), settings.diarization.speaker_match_threshold
    )
    identities = {s: identity_of(profile) for s, (profile, _) in matched.items()}
    segments = [
        msgspec.structs.replace(s, **identity_fields(s.speaker_id, identities.get(s.speaker_id))) for s in found
    ]
    return Heard(segments, diarization, identities)
