"""Enrollment embeddings from real synthesized voices: the real VAD and GE2E encoder, no fakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.errors import DecodeError, NotEnoughSpeechError, UnsupportedAudioError
from ingest.diarize.embedded import EmbeddedDiarizer, normalize_level
from ingest.diarize.encoder import shared_encoder
from ingest.diarize.enroll import load_enrollment_audio, voice_embedding
from ingest.vad import load_vad
from tests.support import have_espeak, speak

FIRST = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."
SECOND = "Please remember to call the pharmacy after lunch and ask about the new prescription."


@pytest.fixture(scope="module")
def voices_model() -> EmbeddedDiarizer:
    return EmbeddedDiarizer(shared_encoder(), load_vad())


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], np.ndarray]:
    """Two sentences in each of two espeak-ng voices, as 16 kHz float32."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("voices")
    return {
        (voice, which): speak(text, voice, folder / "speech.wav")
        for voice in ("en-us", "en-us+f3")
        for which, text in (("first", FIRST), ("second", SECOND))
    }


def test_one_voice_is_closer_to_itself_than_to_another(
    voices_model: EmbeddedDiarizer, voices: dict[tuple[str, str], np.ndarray]
):
    emb = {key: voice_embedding(audio, diarizer=voices_model)[0] for key, audio in voices.items()}
    for vector in emb.values():
        assert vector.shape == (256,) and vector.dtype == np.float32
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    same = [float(emb[(v, "first")] @ emb[(v, "second")]) for v in ("en-us", "en-us+f3")]
    sentences = ("first", "second")
    different = [float(emb[("en-us", a)] @ emb[("en-us+f3", b)]) for a in sentences for b in sentences]
    assert min(same) > max(different) + 0.1, (same, different)


def test_only_speech_counts_and_quiet_recordings_are_levelled(
    voices_model: EmbeddedDiarizer, voices: dict[tuple[str, str], np.ndarray]
):
    speech = voices[("en-us", "first")]
    reference, seconds = voice_embedding(speech, diarizer=voices_model)
    assert 3.0 < seconds <= speech.size / 16_000
    silence = np.zeros(16_000 * 5, dtype=np.float32)
    padded, padded_seconds = voice_embedding(np.concatenate([silence, speech, silence]), diarizer=voices_model)
    assert padded_seconds == pytest.approx(seconds, abs=0.3)
    assert float(padded @ reference) > 0.98
    far, far_seconds = voice_embedding(speech * 0.01, diarizer=voices_model)  # -40 dB, far across a room
    assert far_seconds == pytest.approx(seconds, abs=0.3)
    assert float(far @ reference) > 0.99


def test_level_normalisation_lifts_quiet_speech_to_the_target_with_limited_gain():
    rng = np.random.default_rng(0)
    loud = (rng.uniform(-0.5, 0.5, 16_000)).astype(np.float32)
    levelled = normalize_level(loud, target_dbfs=-26.0)
    frames = levelled[: 16_000 // 480 * 480].reshape(-1, 480)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    top = energy[energy >= np.quantile(energy, 0.8)]
    assert 10 * np.log10(top.mean()) == pytest.approx(-26.0, abs=0.1)
    faint = loud * 1e-4  # -80 dB: more gain than the 40 dB allowed
    assert float(np.abs(normalize_level(faint, max_gain_db=40.0)).max()) == pytest.approx(
        float(np.abs(faint).max()) * 100, rel=1e-3
    )
    assert not normalize_level(np.zeros(1000, dtype=np.float32)).any()


def test_too_little_speech_is_refused(voices_model: EmbeddedDiarizer, voices: dict[tuple[str, str], np.ndarray]):
    with pytest.raises(NotEnoughSpeechError, match=r"only 0\.0 s of speech found; .* at least 2 s"):
        voice_embedding(np.zeros(16_000 * 10, dtype=np.float32), diarizer=voices_model)
    noise = np.random.default_rng(1).normal(0, 0.05, 16_000 * 10).astype(np.float32)
    with pytest.raises(NotEnoughSpeechError):
        voice_embedding(noise, diarizer=voices_model)
    with pytest.raises(NotEnoughSpeechError, match="only 1"):
        voice_embedding(voices[("en-us", "first")][: int(16_000 * 1.6)], diarizer=voices_model)


def test_enrollment_audio_must_be_readable_and_not_too_long(tmp_path: Path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(DecodeError, match="cannot read audio file"):
        load_enrollment_audio(junk)
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(1000 * 31 * 60, dtype=np.float32), 1000, subtype="PCM_U8")  # 31 min
    with pytest.raises(UnsupportedAudioError, match="31 min long; enroll from at most 30 min"):
        load_enrollment_audio(long)
    ok = tmp_path / "ok.flac"
    soundfile.write(ok, np.zeros(48_000, dtype=np.float32), 48_000)
    assert load_enrollment_audio(ok).shape == (16_000,)
