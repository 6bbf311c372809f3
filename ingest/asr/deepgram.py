"""Deepgram's streaming speech-to-text (``/v1/listen``), through the official ``deepgram-sdk`` (7.x).

Each stream opens one WebSocket with the OMI backend's options: ``nova-3``, diarization,
punctuation and smart formatting, endpointing, ``linear16`` mono PCM at the stream's own sample
rate. The API key travels in the ``Authorization: Token …`` header; the SDK keeps it out of
the ``websockets`` debug logs, and no error message of ours carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from core.errors import MissingDependencyError, SpeechToTextError
from ingest.asr.stt import StreamingConnection, StreamingSpeechToText
from ingest.schema import StreamingResult, StreamingWord

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ingest.ingest_settings import AsrSettings

__all__ = ["Deepgram", "endpoints"]

log = logging.getLogger(__name__)

CLOUD_URL = "wss://api.deepgram.com"
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_REFUSALS = {
    400: "Deepgram refused the stream options (HTTP 400): check DEEPGRAM_MODEL and the language",
    401: "Deepgram rejected DEEPGRAM_API_KEY (HTTP 401)",
    402: "Deepgram refused the stream: the account has no credit left (HTTP 402)",
    403: "Deepgram refused DEEPGRAM_API_KEY for this model or feature (HTTP 403)",
    404: "Deepgram's listen endpoint was not found (HTTP 404): check DEEPGRAM_URL",
}


def endpoints(url: str) -> tuple[str, str]:
    """``(https base, wss base)`` of a Deepgram API URL; empty means Deepgram's cloud.

    ``url`` may use any of ``ws``, ``wss``, ``http`` or ``https``, and may end in ``/v1/listen``.
    """
    parts = urlsplit((url or CLOUD_URL).rstrip("/"))
    path = parts.path.removesuffix("/v1/listen").rstrip("/")
    secure = parts.scheme in ("wss", "https")
    http = urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", ""))
    return http, ws


class Deepgram(StreamingSpeechToText):
    """Deepgram live transcription with diarization; one client shared by every stream."""

    name = "deepgram"

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "nova-3",
        url: str = "",
        endpointing_ms: int = 300,
        interim_results: bool = True,
    ) -> None:
        try:
            from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
        except ImportError as exc:
            raise MissingDependencyError(
                "STT_BACKEND=deepgram needs the Deepgram SDK: pip install 'omi-letta[deepgram]'"
            ) from exc
        http, ws = endpoints(url)
        self.url = ws
        self.model = model
        self.endpointing_ms = endpointing_ms
        self.interim_results = interim_results
        environment = DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)
        self._client = AsyncDeepgramClient(api_key=api_key, environment=environment)

    @classmethod
    def from_settings(cls, settings: AsrSettings) -> Deepgram:
        """The engine the ``DEEPGRAM_*`` settings describe (no connection is opened yet)."""
        return cls(
            api_key=settings.deepgram_api_key,
            model=settings.deepgram_model,
            url=settings.deepgram_url,
            endpointing_ms=settings.deepgram_endpointing_ms,
            interim_results=settings.deepgram_interim_results,
        )

    def supports_language(self, language: str) -> bool:
        """Any BCP-47 style code, or ``multi``; Deepgram itself refuses what the model lacks."""
        return language == "multi" or bool(_LANGUAGE.match(language))

    def options(self, *, sample_rate: int, language: str) -> dict[str, Any]:
        """The query options of a stream (as the OMI backend opens Deepgram)."""
        return {
            "model": self.model,
            "language": language,
            "diarize": "true",
            "punctuate": "true",
            "smart_format": "true",
            "endpointing": self.endpointing_ms if self.endpointing_ms > 0 else "false",
            "interim_results": "true" if self.interim_results else "false",
            "encoding": "linear16",
            "sample_rate": sample_rate,
            "channels": 1,
        }

    async def open(self, *, sample_rate: int, language: str) -> StreamingConnection:
        """Open a listen WebSocket; refusals and network failures become :class:`SpeechToTextError`."""
        import websockets
        from deepgram.core.api_error import ApiError

        stack = AsyncExitStack()
        connecting = self._client.listen.v1.connect(**self.options(sample_rate=sample_rate, language=language))
        try:
            socket = await asyncio.wait_for(stack.enter_async_context(connecting), OPEN_TIMEOUT_S)
        except ApiError as exc:
            status = exc.status_code or 0
            retryable = status == 429 or status >= 500
            detail = _REFUSALS.get(status, f"Deepgram refused the stream (HTTP {status})")
            raise SpeechToTextError(detail, retryable=retryable) from None
        except websockets.exceptions.InvalidURI:
            raise SpeechToTextError(f"DEEPGRAM_URL is not a valid URL: {self.url}", retryable=False) from None
        except (OSError, TimeoutError, EOFError, websockets.exceptions.WebSocketException) as exc:
            detail = f"cannot reach Deepgram at {self.url} ({type(exc).__name__})"
            raise SpeechToTextError(detail, retryable=True) from None
        return _Connection(socket, stack)


class _Connection(StreamingConnection):
    """An open ``listen.v1`` socket of the SDK."""

    def __init__(self, socket: Any, stack: AsyncExitStack) -> None:
        self._socket = socket
        self._stack = stack

    async def _send(self, sending: Any) -> None:
        import websockets

        try:
            await sending
        except websockets.exceptions.ConnectionClosed as exc:
            raise SpeechToTextError(f"the Deepgram connection closed ({_close_of(exc)})", retryable=True) from None

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(self._socket.send_media(pcm))

    async def keep_alive(self) -> None:
        await self._send(self._socket.send_keep_alive())

    async def finalize(self) -> None:
        await self._send(self._socket.send_finalize())

    async def close_stream(self) -> None:
        await self._send(self._socket.send_close_stream())

    async def results(self) -> AsyncIterator[StreamingResult]:
        import websockets
        from deepgram.listen.v1.types import ListenV1Error, ListenV1Results

        try:
            async for message in self._socket:
                if isinstance(message, ListenV1Results):
                    yield _result(message)
                elif isinstance(message, ListenV1Error):
                    log.warning("Deepgram reported an error: %s (%s)", message.variant, message.description[:200])
        except websockets.exceptions.ConnectionClosed as exc:
            raise SpeechToTextError(f"the Deepgram connection dropped ({_close_of(exc)})", retryable=True) from None

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stack.aclose(), CLOSE_TIMEOUT_S)


def _result(message: Any) -> StreamingResult:
    alternatives = message.channel.alternatives
    words = alternatives[0].words if alternatives else []
    return StreamingResult(
        start=float(message.start),
        end=float(message.start) + float(message.duration),
        words=tuple(
            StreamingWord(
                start=float(w.start),
                end=float(w.end),
                text=w.punctuated_word or w.word,
                speaker=int(w.speaker or 0),
            )
            for w in words
        ),
        final=bool(message.is_final),
        speech_final=bool(message.speech_final),
    )


def _close_of(exc: Exception) -> str:
    received = getattr(exc, "rcvd", None)
    if received is None:
        return "no close frame"
    return f"code {received.code} {received.reason[:60]}".strip()
