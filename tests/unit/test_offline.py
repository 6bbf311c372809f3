"""Reading the OMI device's offline files (issue "Offline audio"): names, frames, recordings, pieces of speech."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.errors import DecodeError, UnsupportedAudioError
from ingest.offline import DecodedFile, decode_file, parse_name, recordings, speech_pieces
from ingest.vad import VadParams, load_vad
from tests.offline_files import app_file, app_name, frames_body
from tests.support import synthesize

T0 = 1_760_000_000.0
TONE = (0.3 * np.sin(np.linspace(0, 2 * np.pi * 440 * 2.0, 32_000))).astype(np.float32)  # 2 s


@pytest.mark.parametrize("codec", ["opus_fs320", "opus", "pcm16"])
def test_every_app_codec_decodes_to_its_own_length(codec: str):
    name, body = app_file(TONE, codec, T0)
    decoded = decode_file(parse_name(name), body)
    assert decoded.file.codec == codec and decoded.file.started_at == T0
    assert decoded.skipped == 0
    assert abs(decoded.duration_s - 2.0) < 0.03, decoded.duration_s
    if codec == "pcm16":
        assert np.allclose(decoded.audio[:32_000], np.round(TONE * 32767) / 32768, atol=1e-4)


def test_names_as_the_app_and_the_pendant_write_them():
    assert parse_name(app_name("opus_fs320", T0)).sample_rate == 16_000
    assert parse_name(app_name("opus", T0, millis=True)).started_at == T0  # over 1e10: milliseconds
    pendant = parse_name("audio_limitless_opus_16000_1_fs320_r4711_1760000000123.bin")
    assert (pendant.device, pendant.codec, pendant.started_at) == ("limitless", "opus", 1_760_000_000.123)
    assert parse_name("audio_omi_pcm8_16000_1_fs160_1760000000.bin").codec == "pcm8"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("audio_omi_aac_16000_1_fs160_1760000000.bin", "codec aac is not supported"),
        ("audio_omi_lc3_fs1030_16000_1_fs1030_1760000000.bin", "codec lc3_fs1030 is not supported"),
        ("recording.wav", "not an OMI offline file name"),
        ("audio_omi_opus_16000_1_fs160_abc.bin", "not an OMI offline file name"),
        ("audio_omi_opus_16000_2_fs160_1760000000.bin", "2 channels"),
        ("audio_omi_opus_44100_1_fs160_1760000000.bin", "Unsupported sample_rate 44100"),
        ("audio_omi_opus_16000_1_fs160_0.bin", "before 2015 or in the future"),
        ("audio_omi_opus_16000_1_fs160_4102444800.bin", "before 2015 or in the future"),  # 2100; fixed for xdist
    ],
)
def test_a_name_we_cannot_use_is_refused_by_name(name: str, says: str):
    with pytest.raises(UnsupportedAudioError) as caught:
        parse_name(name)
    assert caught.value.detail.startswith(f"{name}: ") and says in caught.value.detail


def test_a_truncated_or_impossible_frame_refuses_the_file():
    name, body = app_file(TONE, "opus_fs320", T0)
    file = parse_name(name)
    with pytest.raises(DecodeError, match=rf"{name}: is cut short: frame \d+ announces \d+ bytes, \d+ follow"):
        decode_file(file, body[:-3])
    with pytest.raises(DecodeError, match=r"ends inside the length of frame"):
        decode_file(file, body + b"\x01\x00")
    with pytest.raises(DecodeError, match="announces 0 bytes"):
        decode_file(file, body + struct.pack("<I", 0))
    with pytest.raises(DecodeError, match="holds more than 1 s of audio"):
        decode_file(file, body, max_seconds=1.0)


def test_an_undecodable_packet_is_skipped_and_counted():
    name, body = app_file(TONE, "opus_fs320", T0)
    broken = frames_body([b"\xff\xff\xff\xff\xff"]) + body
    decoded = decode_file(parse_name(name), broken)
    assert decoded.skipped == 1 and decoded.frames == 101 and abs(decoded.duration_s - 2.0) < 0.03


def _decoded(start: float, seconds: float, name: str) -> DecodedFile:
    file = parse_name(app_name("pcm16", start, device=name))
    return DecodedFile(file=file, audio=np.ones(int(seconds * 16_000), dtype=np.float32), frames=1, skipped=0)


def test_files_that_follow_each_other_are_one_recording_with_silence_between():
    a, b, far = _decoded(T0, 60, "a"), _decoded(T0 + 65, 60, "b"), _decoded(T0 + 600, 10, "c")
    joined, alone = recordings([far, b, a], join_gap_s=120)
    assert joined.started_at == T0 and joined.names == (a.file.name, b.file.name)
    assert joined.duration_s == pytest.approx(125) and not joined.audio[60 * 16_000 : 65 * 16_000].any()
    assert alone.started_at == T0 + 600 and alone.names == (far.file.name,)


def test_speech_less_than_the_gap_apart_is_one_piece_and_short_speech_is_dropped(tmp_path: Path):
    params = VadParams(threshold=0.5, min_silence_ms=400, speech_pad_ms=300, max_utterance_s=25, partial_interval_s=0)
    wav, _ = synthesize([("en-us", "The appointment moved to Friday morning at nine.")], tmp_path / "one.wav")
    speech, _ = soundfile.read(wav, dtype="float32")
    pause, gap = np.zeros(16_000 * 30, dtype=np.float32), np.zeros(16_000 * 130, dtype=np.float32)
    blip = speech[int(0.5 * 16_000) : int(0.8 * 16_000)]  # a third of a second of speech: too short to keep
    audio = np.concatenate([speech, pause, speech, gap, speech, gap, blip])
    pieces = speech_pieces(audio, load_vad(), params, merge_gap_s=120, min_s=1.0)
    assert len(pieces) == 2, pieces
    first_end = (2 * speech.size + pause.size) / 16_000
    assert pieces[0][0] < 1.0 and first_end - 1.5 < pieces[0][1] <= first_end
    assert first_end + 130 <= pieces[1][0] < first_end + 131
