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

from app.http.http_audit import client_of
from app.service.auth import AuthError, authenticate
from app.service.connect_limits import RATE_LIMITED
from app.service.live_session import LiveSession
from app.service.onboarding import Onboarding
from core.errors import DecodeError, IngestError, SpeechToTextError, StorageFullError, UnsupportedAudioError
from ingest.decode import make_decoder

if TYPE_CHECKING:
    from app.service.services import Services

__all__ = ["close_reason", "listen"]

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
STORAGE_FULL = "Storage full: the server cannot store transcripts"


@dataclass(frozen=True)
class ListenParams:
    """The query parameters of ``/v4/listen`` that we honour (others are ignored)."""

    language: str
    sample_rate: int
    codec: str
    conversation_timeout: int | None
    source: str
    onboarding: bool = False  # ``onboarding=enabled``: the app's voice onboarding (app.service.onboarding)

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
            onboarding=query.get("onboarding") == "enabled",
        )


class _Session:
    """Serialises sends on one socket and remembers when the client last spoke."""

    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket
        self.closed = False
        self.close_code: int | None = None  # the code this side closed with (None: the socket failed first)
        self.action = "stream"  # its audit action: "rate-limited" when refused by the connect limit
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
        self.close_code = code
        async with self._lock:
            with contextlib.suppress(Exception):
                await self.socket.close(code=code, reason=close_reason(reason))


MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame carries at most 125 bytes, 2 of them the code


def close_reason(reason: str) -> str:
    """``reason`` cut to what a close frame can carry, ending in "…" when cut.

    A longer one (an echoed parameter can make it so) fails the close, and the client would see the
    connection drop (1006) instead of the code and the reason.
    """
    raw = reason.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return raw[: MAX_CLOSE_REASON_BYTES - len("…".encode())].decode(errors="ignore") + "…"


@websocket("/v4/listen")
async def listen(socket: WebSocket) -> None:
    """Stream audio in, transcript segments and conversation events out (OMI ``/v4/listen``).

    Each stream is one audit entry (``stream``), written when it closes; a refused token is one
    too (``auth-failure``), and so is a stream refused by the per-user connect limit
    (``rate-limited``, closed with 1008 ``Rate limited, retry later``).
    """
    services: Services = socket.app.state.services
    await socket.accept()
    session = _Session(socket)
    try:
        uid = await authenticate(socket.headers.get("authorization"), services)
    except AuthError as exc:
        await session.close(POLICY_VIOLATION, str(exc))
        _audit(services, session, uid="", action="auth-failure")
        return
    try:
        await _stream(session, services, uid)
    finally:
        await _audit_stream(session, services, uid)


async def _audit_stream(session: _Session, services: Services, uid: str) -> None:
    """The stream's audit entry, naming the conversation in progress as it closed (if any).

    Written even when the stream is cancelled (at shutdown) while the conversation is looked up.
    """
    if session.action != "stream":  # refused before it began: no conversation of its own
        _audit(services, session, uid=uid, action=session.action)
        return
    current = None
    try:
        current = await services.conversations.current(uid)
    except Exception:
        log.warning("could not look up the conversation of a closed stream for its audit entry")
    finally:
        _audit(services, session, uid=uid, action="stream", conversation_id=current.id if current else None)


def _audit(services: Services, session: _Session, *, uid: str, action: str, conversation_id: str | None = None) -> None:
    """One audit entry of ``/v4/listen``; its status is the code the server closed with."""
    if services.storage.audit is not None:
        services.storage.audit.record(
            uid=uid,
            action=action,
            route="ws:/v4/listen",
            client=client_of(session.socket.scope),
            status=session.close_code or GOING_AWAY,
            conversation_id=conversation_id,
        )


async def _stream(session: _Session, services: Services, uid: str) -> None:
    """One authenticated device stream, until it ends."""
    socket = session.socket
    try:
        params = ListenParams.parse(dict(socket.query_params))
        engine = services.pipeline.streaming or services.pipeline.transcriber.asr
        if not engine.supports_language(params.language):
            raise UnsupportedAudioError(f"The language is not supported, {params.language}")
        decoder = make_decoder(params.codec, params.sample_rate)
    except UnsupportedAudioError as exc:
        await session.close(POLICY_VIOLATION, exc.detail)
        return
    except IngestError as exc:
        log.error("cannot open a stream: %s", exc.detail)
        await session.close(INTERNAL_ERROR, exc.detail[:120])
        return
    # Only a stream that would open takes the user's slot; one refused above does not.
    if not await services.cluster.connect_limiter.acquire(uid):
        services.metrics.inc("streams_rate_limited_total")
        interval_s = services.settings.stream.connect_interval_s
        log.info("refused a stream: its user opened one less than %g s ago", interval_s)
        session.action = "rate-limited"
        await session.close(POLICY_VIOLATION, RATE_LIMITED)
        return

    await session.send_json({"type": "service_status", "status": "initiating", "status_text": "Service Starting"})
    timeout_s = services.conversation_timeout(params.conversation_timeout)
    onboarding = (
        Onboarding(uid, session.send_json, services.storage.settings, lambda: _current_id(services, uid))
        if params.onboarding
        else None
    )
    live = LiveSession(
        services,
        uid,
        decoder,
        language=params.language,
        source=params.source,
        timeout_s=timeout_s,
        send=session.send_json,
        on_storage_full=lambda exc: _storage_full(session, exc),
        wearer_only=onboarding is not None,
        on_final=onboarding.heard if onboarding is not None else None,
    )
    try:
        resumed = await live.open()
    except StorageFullError as exc:
        await _storage_full(session, exc)
        return
    except SpeechToTextError as exc:
        await _stt_failed(session, exc)
        return
    last = await services.storage.store.last_completed_id(uid)
    if last:
        await session.send_json({"type": "last_memory", "memory_id": last})
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
    if onboarding is not None:
        await onboarding.start()

    reader = asyncio.create_task(_read(session, live, services, onboarding))
    keeper = asyncio.create_task(_keepalive(session, services))
    failed = asyncio.create_task(live.stt_failed.wait())
    try:
        await asyncio.wait({reader, keeper, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, keeper, failed):
            task.cancel()
        await asyncio.gather(reader, keeper, failed, return_exceptions=True)
        if live.stt_error is not None:
            await _stt_failed(session, live.stt_error)
        # Whatever was heard is transcribed and stored even though the client is gone.
        await live.close()
        metrics.set_gauge("streams_active", metrics.gauges.get("streams_active", 1) - 1)
        await session.close(GOING_AWAY)
        log.info("stream closed")


async def _storage_full(session: _Session, exc: StorageFullError) -> None:
    """Tell the device that what it sends cannot be stored: close with 1011 and a precise reason."""
    if not session.closed:
        log.error("%s; closing the stream with %d", exc.detail, INTERNAL_ERROR)
        await session.close(INTERNAL_ERROR, STORAGE_FULL)


async def _stt_failed(session: _Session, exc: SpeechToTextError) -> None:
    """The speech-to-text service refused the stream for good: say so, as OMI does, and close with 1011."""
    await session.send_json({"type": "service_status", "status": "stt_failed", "status_text": exc.detail})
    await session.close(INTERNAL_ERROR, exc.detail[:120])


async def _current_id(services: Services, uid: str) -> str | None:
    current = await services.conversations.current(uid)
    return current.id if current else None


async def _read(session: _Session, live: LiveSession, services: Services, onboarding: Onboarding | None) -> None:
    metrics = services.metrics
    limit = services.settings.stream.max_frame_bytes
    bad_frames = 0
    while True:
        try:
            message = await session.socket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            if message.get("code") == MESSAGE_TOO_BIG and not session.closed:
                # The server's protocol layer refused a message far over the limit (`serve` sets its
                # ws_max_size to twice WS_MAX_FRAME_BYTES) and closed with 1009 itself.
                metrics.inc("frames_too_large_total")
                session.closed, session.close_code = True, MESSAGE_TOO_BIG
            return
        session.last_client_message = time.monotonic()
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if isinstance(data, bytes) else len(text.encode()) if isinstance(text, str) else 0
        if size > limit:
            metrics.inc("frames_too_large_total")
            log.warning("closing a stream that sent a %d-byte message (WS_MAX_FRAME_BYTES=%d)", size, limit)
            await session.close(MESSAGE_TOO_BIG, f"Message too big: {size} bytes, the limit is {limit}")
            return
        if isinstance(data, bytes):
            if len(data) <= 2:
                continue  # keepalive, e.g. the app's [0x8A, 0x00] answer to ping
            try:
                live.feed(data)
            except DecodeError:
                bad_frames += 1
                metrics.inc("decode_errors_total")
                if bad_frames in (1, 10, 100) or bad_frames % 1000 == 0:
                    log.warning("skipped %d undecodable %s frame(s)", bad_frames, live.decoder.codec)
            continue
        if isinstance(text, str):
            await _handle_text(text, live, services, onboarding)


async def _handle_text(text: str, live: LiveSession, services: Services, onboarding: Onboarding | None) -> None:
    """JSON text frames: ``speaker_assigned``, and ``skip_question`` in onboarding; others are counted, ignored."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    kind = payload.get("type") if isinstance(payload, dict) else None
    if kind == "speaker_assigned" and isinstance(payload, dict):
        try:
            await _speaker_assigned(payload, live, services)
        except Exception:
            log.exception("could not apply a speaker_assigned frame")
        return
    if kind == "skip_question" and onboarding is not None:
        await onboarding.skip()
        return
    services.metrics.inc("text_frames_ignored_total")
    log.debug("ignored a text frame of type %r", kind)


async def _speaker_assigned(payload: dict[str, Any], live: LiveSession, services: Services) -> None:
    """OMI ``speaker_assigned`` (see :meth:`LiveSession.assign_speaker`); a malformed or unknown one is counted."""
    speaker_id = payload.get("speaker_id")
    person_id = payload.get("person_id")
    name = payload.get("person_name") or ""
    segment_ids = payload.get("segment_ids") or []
    if (
        services.pipeline.live_speakers is None
        or not isinstance(speaker_id, int)
        or not isinstance(person_id, str)
        or not isinstance(name, str)
    ):
        services.metrics.inc("speaker_assignments_rejected_total")
        log.info("rejected a malformed speaker_assigned frame")
        return
    if not await live.assign_speaker(speaker_id, person_id, name, [str(i) for i in segment_ids]):
        services.metrics.inc("speaker_assignments_rejected_total")
        log.info("rejected speaker_assigned: none of its segments is in the conversation in progress")
        return
    services.metrics.inc("speaker_assignments_total")


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
