"""Batch ingest: audio files through the same VAD, speech-to-text and diarization into conversations.

The whole file is diarized first. It is then cut into utterances by the streaming VAD, whose
audio is packed back to back into windows of up to ``WINDOW_S`` seconds of speech, one
transcription call per window (as faster-whisper's own VAD filter does); segment and word
times are mapped back to the file. Each word takes the speaker whose turn it overlaps most,
and a segment is split at the word where the speaker changes. A silence of at least the
conversation timeout starts a new conversation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.segments import AbsoluteSegment, TranscriptSegment, combine_segments, speaker_label, speaker_name
from ingest.decode import load_audio_file
from ingest.diarize.diarizer import attribute
from ingest.schema import SAMPLE_RATE, AsrSegment, AsrWord
from ingest.vad import Endpointer, SileroVad, VadParams

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.asr.stt import SpeechToText
    from ingest.diarize.diarizer import Diarization, Diarizer

__all__ = [
    "FileTranscript",
    "Window",
    "group_segments",
    "pack_windows",
    "speech_spans",
    "transcribe_audio",
    "transcribe_file",
]

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
    diarization: Diarization  # times in seconds from the start of the file


def speech_spans(
    audio: NDArray[np.float32], vad: SileroVad, params: VadParams, hook: ProgressHook | None = None
) -> list[tuple[int, int]]:
    """Speech regions of ``audio`` as ``(start, end)`` sample indices, found by the streaming VAD."""
    endpointer = Endpointer(vad, replace(params, partial_interval_s=0.0))
    spans: list[tuple[int, int]] = []
    step = int(FEED_S * SAMPLE_RATE)
    for i in range(0, audio.size, step):
        chunk = audio[i : i + step]
        found = endpointer.feed(chunk)
        if hook:
            hook(chunk.size / SAMPLE_RATE)
        spans += [_samples(u.utterance.start, u.utterance.end) for u in found]
    spans += [_samples(u.utterance.start, u.utterance.end) for u in endpointer.flush()]
    return spans


def _samples(start: float, end: float) -> tuple[int, int]:
    return round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)


@dataclass(frozen=True)
class Window:
    """Speech spans packed back to back into one transcription call (at most ``WINDOW_S`` long)."""

    spans: list[tuple[int, int]]

    def audio(self, source: NDArray[np.float32]) -> NDArray[np.float32]:
        """The spans' audio, concatenated."""
        return np.concatenate([source[a:b] for a, b in self.spans])

    def original_time(self, t: float) -> float:
        """Map a time within the packed audio back to seconds in the file."""
        offset = 0.0
        for a, b in self.spans:
            length = (b - a) / SAMPLE_RATE
            if t <= offset + length:
                return a / SAMPLE_RATE + max(0.0, t - offset)
            offset += length
        a, b = self.spans[-1]
        return b / SAMPLE_RATE


def pack_windows(spans: list[tuple[int, int]], limit_s: float = WINDOW_S) -> list[Window]:
    """Group consecutive spans so each window holds at most ``limit_s`` of speech."""
    limit = int(limit_s * SAMPLE_RATE)
    windows: list[list[tuple[int, int]]] = []
    size = 0
    for a, b in spans:
        if windows and size + (b - a) <= limit:
            windows[-1].append((a, b))
            size += b - a
        else:
            windows.append([(a, b)])
            size = b - a
    return [Window(w) for w in windows]


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
    workers: int = 1,
    num_speakers: int | None = None,
    max_speakers: int | None = None,
) -> FileTranscript:
    """Transcribe and diarize one file into conversations split at silences of ``gap_s`` or more.

    See :func:`transcribe_audio`; ``started_at`` is the file's start (default: it ended now).
    """
    audio = load_audio_file(path)
    duration = audio.size / SAMPLE_RATE
    origin = started_at if started_at is not None else time.time() - duration
    found, diarization = transcribe_audio(
        audio,
        asr=asr,
        diarizer=diarizer,
        vad=vad,
        params=params,
        language=language,
        origin=origin,
        hook=hook,
        workers=workers,
        num_speakers=num_speakers,
        max_speakers=max_speakers,
    )
    return FileTranscript(
        path=path, duration_s=duration, conversations=group_segments(found, gap_s), diarization=diarization
    )


def transcribe_audio(
    audio: NDArray[np.float32],
    *,
    asr: SpeechToText,
    diarizer: Diarizer,
    vad: SileroVad,
    params: VadParams,
    language: str,
    origin: float,
    hook: ProgressHook | None = None,
    workers: int = 1,
    num_speakers: int | None = None,
    max_speakers: int | None = None,
    ids: Callable[[int], str] | None = None,
    gate: Callable[[], None] | None = None,
) -> tuple[list[AbsoluteSegment], Diarization]:
    """Transcribe and diarize 16 kHz audio that starts at epoch ``origin``; segments carry epoch times.

    Up to ``workers`` windows are transcribed at once (the engine must allow that many calls).
    ``hook`` is told about progress: a quarter of the duration as the VAD runs, a quarter when
    diarization ends, and the second half as windows are transcribed. ``ids(n)`` names the n-th
    segment (default: a random id); ``gate()`` runs before each window (it may wait, to let live
    streams go first).
    """
    duration = audio.size / SAMPLE_RATE
    windows = pack_windows(speech_spans(audio, vad, params, (lambda s: hook(s / 4)) if hook else None))
    diarization = diarizer.diarize(audio, num_speakers=num_speakers, max_speakers=max_speakers)
    if hook:
        hook(duration / 4)

    words = len(diarization.speakers) > 1  # word times only matter where the speaker can change

    def recognise(window: Window) -> list[AsrSegment]:
        if gate is not None:
            gate()
        return asr.transcribe(window.audio(audio), language, words=words)

    found: list[AbsoluteSegment] = []
    done = 0.0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ingest") as pool:
        for window, segments in zip(windows, pool.map(recognise, windows), strict=True):
            for seg in segments:
                for start, end, text, speaker in attribute(_in_file(seg, window), diarization.turns):
                    found.append(
                        AbsoluteSegment(
                            id=ids(len(found)) if ids is not None else str(uuid.uuid4()),
                            text=text,
                            start=origin + start,
                            end=origin + end,
                            speaker_id=speaker,
                            is_user=False,
                            stt_provider=asr.name,
                        )
                    )
            if hook:
                end = window.spans[-1][1] / SAMPLE_RATE
                hook((end - done) / 2)
                done = end
    if hook and duration > done:
        hook((duration - done) / 2)
    return found, diarization


def _in_file(seg: AsrSegment, window: Window) -> AsrSegment:
    """A segment of a packed window with its (and its words') times mapped back to the file."""
    return AsrSegment(
        start=window.original_time(seg.start),
        end=window.original_time(seg.end),
        text=seg.text,
        words=tuple(AsrWord(window.original_time(w.start), window.original_time(w.end), w.text) for w in seg.words),
    )


def group_segments(found: list[AbsoluteSegment], gap_s: float) -> list[tuple[float, list[TranscriptSegment]]]:
    """Segments (epoch times) as conversations split at silences of ``gap_s`` or more: each its start
    and its segments relative to it, consecutive turns of a speaker merged by the OMI rules."""
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
                person_id=s.person_id,
                start=round(s.start - started_at, 3),
                end=round(s.end - started_at, 3),
                stt_provider=s.stt_provider,
                speaker_name=s.speaker_name or speaker_name(s.speaker_id, is_user=s.is_user),
            )
            for s in group
        ]
        out.append((started_at, combine_segments([], relative)[0]))
    return out
