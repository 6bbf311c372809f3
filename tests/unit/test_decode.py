"""Frame decoding: Opus and PCM to 16 kHz float32, bad input, and finding libopus."""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli.simulator import encode_frames
from core.errors import DecodeError, MissingDependencyError, UnsupportedAudioError
from ingest import decode
from ingest.decode import load_audio_file, make_decoder


def tone(seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(("codec", "packet_samples"), [("opus_fs320", 320), ("opus", 160)])
def test_opus_round_trip_keeps_length_and_signal(codec: str, packet_samples: int):
    audio = tone()
    packets, period = encode_frames(audio, codec)
    assert period == packet_samples / 16_000
    assert len(packets) == audio.size // packet_samples
    decoder = make_decoder(codec, 16_000)
    out = np.concatenate([decoder(p) for p in packets])
    assert out.size == audio.size
    # Opus has a few ms of algorithmic delay; compare energy and dominant frequency.
    assert abs(np.sqrt(np.mean(out**2)) - np.sqrt(np.mean(audio**2))) < 0.05
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - 440) <= 2


def test_device_packets_are_about_32_kbps():
    packets, period = encode_frames(tone(2.0), "opus_fs320")
    kbps = sum(len(p) for p in packets) * 8 / (len(packets) * period) / 1000
    assert 20 <= kbps <= 40


def test_pcm16_at_8khz_is_resampled_and_odd_bytes_carry_over():
    audio = tone(1.0)[::2]  # 8 kHz worth of samples
    pcm = (audio * 32767).astype("<i2").tobytes()
    decoder = make_decoder("pcm8", 8_000)
    pieces = [decoder(pcm[i : i + 333]) for i in range(0, len(pcm), 333)]  # odd-sized chunks
    out = np.concatenate([*pieces, decoder.flush()])
    assert abs(out.size - 16_000) <= 2


def test_garbage_opus_packet_raises_decode_error_and_decoder_recovers():
    decoder = make_decoder("opus_fs320", 16_000)
    with pytest.raises(DecodeError, match="undecodable Opus packet"):
        decoder(bytes([0xFF, 0xFF, 0x01, 0x02]))
    good = encode_frames(tone(0.1), "opus_fs320")[0][0]
    assert decoder(good).size == 320


@pytest.mark.parametrize(
    ("codec", "rate", "message"),
    [("aac", 16_000, "Unsupported codec 'aac'"), ("opus", 44_100, "Unsupported sample_rate 44100"),
     ("pcm16", 7_000, "Unsupported sample_rate 7000")],
)  # fmt: skip
def test_unsupported_codec_or_rate(codec: str, rate: int, message: str):
    with pytest.raises(UnsupportedAudioError, match=message):
        make_decoder(codec, rate)


def test_libopus_is_found_in_homebrew_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake = tmp_path / "libopus.dylib"
    fake.write_bytes(b"")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(decode, "_LIBOPUS_CANDIDATES", ("/nonexistent/libopus.dylib", str(fake)))
    assert decode.find_libopus() == str(fake)


def test_missing_libopus_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(decode, "_LIBOPUS_CANDIDATES", ())
    monkeypatch.delitem(sys.modules, "opuslib", raising=False)
    with pytest.raises(MissingDependencyError, match=r"brew install opus.*apt-get install libopus0"):
        decode.load_opuslib()


def test_unreadable_file_is_a_decode_error(tmp_path: Path):
    junk = tmp_path / "x.wav"
    junk.write_text("nope")
    with pytest.raises(DecodeError, match="cannot read audio file"):
        load_audio_file(junk)
