"""The local Letta server (`omi-letta letta-local`) answers the real letta-client 1.12.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from letta_client import Letta

from app.cli import main
from app.ops.letta_local import LETTA_VERSION, LocalLetta, LocalLettaError
from tests.support import StandInEmbeddings


@pytest.fixture(scope="module")
def embeddings() -> Iterator[StandInEmbeddings]:
    server = StandInEmbeddings(dim=384).start()
    yield server
    server.stop()


def test_an_agent_stores_and_finds_archival_passages(letta: LocalLetta, embeddings: StandInEmbeddings):
    client = Letta(base_url=letta.base_url, api_key=letta.password or None, max_retries=0, timeout=60)
    assert client.health().version == LETTA_VERSION
    agent = client.agents.create(
        name=f"omi-test-{uuid.uuid4().hex[:8]}",
        tags=["omi-test"],
        memory_blocks=[{"label": "human", "value": "The wearer of an OMI device."}],
        tools=["archival_memory_search"],
        embedding_config={
            "embedding_endpoint_type": "openai",
            "embedding_endpoint": embeddings.url,
            "embedding_model": "stand-in",
            "embedding_dim": embeddings.dim,
            "embedding_chunk_size": 300,
        },
        # Creating an agent and archival memory never call the model; no chat endpoint is needed.
        llm_config={
            "model": "stand-in",
            "model_endpoint_type": "openai",
            "model_endpoint": embeddings.url,
            "context_window": 8192,
        },
    )
    try:
        assert "archival_memory_search" in {t.name for t in agent.tools}
        before = embeddings.texts
        lines = {
            "[2025-10-28 10:02] Diane: I moved to Newark, New Jersey last spring.": "speaker:Diane",
            "[2025-10-28 10:03] me: The dentist moved my appointment to Friday morning.": "speaker:me",
        }
        for text, speaker in lines.items():
            created = client.agents.passages.create(
                agent.id, text=text, tags=["omi", speaker], created_at="2025-10-28T10:02:00Z"
            )
            assert [p.text for p in created] == [text]
        assert embeddings.texts - before == len(lines), "each insert embeds its text once, synchronously"

        stored = client.agents.passages.list(agent.id)
        assert {p.text: set(p.tags or []) for p in stored} == {t: {"omi", s} for t, s in lines.items()}

        found = client.agents.passages.search(agent.id, query="where does Diane live? New Jersey", top_k=1)
        assert [r.content for r in found.results] == [next(iter(lines))]
    finally:
        client.agents.delete(agent.id)


def test_a_busy_port_is_reported_with_the_step(letta: LocalLetta, tmp_path: Path):
    with pytest.raises(LocalLettaError, match=f"starting the Letta server failed: port {letta.port} .* in use"):
        LocalLetta(tmp_path, port=letta.port).start()


def test_command_does_nothing_when_letta_base_url_is_set(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("LETTA_BASE_URL", "https://api.letta.com")
    assert main(["letta-local", "--unless-configured"]) == 0
    assert "not starting a local Letta server" in capsys.readouterr().out


def test_command_help_says_what_it_installs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["letta-local", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "0.16.8" in help_text and "--port" in help_text and "--dir" in help_text
