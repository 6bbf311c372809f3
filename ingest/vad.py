"""Streaming voice activity detection with Silero VAD v6 (ONNX, shipped inside faster-whisper).

:class:`Endpointer` turns a stream of 16 kHz audio into utterances: a final one when the speaker
stops (or the utterance reaches its maximum length), and growing partial snapshots while they speak.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.schema import SAMPLE_RATE, Utterance

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Endpointer", "SileroVad", "UtteranceAudio", "VadParams", "load_vad", "speech_probabilities"]

CHUNK = 512  # samples per VAD step (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees


@dataclass(frozen=True)
class VadParams:
    """Endpointing tunables, kept apart from wiring. Ranges are checked by the settings."""

    threshold: float = 0.5
    min_silence_ms: int = 400
    speech_pad_ms: int = 300
    min_speech_ms: int = 200
    max_utterance_s: float = 25.0
    partial_interval_s: float = 2.0


class SileroVad:
    """The Silero VAD v6 ONNX model. Thread-safe; per-stream state lives in :class:`Endpointer`."""

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime
        from faster_whisper.vad import get_assets_path

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        model_path = path or os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        self._session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"], sess_options=opts)

    def __call__(
        self, chunks: NDArray[np.float32], state: tuple[Any, Any]
    ) -> tuple[NDArray[np.float32], tuple[Any, Any]]:
        """Speech probability per chunk.

        Args:
            chunks: (n, CONTEXT + CHUNK) float32, each row a chunk preceded by its context.
            state: the LSTM state (h, c) carried between calls.
        """
        probs, h, c = self._session.run(None, {"input": chunks, "h": state[0], "c": state[1]})
        return np.asarray(probs, dtype=np.float32).reshape(-1), (h, c)


def load_vad() -> SileroVad:
    """Load the packaged Silero VAD model."""
    return SileroVad()


class _Buffer:
    """Growable float32 buffer addressed by absolute stream sample index."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self.start = 0  # absolute index of _data[0]
        self.end = 0  # absolute index one past the last sample

    def append(self, audio: NDArray[np.float32]) -> None:
        size = self.end - self.start
        needed = size + audio.size
        if needed > self._data.size:
            grown = np.zeros(max(needed, self._data.size * 2), dtype=np.float32)
            grown[:size] = self._data[:size]
            self._data = grown
        self._data[size:needed] = audio
        self.end += audio.size

    def slice(self, start: int, end: int) -> NDArray[np.float32]:
        start = max(start, self.start)
        end = min(end, self.end)
        return self._data[start - self.start : end - self.start].copy()

    def drop_before(self, index: int) -> None:
        index = min(max(index, self.start), self.end)
        keep = self.end - index
        self._data[:keep] = self._data[index - self.start : self.end - self.start]
        self.start = index


@dataclass(frozen=True)
class UtteranceAudio:
    """An utterance and its audio (16 kHz mono float32)."""

    utterance: Utterance
    audio: NDArray[np.float32]


@dataclass
class Endpointer:
    """Per-stream VAD state machine: feed audio, receive utterances."""

    vad: SileroVad
    params: VadParams = field(default_factory=VadParams)
    _buffer: _Buffer = field(default_factory=_Buffer)
    _pending: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    _context: NDArray[np.float32] = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))
    _state: tuple[Any, Any] = field(
        default_factory=lambda: (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
    )
    _position: int = 0  # samples run through the model
    _in_speech: bool = False
    _start: int = 0
    _speech_samples: int = 0
    _silence_run: int = 0
    _last_partial: int = 0
    _utterance_id: str = ""

    def feed(self, audio: NDArray[np.float32]) -> list[UtteranceAudio]:
        """Add audio; return the utterances it completed and any partial snapshot due."""
        self._buffer.append(audio)
        pending = np.concatenate([self._pending, audio]) if self._pending.size else audio
        usable = pending.size - pending.size % CHUNK
        self._pending = pending[usable:].copy()
        if usable == 0:
            return []
        blocks = pending[:usable].reshape(-1, CHUNK)
        # (n, CONTEXT + CHUNK): each chunk preceded by the tail of the chunk before it
        contexts = np.vstack([self._context[None, :], blocks[:-1, -CONTEXT:]])
        self._context = blocks[-1, -CONTEXT:].copy()
        probs, self._state = self.vad(np.hstack([contexts, blocks]), self._state)
        out: list[UtteranceAudio] = []
        for prob in probs:
            out.extend(self._step(float(prob)))
        if not self._in_speech:
            pad = self.params.speech_pad_ms * SAMPLE_RATE // 1000
            self._buffer.drop_before(self._position - pad - CHUNK)
        return out

    def flush(self) -> list[UtteranceAudio]:
        """End of stream: finalize the open utterance, if any."""
        if not self._in_speech:
            return []
        self._in_speech = False
        end = self._buffer.end
        return self._emit(self._start, end, final=True)

    def _step(self, prob: float) -> list[UtteranceAudio]:
        p = self.params
        chunk_start = self._position
        self._position += CHUNK
        pad = p.speech_pad_ms * SAMPLE_RATE // 1000
        out: list[UtteranceAudio] = []
        if not self._in_speech:
            if prob >= p.threshold:
                self._open(max(0, chunk_start - pad, self._buffer.start))
                self._speech_samples = CHUNK
            return out
        if prob < p.threshold - 0.15:
            self._silence_run += CHUNK
            if self._silence_run >= p.min_silence_ms * SAMPLE_RATE // 1000:
                self._in_speech = False
                end = min(self._position - self._silence_run + pad, self._position)
                if self._speech_samples >= p.min_speech_ms * SAMPLE_RATE // 1000:
                    out.extend(self._emit(self._start, end, final=True))
                return out
        else:
            self._silence_run = 0
            self._speech_samples += CHUNK
        if self._position - self._start >= int(p.max_utterance_s * SAMPLE_RATE):
            out.extend(self._emit(self._start, self._position, final=True))
            self._open(self._position)
        elif p.partial_interval_s > 0 and self._position - self._last_partial >= int(
            p.partial_interval_s * SAMPLE_RATE
        ):
            self._last_partial = self._position
            out.extend(self._emit(self._start, self._position, final=False))
        return out

    def _open(self, start: int) -> None:
        self._in_speech = True
        self._start = start
        self._last_partial = start
        self._silence_run = 0
        self._speech_samples = 0
        self._utterance_id = str(uuid.uuid4())

    def _emit(self, start: int, end: int, *, final: bool) -> list[UtteranceAudio]:
        audio = self._buffer.slice(start, end)
        if audio.size == 0:
            return []
        utterance = Utterance(id=self._utterance_id, start=start / SAMPLE_RATE, end=end / SAMPLE_RATE, final=final)
        return [UtteranceAudio(utterance, audio)]


def speech_probabilities(vad: SileroVad, audio: NDArray[np.float32], *, batch: int = 256) -> NDArray[np.float32]:
    """Speech probability of each 32 ms chunk of ``audio`` (the last partial chunk is zero-padded)."""
    n = -(-audio.size // CHUNK)
    padded = np.zeros(n * CHUNK, dtype=np.float32)
    padded[: audio.size] = audio
    blocks = padded.reshape(n, CHUNK)
    contexts = np.vstack([np.zeros((1, CONTEXT), np.float32), blocks[:-1, -CONTEXT:]])
    rows = np.hstack([contexts, blocks])
    state: tuple[Any, Any] = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
    out: list[NDArray[np.float32]] = []
    for i in range(0, n, batch):
        probs, state = vad(rows[i : i + batch], state)
        out.append(probs)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
