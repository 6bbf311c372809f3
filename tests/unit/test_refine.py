"""The text refinement pass at close: kept speech transcribed again, with the real faster-whisper engine."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import soundfile

from app.settings import load_settings
from core.conversation import Conversation
from core.segments import TranscriptSegment
from ingest.asr.faster_whisper import FasterWhisper
from ingest.refine import KeptSpeech, TextRefiner, chain
from tests.support import have_espeak, synthesize

T0 = 1_761_645_600.0


@pytest.fixture(scope="module")
def said(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it")
    folder = tmp_path_factory.mktemp("refine")
    first, _ = synthesize([("en-us", "Please call the pharmacy after lunch.")], folder / "a.wav", lead_s=0.1)
    second, _ = synthesize([("en-us+f3", "The cardiologist is on Tuesday.")], folder / "b.wav", lead_s=0.1)
    return soundfile.read(first, dtype="float32")[0], soundfile.read(second, dtype="float32")[0]


def conversation(*segments: TranscriptSegment) -> Conversation:
    return Conversation(
        id="c1", uid="u", status="in_progress", source="omi", language="en", created_at=T0, started_at=T0,
        finished_at=T0 + 20, last_speech_at=T0 + 20, timeout_s=120, segments=list(segments),
    )  # fmt: skip


def segment(sid: str, text: str, start: float, end: float, speaker: int = 0) -> TranscriptSegment:
    return TranscriptSegment(id=sid, text=text, speaker=f"SPEAKER_{speaker}", speaker_id=speaker, start=start, end=end)


async def test_a_closing_conversation_is_transcribed_again_from_its_kept_speech(said):
    engine = FasterWhisper.from_settings(load_settings({"STT_BEAM_SIZE": "5"}, env_file=None).asr)
    first, second = said
    kept = KeptSpeech()
    kept.add("u", T0 + 1, first)
    kept.add("u", T0 + 8, second)
    as_live = " ".join(p.text.strip() for p in engine.transcribe(second, "en", timestamps=False))
    live = conversation(
        segment("s1", " Please call the farm C after lunch.", 1.0, 1.0 + len(first) / 16000),
        segment("s2", f" {as_live}", 8.0, 8.0 + len(second) / 16000, speaker=1),
    )
    changed = await TextRefiner(engine, kept)("u", live)
    assert [s.id for s in changed] == ["s1"], "only the segment whose text differs"
    assert "pharmacy" in changed[0].text.lower() and changed[0].speaker_id == 0
    assert kept.seconds("u") == 0, "the audio is dropped once refined"


async def test_an_utterance_split_between_two_speakers_keeps_its_live_text(said):
    engine = FasterWhisper.from_settings(load_settings({}, env_file=None).asr)
    first, _ = said
    kept = KeptSpeech()
    kept.add("u", T0 + 1, first)
    half = 1.0 + len(first) / 32000
    live = conversation(segment("a", " Please call", 1.0, half), segment("b", " the pharmacy.", half, half + 1, 1))
    assert await TextRefiner(engine, kept)("u", live) == []


def test_kept_speech_is_bounded_per_user():
    kept = KeptSpeech(max_seconds=2.0)
    for i in range(5):
        kept.add("u", T0 + i, np.zeros(16000, dtype=np.float32))
    assert kept.seconds("u") == 2.0 and len(kept.overlapping("u", T0, T0 + 10)) == 2
    assert kept.seconds("other") == 0


async def test_refiners_run_in_turn_on_what_the_last_one_left():
    async def rename(uid: str, c: Conversation) -> list[TranscriptSegment]:
        return [msgspec.structs.replace(c.segments[0], speaker_name="Diane")]

    async def shout(uid: str, c: Conversation) -> list[TranscriptSegment]:
        assert c.segments[0].speaker_name == "Diane"
        return [msgspec.structs.replace(c.segments[0], text=c.segments[0].text.upper())]

    [done] = await chain(rename, shout)("u", conversation(segment("s", " hello", 0, 1)))
    assert (done.text, done.speaker_name) == (" HELLO", "Diane")
