"""Decoding device audio (Opus or PCM frames) and audio files to 16 kHz mono float32."""

from __future__ import annotations

import ctypes.util
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr

from core.errors import DecodeError, MissingDependencyError, UnsupportedAudioError
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "CODECS",
    "FrameDecoder",
    "audio_duration",
    "load_audio_file",
    "load_opuslib",
    "make_decoder",
    "resample",
]

CODECS = ("opus", "opus_fs320", "pcm8", "pcm16")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
PCM_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# Where Homebrew (Apple silicon, Intel) and MacPorts put libopus; not on macOS's default search path.
_LIBOPUS_CANDIDATES = (
    "/opt/homebrew/lib/libopus.dylib",
    "/opt/homebrew/opt/opus/lib/libopus.dylib",
    "/usr/local/lib/libopus.dylib",
    "/usr/local/opt/opus/lib/libopus.dylib",
    "/opt/local/lib/libopus.dylib",
    "/usr/lib/x86_64-linux-gnu/libopus.so.0",
    "/usr/lib/aarch64-linux-gnu/libopus.so.0",
)

_INSTALL_HINT = (
    "libopus is not installed: run `brew install opus` on macOS or `sudo apt-get install libopus0` on Debian/Ubuntu"
)


def find_libopus() -> str | None:
    """Path or name of the system libopus, including Homebrew's locations on macOS."""
    found = ctypes.util.find_library("opus")
    if found:
        return found
    for candidate in _LIBOPUS_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return None


def load_opuslib() -> ModuleType:
    """Import ``opuslib``, pointing it at libopus wherever it is installed.

    Raises:
        MissingDependencyError: libopus is not installed; the message says how to install it.
    """
    if "opuslib" in sys.modules:
        return sys.modules["opuslib"]
    location = find_libopus()
    if location is None:
        raise MissingDependencyError(_INSTALL_HINT)
    original = ctypes.util.find_library
    ctypes.util.find_library = lambda name: location if name == "opus" else original(name)
    try:
        return importlib.import_module("opuslib")
    except OSError as exc:
        raise MissingDependencyError(f"{_INSTALL_HINT} ({exc})") from exc
    finally:
        ctypes.util.find_library = original


def resample(audio: NDArray[np.float32], rate: int) -> NDArray[np.float32]:
    """Resample mono float32 audio from ``rate`` to 16 kHz."""
    if rate == SAMPLE_RATE or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32, copy=False)


def pcm16_to_float(data: bytes) -> NDArray[np.float32]:
    """Little-endian signed 16-bit PCM to float32 in [-1, 1)."""
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0


@dataclass
class FrameDecoder:
    """Decodes the binary WebSocket frames of one stream into 16 kHz float32 audio.

    Use :func:`make_decoder`; it validates the codec and sample rate.
    """

    codec: str
    sample_rate: int
    _opus: Any = None
    _resampler: Any = None
    _odd_byte: bytes = b""

    def __call__(self, frame: bytes) -> NDArray[np.float32]:
        """Decode one frame. Raises :class:`DecodeError` for an undecodable Opus packet."""
        audio = pcm16_to_float(self.pcm(frame))
        if self._resampler is None:
            return audio
        return self._resampler.resample_chunk(audio).astype(np.float32, copy=False)

    def pcm(self, frame: bytes) -> bytes:
        """Decode one frame to s16le PCM at the stream's own ``sample_rate`` (no resampling).

        Raises:
            DecodeError: an undecodable Opus packet (the decoder stays usable).
        """
        if self._opus is not None:
            try:
                # A packet may legally hold up to 120 ms; size the output buffer for that.
                return bytes(self._opus.decode(frame, frame_size=self.sample_rate * 120 // 1000))
            except Exception as exc:
                raise DecodeError(f"undecodable Opus packet of {len(frame)} bytes: {exc}") from exc
        data = self._odd_byte + frame
        self._odd_byte = data[-1:] if len(data) % 2 else b""
        return data[: len(data) - len(data) % 2]

    def flush(self) -> NDArray[np.float32]:
        """Audio the resampler still holds at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return np.asarray(tail, dtype=np.float32)


def make_decoder(codec: str, sample_rate: int) -> FrameDecoder:
    """A decoder for one stream's frames.

    Raises:
        UnsupportedAudioError: unknown codec or a sample rate that codec cannot carry.
        MissingDependencyError: an Opus codec was asked for and libopus is missing.
    """
    if codec not in CODECS:
        raise UnsupportedAudioError(f"Unsupported codec {codec!r}; use one of {', '.join(CODECS)}")
    is_opus = codec.startswith("opus")
    allowed = OPUS_RATES if is_opus else PCM_RATES
    if sample_rate not in allowed:
        raise UnsupportedAudioError(
            f"Unsupported sample_rate {sample_rate} for {codec}; use one of {', '.join(map(str, allowed))}"
        )
    decoder = FrameDecoder(codec=codec, sample_rate=sample_rate)
    if is_opus:
        decoder._opus = load_opuslib().Decoder(sample_rate, 1)
    if sample_rate != SAMPLE_RATE:
        decoder._resampler = soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32")
    return decoder


def audio_duration(path: Path) -> float:
    """Length of an audio file in seconds, read from its header.

    Raises:
        DecodeError: the file is missing or not audio we can read.
    """
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise DecodeError(f"cannot read audio file {path}: {exc}") from exc


def load_audio_file(path: Path) -> NDArray[np.float32]:
    """Read WAV, FLAC, MP3 or Ogg/Opus into 16 kHz mono float32.

    Raises:
        DecodeError: the file is missing or not audio we can read.
    """
    import soundfile

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise DecodeError(f"cannot read audio file {path}: {exc}") from exc
    # (frames, channels) -> (frames,)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return resample(np.ascontiguousarray(mono, dtype=np.float32), int(rate))
