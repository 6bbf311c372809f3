"""Shared fixtures: one real server for the suite and synthesized speech with ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, Turn, have_espeak, synthesize

# Short timeouts so lifecycle tests run in seconds; the protocol is otherwise the OMI default.
FAST = {
    "CONVERSATION_TIMEOUT_MIN_S": "2",
    "CONVERSATION_SWEEP_INTERVAL_S": "0.5",
    "WS_PING_INTERVAL_S": "0.5",
    "WS_INACTIVITY_TIMEOUT_S": "3",
}

DIALOGUE = [
    ("en-us", "Good morning. Did you finish the report about the new clinic?"),
    ("en-us+f3", "Yes, I sent it to the whole team yesterday evening."),
    ("en-us", "Great. Please remind me to call the pharmacy after lunch."),
]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A running server with an ADMIN_KEY and short lifecycle timeouts."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), env=FAST).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Turn]]:
    """A three-turn, two-voice conversation synthesized with espeak-ng, and its ground truth."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    return synthesize(DIALOGUE, tmp_path_factory.mktemp("audio") / "dialogue.wav")
