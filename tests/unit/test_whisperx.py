"""WhisperX: its results mapped into our segments (always), and the engine itself where it is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ingest.asr.whisperx_backend import segments_from_whisperx
from ingest.schema import AsrWord

WHISPERX = importlib.util.find_spec("whisperx") is not None


def test_words_whisperx_could_not_align_keep_a_time_within_their_segment():
    result = [
        {
            "start": 1.0,
            "end": 3.0,
            "text": " I moved in 2019. ",
            "words": [
                {"word": "I", "start": 1.0, "end": 1.1, "score": 0.9},
                {"word": "moved", "start": 1.2, "end": 1.6, "score": 0.9},
                {"word": "in", "start": 1.7, "end": 1.8, "score": 0.8},
                {"word": "2019."},  # digits have no alignment
            ],
        },
        {"start": 3.0, "end": 3.5, "text": "  ", "words": []},
    ]
    [segment] = segments_from_whisperx(result, words=True)
    assert segment.text == " I moved in 2019." and (segment.start, segment.end) == (1.0, 3.0)
    assert segment.words[-1] == AsrWord(start=1.8, end=1.8, text=" 2019.")
    assert [w.text for w in segment.words] == [" I", " moved", " in", " 2019."]
    assert segments_from_whisperx(result, words=False)[0].words == ()


@pytest.mark.skipif(not WHISPERX, reason="WhisperX is an extra (pip install 'omi-letta[whisperx]'); not installed here")
def test_whisperx_transcribes_a_dialogue_like_faster_whisper(dialogue: tuple[Path, list]):
    import soundfile

    from app.settings import load_settings
    from ingest.asr.whisperx_backend import WhisperX
    from tests.support import wer

    audio, _ = soundfile.read(dialogue[0], dtype="float32")
    engine = WhisperX.from_settings(load_settings({"STT_BACKEND": "whisperx"}, env_file=None).asr)
    found = engine.transcribe(audio, "en", words=True)
    text = " ".join(s.text for s in found)
    assert wer(" ".join(t.text for t in dialogue[1]), text) < 0.3
    assert all(w.start <= w.end for s in found for w in s.words)
