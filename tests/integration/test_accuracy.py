"""Word error rate of whole clips streamed with `omi-letta simulate` through the real WebSocket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SHARED_DATA, ServerProcess, synthesize, token, wer

CLIPS = [
    ("librivox/two_cities_16k.wav", "librivox/two_cities_16k.ref.txt", 0.05),
    ("pyannote_sample/sample.wav", "pyannote_sample/sample.ref.txt", 0.25),
]


def _simulate_cli(server: ServerProcess, path: Path, uid: str, *extra: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "app", "simulate", str(path), "--url", server.ws, "--token", token(uid),
         "--codec", "opus_fs320", "--speed", "4", "--settle", "10", "--json", *extra],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(("audio", "reference", "limit"), CLIPS, ids=["two_cities", "pyannote_sample"])
def test_reference_clip_wer(server: ServerProcess, audio: str, reference: str, limit: float):
    if not (SHARED_DATA / audio).exists():
        pytest.skip(f"reference audio {SHARED_DATA / audio} is absent (it ships only beside CI's checkout)")
    segments = _simulate_cli(server, SHARED_DATA / audio, f"wer-{Path(audio).stem}")
    hypothesis = " ".join(s["text"] for s in segments)
    score = wer((SHARED_DATA / reference).read_text(), hypothesis)
    print(f"{audio}: WER {score:.3f} (limit {limit})")
    assert score <= limit, hypothesis


def test_synthesized_multi_voice_conversation(server: ServerProcess, tmp_path: Path):
    turns = [
        ("en-us", "Hi Sam, how was the appointment with the cardiologist this morning?"),
        ("en-gb+m3", "It went well. She changed my blood pressure medication."),
        ("en-us+f2", "Did she say when you should come back for a follow up?"),
        ("en-gb+m3", "In six weeks, and I have to keep a diary of my readings."),
        ("en-us", "That sounds sensible. I will put it in the calendar tonight."),
    ]
    path, truth = synthesize(turns, tmp_path / "clinic.wav", gap_s=0.8)
    segments = _simulate_cli(server, path, "espeak")
    hypothesis = " ".join(s["text"] for s in segments)
    assert wer(" ".join(t.text for t in truth), hypothesis) <= 0.25, hypothesis
    # Segment times are relative to the conversation start and follow the audio.
    assert segments[0]["start"] <= 1.0
    assert abs(segments[-1]["end"] - (truth[-1].end - truth[0].start)) <= 1.5
    stored = server.get("/v1/conversations/page", uid="espeak").json()["items"][0]
    assert [s["id"] for s in stored["transcript_segments"]] == [s["id"] for s in segments]
