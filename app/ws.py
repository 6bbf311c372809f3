"""``WS /v4/listen``: the OMI backend's streaming protocol (see docs/omi-protocol in the notes).

Client → server: binary audio frames (one Opus packet or a PCM chunk each; ≤ 2 bytes is a
keepalive) and JSON text frames (ignored unless understood). Server → client: the text frame
``ping`` every 10 s, ``service_status`` / ``last_memory`` events on connect, bare JSON arrays of
transcript segments (upsert by ``id``), and ``memory_processing_started`` / ``memory_created``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from app.auth import AuthError, resolve_uid
from ingest.decode import make_decoder
from ingest.errors import DecodeError, IngestError, UnsupportedAudioError
from ingest.stream import LiveStream

if TYPE_CHECKING:
    from app.services import Services
    from ingest.conversations import AbsoluteSegment
    from ingest.segments import TranscriptSegment

__all__ = ["listen"]

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
GOING_AWAY = 1001
INTERNAL_ERROR = 1011


@dataclass(frozen=True)
class ListenParams:
    """The query parameters of ``/v4/listen`` that we honour (others are ignored)."""

    language: str
    sample_rate: int
    codec: str
    conversation_timeout: int | None
    source: str

    @classmethod
    def parse(cls, query: dict[str, str]) -> ListenParams:
        """Parse and type-check; raises :class:`UnsupportedAudioError` naming the bad parameter."""

        def integer(name: str, default: int | None) -> int | None:
            raw = query.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError:
                raise UnsupportedAudioError(f"Invalid {name} {raw!r}: expected an integer") from None

        language = query.get("language", "en") or "en"
        sample_rate = integer("sample_rate", 8000)
        return cls(
            language="multi" if language == "auto" else language,
            sample_rate=sample_rate if sample_rate is not None else 8000,
            codec=query.get("codec", "pcm8") or "pcm8",
            conversation_timeout=integer("conversation_timeout", None),
            source=query.get("source") or "omi",
        )


class _Session:
    """Serialises sends on one socket and remembers when the client last spoke."""

    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket
        self.closed = False
        self.last_client_message = time.monotonic()
        self._lock = asyncio.Lock()

    async def send_text(self, text: str) -> None:
        if self.closed:
            return
        async with self._lock:
            try:
                await self.socket.send_text(text)
            except Exception:
                self.closed = True

    async def send_json(self, payload: Any) -> None:
        await self.send_text(msgspec.json.encode(payload).decode())

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            with contextlib.suppress(Exception):
                await self.socket.close(code=code, reason=reason)


def _segments_payload(segments: list[TranscriptSegment]) -> list[Any]:
    return [msgspec.to_builtins(s) for s in segments]


@websocket("/v4/listen")
async def listen(socket: WebSocket) -> None:
    """Stream audio in, transcript segments and conversation events out (OMI ``/v4/listen``)."""
    services: Services = socket.app.state.services
    await socket.accept()
    session = _Session(socket)
    try:
        uid = resolve_uid(socket.headers.get("authorization"), services.settings.auth)
    except AuthError as exc:
        await session.close(POLICY_VIOLATION, str(exc))
        return
    try:
        params = ListenParams.parse(dict(socket.query_params))
        if not services.transcriber.asr.supports_language(params.language):
            raise UnsupportedAudioError(f"The language is not supported, {params.language}")
        decoder = make_decoder(params.codec, params.sample_rate)
    except UnsupportedAudioError as exc:
        await session.close(POLICY_VIOLATION, exc.detail)
        return
    except IngestError as exc:
        log.error("cannot open a stream: %s", exc.detail)
        await session.close(INTERNAL_ERROR, exc.detail[:120])
        return

    await session.send_json({"type": "service_status", "status": "initiating", "status_text": "Service Starting"})
    timeout_s = services.conversation_timeout(params.conversation_timeout)
    conversations = services.conversations
    resumed = await conversations.connect(uid, timeout_s=timeout_s)
    last = await services.store.last_completed_id(uid)
    if last:
        await session.send_json({"type": "last_memory", "memory_id": last})
    unsubscribe = conversations.subscribe(uid, session.send_json)

    async def sink(segments: list[AbsoluteSegment], final: bool) -> None:
        if final:
            changed = await conversations.add(
                uid, segments, timeout_s=timeout_s, source=params.source, language=params.language
            )
        else:
            changed = await conversations.preview(uid, segments)
        if changed:
            await session.send_json(_segments_payload(changed))

    stream = LiveStream(
        decoder=decoder,
        vad=services.vad,
        params=services.vad_params(),
        transcriber=services.transcriber,
        language=params.language,
        sink=sink,
        max_queued_audio_s=services.settings.stream.max_queued_audio_s,
        origin_floor=resumed.finished_at if resumed else 0.0,
    )
    metrics = services.metrics
    metrics.inc("streams_total")
    metrics.set_gauge("streams_active", metrics.gauges.get("streams_active", 0) + 1)
    log.info(
        "stream opened: codec=%s rate=%d timeout=%ds%s",
        params.codec,
        params.sample_rate,
        timeout_s,
        " (resumed conversation)" if resumed else "",
    )
    await session.send_json({"type": "service_status", "status": "ready", "status_text": None})

    reader = asyncio.create_task(_read(session, stream, services))
    keeper = asyncio.create_task(_keepalive(session, services))
    try:
        await asyncio.wait({reader, keeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, keeper):
            task.cancel()
        await asyncio.gather(reader, keeper, return_exceptions=True)
        # Whatever was heard is transcribed and stored even though the client is gone.
        await stream.finish()
        unsubscribe()
        metrics.set_gauge("streams_active", metrics.gauges.get("streams_active", 1) - 1)
        await session.close(GOING_AWAY)
        log.info("stream closed")


async def _read(session: _Session, stream: LiveStream, services: Services) -> None:
    metrics = services.metrics
    bad_frames = 0
    while True:
        try:
            message = await session.socket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        session.last_client_message = time.monotonic()
        data = message.get("bytes")
        if isinstance(data, bytes):
            if len(data) <= 2:
                continue  # keepalive, e.g. the app's [0x8A, 0x00] answer to ping
            try:
                stream.feed(data)
            except DecodeError:
                bad_frames += 1
                metrics.inc("decode_errors_total")
                if bad_frames in (1, 10, 100) or bad_frames % 1000 == 0:
                    log.warning("skipped %d undecodable %s frame(s)", bad_frames, stream.decoder.codec)
            continue
        text = message.get("text")
        if isinstance(text, str):
            _handle_text(text, metrics)


def _handle_text(text: str, metrics: Any) -> None:
    """Text frames (``speaker_assigned``, ``image_chunk``, ...) are not acted on yet; count them."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    kind = payload.get("type") if isinstance(payload, dict) else None
    metrics.inc("text_frames_ignored_total")
    log.debug("ignored a text frame of type %r", kind)


async def _keepalive(session: _Session, services: Services) -> None:
    """Send ``ping`` every interval; close with 1001 after the inactivity timeout."""
    settings = services.settings.stream
    tick = min(settings.ping_interval_s, max(0.1, settings.inactivity_timeout_s / 4))
    next_ping = time.monotonic()
    while not session.closed:
        now = time.monotonic()
        if now - session.last_client_message >= settings.inactivity_timeout_s:
            log.info("closing an inactive stream after %.0f s without client messages", settings.inactivity_timeout_s)
            await session.close(GOING_AWAY, "Inactivity timeout")
            return
        if now >= next_ping:
            await session.send_text("ping")
            next_ping = now + settings.ping_interval_s
        await asyncio.sleep(min(tick, max(0.05, next_ping - time.monotonic())))
