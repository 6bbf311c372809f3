"""Who said what, through `omi-letta ingest`: DER on synthesized and real recordings.

DER is scored with overlap and a ±0.25 s no-score collar (NIST md-eval ``-c 0.25``) from the
RTTM that ``omi-letta ingest --rttm`` writes. The shared recordings are absent on a user's
machine; those tests skip there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.diarize.der import LabelledTurn, der, read_rttm, read_uem
from tests.support import SHARED_DATA, have_espeak, synthesize

CONVERSATION = [
    ("en-us", "Good morning. Did you get a chance to look at the schedule for next week?"),
    ("en-us+f3", "I did. Tuesday looks busy, but Wednesday afternoon is completely free."),
    ("en-us", "Then let us move the planning meeting to Wednesday at two o'clock."),
    ("en-us+f3", "That works for me. I will send the invitation to everyone this evening."),
    ("en-us", "Thank you. And please remind the pharmacy about my prescription."),
]


def ingest(
    files: list[Path], tmp_path: Path, *extra: str
) -> tuple[list[dict[str, Any]], dict[str, list[LabelledTurn]]]:
    """Run `omi-letta ingest --json --rttm`; return the conversations and the turns per file."""
    rttm = tmp_path / "out.rttm"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "LOCAL_DEVELOPMENT": "true"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "ingest",
            *map(str, files),
            "--json",
            "--no-deliver",
            "--rttm",
            str(rttm),
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), read_rttm(rttm)


@pytest.fixture(scope="module")
def two_voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    return synthesize(CONVERSATION, tmp_path_factory.mktemp("voices") / "two_voices.wav", gap_s=0.6)


def test_two_synthesized_voices_are_told_apart(two_voices: tuple[Path, list[Any]], tmp_path: Path) -> None:
    path, truth = two_voices
    conversations, turns = ingest([path], tmp_path)
    reference = [LabelledTurn(t.start, t.end, t.speaker) for t in truth]
    hypothesis = turns[path.stem]
    assert {t.speaker for t in hypothesis} == {"SPEAKER_0", "SPEAKER_1"}
    assert abs(min(t.start for t in hypothesis) - truth[0].start) < 0.5  # RTTM times are from the file's start
    result = der(reference, hypothesis, collar=0.25)
    assert result.der <= 0.05, result

    # Every transcript segment names the voice that spoke it, as `Speaker n`.
    (conversation,) = conversations
    voice_of = {hyp: ref for ref, hyp in result.mapping.items()}
    for seg in conversation["segments"]:
        middle = conversation_time(seg, conversation, truth)
        spoken = next(t.speaker for t in truth if t.start - 0.3 <= middle <= t.end + 0.3)
        assert voice_of[seg["speaker"]] == spoken, seg
        assert seg["speaker_name"] == f"Speaker {seg['speaker_id']}"
        assert seg["is_user"] is False


def conversation_time(seg: dict[str, Any], conversation: dict[str, Any], truth: list[Any]) -> float:
    """A segment's middle in file time (the conversation starts at the first detected speech)."""
    first = conversation["segments"][0]["start"]
    return truth[0].start + (seg["start"] + seg["end"]) / 2 - first


def test_speaker_count_hint_is_honoured(two_voices: tuple[Path, list[Any]], tmp_path: Path) -> None:
    path, _ = two_voices
    _, turns = ingest([path], tmp_path, "--speakers", "1")
    assert {t.speaker for t in turns[path.stem]} == {"SPEAKER_0"}


requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "pyannote_sample").is_dir() or not (SHARED_DATA / "ami_debug").is_dir(),
    reason=f"the shared recordings are not at {SHARED_DATA} (they exist only beside the CI checkout)",
)


@requires_shared
def test_pyannote_sample_two_speakers_and_der_at_most_10_percent(tmp_path: Path) -> None:
    folder = SHARED_DATA / "pyannote_sample"
    _, turns = ingest([folder / "sample.wav"], tmp_path)
    hypothesis = turns["sample"]
    assert len({t.speaker for t in hypothesis}) == 2
    result = der(read_rttm(folder / "sample.rttm")["sample"], hypothesis, collar=0.25)
    assert result.der <= 0.10, result


@requires_shared
def test_far_field_meetings_mean_der_at_most_30_percent(tmp_path: Path) -> None:
    folder = SHARED_DATA / "ami_debug"
    names = ["dev00", "dev01"]
    _, turns = ingest([folder / f"{n}.wav" for n in names], tmp_path)
    reference = read_rttm(folder / "debug.development.rttm")
    uem = read_uem(folder / "debug.development.uem")
    scores = {n: der(reference[n], turns[n], collar=0.25, uem=uem[n]).der for n in names}
    assert sum(scores.values()) / len(scores) <= 0.30, scores
