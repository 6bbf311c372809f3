"""The live pipeline of one stream: frames → 16 kHz audio → VAD utterances → transcription → segments.

Transcription runs in a shared thread pool (:class:`Transcriber`), so no stream blocks the event
loop or another stream. Each stream queues its own utterances. Partial results are best effort:
they are skipped while the stream has a backlog or any transcription is running, so they rarely
delay a final result. Past ``max_queued_audio_s`` of backlog a stream's oldest speech is dropped, counted
in metrics and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.metrics import Metrics
from core.segments import AbsoluteSegment
from ingest.diarize.diarizer import SpeakerTurn, attribute
from ingest.diarize.tracker import SpeakerTracker, TimedSpan
from ingest.identity import identity_fields
from ingest.schema import SAMPLE_RATE, AsrSegment
from ingest.vad import Endpointer, SileroVad, UtteranceAudio, VadParams

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.asr.stt import SpeechToText
    from ingest.decode import FrameDecoder

__all__ = ["LiveStream", "SegmentSink", "TrackerSource", "Transcriber", "deliver"]

log = logging.getLogger(__name__)

SINK_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)

SegmentSink = Callable[[list[AbsoluteSegment], bool], Awaitable[None]]
"""Receives (segments, final) for each transcribed utterance."""

TrackerSource = Callable[[], SpeakerTracker | None]
"""The speaker tracker of the stream's conversation now (None: diarization is off)."""


async def deliver(sink: SegmentSink, segments: list[AbsoluteSegment], final: bool, metrics: Metrics) -> bool:
    """Hand segments to the sink, retrying a final result while storage is unavailable."""
    for attempt in range(len(SINK_RETRY_DELAYS_S) + 1):
        try:
            await sink(segments, final)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not final or attempt == len(SINK_RETRY_DELAYS_S):
                break
            delay = SINK_RETRY_DELAYS_S[attempt]
            log.warning("storing a segment failed (%s); retry %d in %.1f s", type(exc).__name__, attempt + 1, delay)
            metrics.inc("sink_retries_total")
            await asyncio.sleep(delay)
    if final:
        metrics.inc("segments_lost_total", len(segments))
        log.error("gave up storing %d segment(s) after %d retries", len(segments), len(SINK_RETRY_DELAYS_S))
    return False


class Transcriber:
    """Speech-to-text plus live speaker labels on a bounded thread pool, shared by every stream."""

    def __init__(self, asr: SpeechToText, *, workers: int, metrics: Metrics) -> None:
        self.asr = asr
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stt")
        self._slots = asyncio.Semaphore(workers)
        self._active = 0

    def _run(
        self,
        audio: NDArray[np.float32],
        language: str,
        origin: float,
        utterance_id: str,
        tracker: SpeakerTracker | None,
        final: bool,
    ) -> list[AbsoluteSegment]:
        if tracker is None or not final:
            segments = self.asr.transcribe(audio, language, timestamps=False)
            labels = [tracker.peek(audio) if tracker else 0] * len(segments)
        else:
            started = time.perf_counter()
            split = tracker.split(audio)
            elapsed = time.perf_counter() - started
            if len(split.pieces) == 1:
                segments = self.asr.transcribe(audio, language, timestamps=False)
            else:
                # Several voices: transcribe the whole utterance (full context) with word times and
                # cut its segments at the words where the voice changes.
                turns = [SpeakerTurn(p.start, p.end, i) for i, p in enumerate(split.pieces)]
                segments = [
                    AsrSegment(start=a, end=b, text=text)
                    for seg in self.asr.transcribe(audio, language, words=True)
                    for a, b, text, _ in attribute(seg, turns)
                ]
            started = time.perf_counter()
            spans = [TimedSpan(origin + s.start, origin + s.end) for s in segments]
            labels = tracker.label(audio, origin, spans, split)
            self.metrics.observe("speaker_label_seconds", elapsed + time.perf_counter() - started)
        out = []
        for i, (seg, speaker_id) in enumerate(zip(segments, labels, strict=True)):
            identity = tracker.identity(speaker_id) if tracker is not None else None
            out.append(
                AbsoluteSegment(
                    id=utterance_id if i == 0 else str(uuid.uuid5(uuid.UUID(utterance_id), str(i))),
                    text=seg.text,
                    start=origin + seg.start,
                    end=origin + seg.end,
                    speaker_id=speaker_id,
                    stt_provider=self.asr.name,
                    **identity_fields(speaker_id, identity),
                )
            )
        return out

    @property
    def busy(self) -> bool:
        """Some transcription is running: a partial result now could delay someone's final one."""
        return self._active > 0

    async def transcribe(
        self,
        audio: NDArray[np.float32],
        language: str,
        *,
        origin: float,
        utterance_id: str,
        tracker: SpeakerTracker | None = None,
        final: bool = True,
    ) -> list[AbsoluteSegment]:
        """Transcribe one utterance whose audio starts at epoch ``origin`` and label its speakers.

        A final utterance joins ``tracker``'s speakers; a partial one only borrows a label.
        """
        async with self._slots:
            self._active += 1
            try:
                loop = asyncio.get_running_loop()
                started = time.perf_counter()
                result = await loop.run_in_executor(
                    self._pool, self._run, audio, language, origin, utterance_id, tracker, final
                )
                self.metrics.observe("stt_seconds", time.perf_counter() - started)
                return result
            finally:
                self._active -= 1

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Job:
    item: UtteranceAudio
    queued_at: float

    @property
    def seconds(self) -> float:
        return self.item.utterance.end - self.item.utterance.start


@dataclass
class LiveStream:
    """One client's audio stream. Call :meth:`feed` per frame and :meth:`finish` at the end."""

    decoder: FrameDecoder
    vad: SileroVad
    params: VadParams
    transcriber: Transcriber
    language: str
    sink: SegmentSink
    max_queued_audio_s: float
    speakers: TrackerSource = lambda: None
    origin_floor: float = 0.0  # a resumed conversation's end: this stream's audio cannot start before it
    keep: Callable[[float, NDArray[np.float32]], None] | None = None  # given each final utterance's audio
    origin: float | None = None  # epoch time of the first audio sample
    _endpointer: Endpointer = field(init=False)
    _jobs: deque[_Job] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None
    _closing: bool = False

    def __post_init__(self) -> None:
        self._endpointer = Endpointer(self.vad, self.params)
        self._worker = asyncio.create_task(self._work(), name="stream-transcriber")

    @property
    def metrics(self) -> Metrics:
        """The service metrics this stream reports to."""
        return self.transcriber.metrics

    @property
    def queued_seconds(self) -> float:
        """Speech waiting for transcription."""
        return sum(j.seconds for j in self._jobs if j.item.utterance.final)

    def feed(self, frame: bytes) -> None:
        """Decode one binary frame and queue any utterance it completes.

        Raises:
            DecodeError: the frame is not valid for the stream's codec (the stream stays usable).
        """
        audio = self.decoder(frame)
        if self.origin is None:
            # A client streaming faster than real time runs ahead of the wall clock.
            self.origin = max(time.time(), self.origin_floor)
        self.metrics.inc("audio_seconds_total", audio.size / SAMPLE_RATE)
        self._queue(self._endpointer.feed(audio))

    async def finish(self, timeout_s: float = 60.0) -> None:
        """End of audio: finalize the open utterance and wait (bounded) for its transcript."""
        tail = self.decoder.flush()
        items = self._endpointer.feed(tail) if tail.size else []
        self._queue(items + self._endpointer.flush())
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                log.warning("stream closed with %.1f s of speech still untranscribed", self.queued_seconds)
                self._worker.cancel()

    def _queue(self, items: list[UtteranceAudio]) -> None:
        now = time.time()
        for item in items:
            if not item.utterance.final:
                # A partial is only worth computing when the stream is keeping up.
                if self._jobs:
                    self.metrics.inc("partials_skipped_total")
                    continue
            else:
                # The final supersedes any partial of the same utterance still waiting.
                self._jobs = deque(j for j in self._jobs if j.item.utterance.final)
            self._jobs.append(_Job(item, now))
        while self.queued_seconds > self.max_queued_audio_s and len(self._jobs) > 1:
            dropped = self._jobs.popleft()
            self.metrics.inc("audio_dropped_seconds_total", dropped.seconds)
            log.warning(
                "stream is %.1f s behind; dropped %.1f s of untranscribed speech",
                self.queued_seconds,
                dropped.seconds,
            )
        if items:
            self.metrics.set_gauge_max("stream_queue_seconds_max", self.queued_seconds)
            self._wake.set()

    async def _deliver(self, segments: list[AbsoluteSegment], final: bool) -> bool:
        return await deliver(self.sink, segments, final, self.metrics)

    async def _work(self) -> None:
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._jobs.popleft()
            utterance = job.item.utterance
            if not utterance.final and self.transcriber.busy:
                self.metrics.inc("partials_skipped_total")
                continue
            origin = (self.origin or time.time()) + utterance.start
            try:
                segments = await self.transcriber.transcribe(
                    job.item.audio,
                    self.language,
                    origin=origin,
                    utterance_id=utterance.id,
                    tracker=self.speakers(),
                    final=utterance.final,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.inc("stt_errors_total")
                log.exception("transcription of a %.1f s utterance failed", job.seconds)
                continue
            if not await self._deliver(segments, utterance.final):
                continue
            if utterance.final and self.keep is not None:
                self.keep(origin, job.item.audio)
            if utterance.final:
                # From the end of speech on the wall clock; a client sending faster than real time
                # has its utterances end "in the future", so never count from later than the VAD saw it.
                speech_end = origin + (utterance.end - utterance.start) - self.params.speech_pad_ms / 1000
                lag = time.time() - min(job.queued_at, speech_end)
                self.metrics.observe("segment_lag_seconds", lag)
                if lag > 2.0:
                    self.metrics.inc("stream_behind_total")
                    log.warning("stream is behind: final segment %.2f s after the utterance ended", lag)
