"""The live stream pipeline with a scripted engine: ordering, back-pressure and storage retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.cli.simulator import encode_frames
from core.metrics import Metrics
from core.segments import AbsoluteSegment
from ingest import stream as stream_module
from ingest.asr.stt import SpeechToText
from ingest.decode import load_audio_file, make_decoder
from ingest.schema import AsrSegment
from ingest.stream import LiveStream, Transcriber
from ingest.vad import VadParams, load_vad
from tests.support import Turn


class Scripted(SpeechToText):
    """Returns the utterance length as text, so results are checkable without a model."""

    name = "scripted"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def transcribe(self, audio, language, *, timestamps=True):  # type: ignore[no-untyped-def]
        import time

        self.calls += 1
        time.sleep(self.delay_s)
        return [AsrSegment(start=0.0, end=audio.size / 16_000, text=f"{audio.size / 16_000:.1f} seconds")]

    def supports_language(self, language: str) -> bool:
        return True


def make_stream(engine: SpeechToText, sink, **kwargs) -> LiveStream:  # type: ignore[no-untyped-def]
    return LiveStream(
        decoder=make_decoder("opus_fs320", 16_000),
        vad=load_vad(),
        params=VadParams(partial_interval_s=kwargs.pop("partial_interval_s", 0.0)),
        transcriber=Transcriber(engine, workers=1, metrics=Metrics()),
        language="en",
        sink=sink,
        max_queued_audio_s=kwargs.pop("max_queued_audio_s", 120.0),
    )


async def feed_file(stream: LiveStream, path: Path) -> None:
    packets, _ = encode_frames(load_audio_file(path), "opus_fs320")
    for packet in packets:
        stream.feed(packet)
        await asyncio.sleep(0)


async def test_every_turn_is_delivered_once_in_order(dialogue: tuple[Path, list[Turn]]):
    path, truth = dialogue
    delivered: list[tuple[list[AbsoluteSegment], bool]] = []

    async def sink(segments: list[AbsoluteSegment], final: bool) -> None:
        delivered.append((segments, final))

    stream = make_stream(Scripted(), sink)
    await feed_file(stream, path)
    await stream.finish()
    finals = [segs[0] for segs, final in delivered if final]
    assert len(truth) <= len(finals) <= 2 * len(truth)
    assert [s.start for s in finals] == sorted(s.start for s in finals)
    assert len({s.id for s in finals}) == len(finals)


async def test_a_failing_store_is_retried_until_it_works(
    dialogue: tuple[Path, list[Turn]], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(stream_module, "SINK_RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    path, _ = dialogue
    failures = {"left": 2}
    stored: list[str] = []

    async def flaky(segments: list[AbsoluteSegment], final: bool) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("database unavailable")
        stored.extend(s.id for s in segments)

    stream = make_stream(Scripted(), flaky)
    await feed_file(stream, path)
    await stream.finish()
    assert stored and len(stored) == len(set(stored))
    assert stream.metrics.counters["sink_retries_total"] == 2
    assert stream.metrics.counters["segments_lost_total"] == 0


async def test_a_slow_engine_skips_partials_and_drops_the_oldest_backlog(dialogue: tuple[Path, list[Turn]]):
    path, _ = dialogue
    finals: list[AbsoluteSegment] = []

    async def sink(segments: list[AbsoluteSegment], final: bool) -> None:
        if final:
            finals.extend(segments)

    stream = make_stream(Scripted(delay_s=1.5), sink, partial_interval_s=0.5, max_queued_audio_s=3.0)
    await feed_file(stream, path)  # 15 s of audio arrives far faster than the engine keeps up
    await stream.finish()
    counters = stream.metrics.counters
    assert counters["partials_skipped_total"] > 0
    assert counters["audio_dropped_seconds_total"] > 0
    assert finals  # the newest speech still arrives


async def test_garbage_between_packets_does_not_break_the_stream(dialogue: tuple[Path, list[Turn]]):
    from core.errors import DecodeError

    path, _ = dialogue
    delivered: list[AbsoluteSegment] = []

    async def sink(segments: list[AbsoluteSegment], final: bool) -> None:
        delivered.extend(segments if final else [])

    stream = make_stream(Scripted(), sink)
    packets, _ = encode_frames(load_audio_file(path), "opus_fs320")
    bad = 0
    for i, packet in enumerate(packets):
        if i % 10 == 0:
            try:
                stream.feed(bytes([0xFF, 0xFF]) + np.random.default_rng(i).bytes(50))
            except DecodeError:
                bad += 1
        stream.feed(packet)
        await asyncio.sleep(0)
    await stream.finish()
    assert bad > 0 and delivered
