"""``STT_BACKEND=deepgram``: ``/v4/listen`` of a real server relaying to the Deepgram stand-in through the SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import websockets

from app.cli.simulator import SimulatorError, encode_frames, simulate
from ingest.decode import load_audio_file
from tests.conftest import FAST
from tests.deepgram_standin import DIALOGUE, Connection, DeepgramStandIn, script_words, tone_speech
from tests.support import ServerProcess, token

KEY = "test-deepgram-key"
SCRIPT = script_words(DIALOGUE)
EXPECTED = [(f"SPEAKER_{speaker}", text) for speaker, text in DIALOGUE]  # OMI merges each turn into one segment


@pytest.fixture(scope="module")
def standin() -> Iterator[DeepgramStandIn]:
    server = DeepgramStandIn(DIALOGUE, api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, standin: DeepgramStandIn) -> Iterator[ServerProcess]:
    env = {**FAST, "STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": KEY, "DEEPGRAM_URL": standin.url}
    proc = ServerProcess(tmp_path_factory.mktemp("deepgram-server"), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tones.wav"
    soundfile.write(path, tone_speech(DIALOGUE), 16_000, subtype="PCM_16")
    return path


async def closed(conn: Connection, within_s: float = 10.0) -> bool:
    """Whether the server ends its Deepgram stream with CloseStream (it does once the device has gone)."""
    for _ in range(int(within_s / 0.05)):
        if conn.closed:
            return conn.controls[-1] == "CloseStream"
        await asyncio.sleep(0.05)
    return False


def device_bytes(recording: Path) -> int:
    """The PCM bytes of the recording as ``simulate`` streams it (1.5 s of silence after it) and we decode it."""
    audio = np.concatenate([load_audio_file(recording), np.zeros(int(1.5 * 16_000), dtype=np.float32)])
    packets, _ = encode_frames(audio, "opus_fs320")
    return len(packets) * 320 * 2


def check_segments(segments: list[dict]) -> None:
    """One segment per turn, with the turn's speaker and text, at the turn's time in the conversation."""
    assert [(s["speaker"], s["text"]) for s in segments] == EXPECTED
    turn_starts = [next(w.start for w in SCRIPT if w.text == text.split()[0]) for _, text in DIALOGUE]
    for seg, start in zip(segments, turn_starts, strict=True):
        assert seg["start"] == pytest.approx(start - turn_starts[0], abs=0.15)
        assert seg["speaker_id"] == int(seg["speaker"].removeprefix("SPEAKER_"))
        assert seg["speaker_name"] == f"Speaker {seg['speaker_id']}"
        assert seg["stt_provider"] == "deepgram"


async def test_a_device_stream_is_transcribed_by_deepgram_with_its_speakers(
    server: ServerProcess, standin: DeepgramStandIn, recording: Path
):
    before = len(standin.connections)
    result = await simulate(recording, server.ws, codec="opus_fs320", token=token("dg-alice"), speed=8, settle_s=1.0)
    check_segments(result.ordered())
    statuses = [e["status"] for e in result.events if e["type"] == "service_status"]
    assert statuses == ["initiating", "stt_initiating", "ready"]

    [conn] = standin.connections[before:]
    assert conn.authorization == f"Token {KEY}"
    assert conn.params["encoding"] == "linear16" and conn.params["sample_rate"] == "16000"
    assert conn.params["channels"] == "1" and conn.params["model"] == "nova-3" and conn.params["language"] == "en"
    assert conn.params["diarize"] == conn.params["punctuate"] == conn.params["smart_format"] == "true"
    assert conn.params["endpointing"] == "300" and conn.params["interim_results"] == "true"
    assert await closed(conn)
    assert conn.audio_bytes == device_bytes(recording)  # every decoded sample, as linear16 at 16 kHz

    stored = server.get("/v1/conversations/page", uid="dg-alice").json()["items"][0]["transcript_segments"]
    assert [(s["speaker"], s["text"]) for s in stored] == EXPECTED


async def test_pcm_at_8khz_goes_to_deepgram_at_8khz(server: ServerProcess, standin: DeepgramStandIn):
    before = len(standin.connections)
    pcm = (np.clip(soxr.resample(tone_speech(DIALOGUE), 16_000, 8_000), -1, 1) * 32767).astype("<i2").tobytes()
    headers = {"Authorization": f"Bearer {token('dg-pcm8')}"}
    segments: dict[str, dict] = {}
    async with websockets.connect(f"{server.ws}?codec=pcm8&sample_rate=8000", additional_headers=headers) as ws:

        async def read() -> None:
            async for message in ws:
                payload = json.loads(message) if message != "ping" else None
                if isinstance(payload, list):
                    segments.update({s["id"]: s for s in payload})

        reader = asyncio.create_task(read())
        for i in range(0, len(pcm), 1600):  # 100 ms chunks at 10x real time
            await ws.send(pcm[i : i + 1600])
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)
    await asyncio.gather(reader, return_exceptions=True)
    check_segments(sorted(segments.values(), key=lambda s: s["start"]))
    [conn] = standin.connections[before:]
    assert conn.params["sample_rate"] == "8000" and conn.audio_bytes == len(pcm)


async def test_a_dropped_deepgram_connection_loses_no_audio(
    server: ServerProcess, standin: DeepgramStandIn, recording: Path
):
    before = len(standin.connections)
    reconnects = server.metric("stt_reconnects_total")
    standin.drop_after_s = 6.0
    result = await simulate(recording, server.ws, codec="opus_fs320", token=token("dg-drop"), speed=8, settle_s=1.0)
    check_segments(result.ordered())  # every word once, times continuous across the reconnect
    first, second = standin.connections[before:]
    assert first.dropped and await closed(second)
    sent = device_bytes(recording)
    assert first.audio_bytes + second.audio_bytes > sent  # the unfinalized audio went again
    assert sent - int(first.finalized_s * 16_000) * 2 - 4 <= second.audio_bytes < sent
    assert server.metric("stt_reconnects_total") == reconnects + 1
    assert server.metric("stt_gaps_total") == 0
    assert "reconnected to deepgram" in server.log()


async def test_a_rejected_deepgram_key_closes_the_stream_with_1011_and_says_why(
    server: ServerProcess, standin: DeepgramStandIn, recording: Path
):
    standin.api_key = "another-key"  # the server's DEEPGRAM_API_KEY is now wrong
    try:
        events: list[dict] = []
        with pytest.raises(SimulatorError) as refused:
            await simulate(recording, server.ws, token=token("dg-refused"), on_event=events.append)
    finally:
        standin.api_key = KEY
    assert refused.value.code == 1011
    assert "DEEPGRAM_API_KEY" in refused.value.reason and "401" in refused.value.reason
    failed = [e for e in events if e.get("status") == "stt_failed"]
    assert failed and "DEEPGRAM_API_KEY" in failed[0]["status_text"]
    assert KEY not in server.log()
