"""A software OMI device: streams an audio file to ``/v4/listen`` exactly as the wearable does.

``opus_fs320`` is the OMI device (16 kHz mono Opus, 320-sample packets, ~32 kbps VBR, complexity 3,
restricted low-delay), ``opus`` the DevKit (160-sample packets), ``pcm16`` raw s16le in 100 ms
chunks. One packet per WebSocket message, paced at real time × speed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import websockets

from app.service.connect_limits import RATE_LIMITED
from ingest.decode import load_audio_file, load_opuslib
from ingest.schema import SAMPLE_RATE

__all__ = ["Reconnect", "SimulationResult", "SimulatorError", "encode_frames", "simulate"]

SIM_CODECS = ("opus_fs320", "opus", "pcm16")
KEEPALIVE = b"\x8a\x00"


class SimulatorError(Exception):
    """The server refused or dropped the stream; carries the close code and reason."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"server closed the stream: {code} {reason}".strip())
        self.code = code
        self.reason = reason

    @property
    def rate_limited(self) -> bool:
        """The server refused the stream because this user opened another moments before: retry later."""
        return self.code == 1008 and self.reason == RATE_LIMITED

    @property
    def dropped(self) -> bool:
        """The connection was lost or the server gave up on it (not a refusal): a device reconnects."""
        return self.code in DROP_CODES or (self.code == 1001 and bool(self.reason)) or self.rate_limited


DROP_CODES = (1006, 1011, 1012, 1013)
"""Abnormal closure (no close frame: the server died), internal error, service restart, try again later."""


@dataclass(frozen=True)
class Reconnect:
    """How a dropped stream is reopened, as the OMI app does: after ``first_s``, then ``factor`` times longer.

    The app waits 1 s, 1.5 s, 2.25 s, ... and gives up after 8 tries in a row; a successful
    connection starts the count again. The wait is capped at ``max_s``.
    """

    attempts: int = 8
    first_s: float = 1.0
    factor: float = 1.5
    max_s: float = 20.0

    def delay(self, tries: int) -> float:
        """Seconds to wait before try ``tries + 1``."""
        return float(min(self.max_s, self.first_s * self.factor**tries))


def encode_frames(audio: np.ndarray, codec: str) -> tuple[list[bytes], float]:
    """Encode 16 kHz float32 audio into device packets; returns (packets, seconds per packet)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    if codec == "pcm16":
        step = SAMPLE_RATE // 10
        pcm = np.pad(pcm, (0, (-pcm.size) % step))
        return [pcm[i : i + step].tobytes() for i in range(0, pcm.size, step)], step / SAMPLE_RATE
    if codec not in ("opus", "opus_fs320"):
        raise ValueError(f"codec must be one of {', '.join(SIM_CODECS)}")
    opuslib = load_opuslib()
    step = 320 if codec == "opus_fs320" else 160
    encoder = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_RESTRICTED_LOWDELAY)
    encoder.bitrate = 32_000
    encoder.vbr = 1
    encoder.complexity = 3
    pcm = np.pad(pcm, (0, (-pcm.size) % step))
    packets = [encoder.encode(pcm[i : i + step].tobytes(), step) for i in range(0, pcm.size, step)]
    return packets, step / SAMPLE_RATE


def with_query(url: str, **params: Any) -> str:
    """Add query parameters to ``url`` unless it already sets them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in params.items():
        query.setdefault(key, str(value))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class SimulationResult:
    """What the server sent back: final segments (upserted by id) and events, in arrival order."""

    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0
    last_segment_at: float = 0.0
    connections: int = 0  # connections that reached `ready`
    drops: list[tuple[int | None, str]] = field(default_factory=list)  # close code and reason of each lost one
    sent: int = 0  # audio packets sent so far (a reconnection goes on from here)

    def ordered(self) -> list[dict[str, Any]]:
        """Segments sorted by start time."""
        return sorted(self.segments.values(), key=lambda s: (s["start"], s["end"]))

    def text(self) -> str:
        """The whole transcript as one string."""
        return " ".join(s["text"] for s in self.ordered())


def _paced(packets: list[bytes], period: float, speed: float) -> Iterator[tuple[float, bytes]]:
    for i, packet in enumerate(packets):
        yield i * period / speed, packet


async def simulate(
    path: Path,
    url: str,
    *,
    codec: str = "opus_fs320",
    token: str = "dev-token",
    speed: float = 1.0,
    language: str = "en",
    tail_s: float = 1.5,
    settle_s: float = 3.0,
    extra_params: dict[str, Any] | None = None,
    on_segments: Callable[[list[dict[str, Any]]], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    rate_limit_wait_s: float = 60.0,
    retry_every_s: float = 1.0,
    reconnect: Reconnect | None = None,
) -> SimulationResult:
    """Stream ``path`` to ``url`` and collect what comes back.

    After the file (plus ``tail_s`` of silence so the last utterance ends) the simulator waits
    until no segment has arrived for ``settle_s`` seconds, then closes normally. A device that
    reconnects too soon is refused with 1008 ``Rate limited, retry later`` before any audio is
    sent: the simulator then tries again every ``retry_every_s`` for up to ``rate_limit_wait_s``
    (the server's interval, WS_CONNECT_INTERVAL_S, is 7 s by default).

    With ``reconnect``, a stream that cannot be opened or is lost (the server went away, or
    closed it with 1001 and a reason, 1011, 1012 or 1013) is opened again after the policy's
    backoff, and the rest of the file is sent from where it stopped: audio sent into a dying
    connection is lost, as it is for the device.

    Raises:
        SimulatorError: the server closed the stream with an error code (still rate limited
            after ``rate_limit_wait_s``, too; or still dropped after ``reconnect.attempts`` tries).
        OSError: the server cannot be reached (after ``reconnect.attempts`` tries, with ``reconnect``).
    """
    audio = load_audio_file(path)
    audio = np.concatenate([audio, np.zeros(int(tail_s * SAMPLE_RATE), dtype=np.float32)])
    packets, period = encode_frames(audio, codec)
    target = with_query(url, codec=codec, sample_rate=SAMPLE_RATE, language=language, **(extra_params or {}))
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + rate_limit_wait_s
    result = SimulationResult()
    tries = 0  # failed reconnection tries in a row
    while True:
        connections = result.connections
        try:
            return await _stream_once(target, headers, packets, period, speed, settle_s, on_segments, on_event, result)
        except SimulatorError as exc:
            if exc.rate_limited and time.monotonic() + retry_every_s <= deadline:
                await asyncio.sleep(retry_every_s)
                continue
            if reconnect is None or not exc.dropped:
                raise
            if result.connections > connections:
                result.drops.append((exc.code, exc.reason))
                tries = 0
            error: Exception = exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            if reconnect is None:
                raise
            error = exc
        if tries >= reconnect.attempts:
            raise error
        await asyncio.sleep(reconnect.delay(tries))
        tries += 1


async def _stream_once(
    target: str,
    headers: dict[str, str],
    packets: list[bytes],
    period: float,
    speed: float,
    settle_s: float,
    on_segments: Callable[[list[dict[str, Any]]], None] | None,
    on_event: Callable[[dict[str, Any]], None] | None,
    result: SimulationResult,
) -> SimulationResult:
    """One connection: send the packets not sent yet, collect what comes back into ``result`` (see :func:`simulate`)."""
    async with websockets.connect(target, additional_headers=headers, max_size=None) as ws:
        ready = asyncio.Event()

        async def receive() -> None:
            async for message in ws:
                if message == "ping":
                    result.pings += 1
                    await ws.send(KEEPALIVE)
                    continue
                payload = json.loads(message)
                if isinstance(payload, list):
                    for seg in payload:
                        result.segments[seg["id"]] = seg
                    result.last_segment_at = time.monotonic()
                    if on_segments:
                        on_segments(payload)
                else:
                    result.events.append(payload)
                    if payload.get("type") == "service_status" and payload.get("status") == "ready":
                        ready.set()
                    if on_event:
                        on_event(payload)

        receiver = asyncio.create_task(receive())
        try:
            await asyncio.wait({receiver, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                receiver.result()
                raise SimulatorError(ws.close_code, ws.close_reason or "")
            result.connections += 1
            first = result.sent
            start = time.monotonic() - first * period / speed
            for i, (offset, packet) in enumerate(_paced(packets, period, speed)):
                if i < first:
                    continue  # sent on an earlier connection
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(packet)
                result.sent += 1
            sent_at = time.monotonic()
            while not receiver.done():
                quiet_since = max(sent_at, result.last_segment_at)
                if time.monotonic() - quiet_since >= settle_s:
                    break
                await asyncio.sleep(0.05)
        except websockets.ConnectionClosed:
            pass
        finally:
            if not receiver.done():
                await ws.close()
            await asyncio.gather(receiver, return_exceptions=True)
        if ws.close_code not in (None, 1000, 1001) or (ws.close_code == 1001 and ws.close_reason):
            raise SimulatorError(ws.close_code, ws.close_reason or "")
    return result


def print_live(segments: list[dict[str, Any]], stream: Any = sys.stdout) -> None:
    """One line per segment update: ``[start-end] SPEAKER_n: text``."""
    for seg in segments:
        print(f"[{seg['start']:7.2f}-{seg['end']:7.2f}] {seg['speaker']}: {seg['text']}", file=stream, flush=True)
