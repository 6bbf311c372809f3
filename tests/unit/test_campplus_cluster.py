"""The segmentation diarizer's clustering and smoothing, on made-up embeddings (no model weights needed)."""

from __future__ import annotations

import numpy as np

from ingest.diarize.campplus_diarizer import CamParams, _smooth, cluster_embeddings
from ingest.diarize.diarizer import SpeakerCount


def voices(k: int, per: int, *, spread: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per`` unit embeddings around each of ``k`` random directions in 192-d, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, 192))
    x = np.repeat(centres, per, axis=0) + spread * np.sqrt(192) / 4 * rng.standard_normal((k * per, 192)) / 4
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(k), per)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len({(int(i), int(j)) for i, j in zip(a, b, strict=True)}) == len(set(a.tolist())) == len(set(b.tolist()))


def test_one_to_eight_speakers_are_counted() -> None:
    for k in (1, 2, 3, 5, 8):
        x, truth = voices(k, 12, seed=k)
        labels = cluster_embeddings(x, SpeakerCount(), CamParams())
        assert same_partition(labels, truth), k


def test_a_count_hint_is_obeyed() -> None:
    x, _ = voices(3, 12)
    assert int(cluster_embeddings(x, SpeakerCount(exact=2), CamParams()).max()) + 1 == 2
    assert set(cluster_embeddings(x, SpeakerCount(exact=1), CamParams()).tolist()) == {0}
    assert int(cluster_embeddings(x, SpeakerCount(maximum=2), CamParams()).max()) + 1 <= 2


def test_few_pieces_are_one_speaker_and_none_are_none() -> None:
    x, _ = voices(3, 1)
    assert set(cluster_embeddings(x, SpeakerCount(), CamParams()).tolist()) == {0}
    assert cluster_embeddings(np.zeros((0, 192), np.float32), SpeakerCount(), CamParams()).size == 0


def test_two_short_voices_are_two_speakers() -> None:
    x, truth = voices(2, 4)
    assert same_partition(cluster_embeddings(x, SpeakerCount(), CamParams()), truth)


def test_a_single_stray_piece_joins_its_nearest() -> None:
    x, _ = voices(2, 12)
    stray = voices(1, 1, seed=99)[0]
    labels = cluster_embeddings(np.concatenate([x, stray]), SpeakerCount(), CamParams())
    assert int(labels.max()) + 1 == 2


def test_short_runs_are_smoothed_away() -> None:
    labels = np.array([0] * 20 + [1] * 3 + [0] * 20 + [1] * 30)
    assert _smooth(labels, 10).tolist() == [0] * 43 + [1] * 30
