"""The OMI merge rules for consecutive segments."""

from __future__ import annotations

from core.segments import TranscriptSegment, combine_segments
from memory.store.conversations import clamp_timeout


def seg(text: str, start: float, end: float, speaker: int = 0, provider: str | None = "fw") -> TranscriptSegment:
    return TranscriptSegment(
        text=text, start=start, end=end, speaker=f"SPEAKER_{speaker}", speaker_id=speaker, stt_provider=provider
    )


def test_same_speaker_close_in_time_merges_into_the_earlier_id():
    first = seg("Hello there.", 0.0, 1.0)
    combined, changed = combine_segments([first], [seg("How are you?", 1.5, 2.5)])
    assert len(combined) == 1
    assert combined[0].id == first.id
    assert combined[0].text == "Hello there. How are you?"
    assert combined[0].end == 2.5
    assert changed == combined


def test_gap_of_three_seconds_or_other_speaker_starts_a_new_segment():
    first = seg("Hello there.", 0.0, 1.0)
    combined, changed = combine_segments([first], [seg("Later.", 4.0, 5.0), seg("Hi.", 5.2, 5.6, speaker=1)])
    assert [s.text for s in combined] == ["Hello there.", "Later.", "Hi."]
    assert [s.text for s in changed] == ["Later.", "Hi."]


def test_long_finished_sentence_stays_apart_unless_next_starts_lowercase():
    long = seg("x" * 130 + ".", 0.0, 8.0)
    assert len(combine_segments([long], [seg("Next.", 8.5, 9.0)])[0]) == 2
    assert len(combine_segments([long], [seg("and more", 8.5, 9.0)])[0]) == 1
    unfinished = seg("x" * 130, 0.0, 8.0)
    assert len(combine_segments([unfinished], [seg("Next.", 8.5, 9.0)])[0]) == 1


def test_different_providers_never_merge():
    combined, _ = combine_segments([seg("a", 0, 1, provider="x")], [seg("b", 1.1, 2, provider="y")])
    assert len(combined) == 2


def test_existing_list_is_not_mutated():
    existing = [seg("Hello", 0, 1)]
    combine_segments(existing, [seg("world", 1.2, 2)])
    assert existing[0].text == "Hello" and len(existing) == 1


def test_conversation_timeout_follows_the_omi_rules():
    assert clamp_timeout(None, default=120, minimum=120) == 120
    assert clamp_timeout(-1, default=120, minimum=120) == 14_400
    assert clamp_timeout(30, default=120, minimum=120) == 120
    assert clamp_timeout(600, default=120, minimum=120) == 600
    assert clamp_timeout(10**30, default=120, minimum=120) == 14_400  # fits the database, as OMI's docs say
    assert clamp_timeout(3, default=120, minimum=2) == 3
