"""Resemblyzer's GE2E speaker encoder, loaded from the weights its PyPI package ships.

Only the weights file is taken from the ``resemblyzer`` package; its module (which imports
librosa and webrtcvad) is not imported. The mel spectrogram is computed here with numpy and
matches ``librosa.feature.melspectrogram`` as Resemblyzer calls it.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import MissingDependencyError
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["EMBEDDING_DIM", "FRAME_S", "WINDOW_FRAMES", "VoiceEncoder", "mel_spectrogram"]

N_FFT = 400
HOP = 160
N_MELS = 40
WINDOW_FRAMES = 160  # 1.6 s: the length the encoder was trained on
FRAME_S = HOP / SAMPLE_RATE
EMBEDDING_DIM = 256


def _hz_to_mel(hz: NDArray[np.float64]) -> NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: NDArray[np.float64]) -> NDArray[np.float64]:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = mel * f_sp
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return hz


@lru_cache(maxsize=1)
def _mel_filters() -> NDArray[np.float32]:
    """Slaney-normalised triangular filters, shape (N_MELS, N_FFT // 2 + 1)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2.0]))[0], N_MELS + 2)
    hz_points = _mel_to_hz(mel_points)
    fdiff = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2 : N_MELS + 2] - hz_points[:N_MELS]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _window() -> NDArray[np.float32]:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


def mel_spectrogram(audio: NDArray[np.float32]) -> NDArray[np.float32]:
    """Power mel spectrogram (frames, 40) of 16 kHz audio: 25 ms windows every 10 ms, centred."""
    padded = np.pad(audio.astype(np.float32, copy=False), N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    if n_frames <= 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _window(), axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return power @ _mel_filters().T


def _weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the speaker encoder needs the resemblyzer package: pip install resemblyzer")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise MissingDependencyError(f"resemblyzer is installed but its weights are missing: {path}")
    return path


class VoiceEncoder:
    """GE2E speaker embeddings (256-d, L2-normalised) of 1.6 s windows.

    Thread-safe: inference runs under a lock, with ``threads`` intra-op threads.
    """

    def __init__(self, weights: Path | None = None, *, threads: int = 1) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is a dependency
            raise MissingDependencyError("the speaker encoder needs torch: pip install torch") from exc
        self._torch = torch
        path = weights or _weights_path()
        state = torch.load(path, map_location="cpu", weights_only=False)["model_state"]
        self._lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self._linear = torch.nn.Linear(256, EMBEDDING_DIM)
        self._lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self._linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self._lstm.eval()
        self._linear.eval()
        self._threads = threads
        self._lock = threading.Lock()

    def embed_mels(self, mels: NDArray[np.float32], starts: NDArray[np.int64]) -> NDArray[np.float32]:
        """Embeddings of the ``WINDOW_FRAMES``-frame windows of ``mels`` starting at frame ``starts``."""
        if len(starts) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        need = int(starts.max()) + WINDOW_FRAMES
        if need > len(mels):
            mels = np.pad(mels, ((0, need - len(mels)), (0, 0)))
        batch = np.stack([mels[s : s + WINDOW_FRAMES] for s in starts])
        torch = self._torch
        with self._lock:
            previous = torch.get_num_threads()
            torch.set_num_threads(self._threads)
            try:
                with torch.inference_mode():
                    _, (hidden, _) = self._lstm(torch.from_numpy(batch))
                    raw = torch.relu(self._linear(hidden[-1])).numpy()
            finally:
                torch.set_num_threads(previous)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norms, 1e-8)).astype(np.float32)

    def embed_windows(self, audio: NDArray[np.float32], starts_s: NDArray[np.float64]) -> NDArray[np.float32]:
        """Embeddings of 1.6 s windows of ``audio`` starting at ``starts_s`` seconds."""
        mels = mel_spectrogram(audio)
        return self.embed_mels(mels, np.round(np.asarray(starts_s) / FRAME_S).astype(np.int64))

    def embed(self, audio: NDArray[np.float32], *, step_s: float = 0.8) -> NDArray[np.float32]:
        """One embedding for a stretch of one speaker's speech: the normalised mean over windows."""
        length_s = len(audio) / SAMPLE_RATE
        window_s = WINDOW_FRAMES * FRAME_S
        starts = np.arange(0.0, max(length_s - window_s, 0.0) + 1e-9, step_s)
        mean = self.embed_windows(audio, starts).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-8)).astype(np.float32)


_shared: VoiceEncoder | None = None
_shared_lock = threading.Lock()


def shared_encoder() -> VoiceEncoder:
    """One encoder per process, loaded on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = VoiceEncoder()
        return _shared
