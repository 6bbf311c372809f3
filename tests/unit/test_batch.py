"""Batch windows: speech spans packed back to back, and times mapped back to the file."""

from __future__ import annotations

import pytest

from ingest.batch import Window, pack_windows

SR = 16_000


def spans(*seconds: tuple[float, float]) -> list[tuple[int, int]]:
    return [(int(a * SR), int(b * SR)) for a, b in seconds]


def test_windows_hold_at_most_the_limit_of_speech():
    packed = pack_windows(spans((0, 10), (12, 22), (30, 39), (100, 105)), limit_s=28)
    assert [w.spans for w in packed] == [spans((0, 10), (12, 22)), spans((30, 39), (100, 105))]


def test_times_in_packed_audio_map_back_to_the_file():
    window = Window(spans((5, 7), (20, 23)))
    assert window.original_time(0.0) == pytest.approx(5.0)
    assert window.original_time(1.5) == pytest.approx(6.5)
    assert window.original_time(2.5) == pytest.approx(20.5)
    assert window.original_time(5.0) == pytest.approx(23.0)
    assert window.original_time(9.0) == pytest.approx(23.0)  # past the end: clamp
