"""A live stream relayed to Deepgram (the real SDK) and the local stand-in: segments, reconnects, gaps, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import soxr

from app.settings import SettingsError, load_settings
from core.errors import SpeechToTextError
from core.metrics import Metrics
from core.segments import AbsoluteSegment
from ingest import relay as relay_module
from ingest.asr import load_streaming
from ingest.asr.deepgram import Deepgram, endpoints
from ingest.decode import make_decoder
from ingest.relay import RelayStream
from tests.deepgram_standin import DIALOGUE, DeepgramStandIn, ScriptWord, script_words, tone_speech

KEY = "test-deepgram-key"
SCRIPT = script_words(DIALOGUE)


@pytest.fixture
def standin() -> Iterator[DeepgramStandIn]:
    server = DeepgramStandIn(DIALOGUE, api_key=KEY).start()
    yield server
    server.stop()


class Collected:
    """What the stream handed its sink."""

    def __init__(self) -> None:
        self.finals: list[AbsoluteSegment] = []
        self.partials: list[AbsoluteSegment] = []

    async def __call__(self, segments: list[AbsoluteSegment], final: bool) -> None:
        (self.finals if final else self.partials).extend(segments)


def relay(standin: DeepgramStandIn, *, rate: int = 16_000, key: str = KEY, **kwargs) -> tuple[RelayStream, Collected]:  # type: ignore[no-untyped-def]
    collected = Collected()
    stream = RelayStream(
        decoder=make_decoder("pcm16" if rate == 16_000 else "pcm8", rate),
        engine=Deepgram(api_key=key, url=standin.url),
        language="en",
        sink=collected,
        metrics=Metrics(),
        **kwargs,
    )
    return stream, collected


def pcm_of(rate: int = 16_000) -> bytes:
    audio = tone_speech(DIALOGUE)
    if rate != 16_000:
        audio = soxr.resample(audio, 16_000, rate)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def play(stream: RelayStream, pcm: bytes, *, chunk_s: float = 0.1, speed: float = 20.0) -> None:
    """Feed ``pcm`` in chunks at ``speed`` times real time."""
    step = int(stream.decoder.sample_rate * chunk_s) * 2
    for i in range(0, len(pcm), step):
        stream.feed(pcm[i : i + step])
        await asyncio.sleep(chunk_s / speed)


def check_against_script(stream: RelayStream, segments: list[AbsoluteSegment]) -> list[ScriptWord]:
    """Every word heard is the script's, with its speaker and its time in the stream; returns them."""
    assert stream.origin is not None
    heard: list[ScriptWord] = []
    cursor = 0
    for seg in sorted(segments, key=lambda s: s.start):
        tokens = seg.text.split()
        found = next(
            (i for i in range(cursor, len(SCRIPT)) if [w.text for w in SCRIPT[i : i + len(tokens)]] == tokens), None
        )
        assert found is not None, f"{tokens} is not next in the script"
        after_gap, cursor = found > cursor, found  # words skipped: the stream never heard them (a gap)
        words = SCRIPT[cursor : cursor + len(tokens)]
        assert {w.speaker for w in words} == {seg.speaker_id}
        if after_gap:  # the audio after a gap may begin inside a word
            assert words[0].start - 0.1 <= seg.start - stream.origin <= words[0].end
        else:
            assert seg.start - stream.origin == pytest.approx(words[0].start, abs=0.1)
        assert seg.end - stream.origin == pytest.approx(words[-1].end, abs=0.1)
        assert seg.stt_provider == "deepgram" and seg.speaker_name == f"Speaker {seg.speaker_id}"
        heard += words
        cursor += len(tokens)
    return heard


@pytest.mark.parametrize("rate", [16_000, 8_000])
async def test_segments_carry_the_words_speakers_and_times(standin: DeepgramStandIn, rate: int):
    stream, collected = relay(standin, rate=rate)
    pcm = pcm_of(rate)
    await stream.start()
    await play(stream, pcm)
    await stream.finish()

    assert check_against_script(stream, collected.finals) == SCRIPT
    assert collected.partials, "interim results show as partial segments"
    assert {p.id for p in collected.partials} & {f.id for f in collected.finals}, "a final replaces its partial"
    [conn] = standin.connections
    assert conn.authorization == f"Token {KEY}"
    assert conn.params == {
        "model": "nova-3",
        "language": "en",
        "diarize": "true",
        "punctuate": "true",
        "smart_format": "true",
        "endpointing": "300",
        "interim_results": "true",
        "encoding": "linear16",
        "sample_rate": str(rate),
        "channels": "1",
    }
    assert conn.audio_bytes == len(pcm)
    assert conn.controls[-1] == "CloseStream" and conn.closed
    assert stream.metrics.counters["stt_gaps_total"] == 0


async def test_a_dropped_connection_reconnects_and_sends_the_unfinalized_audio_again(standin: DeepgramStandIn):
    standin.drop_after_s = 5.0
    stream, collected = relay(standin)
    pcm = pcm_of()
    await stream.start()
    await play(stream, pcm)
    await stream.finish()

    assert check_against_script(stream, collected.finals) == SCRIPT  # every word once, times continuous
    first, second = standin.connections
    assert first.dropped and second.closed
    # From the end of the last final result the stream received (the stand-in's last one may be lost in the drop).
    assert len(pcm) - int(first.finalized_s * 16_000) * 2 - 4 <= second.audio_bytes < len(pcm)
    assert first.audio_bytes + second.audio_bytes > len(pcm)
    assert stream.metrics.counters["stt_reconnects_total"] == 1
    assert stream.metrics.counters["stt_gaps_total"] == 0


async def test_audio_beyond_the_reconnect_buffer_is_a_counted_gap(standin: DeepgramStandIn, caplog):
    standin.drop_after_s = 4.0
    standin.then_refuse = 6  # about 1.75 s of failed reconnects: 8 s of audio at 5x, far more than the buffer
    stream, collected = relay(standin, buffer_s=1.0, reconnect_max_delay_s=0.25)
    await stream.start()
    await play(stream, pcm_of(), speed=5.0)
    await stream.finish()

    heard = check_against_script(stream, collected.finals)  # what was heard still has the right times
    assert 0 < len(heard) < len(SCRIPT)
    assert heard[-1] == SCRIPT[-1]  # the audio after the outage was sent
    counters = stream.metrics.counters
    assert counters["stt_gaps_total"] >= 1 and counters["stt_gap_seconds_total"] > 1.0
    assert counters["stt_connect_failures_total"] == 6
    gap_lines = [r.getMessage() for r in caplog.records if "transcript gap" in r.getMessage()]
    assert gap_lines and all(line.startswith("transcript gap: ") and "s of audio" in line for line in gap_lines)


async def test_a_wrong_api_key_is_refused_for_good(standin: DeepgramStandIn):
    stream, _ = relay(standin, key="wrong-key")
    with pytest.raises(SpeechToTextError) as refused:
        await stream.start()
    assert "DEEPGRAM_API_KEY" in refused.value.detail and "HTTP 401" in refused.value.detail
    assert not refused.value.retryable and "wrong-key" not in refused.value.detail
    assert standin.refused == 1 and not standin.connections
    await stream.finish()


async def test_a_service_unavailable_at_first_is_retried(standin: DeepgramStandIn):
    standin.refuse = 2
    stream, collected = relay(standin)
    await stream.start()  # returns after the first failed attempt; audio waits in the buffer
    await play(stream, pcm_of())
    await stream.finish()
    assert check_against_script(stream, collected.finals) == SCRIPT
    assert stream.metrics.counters["stt_connect_failures_total"] == 2


async def test_a_key_revoked_mid_stream_is_reported(standin: DeepgramStandIn):
    errors: list[SpeechToTextError] = []

    async def on_error(exc: SpeechToTextError) -> None:
        errors.append(exc)

    standin.drop_after_s = 2.0
    stream, _ = relay(standin, on_error=on_error)
    await stream.start()
    standin.api_key = "rotated"
    await play(stream, pcm_of())
    await stream.finish()
    assert len(errors) == 1 and "DEEPGRAM_API_KEY" in errors[0].detail
    assert stream.metrics.counters["stt_gaps_total"] == 1  # what was not finalized is lost, and counted


async def test_a_pause_in_the_audio_finalizes_and_keeps_the_connection_alive(
    standin: DeepgramStandIn, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(relay_module, "FINALIZE_IDLE_S", 0.3)
    monkeypatch.setattr(relay_module, "KEEPALIVE_S", 0.6)
    stream, collected = relay(standin)
    pcm = pcm_of()
    clinic = next(w for w in SCRIPT if w.text == "clinic?")
    first_turn_end = int((clinic.end + 0.05) * 16_000) * 2  # inside the pause after the first turn
    await stream.start()
    await play(stream, pcm[:first_turn_end])
    await asyncio.sleep(1.2)
    assert " ".join(s.text for s in collected.finals).endswith("clinic?")  # no endpoint was heard: Finalize
    await play(stream, pcm[first_turn_end:])
    await stream.finish()
    [conn] = standin.connections
    assert "Finalize" in conn.controls and "KeepAlive" in conn.controls
    assert check_against_script(stream, collected.finals) == SCRIPT


def test_deepgram_urls():
    assert endpoints("") == ("https://api.deepgram.com", "wss://api.deepgram.com")
    assert endpoints("ws://127.0.0.1:8080/") == ("http://127.0.0.1:8080", "ws://127.0.0.1:8080")
    assert endpoints("https://dg.example.com/v1/listen") == ("https://dg.example.com", "wss://dg.example.com")
    assert Deepgram(api_key="k").supports_language("en") and Deepgram(api_key="k").supports_language("multi")
    assert not Deepgram(api_key="k").supports_language("English!")


def test_deepgram_settings():
    settings = load_settings(
        {"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "k", "DEEPGRAM_URL": "ws://127.0.0.1:9"}, env_file=None
    )
    engine = load_streaming(settings.asr)
    assert isinstance(engine, Deepgram) and engine.url == "ws://127.0.0.1:9" and engine.model == "nova-3"
    assert load_streaming(load_settings({}, env_file=None).asr) is None
    with pytest.raises(SettingsError, match="STT_BACKEND=deepgram needs DEEPGRAM_API_KEY"):
        load_settings({"STT_BACKEND": "deepgram"}, env_file=None)
    with pytest.raises(SettingsError, match="DEEPGRAM_URL must start with"):
        load_settings({"DEEPGRAM_URL": "api.deepgram.com"}, env_file=None)
