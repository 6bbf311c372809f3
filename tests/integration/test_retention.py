"""Forgetting end to end: erasing a user and the retention purge reach the store, the memory index and Letta.

The tests share one ``omi-letta serve`` delivering to the session's local Letta server, as in
tests/integration/test_delivery.py, that purges conversations over 5 days old every second.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.cli.simulator import simulate
from app.ops.letta_local import LocalLetta
from app.ops.retention import DAY_S
from memory.letta.agents import AGENT_TOKEN_NAME
from tests.integration.test_delivery import (
    agent_of,
    client_of,
    conversations,
    passages_of,
    serve,
    wait_drained,
)
from tests.support import ADMIN_KEY, ServerProcess, token

HOOKS = "/v1/integrations/omi"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, letta: LocalLetta) -> Iterator[ServerProcess]:
    """The service of these tests: it delivers to Letta and purges conversations over 5 days old every second."""
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.endswith("_API_KEY")]:
            env.delenv(name)  # a developer's cloud keys stay out
        server = serve(tmp_path_factory.mktemp("retention"), letta, RETENTION_DAYS="5", RETENTION_INTERVAL_S="1")
    yield server
    server.stop()


def imported(title: str, *lines: str) -> dict[str, Any]:
    """A conversation that finished an hour ago, as the OMI cloud's memory-created webhook sends it."""
    started = time.time() - 3600
    segments = [
        {"id": str(uuid.uuid4()), "text": line, "speaker_id": 0, "is_user": True, "start": 4.0 * i, "end": 4.0 * i + 3}
        for i, line in enumerate(lines)
    ]
    return {
        "id": str(uuid.uuid4()),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "finished_at": datetime.fromtimestamp(started + 4 * len(lines), UTC).isoformat(),
        "structured": {"title": title},
        "transcript_segments": segments,
    }


def import_conversation(server: ServerProcess, uid: str, body: dict[str, Any]) -> str:
    """Store ``body`` through the webhook; our id of it."""
    reply = server.post(f"{HOOKS}/memory-created", uid=uid, json=body)
    assert reply.status_code == 200, reply.text
    title = body["structured"]["title"]
    [ours] = [
        c for c in server.get("/v1/conversations/page", uid=uid).json()["items"] if c["structured"]["title"] == title
    ]
    return str(ours["id"])


def rows(server: ServerProcess, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the server's database directly."""
    with sqlite3.connect(f"file:{server.data_dir / 'omi-letta.db'}?mode=ro", uri=True) as db:
        return list(db.execute(query, args).fetchall())


def tagged(passages: list[Any], conversation_id: str) -> list[Any]:
    return [p for p in passages if f"conv:{conversation_id}" in (p.tags or [])]


def search(server: ServerProcess, uid: str, q: str) -> list[dict[str, Any]]:
    return list(server.get("/v1/memory/search", uid=uid, params={"q": q, "limit": 50}).json()["items"])


async def test_erasing_a_user_removes_everything_of_theirs_and_nothing_else(
    service: ServerProcess, letta: LocalLetta, dialogue: tuple[Path, list[Any]]
):
    server = service
    uid, other = f"erase-{uuid.uuid4().hex[:8]}", f"keep-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
    [listed] = conversations(server, uid)
    heard = server.post(f"/v1/conversations/{listed['id']}/close", uid=uid).json()
    # Everything else a user can have: a voice profile, a day summary, a conversation in progress.
    with dialogue[0].open("rb") as audio:
        enrolled = server.post("/v1/speakers/enroll", uid=uid, files={"file": audio}, data={"name": "Nurse Joy"})
    assert enrolled.status_code == 201, enrolled.text
    summary = {"summary": "A day of reports.", "created_at": datetime.now(UTC).isoformat()}
    assert server.post(f"{HOOKS}/day-summary", uid=uid, json=summary).status_code == 200
    segment = {"id": "rt-1", "text": "The invoice is due on Monday.", "speaker_id": 0, "start": 0.0, "end": 2.0}
    assert server.post(f"{HOOKS}/realtime-transcript", uid=uid, json=[segment]).status_code == 200
    talking = next(c for c in conversations(server, uid) if c["status"] == "in_progress")
    # And another user, who must lose nothing.
    theirs = import_conversation(server, other, imported("Boat", "The sailing boat needs new sails.", "Agreed."))
    assert server.post(f"{HOOKS}/day-summary", uid=other, json=summary).status_code == 200
    wait_drained(server)
    agent, other_agent = agent_of(client, uid), agent_of(client, other)
    before = passages_of(client, agent)
    assert tagged(before, heard["id"]) and tagged(before, talking["id"]), "both conversations reached Letta"
    assert search(server, uid, "pharmacy") and rows(server, "SELECT id FROM api_tokens WHERE uid = ?", uid)

    reply = server.delete("/v1/users/me/data", uid=uid)
    assert reply.status_code == 202, reply.text
    counts = reply.json()
    assert counts["conversations"] == 2 and counts["turns"] == len(heard["transcript_segments"]) + 1
    assert (counts["speakers"], counts["day_summaries"], counts["deliveries_queued"]) == (1, 1, 4)
    assert counts["tokens"] >= 1, "the agent's memory-tool token"
    assert counts["sinks"] == ["index", "letta"]
    assert server.get("/v1/conversations/page", uid=uid).json()["total"] == 0, "the store forgets at once"
    wait_drained(server)

    # The store has nothing of theirs: conversations, turns, profiles, tokens, summaries, ledger.
    for table in ("conversations", "speaker_profiles", "api_tokens", "day_summaries", "letta_passages"):
        assert rows(server, f"SELECT * FROM {table} WHERE uid = ?", uid) == [], table
    ids = (heard["id"], talking["id"])
    assert rows(server, "SELECT id FROM segments WHERE conversation_id IN (?, ?)", *ids) == []
    assert {s for (s,) in rows(server, "SELECT status FROM outbox WHERE uid = ?", uid)} == {"done"}
    assert server.get("/v1/speakers/", uid=uid).json()["items"] == []
    assert server.get(f"{HOOKS}/day-summaries", uid=uid).json()["total"] == 0
    # Nor the memory index, nor the agent, whose recent conversations are none.
    for q in ("pharmacy", "report about the new clinic", "invoice"):
        assert search(server, uid, q) == [], q
    assert passages_of(client, agent) == []
    block = client.agents.blocks.retrieve("recent_conversations", agent_id=agent).value or ""
    assert "(none yet)" in block and heard["id"] not in block
    assert server.metric("erasures_total") == 1

    # The other user keeps everything.
    assert [c["id"] for c in server.get("/v1/conversations/page", uid=other).json()["items"]] == [theirs]
    assert any(h["conversation_id"] == theirs for h in search(server, other, "sailing boat"))
    assert tagged(passages_of(client, other_agent), theirs)
    assert server.get(f"{HOOKS}/day-summaries", uid=other).json()["total"] == 1

    # Speech after the erasure starts afresh, and the agent's memory tools get a new token.
    segment = {"id": "rt-2", "text": "A new beginning.", "speaker_id": 0, "start": 0.0, "end": 2.0}
    assert server.post(f"{HOOKS}/realtime-transcript", uid=uid, json=[segment]).status_code == 200
    [fresh] = conversations(server, uid)
    assert fresh["id"] not in ids
    wait_drained(server)
    assert tagged(passages_of(client, agent), fresh["id"])
    names = rows(server, "SELECT name FROM api_tokens WHERE uid = ? AND revoked_at IS NULL", uid)
    assert names == [(AGENT_TOKEN_NAME,)]


def test_the_retention_purge_deletes_old_conversations_everywhere(service: ServerProcess, letta: LocalLetta):
    server = service
    uid = f"retain-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    oldest = import_conversation(server, uid, imported("Oldest", "The old invoice for the boat repair was paid."))
    older = import_conversation(server, uid, imported("Older", "We planted tulips along the garden fence."))
    recent = import_conversation(server, uid, imported("Recent", "The dentist moved my appointment to Friday."))
    wait_drained(server)
    agent = agent_of(client, uid)
    passages = passages_of(client, agent)
    assert all(tagged(passages, c) for c in (oldest, older, recent))

    # As if they had finished 10 and 3 days ago: the service purges the first within a round.
    now = time.time()
    with sqlite3.connect(server.data_dir / "omi-letta.db") as db:
        for conversation_id, days in ((oldest, 10), (older, 3)):
            db.execute(
                "UPDATE conversations SET started_at = ?, finished_at = ? WHERE id = ?",
                (now - days * DAY_S - 60, now - days * DAY_S, conversation_id),
            )
    deadline = time.monotonic() + 20
    while server.get(f"/v1/conversations/{oldest}", uid=uid).status_code != 404:
        assert time.monotonic() < deadline, "the service did not purge the old conversation"
        time.sleep(0.3)
    wait_drained(server)
    passages = passages_of(client, agent)
    assert not tagged(passages, oldest) and tagged(passages, older) and tagged(passages, recent)
    assert all(h["conversation_id"] != oldest for h in search(server, uid, "invoice for the boat repair"))
    assert oldest not in (client.agents.blocks.retrieve("recent_conversations", agent_id=agent).value or "")
    assert server.metric("retention_deleted_conversations_total") == 1

    # `omi-letta purge --days 2` beside the running service, which delivers the deletion.
    done = subprocess.run(
        [sys.executable, "-m", "app", "purge", "--days", "2", "--json"],
        cwd=server.data_dir,
        env={**os.environ, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY, **server.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["conversations"], report["turns"], report["done"]) == (1, 1, 2)
    assert "the running service delivers" in done.stderr
    passages = passages_of(client, agent)
    assert not tagged(passages, older) and tagged(passages, recent), "delivered when the command returns"
    assert [c["id"] for c in server.get("/v1/conversations/page", uid=uid).json()["items"]] == [recent]
    assert [h["conversation_id"] for h in search(server, uid, "dentist appointment Friday")][:1] == [recent]


def test_purge_without_a_retention_says_how_to_give_one(tmp_path: Path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "RETENTION_DAYS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "purge"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--days N" in done.stderr, done.stderr
    helped = subprocess.run([sys.executable, "-m", "app", "erase", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--uid" in helped.stdout


@pytest.fixture(autouse=True)
def _no_cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's cloud keys out of the servers and commands these tests start."""
    for name in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(name)
    yield
