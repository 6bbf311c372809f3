"""The embedded diarizer: GE2E voice embeddings with our own segmentation and clustering, on CPU.

A recording goes through five steps:

1. speech regions from Silero VAD with hysteresis, run on level-normalised audio;
2. each speech region is normalised to the same loudness, so quiet far-field talkers count;
3. 1 s embedding windows every 0.2 s; each window is weighted by its *purity*, how well the
   windows a second before and after it agree (low at speaker changes and in overlap);
4. weighted spherical k-means (best of several k-means++ starts) for k = 1, 2, ... speakers,
   each refined by step 5; a further speaker is kept only while it raises the windows' mean
   similarity to their own centroid by ``split_gain + split_gain_short / sqrt(speech seconds)``
   (a split of little speech gains more by chance) and holds ``min_cluster_s`` of speech.
   A hint fixes k instead;
5. re-segmentation: windows are scored against the centroids and a Viterbi pass with a switch
   penalty draws the boundaries; centroids are recomputed until the labels settle. Each speech
   frame takes the label of the nearest window, and short same-speaker pauses are bridged.

The live tracker in :mod:`ingest.diarize.tracker` reuses the windows and the clustering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ingest.diarize.diarizer import Diarization, Diarizer, SpeakerCount, SpeakerTurn
from ingest.diarize.encoder import FRAME_S, VoiceEncoder, mel_spectrogram
from ingest.schema import SAMPLE_RATE
from ingest.vad import SileroVad, speech_probabilities

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "EmbeddedDiarizer",
    "EmbeddedParams",
    "Windows",
    "normalize_level",
    "resegment",
    "spherical_kmeans",
]

VAD_CHUNK_S = 0.032


@dataclass(frozen=True)
class EmbeddedParams:
    """Tunables of the embedded diarizer, kept apart from the code that uses them."""

    window_frames: int = 100  # 1 s embedding windows
    step_frames: int = 20  # every 0.2 s
    onset: float = 0.3  # VAD probability that opens speech
    offset: float = 0.15  # and that closes it
    fill_gap_s: float = 0.2  # pauses shorter than this are speech
    min_speech_s: float = 0.1  # speech shorter than this is dropped
    target_dbfs: float = -26.0  # speech level after normalisation
    max_gain_db: float = 40.0
    min_cluster_s: float = 2.0  # a speaker needs this much speech, else it joins its neighbour
    switch_penalty: float = 0.3  # Viterbi cost of changing speaker between windows
    bridge_s: float = 1.5  # same-speaker pauses shorter than this are one turn
    max_k: int = 8
    refine_iterations: int = 5
    kmeans_restarts: int = 20
    split_gain: float = 0.023  # mean similarity gain a further speaker must bring ...
    split_gain_short: float = 0.03  # ... plus this over the square root of the speech seconds
    purity_gap: int = 5  # windows compared on each side to weigh a window's purity
    purity_floor: float = 0.7


@dataclass
class Windows:
    """Embedding windows of a recording: start times (s), embeddings, and the speech region of each."""

    starts: NDArray[np.float64]
    embeddings: NDArray[np.float32]
    regions: NDArray[np.int64]
    window_s: float
    seconds: NDArray[np.float64]  # speech each window stands for

    @property
    def centres(self) -> NDArray[np.float64]:
        """Centre time of each window."""
        return self.starts + self.window_s / 2


def normalize_level(
    audio: NDArray[np.float32], *, target_dbfs: float = -26.0, max_gain_db: float = 40.0
) -> NDArray[np.float32]:
    """Scale ``audio`` so its loud part (the top fifth of 30 ms frames by energy) sits at ``target_dbfs``."""
    frame = 480
    n = audio.size // frame
    if n == 0:
        return audio
    energy = np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)
    loud = energy[energy >= np.quantile(energy, 0.8)]
    level = 10 * np.log10(max(float(loud.mean()), 1e-12))
    gain_db = min(target_dbfs - level, max_gain_db)
    out = audio * np.float32(10 ** (gain_db / 20))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def speech_mask(probs: NDArray[np.float32], n_frames: int, p: EmbeddedParams) -> NDArray[np.bool_]:
    """Per 10 ms frame: speech or not, from 32 ms VAD probabilities with hysteresis."""
    frame_prob = np.interp(np.arange(n_frames) * FRAME_S, np.arange(len(probs)) * VAD_CHUNK_S + VAD_CHUNK_S / 2, probs)
    mask = np.zeros(n_frames, dtype=bool)
    on = False
    for i, prob in enumerate(frame_prob):
        if not on and prob >= p.onset:
            on = True
        elif on and prob < p.offset:
            on = False
        mask[i] = on
    for s, e in _runs(~mask):
        if s > 0 and e < n_frames and (e - s) * FRAME_S < p.fill_gap_s:
            mask[s:e] = True
    for s, e in _runs(mask):
        if (e - s) * FRAME_S < p.min_speech_s:
            mask[s:e] = False
    return mask


def window_starts(regions: list[tuple[int, int]], p: EmbeddedParams) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Window start frames covering each speech region, and the region index of each window."""
    w, step = p.window_frames, p.step_frames
    starts: list[int] = []
    owner: list[int] = []
    for r, (s, e) in enumerate(regions):
        if e - s <= w:
            found = [max(0, (s + e) // 2 - w // 2)]
        else:
            found = list(range(s, e - w + 1, step))
            if (e - w) - found[-1] > step // 2:
                found.append(e - w)
        starts += found
        owner += [r] * len(found)
    return np.asarray(starts, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-8)).astype(np.float32)


def spherical_kmeans(
    x: NDArray[np.float32], weight: NDArray[np.float64], k: int, *, restarts: int, iterations: int = 20, seed: int = 0
) -> NDArray[np.int64]:
    """Weighted k-means on the unit sphere; the best of ``restarts`` k-means++ starts."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if k <= 1 or n <= k:
        return np.arange(n, dtype=np.int64) if n <= k else np.zeros(n, dtype=np.int64)
    best: tuple[float, NDArray[np.int64]] | None = None
    p = weight / weight.sum()
    for _ in range(restarts):
        centres = [int(rng.choice(n, p=p))]
        for _ in range(1, k):
            distance = 1.0 - (x @ x[centres].T).max(axis=1)
            q = np.maximum(distance, 0) ** 2 * weight
            centres.append(int(rng.choice(n, p=q / q.sum())) if q.sum() > 0 else int(rng.integers(n)))
        c = x[centres].astype(np.float64)
        labels = np.zeros(n, dtype=np.int64)
        for _ in range(iterations):
            labels = np.argmax(x @ c.T, axis=1)
            new = np.stack(
                [
                    (x[labels == j] * weight[labels == j, None]).sum(axis=0) if (labels == j).any() else c[j]
                    for j in range(k)
                ]
            )
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
            if np.allclose(new, c):
                break
            c = new
        score = float(np.sum(weight * np.max(x @ c.T, axis=1)))
        if best is None or score > best[0]:
            best = (score, labels)
    assert best is not None
    return best[1]


def _fit(
    e: NDArray[np.float32], weight: NDArray[np.float64], labels: NDArray[np.int64], centroids: NDArray[np.float32]
) -> float:
    """Weighted mean cosine similarity of windows to their speaker's centroid."""
    return float(np.sum(weight * np.sum(e * centroids[labels], axis=1)) / max(float(weight.sum()), 1e-12))


def resegment(
    embeddings: NDArray[np.float32],
    regions: NDArray[np.int64],
    centroids: NDArray[np.float32],
    switch_penalty: float,
) -> NDArray[np.int64]:
    """Speaker per window: Viterbi over cosine scores to ``centroids``, restarting at each region."""
    scores = embeddings @ _unit(centroids).T
    n, k = scores.shape
    labels = np.zeros(n, dtype=np.int64)
    if k == 1 or n == 0:
        return labels
    start = 0
    while start < n:
        end = start
        while end < n and regions[end] == regions[start]:
            end += 1
        block = scores[start:end]
        cost = block[0].copy()
        back = np.zeros((end - start, k), dtype=np.int64)
        for t in range(1, end - start):
            stay = cost
            switch = cost.max() - switch_penalty
            back[t] = np.where(stay >= switch, np.arange(k), int(cost.argmax()))
            cost = np.maximum(stay, switch) + block[t]
        path = np.zeros(end - start, dtype=np.int64)
        path[-1] = int(cost.argmax())
        for t in range(end - start - 1, 0, -1):
            path[t - 1] = back[t, path[t]]
        labels[start:end] = path
        start = end
    return labels


class EmbeddedDiarizer(Diarizer):
    """Offline diarization with the packaged GE2E encoder; see the module docstring."""

    name = "embedded"

    def __init__(self, encoder: VoiceEncoder, vad: SileroVad, params: EmbeddedParams | None = None) -> None:
        self.encoder = encoder
        self.vad = vad
        self.params = params or EmbeddedParams()

    def windows(self, audio: NDArray[np.float32]) -> tuple[Windows, NDArray[np.bool_]]:
        """Speech mask (per 10 ms frame) and embedding windows of a whole recording."""
        p = self.params
        probs = speech_probabilities(self.vad, normalize_level(audio, target_dbfs=p.target_dbfs))
        n_frames = audio.size // int(FRAME_S * SAMPLE_RATE) + 1
        mask = speech_mask(probs, n_frames, p)
        regions = _runs(mask)
        level = audio.copy()
        hop = int(FRAME_S * SAMPLE_RATE)
        for s, e in regions:  # each region at the same loudness, so quiet talkers are not lost
            a, b = s * hop, min(e * hop, audio.size)
            level[a:b] = normalize_level(audio[a:b], target_dbfs=p.target_dbfs, max_gain_db=p.max_gain_db)
        starts, owner = window_starts(regions, p)
        embeddings = self.encoder.embed_mels(mel_spectrogram(level), starts)
        lengths = np.array([(e - s) * FRAME_S for s, e in regions])
        per_region = np.bincount(owner, minlength=len(regions))
        seconds = lengths[owner] / np.maximum(per_region[owner], 1) if len(owner) else np.zeros(0)
        times = starts.astype(np.float64) * FRAME_S
        return Windows(times, embeddings, owner, p.window_frames * FRAME_S, seconds), mask

    def find(self, audio: NDArray[np.float32], count: SpeakerCount) -> Diarization:
        """Turns and one centroid embedding per speaker; see the module docstring."""
        windows, mask = self.windows(audio)
        if len(windows.starts) == 0:
            return Diarization([])
        labels, centroids = self.cluster(windows, num_speakers=count.exact, max_speakers=count.maximum)
        turns = self.turns(windows, labels, mask)
        return Diarization(turns, {k: centroids[k] for k in range(len(centroids))})

    def cluster(
        self, windows: Windows, *, num_speakers: int | None = None, max_speakers: int | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Speaker per window and the speakers' centroids (steps 3 to 5)."""
        p = self.params
        e = windows.embeddings
        weight = self.purity(windows) * windows.seconds
        limit = min(max_speakers or p.max_k, p.max_k, len(e))
        if num_speakers:
            labels = spherical_kmeans(e, weight, min(num_speakers, len(e)), restarts=p.kmeans_restarts)
            return self._refine(e, windows.regions, labels, weight)
        # choose the count: add speakers while each one raises the windows' mean similarity to
        # their own centroid by at least ``split_gain`` and holds ``min_cluster_s`` of speech
        best = self._refine(e, windows.regions, np.zeros(len(e), dtype=np.int64), weight)
        best_fit = _fit(e, weight, *best)
        # a split of few windows gains more by chance, so short recordings must gain more
        needed = p.split_gain + p.split_gain_short / np.sqrt(max(float(windows.seconds.sum()), 1.0))
        for k in range(2, limit + 1):
            start_labels = spherical_kmeans(e, weight, k, restarts=p.kmeans_restarts)
            labels, centroids = self._refine(e, windows.regions, start_labels, weight)
            fit = _fit(e, weight, labels, centroids)
            counts = np.bincount(labels, weights=windows.seconds, minlength=len(centroids))
            if len(centroids) < k or counts.min() < p.min_cluster_s or fit - best_fit < needed:
                break
            best, best_fit = (labels, centroids), fit
        return best

    def purity(self, windows: Windows) -> NDArray[np.float64]:
        """Weight of each window in centroids: low where its neighbours disagree (changes, overlap)."""
        e = windows.embeddings
        n = len(e)
        gap = self.params.purity_gap
        if gap <= 0 or n == 0:
            return np.ones(n)
        before = np.clip(np.arange(n) - gap, 0, n - 1)
        after = np.clip(np.arange(n) + gap, 0, n - 1)
        same_region = (windows.regions[before] == windows.regions) & (windows.regions[after] == windows.regions)
        before = np.where(same_region, before, np.arange(n))
        after = np.where(same_region, after, np.arange(n))
        agreement = np.sum(e[before] * e[after], axis=1).astype(np.float64)
        return np.clip((agreement - self.params.purity_floor) / (1.0 - self.params.purity_floor), 0.05, 1.0) ** 2

    def _refine(
        self, e: NDArray[np.float32], regions: NDArray[np.int64], labels: NDArray[np.int64], weight: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        p = self.params
        for _ in range(p.refine_iterations):
            present = np.unique(labels)
            centroids = _unit(np.stack([(e[labels == k] * weight[labels == k, None]).sum(axis=0) for k in present]))
            new = resegment(e, regions, centroids, p.switch_penalty)
            if np.array_equal(new, labels):
                break
            labels = new
        present = np.unique(labels)
        remap = np.full(int(present.max()) + 1, -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        labels = remap[labels]
        centroids = _unit(
            np.stack([(e[labels == k] * weight[labels == k, None]).sum(axis=0) for k in range(len(present))])
        )
        return labels, centroids

    def turns(self, windows: Windows, labels: NDArray[np.int64], mask: NDArray[np.bool_]) -> list[SpeakerTurn]:
        """Speaker turns: each speech frame takes the label of the nearest window centre."""
        p = self.params
        n = len(mask)
        centres = windows.centres / FRAME_S
        frame_label = np.full(n, -1, dtype=np.int64)
        for s, e in _runs(mask):
            in_region = np.flatnonzero(
                (windows.starts / FRAME_S < e) & (windows.starts / FRAME_S + p.window_frames > s)
            )
            if len(in_region) == 0:
                continue
            frames = np.arange(s, e)
            nearest = in_region[np.abs(centres[in_region][None, :] - frames[:, None]).argmin(axis=1)]
            frame_label[s:e] = labels[nearest]
        bridge = round(p.bridge_s / FRAME_S)
        for s, e in _runs(frame_label < 0):
            if s > 0 and e < n and e - s <= bridge and frame_label[s - 1] == frame_label[e]:
                frame_label[s:e] = frame_label[s - 1]
        turns: list[SpeakerTurn] = []
        for s, e in _runs(frame_label >= 0):
            i = s
            while i < e:
                j = i
                while j < e and frame_label[j] == frame_label[i]:
                    j += 1
                turns.append(SpeakerTurn(round(i * FRAME_S, 3), round(j * FRAME_S, 3), int(frame_label[i])))
                i = j
        return turns
