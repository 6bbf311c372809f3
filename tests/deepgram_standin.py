"""A stand-in for Deepgram's live transcription WebSocket (``/v1/listen``), for tests.

Not a speech recogniser and not Deepgram: the test audio comes from :func:`tone_speech`, in which
each word of a known script is a tone of its own frequency. The stand-in finds those tones in
the linear16 audio it receives, so it "hears" exactly the words whose audio reached it, at the
times they were heard on that connection (also when audio is sent again after a reconnect), and
answers in Deepgram's message schema: ``Results`` with words (``word``, ``start``, ``end``,
``confidence``, ``speaker``, ``punctuated_word``), ``is_final`` and ``speech_final``, interim
results when asked for, and ``Metadata`` before it closes after ``CloseStream``.

It checks the ``Authorization: Token <key>`` header (HTTP 401 otherwise), records each
connection's query options, audio bytes and control messages (``KeepAlive``, ``Finalize``,
``CloseStream``), and can drop a connection mid-stream or refuse handshakes, to test reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support import free_port

BASE_HZ = 400.0
STEP_HZ = 50.0
WORD_S = 0.3
WORD_GAP_S = 0.1
TURN_GAP_S = 0.8
LEAD_S = 0.5
FRAME_S = 0.04  # analysis frame
LEVEL = 0.4
FINAL_EVERY_S = 3.0  # longest stretch without a final result, as Deepgram finalizes about that often
INTERIM_EVERY_S = 0.5
MODEL_UUID = "1dbdfb4d-85b2-4659-9cc2-f6e7c9b1a1f3"

DIALOGUE = [
    (0, "Good morning. Did you finish the report about the new clinic?"),
    (1, "Yes, I sent it to the whole team yesterday evening."),
    (0, "Great. Please remind me to call the pharmacy after lunch."),
]
"""A two-speaker script (speaker, text) for the tests."""


@dataclass(frozen=True)
class ScriptWord:
    """One word of the script and where its tone sits in the audio (seconds)."""

    index: int
    speaker: int
    text: str  # as spoken, with punctuation: Deepgram's punctuated_word
    start: float
    end: float

    @property
    def word(self) -> str:
        """Deepgram's ``word``: lower case, no punctuation."""
        return re.sub(r"[^\w']", "", self.text).lower()


def script_words(turns: list[tuple[int, str]]) -> list[ScriptWord]:
    """The words of ``(speaker, text)`` turns laid out in time as :func:`tone_speech` plays them."""
    words: list[ScriptWord] = []
    t = LEAD_S
    for n, (speaker, text) in enumerate(turns):
        if n:
            t += TURN_GAP_S - WORD_GAP_S
        for token in text.split():
            words.append(ScriptWord(len(words), speaker, token, round(t, 4), round(t + WORD_S, 4)))
            t += WORD_S + WORD_GAP_S
    return words


def tone_speech(turns: list[tuple[int, str]], rate: int = 16_000, tail_s: float = 1.0) -> np.ndarray:
    """Mono float32 audio at ``rate`` in which word ``i`` of the script is a tone at ``BASE_HZ + i * STEP_HZ``."""
    words = script_words(turns)
    total = (words[-1].end if words else 0.0) + tail_s
    audio = np.zeros(int(total * rate), dtype=np.float32)
    for w in words:
        a, b = int(w.start * rate), int(w.end * rate)
        t = np.arange(b - a) / rate
        ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
        audio[a:b] = LEVEL * ramp * np.sin(2 * np.pi * (BASE_HZ + w.index * STEP_HZ) * t)
    return audio


@dataclass
class Connection:
    """What one ``/v1/listen`` connection sent the stand-in."""

    params: dict[str, str]
    authorization: str | None
    audio_bytes: int = 0
    controls: list[str] = field(default_factory=list)  # KeepAlive, Finalize, CloseStream, in order
    results: int = 0
    words: list[str] = field(default_factory=list)  # final words sent back
    finalized_s: float = 0.0  # audio covered by final results sent back
    dropped: bool = False
    closed: bool = False


class _Listener:
    """Finds the script's tones in one connection's audio and writes Deepgram's results."""

    def __init__(self, script: list[ScriptWord], conn: Connection, endpointing_s: float | None) -> None:
        self.script = script
        self.conn = conn
        self.rate = int(conn.params.get("sample_rate", "16000"))
        self.frame = int(self.rate * FRAME_S)
        self.endpointing_s = endpointing_s
        self.interim = conn.params.get("interim_results") == "true"
        self.request_id = str(uuid.uuid4())
        self.pcm = bytearray()
        self.frames = 0  # analysed frames
        self.run: tuple[int, int, int] | None = None  # (word index, first frame, last frame) of the tone now
        self.heard: list[tuple[int, float, float]] = []  # completed words not finalized yet
        self.final_until = 0.0
        self.last_interim = 0.0
        self.sha = hashlib.sha256()

    @property
    def now(self) -> float:
        return self.frames * FRAME_S

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.pcm += data
        self.sha.update(data)
        out: list[dict[str, Any]] = []
        size = self.frame * 2
        while len(self.pcm) >= size:
            samples = np.frombuffer(bytes(self.pcm[:size]), dtype="<i2").astype(np.float32) / 32768.0
            del self.pcm[:size]
            out += self._frame(samples)
        return out

    def _tone(self, samples: np.ndarray) -> int | None:
        if float(np.sqrt(np.mean(samples**2))) < LEVEL / 8:
            return None
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size), n=8192))
        peak = float(np.argmax(spectrum)) * self.rate / 8192
        index = round((peak - BASE_HZ) / STEP_HZ)
        return index if 0 <= index < len(self.script) else None

    def _close_run(self) -> None:
        if self.run is not None:
            index, first, last = self.run
            self.heard.append((index, first * FRAME_S, (last + 1) * FRAME_S))
            self.run = None

    def _frame(self, samples: np.ndarray) -> list[dict[str, Any]]:
        index = self._tone(samples)
        if self.run is not None and index != self.run[0]:
            self._close_run()
        if index is not None:
            self.run = (index, self.run[1] if self.run else self.frames, self.frames)
        self.frames += 1
        now = self.now
        if self.run is not None:
            return self._maybe_interim(now)
        last_end = self.heard[-1][2] if self.heard else None
        if self.endpointing_s is not None and last_end is not None and now - last_end >= self.endpointing_s:
            return [self._final(now, speech_final=True)]
        if now - self.final_until >= FINAL_EVERY_S:
            return [self._final(now, speech_final=False)]
        return self._maybe_interim(now)

    def _maybe_interim(self, now: float) -> list[dict[str, Any]]:
        if not self.interim or not self.heard or now - self.last_interim < INTERIM_EVERY_S:
            return []
        self.last_interim = now
        return [self._results(self.heard, now, is_final=False, speech_final=False)]

    def _final(self, until: float, *, speech_final: bool, from_finalize: bool = False) -> dict[str, Any]:
        flags = {"is_final": True, "speech_final": speech_final, "from_finalize": from_finalize}
        message = self._results(self.heard, until, **flags)
        self.conn.words += [self.script[i].word for i, _, _ in self.heard]
        self.heard = []
        self.final_until = self.conn.finalized_s = until
        self.last_interim = until
        return message

    def flush(self) -> dict[str, Any]:
        """``Finalize`` / ``CloseStream``: everything received is final now."""
        self._close_run()
        until = self.now + len(self.pcm) / 2 / self.rate
        return self._final(until, speech_final=True, from_finalize=True)

    def _results(self, heard: list[tuple[int, float, float]], until: float, **flags: bool) -> dict[str, Any]:
        words = [
            {
                "word": self.script[i].word,
                "start": round(a, 3),
                "end": round(b, 3),
                "confidence": 0.99,
                "speaker": self.script[i].speaker,
                "speaker_confidence": 0.9,
                "punctuated_word": self.script[i].text,
            }
            for i, a, b in heard
        ]
        self.conn.results += 1
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(until - self.final_until, 3),
            "start": round(self.final_until, 3),
            "is_final": flags.get("is_final", False),
            "speech_final": flags.get("speech_final", False),
            "from_finalize": flags.get("from_finalize", False),
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(w["punctuated_word"] for w in words),
                        "confidence": 0.99 if words else 0.0,
                        "words": words,
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": "2-general-nova", "version": "2024-01-18.26916", "arch": "nova-3"},
                "model_uuid": MODEL_UUID,
            },
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.sha.hexdigest(),
            "created": datetime.now(UTC).isoformat(),
            "duration": round(self.conn.audio_bytes / 2 / self.rate, 3),
            "channels": 1,
            "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: {"name": "2-general-nova", "version": "2024-01-18.26916", "arch": "nova-3"}},
        }


class DeepgramStandIn:
    """Deepgram's ``/v1/listen`` WebSocket on a free localhost port, in a thread of its own.

    ``drop_after_s`` makes the next connection drop (no close frame) once it has received that
    much audio, after which the next ``then_refuse`` handshakes fail with HTTP 503; ``refuse``
    makes the next handshakes fail so now.
    """

    def __init__(self, turns: list[tuple[int, str]], api_key: str = "test-deepgram-key") -> None:
        self.script = script_words(turns)
        self.api_key = api_key
        self.port = free_port()
        self.connections: list[Connection] = []
        self.refused = 0
        self.drop_after_s: float | None = None
        self.then_refuse = 0
        self.refuse = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> DeepgramStandIn:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()

            async def main() -> None:
                self._server = await serve(
                    self._handle, "127.0.0.1", self.port, process_request=self._check, max_size=None
                )
                ready.set()
                await self._server.wait_closed()

            self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, name="deepgram-standin", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(10)

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid credentials\n")
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Try again later\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        conn = Connection(dict(parse_qsl(urlsplit(request.path).query)), request.headers.get("Authorization"))
        self.connections.append(conn)
        endpointing = conn.params.get("endpointing", "10")
        listener = _Listener(self.script, conn, None if endpointing == "false" else int(endpointing) / 1000)
        drop_after = self.drop_after_s
        self.drop_after_s = None
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    conn.audio_bytes += len(message)
                    for result in listener.feed(message):
                        await ws.send(json.dumps(result))
                    if drop_after is not None and conn.audio_bytes >= drop_after * listener.rate * 2:
                        conn.dropped = True
                        self.refuse, self.then_refuse = self.then_refuse, 0
                        ws.transport.abort()  # as a network failure: no close frame
                        return
                    continue
                kind = json.loads(message).get("type")
                conn.controls.append(kind)
                if kind in ("Finalize", "CloseStream"):
                    await ws.send(json.dumps(listener.flush()))
                if kind == "CloseStream":
                    await ws.send(json.dumps(listener.metadata()))
                    conn.closed = True
                    await ws.close()
                    return
        except ConnectionClosed:
            pass
