"""How conversations read in Letta: passage groups, their keys and tags, and the recent-conversations block."""

from __future__ import annotations

import msgspec

from core.conversation import Conversation
from core.segments import TranscriptSegment
from memory.letta.passage_groups import group_turns, recent_block, summary_line
from tests.memory_support import SAMPLE_LINES, SAMPLE_SPEAKERS, T0


def sample(lines: int = len(SAMPLE_LINES), cid: str = "c0ffee00-0000-4000-8000-000000000000") -> Conversation:
    segments = [
        TranscriptSegment(id=f"t{i}", text=text, start=3.0 * i, end=3.0 * i + 2.5, speaker_name=who)
        for i, (who, text) in enumerate(zip(SAMPLE_SPEAKERS[:lines], SAMPLE_LINES[:lines], strict=True))
    ]
    return Conversation(
        id=cid,
        uid="alice",
        status="completed",
        source="omi",
        language="en",
        created_at=T0,
        started_at=T0,
        finished_at=T0 + 3.0 * lines,
        last_speech_at=T0,
        timeout_s=120,
        segments=segments,
    )


def test_turns_are_grouped_in_order_up_to_the_size_limit():
    groups = group_turns(sample(), 200)
    assert len(groups) > 2
    assert [t for g in groups for t in g.turn_ids] == [f"t{i}" for i in range(len(SAMPLE_LINES))]
    assert all(len(g.text) <= 200 for g in groups)
    first = groups[0].text.splitlines()
    assert first[0] == "Conversation c0ffee00 (2025-10-28 10:02 UTC):"
    assert first[1] == "[2025-10-28 10:02] Diane: Hello?"
    assert first[2] == "[2025-10-28 10:02] Sheila: Hello?"
    assert groups[0].created_at == "2025-10-28T10:02:00+00:00"
    assert groups[1].created_at > groups[0].created_at


def test_tags_name_the_conversation_speakers_turns_and_group():
    group = group_turns(sample(2), 1500)[0]
    assert group.tags == [
        "omi",
        "conv:c0ffee00-0000-4000-8000-000000000000",
        "speaker:Diane",
        "speaker:Sheila",
        "turn:t0",
        "turn:t1",
        f"grp:{group.key}",
    ]


def test_keys_are_stable_and_appending_changes_only_the_last_group():
    before = group_turns(sample(10), 200)
    assert [g.key for g in group_turns(sample(10), 200)] == [g.key for g in before]
    after = group_turns(sample(11), 200)
    assert [g.key for g in after[: len(before) - 1]] == [g.key for g in before[:-1]]
    assert after[len(before) - 1].key != before[-1].key


def test_a_relabel_changes_the_key_and_the_text():
    conversation = sample(3)
    before = group_turns(conversation, 1500)[0]
    conversation.segments[1] = msgspec.structs.replace(conversation.segments[1], speaker_name="Sheila Jones")
    after = group_turns(conversation, 1500)[0]
    assert after.key != before.key and "Sheila Jones: Hello?" in after.text and "speaker:Sheila Jones" in after.tags


def test_a_turn_longer_than_the_limit_stands_alone_and_blank_turns_are_skipped():
    conversation = sample(2)
    conversation.segments.insert(1, TranscriptSegment(id="long", text="word " * 100, start=1.0, end=2.0))
    conversation.segments.append(TranscriptSegment(id="blank", text="  ", start=9.0, end=9.5))
    groups = group_turns(conversation, 200)
    assert [g.turn_ids for g in groups] == [["t0"], ["long"], ["t1"]]


def test_the_summary_says_when_who_how_long_and_what_about():
    line = summary_line(sample())
    assert line.startswith("- 2025-10-28 10:02–10:02 UTC (1 min, 13 turns) with Diane, Sheila; about: ")
    assert "jersey" in line and "chicago" in line and "[conv:c0ffee00-0000-4000-8000-000000000000]" in line


def test_the_summary_uses_the_title_the_omi_cloud_sent():
    conversation = sample()
    conversation.structured = {"title": "Diane's move to New Jersey", "overview": "..."}
    assert "; about: Diane's move to New Jersey [conv:" in summary_line(conversation)


def test_the_block_lists_newest_first_within_its_size():
    many = [sample(cid=f"{i:08d}-0000-4000-8000-000000000000") for i in range(50)]
    block = recent_block(many, 1000)
    assert len(block) <= 1000
    assert block.splitlines()[1].endswith("[conv:00000000-0000-4000-8000-000000000000]")
    assert recent_block([], 1000).endswith("(none yet)")
