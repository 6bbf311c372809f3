"""The live pipeline of one stream when a streaming service transcribes it: frames → PCM → service → segments.

The alternative to :class:`~ingest.stream.LiveStream` (VAD, local speech-to-text and the embedded
diarizer) for ``STT_BACKEND=deepgram``. Decoded audio goes to the service as s16le PCM at the
stream's own sample rate; its results, words with speakers and times, come back as segments for
the same ``sink(segments, final)`` that a :class:`LiveStream` feeds, so conversations, live
labels and the WebSocket output do not change. Interim results are shown as one growing partial
segment; a final result is cut where the speaker changes, as the OMI backend does with Deepgram.

Reliability: the audio the service has not finalized yet is kept (up to ``buffer_s``). When the
connection drops, the stream reconnects with exponential backoff and sends that audio again,
mapping the new connection's clock onto the stream's so segment times stay continuous. Audio
that no longer fits in the buffer, or that cannot be sent before the stream ends, is a gap:
counted in ``stt_gaps_total`` / ``stt_gap_seconds_total`` and logged (never with any text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from core.errors import SpeechToTextError
from core.segments import AbsoluteSegment
from ingest.identity import identity_fields
from ingest.stream import SegmentSink, TrackerSource, deliver

if TYPE_CHECKING:
    from core.metrics import Metrics
    from ingest.asr.stt import StreamingConnection, StreamingSpeechToText
    from ingest.decode import FrameDecoder
    from ingest.schema import StreamingResult, StreamingWord

__all__ = ["ErrorHandler", "RelayStream"]

log = logging.getLogger(__name__)

ErrorHandler = Callable[[SpeechToTextError], Awaitable[None]]
"""Told when the service refuses the stream for good after it started (a revoked API key, say)."""

SEND_CHUNK_BYTES = 16_000  # at most 0.5 s of 16 kHz audio per message
TICK_S = 0.25
FINALIZE_IDLE_S = 1.0  # no audio for this long: ask for the final results of what was sent
KEEPALIVE_S = 4.0  # Deepgram closes a connection after 10 s without audio or a KeepAlive
FIRST_RETRY_S = 0.25
HEALTHY_S = 10.0  # a connection that lasted this long resets the backoff
FINISH_TIMEOUT_S = 20.0
TAIL_TOLERANCE_S = 0.5  # unfinalized audio at the end that is not worth calling a gap


class RelayStream:
    """One client's audio stream, transcribed by a streaming service.

    Call :meth:`start` once (it opens the first connection), :meth:`feed` per frame, and
    :meth:`finish` at the end.
    """

    def __init__(
        self,
        *,
        decoder: FrameDecoder,
        engine: StreamingSpeechToText,
        language: str,
        sink: SegmentSink,
        metrics: Metrics,
        buffer_s: float = 60.0,
        reconnect_max_delay_s: float = 8.0,
        speakers: TrackerSource = lambda: None,
        origin_floor: float = 0.0,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.decoder = decoder
        self.engine = engine
        self.language = language
        self.sink = sink
        self.metrics = metrics
        self.speakers = speakers
        self.origin_floor = origin_floor  # a resumed conversation's end: this stream's audio cannot start before it
        self.on_error = on_error
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.origin: float | None = None  # epoch time of the first audio sample
        self.error: SpeechToTextError | None = None  # why the service refused the stream for good
        self.connections = 0  # connections opened so far
        self._rate = decoder.sample_rate
        self._bytes_per_s = decoder.sample_rate * 2
        self._limit = int(buffer_s * decoder.sample_rate) * 2
        # Byte offsets in the stream's PCM: [buffer_start, total) is buffered; the service has
        # finalized everything before final_end; the current connection started at conn_offset
        # and has been sent everything before sent.
        self._buffer = bytearray()
        self._buffer_start = 0
        self._total = 0
        self._final_end = 0
        self._conn_offset = 0
        self._sent = 0
        self._connected = False
        self._closing = False
        self._close_sent = False
        self._dropped_because = ""
        self._started = False
        self._wake = asyncio.Event()
        self._attempted = asyncio.Event()
        self._chunk_id = str(uuid.uuid4())  # the id of the segment the current interim results grow
        self._results: asyncio.Queue[tuple[list[AbsoluteSegment], bool, float] | None] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._deliverer: asyncio.Task[None] | None = None

    @property
    def pending_seconds(self) -> float:
        """Audio the service has not finalized yet."""
        return (self._total - self._final_end) / self._bytes_per_s

    async def start(self) -> None:
        """Open the first connection; a service that cannot be reached now is retried in the background.

        Raises:
            SpeechToTextError: the service refused the stream and retrying cannot help.
        """
        self._runner = asyncio.create_task(self._run(), name="stt-relay")
        self._deliverer = asyncio.create_task(self._deliver_loop(), name="stt-deliver")
        attempted = asyncio.create_task(self._attempted.wait())
        await asyncio.wait({self._runner, attempted}, return_when=asyncio.FIRST_COMPLETED)
        attempted.cancel()
        if self.error is not None:
            raise self.error
        self._started = True

    def feed(self, frame: bytes) -> None:
        """Decode one binary frame and queue its audio for the service.

        Raises:
            DecodeError: the frame is not valid for the stream's codec (the stream stays usable).
        """
        pcm = self.decoder.pcm(frame)
        if not pcm:
            return
        if self.origin is None:
            # A client streaming faster than real time runs ahead of the wall clock.
            self.origin = max(time.time(), self.origin_floor)
        self._buffer += pcm
        self._total += len(pcm)
        self.metrics.inc("audio_seconds_total", len(pcm) / self._bytes_per_s)
        over = self._total - self._limit
        if over > self._buffer_start:
            # Audio sent on a live connection is only forgotten once it has been sent; what the
            # service never finalizes becomes a gap if the connection drops.
            self._forget(min(over, self._sent) if self._connected else over)
        self._wake.set()

    async def finish(self, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """End of audio: let the service finalize what it has, and wait (bounded) for the last segments."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        if self._runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._runner), timeout_s)
            except TimeoutError:
                self._runner.cancel()
                await asyncio.gather(self._runner, return_exceptions=True)
        if self.pending_seconds > TAIL_TOLERANCE_S:
            self._gap(self._total - self._final_end, "the stream ended before the service finalized it")
            self._final_end = self._total
        self._results.put_nowait(None)
        if self._deliverer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._deliverer), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("stream closed with transcript segments still undelivered")
                self._deliverer.cancel()

    # -- the connection ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the speech-to-text relay failed")
            await self._fail(SpeechToTextError("the speech-to-text relay failed", retryable=False))
        finally:
            self._attempted.set()

    async def _connect_loop(self) -> None:
        failures = 0
        while not (self._closing and self._final_end >= self._total):
            try:
                connection = await self.engine.open(sample_rate=self._rate, language=self.language)
            except SpeechToTextError as exc:
                if not exc.retryable:
                    await self._fail(exc)
                    return
                self.metrics.inc("stt_connect_failures_total")
                delay = min(self.reconnect_max_delay_s, FIRST_RETRY_S * 2**failures)
                failures += 1
                log.warning("%s; retrying in %.2f s (%.1f s of audio waiting)", exc.detail, delay, self.pending_seconds)
                self._attempted.set()
                await asyncio.sleep(delay)
                continue
            self.connections += 1
            if self.connections > 1:
                self.metrics.inc("stt_reconnects_total")
                log.info(
                    "reconnected to %s; sending %.1f s of audio again",
                    self.engine.name,
                    (self._total - self._buffer_start) / self._bytes_per_s,
                )
            self._attempted.set()
            self._account_gap()
            opened = time.monotonic()
            if await self._serve(connection):
                return
            failures = 0 if time.monotonic() - opened >= HEALTHY_S else failures + 1
            delay = min(self.reconnect_max_delay_s, FIRST_RETRY_S * 2 ** max(0, failures - 1))
            log.warning(
                "%s; reconnecting in %.2f s (%.1f s of audio not finalized)",
                self._dropped_because,
                delay,
                self.pending_seconds,
            )
            await asyncio.sleep(delay)

    async def _serve(self, connection: StreamingConnection) -> bool:
        """Stream over one connection until it closes; True when the stream is done."""
        self._conn_offset = self._sent = self._buffer_start
        self._connected = True
        self._close_sent = False
        self._dropped_because = f"the {self.engine.name} connection closed"
        sender = asyncio.create_task(self._send(connection), name="stt-send")
        receiver = asyncio.create_task(self._receive(connection), name="stt-receive")
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not sender.cancelled() and sender.exception() is None:
                await asyncio.wait({receiver})  # the service sends its last results, then closes
            for task in (sender, receiver):
                if task.done() and not task.cancelled():
                    error = task.exception()
                    if isinstance(error, SpeechToTextError):
                        self._dropped_because = error.detail
                    elif error is not None:
                        self._dropped_because = f"{type(error).__name__} in the relay"
                        log.error("speech-to-text connection failed", exc_info=error)
            return self._close_sent and receiver.done() and not receiver.cancelled() and receiver.exception() is None
        finally:
            self._connected = False
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await connection.aclose()

    async def _send(self, connection: StreamingConnection) -> None:
        last_activity = time.monotonic()
        finalize_asked = False
        while True:
            if self._sent < self._total:
                offset = self._sent - self._buffer_start
                chunk = bytes(self._buffer[offset : offset + SEND_CHUNK_BYTES])
                await connection.send_audio(chunk)
                self._sent += len(chunk)
                last_activity = time.monotonic()
                finalize_asked = False
                continue
            if self._closing:
                await connection.close_stream()
                self._close_sent = True
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
                continue
            idle = time.monotonic() - last_activity
            if idle >= FINALIZE_IDLE_S and not finalize_asked and self._final_end < self._sent:
                await connection.finalize()
                finalize_asked = True
            if idle >= KEEPALIVE_S:
                await connection.keep_alive()
                last_activity = time.monotonic()

    async def _receive(self, connection: StreamingConnection) -> None:
        async for result in connection.results():
            self._on_result(result)

    def _on_result(self, result: StreamingResult) -> None:
        received_at = time.time()
        origin = (self.origin or received_at) + self._conn_offset / self._bytes_per_s
        if result.final:
            end = min(self._sent, self._conn_offset + int(result.end * self._rate) * 2)
            if end > self._final_end:
                self._final_end = end
                self._forget(end)
        segments = self._segments(result, origin)
        if result.final:
            self._chunk_id = str(uuid.uuid4())
        if segments:
            self._results.put_nowait((segments, result.final, received_at))

    def _forget(self, upto: int) -> None:
        """Drop the buffered audio before byte offset ``upto``."""
        upto = min(upto, self._total)
        if upto > self._buffer_start:
            del self._buffer[: upto - self._buffer_start]
            self._buffer_start = upto

    def _account_gap(self) -> None:
        """On a new connection: audio that was dropped before the service finalized it is a gap."""
        if self._buffer_start > self._final_end:
            self._gap(self._buffer_start - self._final_end, "it outgrew the reconnect buffer")
            self._final_end = self._buffer_start

    def _gap(self, size: int, why: str) -> None:
        seconds = size / self._bytes_per_s
        start = self._final_end / self._bytes_per_s
        self.metrics.inc("stt_gaps_total")
        self.metrics.inc("stt_gap_seconds_total", seconds)
        log.warning(
            "transcript gap: %.1f s of audio from %.1f s into the stream was not transcribed (%s)", seconds, start, why
        )

    async def _fail(self, exc: SpeechToTextError) -> None:
        self.error = exc
        self.metrics.inc("stt_refused_total")
        log.error("%s refused the stream: %s", self.engine.name, exc.detail)
        if self._started and self.on_error is not None:
            await self.on_error(exc)

    # -- segments ------------------------------------------------------------------------------

    def _segments(self, result: StreamingResult, origin: float) -> list[AbsoluteSegment]:
        """A final result as one segment per run of a speaker's words; an interim one as one segment."""
        words = [w for w in result.words if w.text.strip()]
        if not words:
            return []
        runs: list[list[StreamingWord]] = []
        for word in words:
            if result.final and runs and runs[-1][-1].speaker == word.speaker:
                runs[-1].append(word)
            elif result.final or not runs:
                runs.append([word])
            else:
                runs[-1].append(word)
        tracker = self.speakers()
        out = []
        for i, run in enumerate(runs):
            speaker = run[0].speaker
            identity = tracker.identity(speaker) if tracker is not None else None
            out.append(
                AbsoluteSegment(
                    id=self._chunk_id if i == 0 else str(uuid.uuid5(uuid.UUID(self._chunk_id), str(i))),
                    text=" ".join(w.text.strip() for w in run),
                    start=origin + run[0].start,
                    end=origin + run[-1].end,
                    speaker_id=speaker,
                    stt_provider=self.engine.name,
                    **identity_fields(speaker, identity),
                )
            )
        return out

    async def _deliver_loop(self) -> None:
        while True:
            item = await self._results.get()
            if item is None:
                return
            segments, final, received_at = item
            if not final and not self._results.empty():
                self.metrics.inc("partials_skipped_total")  # a newer result supersedes it
                continue
            if await deliver(self.sink, segments, final, self.metrics) and final:
                lag = time.time() - min(received_at, segments[-1].end)
                self.metrics.observe("segment_lag_seconds", max(0.0, lag))
