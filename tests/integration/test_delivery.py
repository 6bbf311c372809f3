"""End to end: audio through the real WebSocket into a real Letta agent and the memory index, exactly once.

Each test runs its own ``omi-letta serve`` against the session's local Letta server. The agents it
creates embed through that server's own ``/v1/embeddings`` (the local model), as in production.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from letta_client import Letta

from app.cli.simulator import simulate
from app.ops.letta_local import LocalLetta
from core.conversation import Conversation
from core.segments import TranscriptSegment
from memory.letta.passage_groups import group_turns, summary_group
from tests.conftest import FAST
from tests.support import SHARED_DATA, ServerProcess, synthesize, token

SAMPLE = SHARED_DATA / "pyannote_sample" / "sample.wav"
LONG_DIALOGUE = [
    ("en-us", "Good morning. Did you finish the report about the new clinic?"),
    ("en-us+f3", "Yes, I sent it to the whole team yesterday evening."),
    ("en-us", "Great. Please remind me to call the pharmacy after lunch."),
    ("en-us+f3", "I will. The pharmacy closes at five on Fridays."),
    ("en-us", "Then I should also pick up the prescription for my mother."),
    ("en-us+f3", "Her appointment with the cardiologist is next Tuesday morning."),
]


def serve(tmp_path: Path, letta: LocalLetta, **env: str) -> ServerProcess:
    """A server delivering to ``letta`` that retries quickly."""
    settings = {
        **FAST,
        "LETTA_BASE_URL": letta.base_url,
        "LETTA_TIMEOUT_S": "4",
        "LETTA_PASSAGE_MAX_CHARS": "300",  # several passages even for a short conversation
        "OUTBOX_BASE_DELAY_S": "0.2",
        "OUTBOX_MAX_DELAY_S": "2",
        "OUTBOX_MAX_ATTEMPTS": "200",
        "OUTBOX_POLL_S": "0.2",
        "LETTA_DELIVERY": "true",
        **env,
    }
    return ServerProcess(tmp_path, env=settings).start()


@pytest.fixture(scope="module")
def dialogue6(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six espeak turns, as two files (first three turns, last three) of one conversation."""
    folder = tmp_path_factory.mktemp("dialogue6")
    first, _ = synthesize(LONG_DIALOGUE[:3], folder / "first.wav")
    second, _ = synthesize(LONG_DIALOGUE[3:], folder / "second.wav")
    return first, second


def client_of(letta: LocalLetta) -> Letta:
    return Letta(base_url=letta.base_url, max_retries=0, timeout=60)


def agent_of(client: Letta, uid: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = list(client.agents.list(tags=[f"omi-uid:{uid}"], match_all_tags=True, limit=2))
        if found:
            assert len(found) == 1, "one agent per user"
            return str(found[0].id)
        time.sleep(0.5)
    raise AssertionError(f"no agent was created for {uid}")


def passages_of(client: Letta, agent: str) -> list[Any]:
    return list(client.agents.passages.list(agent, limit=1000))


def pending(server: ServerProcess) -> float:
    """Records waiting for either sink, from the outbox gauges (which must be there)."""
    text = server.metrics_text()
    values = [re.search(rf"^omi_letta_outbox_pending_{sink} (\S+)$", text, re.M) for sink in ("letta", "index")]
    assert all(values), "the outbox gauges are missing from /metrics"
    return sum(float(v.group(1)) for v in values if v)


def wait_drained(server: ServerProcess, timeout_s: float = 90) -> None:
    """Until nothing waits in the outbox for either sink (seen twice: the gauges refresh every second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pending(server) == 0:
            time.sleep(1.2)
            if pending(server) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"the outbox did not drain:\n{server.log()[-3000:]}")


def conversations(server: ServerProcess, uid: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The user's conversations, once there is one (a loaded machine may still be transcribing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        items = list(server.get("/v1/conversations/page", uid=uid).json()["items"])
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.5)


def as_conversation(omi: dict[str, Any], uid: str) -> Conversation:
    def ts(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    return Conversation(
        id=omi["id"],
        uid=uid,
        status=omi["status"],
        source=omi["source"],
        language=omi["language"],
        created_at=ts(omi["created_at"]),
        started_at=ts(omi["started_at"]),
        finished_at=ts(omi["finished_at"]),
        last_speech_at=ts(omi["finished_at"]),
        timeout_s=120,
        segments=[TranscriptSegment(**s) for s in omi["transcript_segments"]],
        structured=omi.get("structured"),
    )


def eventually_exactly_once(client: Letta, agent: str, conversation: Conversation, timeout_s: float = 60) -> None:
    """As :func:`assert_exactly_once`, allowing the sink's watch to delete a late copy of a re-sent insert."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            assert_exactly_once(client, agent, conversation)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def assert_exactly_once(client: Letta, agent: str, conversation: Conversation) -> list[Any]:
    """The agent holds each of the conversation's passage groups once, and nothing else of it: its turns,
    and the summary it was given when it closed (an extractive one: the tests have no model)."""
    mine = [p for p in passages_of(client, agent) if f"conv:{conversation.id}" in (p.tags or [])]
    turn_tags = Counter(t for p in mine for t in p.tags or [] if t.startswith("turn:"))
    assert set(turn_tags) == {f"turn:{s.id}" for s in conversation.segments if s.text.strip()}
    assert set(turn_tags.values()) == {1}, f"a turn is in more than one passage: {turn_tags.most_common(2)}"
    summaries = [p for p in mine if "summary" in (p.tags or [])]
    turns = [p for p in mine if "summary" not in (p.tags or [])]
    assert Counter(p.text for p in turns) == Counter(g.text for g in group_turns(conversation, 300))
    assert len(summaries) <= 1, "the summary is in the agent once"
    summary = summary_group(conversation)  # None while ``conversation`` was read before it was understood
    if summary is not None:
        assert [p.text for p in summaries] == [summary.text]
    return mine


async def test_streamed_audio_reaches_the_agent_and_search(tmp_path: Path, letta: LocalLetta):
    if not SAMPLE.is_file():
        pytest.skip(f"shared audio is absent ({SAMPLE}); it exists only on the project's machines")
    server = serve(tmp_path, letta)
    uid = f"e2e-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    try:
        await simulate(SAMPLE, server.ws, token=token(uid), speed=2, settle_s=4)
        [listed] = conversations(server, uid)
        closed = server.post(f"/v1/conversations/{listed['id']}/close", uid=uid).json()
        wait_drained(server)
        conversation = as_conversation(server.get(f"/v1/conversations/{closed['id']}", uid=uid).json(), uid)
        agent = agent_of(client, uid)
        mine = assert_exactly_once(client, agent, conversation)

        text = "\n".join(p.text for p in mine)
        assert "New Jersey" in text and "Chicago" in text
        names = {s.speaker_name for s in conversation.segments}
        assert len(names) == 2 and all(f"] {n}: " in text for n in names), "each line says who spoke"
        assert {f"speaker:{n}" for n in names} <= {t for p in mine for t in p.tags or []}
        assert {"omi", f"conv:{conversation.id}"} <= set(mine[0].tags or [])
        first = min(mine, key=lambda p: p.created_at)
        spoken = conversation.started_at + conversation.segments[0].start
        assert abs(first.created_at.timestamp() - spoken) < 1, "created_at is when the words were spoken"

        block = client.agents.blocks.retrieve("recent_conversations", agent_id=agent)
        assert f"conv:{conversation.id}" in block.value
        assert all(n in block.value for n in names)

        hits = server.get("/v1/memory/search", uid=uid, params={"q": "where does Diane live"}).json()["items"]
        assert hits and "New Jersey" in hits[0]["text"], [h["text"] for h in hits[:3]]
        assert hits[0]["conversation_id"] == conversation.id
        assert server.get("/v1/memory/search", uid="someone-else", params={"q": "New Jersey"}).json()["items"] == []
    finally:
        server.stop()


async def test_letta_outage_mid_delivery_then_exactly_once(
    tmp_path: Path, letta: LocalLetta, dialogue6: tuple[Path, Path]
):
    server = serve(tmp_path, letta)
    uid = f"outage-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    first, second = dialogue6
    try:
        await simulate(first, server.ws, token=token(uid), speed=2, settle_s=4)
        wait_drained(server)
        agent = agent_of(client, uid)
        assert passages_of(client, agent), "the first half arrived"
        failures = server.metric("delivery_failures_total_letta")

        letta.stop_server()
        try:
            await simulate(second, server.ws, token=token(uid), speed=2, settle_s=4)
            [listed] = conversations(server, uid)
            server.post(f"/v1/conversations/{listed['id']}/close", uid=uid)
            await asyncio.sleep(2)
            assert server.metric("outbox_pending_letta") > 0, "turns wait while Letta is down"
            assert server.metric("delivery_failures_total_letta") > failures
            assert server.metric("outbox_pending_index") == 0, "the index does not wait for Letta"
        finally:
            letta.restart_server()

        wait_drained(server, timeout_s=120)
        conversation = as_conversation(server.get(f"/v1/conversations/{listed['id']}", uid=uid).json(), uid)
        assert len(conversation.segments) >= 4
        assert_exactly_once(client, agent, conversation)
        assert server.metric("outbox_dead_letta") == 0
    finally:
        server.stop()


async def test_sigkill_mid_delivery_then_restart_exactly_once(
    tmp_path: Path, letta: LocalLetta, dialogue6: tuple[Path, Path]
):
    """The service dies with an insert in flight; Letta finishes it later; the restart must not repeat it."""
    server = serve(tmp_path, letta)
    uid = f"crash-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    first, second = dialogue6
    try:
        await simulate(first, server.ws, token=token(uid), speed=2, settle_s=4)
        wait_drained(server)
        agent = agent_of(client, uid)

        letta.signal_server(signal.SIGSTOP)  # requests are accepted but not answered: inserts in flight
        try:
            await simulate(second, server.ws, token=token(uid), speed=2, settle_s=4)
            await asyncio.sleep(1.0)
            assert server.metric("outbox_pending_letta") > 0
            server.stop(kill=True)
        finally:
            letta.signal_server(signal.SIGCONT)

        restarted = ServerProcess(tmp_path, env=server.env, port=server.port).start()
        try:
            [listed] = conversations(restarted, uid)
            restarted.post(f"/v1/conversations/{listed['id']}/close", uid=uid)
            wait_drained(restarted, timeout_s=120)
            conversation = as_conversation(restarted.get(f"/v1/conversations/{listed['id']}", uid=uid).json(), uid)
            eventually_exactly_once(client, agent, conversation)
        finally:
            restarted.stop()
    finally:
        server.stop()


async def test_a_deleted_conversation_disappears_from_letta_the_index_and_search(
    tmp_path: Path, letta: LocalLetta, dialogue: tuple[Path, list[Any]]
):
    server = serve(tmp_path, letta)
    uid = f"delete-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    try:
        await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
        [listed] = conversations(server, uid)
        server.post(f"/v1/conversations/{listed['id']}/close", uid=uid)
        wait_drained(server)
        agent = agent_of(client, uid)
        assert passages_of(client, agent)
        assert server.get("/v1/memory/search", uid=uid, params={"q": "pharmacy"}).json()["items"]
        # The agent searches the memory itself with its own API token, through our MCP server.
        ran = client.agents.tools.run("search_memory", agent_id=agent, args={"query": "pharmacy", "limit": 2})
        assert ran.status == "success", ran
        assert "pharmacy" in str(ran.func_return).lower() and listed["id"] in str(ran.func_return)

        # A relabel reaches what was delivered: the passages and the index name the speaker.
        relabel = {"speaker_id": 1, "name": "Nurse Joy"}
        assert server.patch(f"/v1/conversations/{listed['id']}/speakers", uid=uid, json=relabel).status_code == 200
        wait_drained(server)
        relabelled = as_conversation(server.get(f"/v1/conversations/{listed['id']}", uid=uid).json(), uid)
        mine = assert_exactly_once(client, agent, relabelled)
        turns = [p for p in mine if "summary" not in (p.tags or [])]  # the summary keeps the words of its close
        assert any("] Nurse Joy: " in p.text for p in turns) and not any("Speaker 1:" in p.text for p in turns)
        hits = server.get("/v1/memory/search", uid=uid, params={"q": "report", "speaker": "nurse joy"}).json()
        assert hits["items"] and {h["speaker"] for h in hits["items"]} == {"Nurse Joy"}

        assert server.delete(f"/v1/conversations/{listed['id']}", uid=uid).status_code == 204
        wait_drained(server)
        assert [p for p in passages_of(client, agent) if f"conv:{listed['id']}" in (p.tags or [])] == []
        assert server.get("/v1/memory/search", uid=uid, params={"q": "pharmacy report clinic"}).json()["items"] == []
        block = client.agents.blocks.retrieve("recent_conversations", agent_id=agent)
        assert listed["id"] not in block.value
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's cloud keys out of the servers these tests start."""
    for name in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(name)
    yield
