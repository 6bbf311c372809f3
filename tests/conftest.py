"""Shared fixtures: one real server for the suite and synthesized speech with ground truth."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ops.letta_local import LocalLetta, LocalLettaError, default_cache_dir
from tests.support import ServerProcess, Turn, free_port, have_espeak, synthesize, token

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


@pytest.fixture(scope="session", autouse=True)
def keyring() -> Iterator[None]:
    """A throwaway encryption key for stores opened in the test process (server processes load their own)."""
    from memory.store.crypto import Keyring, install

    install(Keyring.generate())
    yield
    install(None)


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


@pytest.fixture(scope="session")
def letta() -> Iterator[LocalLetta]:
    """The pinned Letta server (0.16.8) with its own PostgreSQL, started once per test session.

    It is installed on first use into OMI_LETTA_LOCAL_DIR (default `~/.cache/omi-letta/letta-0.16.8`),
    which later sessions reuse with their database. If another session holds that directory, this one
    runs on a throwaway database beside the same installed environment.
    """
    root = Path(os.environ.get("OMI_LETTA_LOCAL_DIR") or default_cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    # Agents of test servers embed through those servers' /v1/embeddings with this key; the model
    # list is asked of a closed local port, so the server reaches nothing.
    service = (f"http://127.0.0.1:{free_port()}/v1", token("letta"))
    server = LocalLetta(root, port=free_port(), service=service)
    scratch: Path | None = None
    try:
        server.start()
    except LocalLettaError as exc:
        if "another omi-letta letta-local" not in str(exc):
            pytest.fail(f"the local Letta server did not start: {exc}")
        scratch = Path(tempfile.mkdtemp(prefix="omi-letta-letta-"))
        scratch.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        shared = root / "venv" if LocalLetta(root).installed() else None
        server = LocalLetta(scratch, port=free_port(), venv=shared, service=service)
        try:
            server.start()
        except LocalLettaError as again:
            shutil.rmtree(scratch, ignore_errors=True)
            pytest.fail(f"the local Letta server did not start: {again}")
    yield server
    server.stop()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
