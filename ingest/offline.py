"""The OMI device's offline recordings: the files the OMI app uploads once the phone is back in reach.

A file is named ``audio_{device}_{codec}_{sample_rate}_{channels}_fs{frame_size}_{timestamp}.bin``
(the Limitless pendant adds ``r{n}_`` before the timestamp); the timestamp is the recording's start
in unix seconds, or milliseconds when it is over 1e10. The body is codec frames, each behind its
length as a little-endian uint32. ``opus`` (10 ms packets) and ``opus_fs320`` (20 ms) are Opus at
16 kHz; ``pcm16`` and ``pcm8`` are 16-bit little-endian PCM at the file's sample rate, as the live
stream reads them (the OMI sources disagree about ``pcm8``; a file with another codec is refused).

:func:`recordings` joins the files that follow each other into recordings, and
:func:`speech_pieces` cuts a recording into pieces of speech (speech less than ``merge_gap_s``
apart is one piece, a piece under ``min_s`` is dropped), each of which becomes one conversation
or extends one.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from core.errors import DecodeError, UnsupportedAudioError
from ingest.batch import speech_spans
from ingest.decode import make_decoder
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.vad import SileroVad, VadParams

__all__ = [
    "CODECS",
    "DecodedFile",
    "OfflineFile",
    "Recording",
    "decode_file",
    "parse_name",
    "recordings",
    "speech_pieces",
]

CODECS = ("opus", "opus_fs320", "pcm16", "pcm8")
MAX_FRAME_BYTES = 65_536
EARLIEST = datetime(2015, 1, 1, tzinfo=UTC).timestamp()  # before any OMI device; a clock at zero is wrong
FUTURE_SLACK_S = 86_400.0  # a phone's clock may run ahead, but not by a day

_NAME = re.compile(
    r"audio_(?P<device>[A-Za-z0-9]*)_(?P<codec>[a-z0-9]+(?:_fs\d+)?)_(?P<rate>\d+)_(?P<channels>\d+)"
    r"_fs(?P<frame>\d+)_(?:r\d+_)?(?P<ts>\d+(?:\.\d+)?)\.bin"
)


@dataclass(frozen=True)
class OfflineFile:
    """What a file's name says about it."""

    name: str
    device: str
    codec: str
    sample_rate: int
    started_at: float  # epoch seconds


def parse_name(name: str, *, now: float | None = None) -> OfflineFile:
    """Read an offline file's name.

    Raises:
        UnsupportedAudioError: the name is not the app's pattern, its codec is not one we decode, or
            its time is impossible; the message names the file and says what is wrong.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise UnsupportedAudioError(
            f"{name}: not an OMI offline file name; expected "
            "audio_{device}_{codec}_{sample_rate}_{channels}_fs{frame_size}_{timestamp}.bin"
        )
    codec = match["codec"]
    if codec not in CODECS:
        raise UnsupportedAudioError(f"{name}: codec {codec} is not supported; use one of {', '.join(CODECS)}")
    if match["channels"] != "1":
        raise UnsupportedAudioError(f"{name}: {match['channels']} channels; OMI devices record one")
    ts = float(match["ts"])
    if ts > 1e10:
        ts /= 1000.0  # milliseconds
    latest = (time.time() if now is None else now) + FUTURE_SLACK_S
    if not EARLIEST <= ts <= latest:
        when = datetime.fromtimestamp(min(max(ts, 0.0), 4e9), tz=UTC).isoformat()
        raise UnsupportedAudioError(f"{name}: its timestamp ({when}) is before 2015 or in the future")
    rate = int(match["rate"])
    try:
        make_decoder(codec, rate)
    except UnsupportedAudioError as exc:
        raise UnsupportedAudioError(f"{name}: {exc.detail}") from None
    return OfflineFile(name=name, device=match["device"], codec=codec, sample_rate=rate, started_at=ts)


@dataclass(frozen=True)
class DecodedFile:
    """A decoded offline file: 16 kHz mono float32 audio, and how many frames could not be decoded."""

    file: OfflineFile
    audio: NDArray[np.float32]  # (samples,)
    frames: int
    skipped: int  # undecodable Opus packets, left out

    @property
    def duration_s(self) -> float:
        """Seconds of audio."""
        return self.audio.size / SAMPLE_RATE

    @property
    def ended_at(self) -> float:
        """Epoch seconds at the end of the audio."""
        return self.file.started_at + self.duration_s


def decode_file(file: OfflineFile, body: bytes, *, max_seconds: float | None = None) -> DecodedFile:
    """Decode a file's frames.

    An undecodable Opus packet is skipped and counted, as the OMI backend does; a frame cut short
    (the upload was truncated) or a length that cannot be a frame refuses the file.

    Raises:
        DecodeError: a frame is cut short or announces an impossible length, or the file holds
            more than ``max_seconds`` of audio; the message names the file and the frame.
    """
    decoder = make_decoder(file.codec, file.sample_rate)
    chunks: list[NDArray[np.float32]] = []
    offset = frames = skipped = 0
    samples = 0
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    while offset < len(body):
        if len(body) - offset < 4:
            raise DecodeError(f"{file.name}: ends inside the length of frame {frames + 1} (byte {offset})")
        (length,) = struct.unpack_from("<I", body, offset)
        if not 0 < length <= MAX_FRAME_BYTES:
            raise DecodeError(f"{file.name}: frame {frames + 1} (byte {offset}) announces {length} bytes")
        start = offset + 4
        if len(body) - start < length:
            left = len(body) - start
            raise DecodeError(f"{file.name}: is cut short: frame {frames + 1} announces {length} bytes, {left} follow")
        offset = start + length
        frames += 1
        try:
            audio = decoder(body[start:offset])
        except DecodeError:
            skipped += 1
            continue
        chunks.append(audio)
        samples += audio.size
        if limit is not None and samples > limit:
            raise DecodeError(f"{file.name}: holds more than {max_seconds:g} s of audio, the most one file may hold")
    chunks.append(decoder.flush())
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return DecodedFile(file=file, audio=audio.astype(np.float32, copy=False), frames=frames, skipped=skipped)


@dataclass(frozen=True)
class Recording:
    """Files that follow each other, as one stretch of audio (gaps between them filled with silence)."""

    started_at: float  # epoch seconds
    audio: NDArray[np.float32]  # (samples,)
    names: tuple[str, ...]

    @property
    def duration_s(self) -> float:
        """Seconds of audio."""
        return self.audio.size / SAMPLE_RATE


def recordings(files: list[DecodedFile], *, join_gap_s: float) -> list[Recording]:
    """Join files, in order of their start, whose gap is under ``join_gap_s`` (overlaps are butted together)."""
    out: list[Recording] = []
    group: list[DecodedFile] = []

    def close() -> None:
        if not group:
            return
        parts: list[NDArray[np.float32]] = []
        end = group[0].file.started_at
        for f in group:
            gap = f.file.started_at - end
            if gap > 0:
                parts.append(np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32))
            parts.append(f.audio)
            end = max(end, f.file.started_at) + f.duration_s
        out.append(Recording(group[0].file.started_at, np.concatenate(parts), tuple(f.file.name for f in group)))
        group.clear()

    for f in sorted((f for f in files if f.audio.size), key=lambda f: (f.file.started_at, f.file.name)):
        if group and f.file.started_at - (group[0].file.started_at + _length(group)) >= join_gap_s:
            close()
        group.append(f)
    close()
    return out


def _length(group: list[DecodedFile]) -> float:
    """Seconds from the first file's start to the last one's end, as :func:`recordings` lays them out."""
    end = group[0].file.started_at
    for f in group:
        end = max(end, f.file.started_at) + f.duration_s
    return end - group[0].file.started_at


def speech_pieces(
    audio: NDArray[np.float32], vad: SileroVad, params: VadParams, *, merge_gap_s: float, min_s: float
) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of each piece of speech: speech less than ``merge_gap_s`` apart is one piece,
    and a piece shorter than ``min_s`` is dropped."""
    pieces: list[list[float]] = []
    for a, b in speech_spans(audio, vad, params):
        start, end = a / SAMPLE_RATE, b / SAMPLE_RATE
        if pieces and start - pieces[-1][1] < merge_gap_s:
            pieces[-1][1] = max(pieces[-1][1], end)
        else:
            pieces.append([start, end])
    return [(a, b) for a, b in pieces if b - a >= min_s]
