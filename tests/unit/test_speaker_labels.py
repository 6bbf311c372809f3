"""Live speaker labels, profile matching and word-level attribution, with the real GE2E encoder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ingest.diarize.diarizer import SpeakerTurn, attribute
from ingest.diarize.embedded import EmbeddedDiarizer
from ingest.diarize.encoder import shared_encoder
from ingest.diarize.tracker import SpeakerTracker, TimedSpan, _keep_numbers
from ingest.identity import match_profiles
from ingest.schema import AsrSegment, AsrWord
from ingest.vad import load_vad
from tests.support import have_espeak, speak

LINES = (
    "Could you tell me when the next train to the city leaves this afternoon?",
    "The next one leaves at a quarter past four from the second platform.",
    "Thank you, and is there a later one in case my meeting runs long?",
)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    """Each line in two espeak-ng voices."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    folder: Path = tmp_path_factory.mktemp("labels")
    return {voice: [speak(line, voice, folder / "line.wav") * 0.8 for line in LINES] for voice in ("en-us", "en-us+f3")}


@pytest.fixture(scope="module")
def diarizer() -> EmbeddedDiarizer:
    return EmbeddedDiarizer(shared_encoder(), load_vad())


def utterance_span(audio: np.ndarray, origin: float) -> list[TimedSpan]:
    return [TimedSpan(origin, origin + audio.size / 16_000)]


def test_each_voice_keeps_one_label_through_a_conversation(
    diarizer: EmbeddedDiarizer, voices: dict[str, list[np.ndarray]]
) -> None:
    tracker = SpeakerTracker(diarizer, match_threshold=0.75)
    origin = 0.0
    labels: dict[str, list[int]] = {"en-us": [], "en-us+f3": []}
    for i in range(len(LINES)):
        for voice in ("en-us", "en-us+f3"):
            audio = voices[voice][i]
            labels[voice] += tracker.label(audio, origin, utterance_span(audio, origin))
            origin += audio.size / 16_000 + 1.0
    assert len(set(labels["en-us"])) == 1 and len(set(labels["en-us+f3"])) == 1, labels
    assert labels["en-us"][0] != labels["en-us+f3"][0]
    centroid, seconds = tracker.centroid(labels["en-us"][0])
    assert seconds > 5 and float(np.linalg.norm(centroid)) == pytest.approx(1.0, abs=1e-5)


def test_an_utterance_of_two_voices_is_split_where_the_voice_changes(
    diarizer: EmbeddedDiarizer, voices: dict[str, list[np.ndarray]]
) -> None:
    first, second = voices["en-us"][0], voices["en-us+f3"][1]
    audio = np.concatenate([first, second])
    change = first.size / 16_000
    tracker = SpeakerTracker(diarizer, match_threshold=0.75)
    split = tracker.split(audio)
    assert len(split.pieces) == 2, split.pieces
    assert abs(split.pieces[0].end - change) < 0.6
    assert split.groups[0] != split.groups[1]
    spans = [TimedSpan(10 + p.start, 10 + p.end) for p in split.pieces]
    labels = tracker.label(audio, 10.0, spans, split)
    assert labels[0] != labels[1]


def test_a_short_utterance_is_not_split(diarizer: EmbeddedDiarizer, voices: dict[str, list[np.ndarray]]) -> None:
    tracker = SpeakerTracker(diarizer)
    audio = voices["en-us"][0][: 16_000 * 3]
    assert len(tracker.split(audio).pieces) == 1


def test_refinement_keeps_the_live_numbers_and_fixes_a_wrong_one(
    diarizer: EmbeddedDiarizer, voices: dict[str, list[np.ndarray]]
) -> None:
    tracker = SpeakerTracker(diarizer, match_threshold=0.75, first_id=3)  # resumed after a restart
    spans: list[TimedSpan] = []
    truth: list[str] = []
    origin = 0.0
    live: list[int] = []
    for i in range(len(LINES)):
        for voice in ("en-us", "en-us+f3"):
            audio = voices[voice][i]
            span = utterance_span(audio, origin)
            live += tracker.label(audio, origin, span)
            spans += span
            truth.append(voice)
            origin += audio.size / 16_000 + 1.0
    assert min(live) == 3
    wrong = list(live)
    wrong[2] = wrong[1]  # as if a live decision had gone the wrong way
    refined, centroids = tracker.refine(spans, wrong)
    assert refined == live
    assert set(centroids) == set(live)


def test_refined_speakers_take_the_numbers_they_share_most_speech_with() -> None:
    assert _keep_numbers([0, 0, 1, 1], [5, 5, 2, 2], [1, 1, 1, 1]) == {0: 5, 1: 2}
    assert _keep_numbers([0, 1, 2], [0, 0, 1], [3, 1, 1]) == {0: 0, 2: 1, 1: 2}


def profile(pid: str, vector: np.ndarray) -> Any:
    return SimpleNamespace(id=pid, name=pid, is_user=False, embedding=vector / np.linalg.norm(vector))


def test_profiles_match_one_to_one_above_the_threshold() -> None:
    a, b, c = np.eye(3, dtype=np.float32)
    profiles = [profile("ann", a), profile("bob", b)]
    centroids = {0: a, 1: (a * 0.9 + b * 0.1) / np.linalg.norm(a * 0.9 + b * 0.1), 2: c}
    matched = match_profiles(centroids, profiles, threshold=0.5)
    assert {s: p.id for s, (p, _) in matched.items()} == {0: "ann"}  # 1 is near ann, but she is taken
    assert match_profiles(centroids, [], threshold=0.5) == {}


def test_a_segment_is_split_at_the_word_where_the_speaker_changes() -> None:
    words = (
        AsrWord(0.0, 0.4, " Are"),
        AsrWord(0.4, 0.8, " you"),
        AsrWord(0.8, 1.2, " coming?"),
        AsrWord(1.5, 1.9, " Yes,"),
        AsrWord(1.9, 2.4, " soon."),
    )
    seg = AsrSegment(0.0, 2.4, "Are you coming? Yes, soon.", words)
    turns = [SpeakerTurn(0.0, 1.3, 0), SpeakerTurn(1.4, 2.5, 1)]
    assert attribute(seg, turns) == [(0.0, 1.2, "Are you coming?", 0), (1.5, 2.4, "Yes, soon.", 1)]
    no_words = AsrSegment(1.5, 2.4, "Yes, soon.")
    assert attribute(no_words, turns) == [(1.5, 2.4, "Yes, soon.", 1)]
