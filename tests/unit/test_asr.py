"""The faster-whisper engine with the packaged tiny.en model, on synthesized speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.asr import load_asr
from ingest.asr.faster_whisper import FasterWhisper
from ingest.decode import load_audio_file
from ingest.ingest_settings import AsrSettings
from tests.support import Turn, wer


@pytest.fixture(scope="module")
def engine() -> FasterWhisper:
    asr = load_asr(AsrSettings())
    assert isinstance(asr, FasterWhisper)
    return asr


def test_short_form_matches_the_30_second_window(engine: FasterWhisper, dialogue: tuple[Path, list[Turn]]):
    path, truth = dialogue
    audio = load_audio_file(path)
    short_wer, windowed_wer = [], []
    for turn in truth:
        clip = audio[int((turn.start - 0.3) * 16_000) : int((turn.end + 0.3) * 16_000)]
        short = engine.transcribe(clip, "en", timestamps=False)
        windowed = engine.transcribe(clip, "en", timestamps=True)
        assert len(short) == 1
        assert short[0].start == 0.0 and short[0].end == pytest.approx(clip.size / 16_000, abs=0.01)
        short_wer.append(wer(turn.text, short[0].text))
        windowed_wer.append(wer(turn.text, " ".join(s.text for s in windowed)))
    assert np.mean(short_wer) <= np.mean(windowed_wer) + 0.1
    assert np.mean(short_wer) <= 0.3


def test_silence_and_noise_give_no_long_hallucination(engine: FasterWhisper):
    assert engine.transcribe(np.zeros(16_000 * 2, dtype=np.float32), "en", timestamps=False) == []
    noise = np.random.default_rng(1).normal(0, 0.05, 16_000 * 3).astype(np.float32)
    text = " ".join(s.text for s in engine.transcribe(noise, "en", timestamps=False))
    assert len(text.split()) <= 6


def test_a_distrusted_short_result_falls_back_to_windows(
    engine: FasterWhisper, dialogue: tuple[Path, list[Turn]], monkeypatch: pytest.MonkeyPatch
):
    path, truth = dialogue
    audio = load_audio_file(path)[: int((truth[0].end + 0.3) * 16_000)]
    monkeypatch.setattr(engine, "_transcribe_short", lambda audio, language: None)
    segments = engine.transcribe(audio, "en", timestamps=False)
    assert segments and wer(truth[0].text, " ".join(s.text for s in segments)) <= 0.3


def test_english_only_model_takes_only_english(engine: FasterWhisper):
    assert engine.supports_language("en")
    assert not engine.supports_language("fr") and not engine.supports_language("multi")
