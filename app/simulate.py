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

from ingest.decode import load_audio_file, load_opuslib
from ingest.schema import SAMPLE_RATE

__all__ = ["SimulationResult", "SimulatorError", "encode_frames", "simulate"]

SIM_CODECS = ("opus_fs320", "opus", "pcm16")
KEEPALIVE = b"\x8a\x00"


class SimulatorError(Exception):
    """The server refused or dropped the stream; carries the close code and reason."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"server closed the stream: {code} {reason}".strip())
        self.code = code
        self.reason = reason


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
) -> SimulationResult:
    """Stream ``path`` to ``url`` and collect what comes back.

    After the file (plus ``tail_s`` of silence so the last utterance ends) the simulator waits
    until no segment has arrived for ``settle_s`` seconds, then closes normally.

    Raises:
        SimulatorError: the server closed the stream with an error code.
    """
    audio = load_audio_file(path)
    audio = np.concatenate([audio, np.zeros(int(tail_s * SAMPLE_RATE), dtype=np.float32)])
    packets, period = encode_frames(audio, codec)
    target = with_query(url, codec=codec, sample_rate=SAMPLE_RATE, language=language, **(extra_params or {}))
    result = SimulationResult()
    headers = {"Authorization": f"Bearer {token}"}
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
            start = time.monotonic()
            for offset, packet in _paced(packets, period, speed):
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(packet)
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
