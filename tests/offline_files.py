"""The OMI device's offline recordings, written the way the OMI app writes them (``app/lib/services/wals/``).

Name: ``audio_{device}_{codec}_{sample_rate}_{channels}_fs{frame_size}_{timestamp}.bin`` (frame
size 320 for ``opus_fs320``, 160 for every other codec; the timestamp is the recording's start in
unix seconds). Body: each device packet behind its length, a little-endian uint32.
"""

from __future__ import annotations

import struct

import numpy as np

from app.cli.simulator import encode_frames

__all__ = ["app_file", "app_name", "frames_body"]


def app_name(codec: str, started_at: float, *, device: str = "aabbccddeeff", millis: bool = False) -> str:
    """The file name the app gives a recording that started at ``started_at``."""
    frame = 320 if codec == "opus_fs320" else 160
    stamp = int(started_at * 1000) if millis else int(started_at)
    return f"audio_{device}_{codec}_16000_1_fs{frame}_{stamp}.bin"


def frames_body(packets: list[bytes]) -> bytes:
    """Packets as the app writes them: ``[uint32 LE length][packet]`` each."""
    return b"".join(struct.pack("<I", len(p)) + p for p in packets)


def app_file(audio: np.ndarray, codec: str, started_at: float, **name: object) -> tuple[str, bytes]:
    """A recording of 16 kHz float32 ``audio`` as the app uploads it: its name and its body."""
    packets, _ = encode_frames(audio, codec)
    return app_name(codec, started_at, **name), frames_body(packets)  # type: ignore[arg-type]
