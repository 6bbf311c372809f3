"""Batch ingest: audio files through the same VAD, speech-to-text and diarization into conversations.

A file is cut into utterances by the streaming VAD. Neighbouring utterances are transcribed
together in windows of up to ``WINDOW_S`` seconds (one call per window, as faster-whisper's own
VAD filter does), and a silence of at least the conversation timeout starts a new conversation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.conversations import AbsoluteSegment
from ingest.decode import load_audio_file
from ingest.schema import SAMPLE_RATE
from ingest.segments import TranscriptSegment, combine_segments, speaker_label
from ingest.vad import Endpointer, SileroVad, VadParams

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.asr.base import SpeechToText
    from ingest.diarize.base import Diarizer

__all__ = ["FileTranscript", "speech_windows", "transcribe_file"]

WINDOW_S = 28.0
FEED_S = 1.0

ProgressHook = Callable[[float], None]
"""Called with the seconds of audio just processed."""


@dataclass(frozen=True)
class FileTranscript:
    """One file's conversations: each a list of segments relative to its start (epoch ``started_at``)."""

    path: Path
    duration_s: float
    conversations: list[tuple[float, list[TranscriptSegment]]]


def speech_windows(
    audio: NDArray[np.float32], vad: SileroVad, params: VadParams, hook: ProgressHook | None = None
) -> list[tuple[float, float]]:
    """Speech regions of ``audio`` (seconds), neighbours merged up to ``WINDOW_S`` long."""
    endpointer = Endpointer(vad, VadParams(**{**params.__dict__, "partial_interval_s": 0.0}))
    spans: list[tuple[float, float]] = []
    step = int(FEED_S * SAMPLE_RATE)
    for i in range(0, audio.size, step):
        chunk = audio[i : i + step]
        spans += [(u.utterance.start, u.utterance.end) for u in endpointer.feed(chunk)]
        if hook:
            hook(chunk.size / SAMPLE_RATE)
    spans += [(u.utterance.start, u.utterance.end) for u in endpointer.flush()]
    windows: list[tuple[float, float]] = []
    for start, end in spans:
        if windows and end - windows[-1][0] <= WINDOW_S:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


def transcribe_file(
    path: Path,
    *,
    asr: SpeechToText,
    diarizer: Diarizer,
    vad: SileroVad,
    params: VadParams,
    language: str = "en",
    gap_s: float = 120.0,
    started_at: float | None = None,
    hook: ProgressHook | None = None,
) -> FileTranscript:
    """Transcribe one file into conversations split at silences of ``gap_s`` or more.

    ``hook`` is told about progress: the first half of the file's duration as the VAD runs,
    the second half as windows are transcribed.
    """
    audio = load_audio_file(path)
    duration = audio.size / SAMPLE_RATE
    origin = started_at if started_at is not None else time.time() - duration
    windows = speech_windows(audio, vad, params, (lambda s: hook(s / 2)) if hook else None)
    found: list[AbsoluteSegment] = []
    done = 0.0
    for start, end in windows:
        piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        segments = asr.transcribe(piece, language)
        for seg, (speaker_id, is_user) in zip(segments, diarizer.assign(piece, segments), strict=True):
            found.append(
                AbsoluteSegment(
                    id=str(uuid.uuid4()),
                    text=seg.text,
                    start=origin + start + seg.start,
                    end=origin + start + seg.end,
                    speaker_id=speaker_id,
                    is_user=is_user,
                    stt_provider=asr.name,
                )
            )
        if hook:
            hook((end - done) / 2)
            done = end
    if hook and duration > done:
        hook((duration - done) / 2)
    return FileTranscript(path=path, duration_s=duration, conversations=_group(found, gap_s))


def _group(found: list[AbsoluteSegment], gap_s: float) -> list[tuple[float, list[TranscriptSegment]]]:
    groups: list[list[AbsoluteSegment]] = []
    for seg in found:
        if groups and seg.start - groups[-1][-1].end < gap_s:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    out = []
    for group in groups:
        started_at = group[0].start
        relative = [
            TranscriptSegment(
                id=s.id,
                text=s.text,
                speaker=speaker_label(s.speaker_id),
                speaker_id=s.speaker_id,
                is_user=s.is_user,
                start=round(s.start - started_at, 3),
                end=round(s.end - started_at, 3),
                stt_provider=s.stt_provider,
            )
            for s in group
        ]
        out.append((started_at, combine_segments([], relative)[0]))
    return out
