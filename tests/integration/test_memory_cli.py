"""`omi-letta outbox`, `backfill` and `search` on a real SQLite database and the local index."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.cli import main
from app.ops.keys import unlock
from app.settings import load_settings
from core.segments import TranscriptSegment
from memory.store.conversation_store import ConversationStore
from memory.store.outbox import Outbox
from tests.memory_support import SAMPLE_LINES, SAMPLE_SPEAKERS, T0


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LETTA_DELIVERY", "false")  # the index only: no Letta server in these tests
    return tmp_path / "data"


def store_sample(data_dir: Path, uid: str, *, sinks: tuple[str, ...] = ()) -> str:
    async def run() -> str:
        store = await ConversationStore.open(
            f"sqlite+aiosqlite:///{(data_dir / 'omi-letta.db').resolve()}", sinks=sinks
        )
        await unlock(load_settings(), store.engine)  # the data directory's key, which the commands load too
        segments = [
            TranscriptSegment(text=text, start=3.0 * i, end=3.0 * i + 2.5, speaker_name=who)
            for i, (who, text) in enumerate(zip(SAMPLE_SPEAKERS, SAMPLE_LINES, strict=True))
        ]
        stored = await store.add_completed(
            uid=uid, source="omi", language="en", started_at=T0, segments=segments, now=T0
        )
        await store.close()
        return stored.id

    return asyncio.run(run())


def kill_records(data_dir: Path) -> list[int]:
    """Make every pending record dead, as OUTBOX_MAX_ATTEMPTS failures would."""

    async def run() -> list[int]:
        store = await ConversationStore.open(f"sqlite+aiosqlite:///{(data_dir / 'omi-letta.db').resolve()}")
        outbox = Outbox(store.engine)
        outbox.policy = type(outbox.policy)(max_attempts=1)
        ids = [r.id for r in await outbox.records(status="pending")]
        for record_id in ids:
            await outbox.fail(record_id, "DeliveryError: Letta is unreachable (inserting passages)")
        await store.close()
        return ids

    return asyncio.run(run())


def test_backfill_then_search_finds_where_diane_lives(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    conversation = store_sample(data_dir, "alice")  # stored with nothing queued, as before a new index
    assert main(["search", "where does Diane live", "--uid", "alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["backfill", "--uid", "alice"]) == 0
    err = capsys.readouterr().err
    assert "1 conversation(s), 13 turn(s) queued for index; delivering here" in err
    assert "delivered 2 of 2 record(s)" in err

    assert main(["search", "where does Diane live", "--uid", "alice", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["text"] == "This is Diane in New Jersey." and hits[0]["conversation_id"] == conversation
    assert set(hits[0]) == {"turn_id", "conversation_id", "text", "speaker", "is_user", "start", "end", "score"}
    assert main(["search", "New Jersey", "--uid", "bob", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [], "another user's memory is not searched"

    assert main(["search", "Chicago", "--uid", "alice", "--speaker", "sheila", "--since", "2025-10-28"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed and all("Sheila:" in line for line in printed)

    assert main(["backfill", "--uid", "alice"]) == 0, "a second backfill changes nothing and succeeds"
    assert main(["search", "New Jersey", "--uid", "alice", "--json", "--limit", "20"]) == 0
    turns = [h["turn_id"] for h in json.loads(capsys.readouterr().out)]
    assert len(turns) == len(set(turns))


def test_outbox_lists_retries_and_purges_dead_letters(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    store_sample(data_dir, "alice", sinks=("letta",))
    assert main(["outbox", "list", "--json"]) == 0
    pending = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in pending] == ["turns", "closed"] and {r["status"] for r in pending} == {"pending"}

    ids = kill_records(data_dir)
    assert main(["outbox", "list", "--status", "dead"]) == 0
    listed = capsys.readouterr().out
    assert "dead" in listed and "last error: DeliveryError: Letta is unreachable" in listed

    assert main(["outbox", "retry", str(ids[0])]) == 0
    assert "1 dead record(s) made pending again" in capsys.readouterr().out
    assert main(["outbox", "purge", "--all"]) == 0
    assert "1 dead record(s) deleted" in capsys.readouterr().out
    assert main(["outbox", "list", "--status", "all", "--json"]) == 0
    assert [(r["id"], r["status"], r["attempts"]) for r in json.loads(capsys.readouterr().out)] == [
        (ids[0], "pending", 0)
    ]
    assert main(["outbox", "retry", "999"]) == 1, "no such dead record"


def test_search_rejects_a_bad_date(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "x", "--uid", "alice", "--since", "last tuesday"])
    assert exit_.value.code == 2
    assert "is not an ISO date" in capsys.readouterr().err


def test_backfill_structure_understands_old_conversations_with_the_model(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from memory.store.facts import FactStore
    from tests.llm_standin import ScriptedLlm

    conversation = store_sample(data_dir, "alice")  # stored before conversations were understood: no summary
    with ScriptedLlm(delay_s=0.0) as llm:
        llm.understanding = {
            "title": "Chicago roots",
            "overview": "Two women from Chicago.",
            "facts": ["Lives in New Jersey"],
        }
        monkeypatch.setenv("LLM_BASE_URL", llm.base_url)
        assert main(["backfill", "--structure", "--uid", "alice"]) == 0
        assert "1 conversation(s) understood (1 by the model, 0 extractive), 0 skipped" in capsys.readouterr().err
        assert main(["backfill", "--structure"]) == 0  # it has a summary now
        assert "0 conversation(s) understood (0 by the model, 0 extractive), 1 skipped" in capsys.readouterr().err
        asked = len(llm.requests)
        llm.understanding = {"title": "Chicago roots again", "facts": ["lives in new jersey!"]}
        assert main(["backfill", "--structure", "--force"]) == 0 and len(llm.requests) == asked + 1

    async def stored() -> tuple[dict[str, object], list[str]]:
        store = await ConversationStore.open(f"sqlite+aiosqlite:///{(data_dir / 'omi-letta.db').resolve()}")
        await unlock(load_settings(), store.engine)
        structured = (await store.get("alice", conversation)).structured or {}
        facts = [f.content for f in await FactStore(store.engine).list("alice", include_old=True)]
        await store.close()
        return structured, facts

    structured, facts = asyncio.run(stored())
    assert structured["title"] == "Chicago roots again" and facts == ["Lives in New Jersey"]  # not duplicated
    assert main(["search", "Chicago roots", "--uid", "alice", "--json"]) == 0
    assert f"{conversation}#summary" in [h["turn_id"] for h in json.loads(capsys.readouterr().out)]
