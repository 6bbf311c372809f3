"""Streaming endpointing over synthesized speech with known boundaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.decode import load_audio_file
from ingest.vad import Endpointer, VadParams, load_vad
from tests.support import Turn


@pytest.fixture(scope="module")
def vad():
    return load_vad()


def run(endpointer: Endpointer, audio: np.ndarray, step: int = 320) -> list:
    out = []
    for i in range(0, audio.size, step):
        out += endpointer.feed(audio[i : i + step])
    return out + endpointer.flush()


def test_one_final_utterance_per_turn_near_the_truth(vad, dialogue: tuple[Path, list[Turn]]):
    path, truth = dialogue
    found = [u.utterance for u in run(Endpointer(vad, VadParams(partial_interval_s=0)), load_audio_file(path))]
    assert all(u.final for u in found)
    # espeak pauses after "Good morning." and "Great."; every turn is covered, none split mid-word.
    for turn in truth:
        covering = [u for u in found if u.start < turn.end and u.end > turn.start]
        assert covering, turn
        assert covering[0].start <= turn.start + 0.3
        assert covering[-1].end >= turn.end - 0.4
    assert len(found) <= 2 * len(truth)


def test_silence_yields_nothing(vad):
    assert run(Endpointer(vad), np.zeros(16_000 * 3, dtype=np.float32)) == []


def test_partials_grow_with_one_id_then_a_final(vad, dialogue: tuple[Path, list[Turn]]):
    path, truth = dialogue
    audio = load_audio_file(path)
    first = truth[0]
    clip = audio[: int((first.end + 1.0) * 16_000)]
    items = run(Endpointer(vad, VadParams(partial_interval_s=1.0, min_silence_ms=1000)), clip)
    partials = [i for i in items if not i.utterance.final]
    finals = [i for i in items if i.utterance.final]
    assert len(partials) >= 2 and len(finals) == 1
    assert {p.utterance.id for p in partials} == {finals[0].utterance.id}
    assert [p.audio.size for p in partials] == sorted(p.audio.size for p in partials)


def test_long_speech_is_cut_at_the_maximum(vad, dialogue: tuple[Path, list[Turn]]):
    path, _ = dialogue
    items = run(Endpointer(vad, VadParams(max_utterance_s=1.5, partial_interval_s=0)), load_audio_file(path))
    assert all(i.utterance.end - i.utterance.start <= 1.5 + 0.05 for i in items)
    assert len(items) >= 6
