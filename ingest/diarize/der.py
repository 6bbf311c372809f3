"""Diarization error rate, scored the NIST md-eval way, and RTTM/UEM files.

DER = (missed + false alarm + confusion) / reference speech, with overlapping speech scored
(each speaker counts) and a no-score collar around every reference boundary. Reference and
hypothesis speakers are mapped one-to-one to maximise their overlap (Hungarian algorithm), as
md-eval and pyannote.metrics do. Time is scored on a 1 ms grid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from numpy.typing import NDArray

__all__ = ["DerResult", "LabelledTurn", "der", "read_rttm", "read_uem", "rttm_lines"]

RESOLUTION_S = 0.001


@dataclass(frozen=True)
class LabelledTurn:
    """One speaker speaking from ``start`` to ``end`` seconds."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class DerResult:
    """Scored seconds and the resulting rate."""

    reference: float
    missed: float
    false_alarm: float
    confusion: float
    mapping: dict[str, str]

    @property
    def der(self) -> float:
        """(missed + false alarm + confusion) / reference speech."""
        if self.reference == 0:
            return 0.0 if self.missed + self.false_alarm + self.confusion == 0 else 1.0
        return (self.missed + self.false_alarm + self.confusion) / self.reference


def read_rttm(path: Path) -> dict[str, list[LabelledTurn]]:
    """Turns per file id from an RTTM file (``SPEAKER <file> 1 <start> <dur> ... <speaker> ...``)."""
    turns: dict[str, list[LabelledTurn]] = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[0] != "SPEAKER":
            continue
        start, duration = float(parts[3]), float(parts[4])
        turns[parts[1]].append(LabelledTurn(start, start + duration, parts[7]))
    return dict(turns)


def read_uem(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Scored regions per file id from a UEM file (``<file> <channel> <start> <end>``)."""
    regions: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            regions[parts[0]].append((float(parts[2]), float(parts[3])))
    return dict(regions)


def rttm_lines(file_id: str, turns: Iterable[LabelledTurn]) -> list[str]:
    """RTTM ``SPEAKER`` lines for ``turns``."""
    return [
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
        for t in sorted(turns, key=lambda t: (t.start, t.end))
    ]


def _activity(turns: Sequence[LabelledTurn], speakers: list[str], n: int) -> NDArray[np.bool_]:
    grid = np.zeros((len(speakers), n), dtype=bool)
    index = {s: i for i, s in enumerate(speakers)}
    for t in turns:
        a, b = round(t.start / RESOLUTION_S), round(t.end / RESOLUTION_S)
        grid[index[t.speaker], max(a, 0) : max(min(b, n), 0)] = True
    return grid


def _hungarian_max(weights: NDArray[np.float64]) -> list[tuple[int, int]]:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if weights[r, c] > 0]


def der(
    reference: Sequence[LabelledTurn],
    hypothesis: Sequence[LabelledTurn],
    *,
    collar: float = 0.25,
    uem: Sequence[tuple[float, float]] | None = None,
) -> DerResult:
    """Score ``hypothesis`` against ``reference``; ``collar`` is removed on each side of boundaries."""
    end = max([t.end for t in (*reference, *hypothesis)] + [e for _, e in uem or []] + [0.0])
    n = round(end / RESOLUTION_S) + 1
    scored = np.zeros(n, dtype=bool)
    if uem:
        for a, b in uem:
            scored[round(a / RESOLUTION_S) : round(b / RESOLUTION_S)] = True
    else:
        scored[:] = True
    if collar > 0:
        c = round(collar / RESOLUTION_S)
        for t in reference:
            for edge in (t.start, t.end):
                i = round(edge / RESOLUTION_S)
                scored[max(i - c, 0) : i + c] = False

    ref_speakers = sorted({t.speaker for t in reference})
    hyp_speakers = sorted({t.speaker for t in hypothesis})
    ref = _activity(reference, ref_speakers, n)[:, scored]
    hyp = _activity(hypothesis, hyp_speakers, n)[:, scored]

    overlap = ref.astype(np.float64) @ hyp.T.astype(np.float64) if ref.size and hyp.size else np.zeros((0, 0))
    pairs = _hungarian_max(overlap) if overlap.size else []
    correct = np.zeros(ref.shape[1], dtype=np.int64)
    for r, h in pairs:
        correct += ref[r] & hyp[h]
    n_ref = ref.sum(axis=0) if ref.size else np.zeros(scored.sum(), dtype=np.int64)
    n_hyp = hyp.sum(axis=0) if hyp.size else np.zeros(scored.sum(), dtype=np.int64)
    return DerResult(
        reference=float(n_ref.sum()) * RESOLUTION_S,
        missed=float(np.maximum(n_ref - n_hyp, 0).sum()) * RESOLUTION_S,
        false_alarm=float(np.maximum(n_hyp - n_ref, 0).sum()) * RESOLUTION_S,
        confusion=float((np.minimum(n_ref, n_hyp) - correct).sum()) * RESOLUTION_S,
        mapping={ref_speakers[r]: hyp_speakers[h] for r, h in pairs},
    )
