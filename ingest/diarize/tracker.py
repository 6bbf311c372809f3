"""Live speaker labels for a streaming conversation, and the refinement pass when it closes.

Each final utterance is embedded (1 s windows, as offline) and each of its recognised segments
is compared with the conversation's speakers so far: the closest one above
``match_threshold`` takes it, else it opens a new speaker. Labels never change while the
conversation streams. When it closes, :meth:`SpeakerTracker.refine` re-clusters every window of
the conversation with the offline algorithm and returns a new label per segment, numbered to
agree with the live labels wherever it can.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from ingest.diarize.embedded import EmbeddedDiarizer, Windows, normalize_level, window_starts
from ingest.diarize.encoder import EMBEDDING_DIM, FRAME_S, mel_spectrogram
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Identity", "SpeakerTracker", "Split", "TimedSpan"]

MIN_SPLIT_S = 4.0
"""Utterances shorter than this are taken to be one speaker's."""
MAX_UTTERANCE_SPEAKERS = 3
"""Most voices one utterance is split into."""
MIN_PIECE_S = 1.0
"""No piece of a split utterance is shorter than this."""
MIN_NEW_SPEAKER_S = 1.0
"""A segment shorter than this never opens a new speaker: it goes to the closest one."""


@dataclass(frozen=True)
class TimedSpan:
    """A piece of a conversation, in seconds on one clock (the tracker's caller picks which)."""

    start: float
    end: float


@dataclass(frozen=True)
class Identity:
    """Who a conversation speaker is: a voice profile, or the wearer."""

    person_id: str | None
    name: str
    is_user: bool
    profile_id: str | None = None  # the voice profile it came from or went into


@dataclass(frozen=True)
class Split:
    """An utterance cut where its voice changes: pieces (seconds from its start), a voice per piece."""

    pieces: list[TimedSpan]
    groups: list[int]
    windows: Windows

    def group_at(self, t: float) -> int:
        """The voice of the piece holding time ``t`` (seconds from the utterance's start)."""
        for piece, group in zip(self.pieces, self.groups, strict=True):
            if t < piece.end:
                return group
        return self.groups[-1]


@dataclass
class _Speaker:
    total: NDArray[np.float64]
    seconds: float = 0.0


@dataclass
class SpeakerTracker:
    """Speaker state of one in-progress conversation. Thread-safe."""

    diarizer: EmbeddedDiarizer
    match_threshold: float = 0.7
    first_id: int = 0  # speakers are numbered from here (after those of a conversation resumed after a restart)
    speakers: list[_Speaker] = field(default_factory=list)
    identities: dict[int, Identity] = field(default_factory=dict)
    _starts: list[NDArray[np.float64]] = field(default_factory=list)
    _embeddings: list[NDArray[np.float32]] = field(default_factory=list)
    _seconds: list[NDArray[np.float64]] = field(default_factory=list)
    _regions: list[NDArray[np.int64]] = field(default_factory=list)
    _region_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _embed(self, audio: NDArray[np.float32]) -> Windows:
        windows, _ = self.diarizer.windows(audio)
        if len(windows.starts) == 0:  # the VAD heard no speech in it: embed the whole utterance
            p = self.diarizer.params
            n_frames = max(audio.size // int(FRAME_S * SAMPLE_RATE), 1)
            starts, _ = window_starts([(0, n_frames)], p)
            level = normalize_level(audio, target_dbfs=p.target_dbfs, max_gain_db=p.max_gain_db)
            embeddings = self.diarizer.encoder.embed_mels(mel_spectrogram(level), starts)
            seconds = np.full(len(starts), audio.size / SAMPLE_RATE / len(starts))
            windows = Windows(
                starts.astype(np.float64) * FRAME_S,
                embeddings,
                np.zeros(len(starts), np.int64),
                p.window_frames * FRAME_S,
                seconds,
            )
        return windows

    def split(self, audio: NDArray[np.float32]) -> Split:
        """Cut an utterance where its speaker changes; pass the result on to :meth:`label`.

        The utterance's own windows are clustered as a recording would be; an utterance shorter
        than ``MIN_SPLIT_S`` stays whole.
        """
        windows = self._embed(audio)
        duration = audio.size / SAMPLE_RATE
        whole = Split([TimedSpan(0.0, duration)], [0], windows)
        if duration < MIN_SPLIT_S or len(windows.starts) < 2:
            return whole
        labels, _ = self.diarizer.cluster(windows, max_speakers=MAX_UTTERANCE_SPEAKERS)
        if labels.max() == 0:
            return whole
        centres = windows.centres
        cuts = [0.0]
        groups = [int(labels[0])]
        for i in np.flatnonzero(np.diff(labels) != 0):
            cut = float(centres[i] + centres[i + 1]) / 2
            if cut - cuts[-1] >= MIN_PIECE_S and duration - cut >= MIN_PIECE_S:
                cuts.append(cut)
                groups.append(int(labels[i + 1]))
        cuts.append(duration)
        return Split([TimedSpan(a, b) for a, b in pairwise(cuts)], groups, windows)

    def label(
        self, audio: NDArray[np.float32], origin: float, spans: list[TimedSpan], split: Split | None = None
    ) -> list[int]:
        """Speaker of each span of a final utterance whose audio starts at ``origin`` (same clock).

        With the utterance's :class:`Split`, spans in pieces of different voices never share a speaker.
        """
        if not spans:
            return []
        split = split or Split([TimedSpan(0.0, audio.size / SAMPLE_RATE)], [0], self._embed(audio))
        windows = split.windows
        starts = windows.starts + origin
        group_of = [split.group_at((span.start + span.end) / 2 - origin) for span in spans]
        vectors: dict[int, NDArray[np.float64]] = {}
        seconds: dict[int, float] = {}
        for span, group in zip(spans, group_of, strict=True):
            vector = self._span_vector(starts, windows.embeddings, windows.window_s, span)
            vectors[group] = vectors.get(group, 0) + vector
            seconds[group] = seconds.get(group, 0.0) + span.end - span.start
        with self._lock:
            speaker_of = self._assign_groups(vectors, seconds)
            self._starts.append(starts)
            self._embeddings.append(windows.embeddings)
            self._seconds.append(windows.seconds)
            self._regions.append(windows.regions + self._region_count)
            self._region_count += int(windows.regions.max()) + 1
        return [speaker_of[g] for g in group_of]

    def peek(self, audio: NDArray[np.float32]) -> int:
        """The speaker a partial utterance sounds like so far; changes nothing."""
        with self._lock:
            if not self.speakers:
                return self.first_id
        vector = self._embed(audio).embeddings.sum(axis=0)
        with self._lock:
            return self.first_id + int(np.argmax(self._similarities(vector)))

    def centroid(self, speaker: int) -> tuple[NDArray[np.float32], float]:
        """The speaker's mean voice embedding so far and the seconds of speech behind it (0 if unheard)."""
        with self._lock:
            index = speaker - self.first_id
            if not 0 <= index < len(self.speakers):
                return np.zeros(EMBEDDING_DIM, dtype=np.float32), 0.0
            s = self.speakers[index]
            return _unit(s.total).astype(np.float32), s.seconds

    def snapshot(self) -> bytes:
        """The state that labels the next utterances: speaker voices and identities (not the windows kept
        for :meth:`refine`). Another process continues the labels with :meth:`restore`."""
        with self._lock:
            return msgspec.msgpack.encode(
                {
                    "first_id": self.first_id,
                    "speakers": [(s.total.astype(np.float64).tobytes(), s.seconds) for s in self.speakers],
                    "identities": {
                        str(k): (i.person_id, i.name, i.is_user, i.profile_id) for k, i in self.identities.items()
                    },
                }
            )

    def restore(self, state: bytes) -> None:
        """Continue from a :meth:`snapshot` taken by another process (this tracker has heard nothing yet)."""
        data = msgspec.msgpack.decode(state)
        with self._lock:
            self.first_id = int(data["first_id"])
            self.speakers = [
                _Speaker(np.frombuffer(total, dtype=np.float64).copy(), float(sec)) for total, sec in data["speakers"]
            ]
            self.identities = {
                int(k): Identity(person_id=p, name=n, is_user=bool(u), profile_id=pid)
                for k, (p, n, u, pid) in data["identities"].items()
            }

    def identify(self, speaker: int, identity: Identity) -> None:
        """Record who ``speaker`` is (from a profile match or the client's ``speaker_assigned``)."""
        with self._lock:
            self.identities[speaker] = identity

    def identity(self, speaker: int) -> Identity | None:
        """Who ``speaker`` is, when known."""
        with self._lock:
            return self.identities.get(speaker)

    def _similarities(self, vector: NDArray[np.float64]) -> NDArray[np.float64]:
        unit = _unit(vector)
        return np.array([float(unit @ _unit(s.total)) for s in self.speakers])

    def _span_vector(
        self, starts: NDArray[np.float64], embeddings: NDArray[np.float32], window_s: float, span: TimedSpan
    ) -> NDArray[np.float64]:
        centres = starts + window_s / 2
        inside = (centres >= span.start) & (centres <= span.end)
        if not inside.any():
            inside = np.zeros(len(starts), dtype=bool)
            inside[int(np.argmin(np.abs(centres - (span.start + span.end) / 2)))] = True
        return embeddings[inside].astype(np.float64).sum(axis=0)

    def _assign_groups(self, vectors: dict[int, NDArray[np.float64]], seconds: dict[int, float]) -> dict[int, int]:
        """Speakers for an utterance's voices: the closest distinct known ones, else new speakers."""
        from scipy.optimize import linear_sum_assignment

        groups = sorted(vectors, key=lambda g: -seconds[g])
        out: dict[int, int] = {}
        if self.speakers:
            sims = np.array([self._similarities(vectors[g]) for g in groups])
            rows, cols = linear_sum_assignment(sims, maximize=True)
            for r, c in zip(rows, cols, strict=True):
                g = groups[r]
                # too little speech to tell a new voice: the closest known one
                if sims[r, c] >= self.match_threshold or (seconds[g] < MIN_NEW_SPEAKER_S and len(groups) == 1):
                    self.speakers[c].total += _unit(vectors[g]) * seconds[g]
                    self.speakers[c].seconds += seconds[g]
                    out[g] = self.first_id + int(c)
        for g in groups:
            if g not in out:
                self.speakers.append(_Speaker(_unit(vectors[g]) * seconds[g], seconds[g]))
                out[g] = self.first_id + len(self.speakers) - 1
        return out

    def refine(
        self, spans: list[TimedSpan], live: list[int], *, num_speakers: int | None = None
    ) -> tuple[list[int], dict[int, NDArray[np.float32]]]:
        """Re-cluster the whole conversation: a label per span and a centroid per speaker.

        ``live`` are the spans' current labels; refined speakers are numbered to keep as many
        of them as possible, and new ones take numbers after the largest in use.
        """
        with self._lock:
            if not self._starts:
                return list(live), {}
            starts = np.concatenate(self._starts)
            embeddings = np.concatenate(self._embeddings)
            seconds = np.concatenate(self._seconds)
            regions = np.concatenate(self._regions)
        p = self.diarizer.params
        windows = Windows(starts, embeddings, regions.astype(np.int64), p.window_frames * FRAME_S, seconds)
        window_labels, centroids = self.diarizer.cluster(windows, num_speakers=num_speakers)
        centres = windows.centres
        refined: list[int] = []
        for span in spans:
            inside = (centres >= span.start) & (centres <= span.end)
            if inside.any():
                votes = np.bincount(window_labels[inside], weights=seconds[inside], minlength=len(centroids))
                refined.append(int(np.argmax(votes)))
            else:
                refined.append(int(window_labels[int(np.argmin(np.abs(centres - (span.start + span.end) / 2)))]))
        numbering = _keep_numbers(refined, live, [s.end - s.start for s in spans])
        return [numbering[r] for r in refined], {numbering[k]: centroids[k] for k in set(refined)}


def _keep_numbers(refined: list[int], live: list[int], weights: list[float]) -> dict[int, int]:
    """Map refined speakers to live numbers by the most speech they share (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    n_refined = max(refined, default=-1) + 1
    n_live = max(live, default=-1) + 1
    if n_refined == 0:
        return {}
    agreement = np.zeros((n_refined, max(n_live, 1)))
    for r, v, w in zip(refined, live, weights, strict=True):
        agreement[r, v] += w
    rows, cols = linear_sum_assignment(agreement, maximize=True)
    numbering = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if agreement[r, c] > 0}
    following = max([*live, -1]) + 1
    for r in range(n_refined):
        if r not in numbering:
            numbering[r] = following
            following += 1
    return numbering


def _unit(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return x / max(float(np.linalg.norm(x)), 1e-12)
