"""The audit log on SQLite and a real Postgres: batched writes in order, and a table the database keeps append-only."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.http.http_audit import action_for
from memory.store.audit_log import AuditLog
from memory.store.conversation_store import ConversationStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url)
    yield opened
    await opened.close()


def actor() -> str:
    """A uid of this test alone: the Postgres database is shared, and its audit log cannot be emptied."""
    return f"audit-{uuid.uuid4().hex[:12]}"


async def test_entries_are_queued_then_written_in_one_batch_in_order(store: ConversationStore):
    audit = AuditLog(store.engine, flush_every_s=0.05)
    audit.start()
    uid, cid = actor(), str(uuid.uuid4())
    audit.record(uid=uid, action="list", route="GET /v1/conversations", client="10.0.0.7", status=200)
    template = "/v1/conversations/{conversation_id}"
    audit.record(uid=uid, action="read", route=f"GET {template}", client="10.0.0.7", status=200, conversation_id=cid)
    audit.record(uid=uid, action="delete", route=f"DELETE {template}", client="::1", status=204, conversation_id=cid)
    assert await audit.entries(uid=uid) == [], "record() does not wait for the database"
    deadline = time.monotonic() + 10
    while len(found := await audit.entries(uid=uid)) < 3:
        assert time.monotonic() < deadline, "the writer did not write the batch"
        await asyncio.sleep(0.05)
    await audit.close()
    assert [(e.action, e.conversation_id, e.client, e.status) for e in found] == [
        ("list", None, "10.0.0.7", 200),
        ("read", cid, "10.0.0.7", 200),
        ("delete", cid, "::1", 204),
    ]
    assert found[0].id < found[1].id < found[2].id and found[0].at <= found[2].at


async def test_close_writes_what_is_queued_and_later_entries_are_dropped(store: ConversationStore):
    audit = AuditLog(store.engine, flush_every_s=60)  # the writer would wait a minute: close() must not
    audit.start()
    uid = actor()
    audit.record(uid=uid, action="search", route="mcp:search_memory", client="127.0.0.1", status=200)
    await asyncio.wait_for(audit.close(), 5)
    assert [e.route for e in await audit.entries(uid=uid)] == ["mcp:search_memory"]
    audit.record(uid=uid, action="list", route="GET /v1/conversations", client="127.0.0.1", status=200)
    assert audit.dropped == 1
    assert len(await AuditLog(store.engine).entries(uid=uid)) == 1


async def test_filters_by_actor_and_time(store: ConversationStore):
    audit = AuditLog(store.engine)
    alice, bob = actor(), actor()
    for at, uid in ((1000.0, alice), (2000.0, bob), (3000.0, alice)):
        audit.record(uid=uid, action="list", route="GET /v1/conversations", client="", status=200, at=at)
    assert await audit.flush()
    assert [e.at for e in await audit.entries(uid=alice)] == [1000.0, 3000.0]
    assert [e.at for e in await audit.entries(uid=alice, since=1500)] == [3000.0]
    assert [e.at for e in await audit.entries(uid=alice, until=1500)] == [1000.0]
    assert [e.uid for e in await audit.entries(since=2000, until=2000)] == [bob]


async def test_only_known_actions_and_id_shaped_conversations_are_kept(store: ConversationStore):
    audit = AuditLog(store.engine)
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(uid="u", action="what was said", route="GET /", client="", status=200)
    uid = actor()
    for conversation_id in ("tell me about the dentist appointment", "x" * 65, "", "0b6e3c8a-1f0a-4a7e"):
        audit.record(uid=uid, action="read", route="r", client="", status=404, conversation_id=conversation_id)
    assert await audit.flush()
    assert [e.conversation_id for e in await audit.entries(uid=uid)] == [None, None, None, "0b6e3c8a-1f0a-4a7e"]


async def test_the_database_refuses_to_change_or_delete_an_entry(store: ConversationStore):
    audit = AuditLog(store.engine)
    uid = actor()
    audit.record(uid=uid, action="delete", route="DELETE /v1/conversations/{conversation_id}", client="", status=204)
    assert await audit.flush()
    statements = [
        "UPDATE audit_log SET action = 'read' WHERE uid = :uid",
        "UPDATE audit_log SET uid = 'someone-else'",
        "DELETE FROM audit_log WHERE uid = :uid",
        "DELETE FROM audit_log",
    ]
    if store.dialect == "postgresql":
        statements.append("TRUNCATE audit_log")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            async with store.engine.begin() as conn:
                await conn.execute(text(statement), {"uid": uid} if ":uid" in statement else {})
    [entry] = await audit.entries(uid=uid)
    assert entry.action == "delete"
    async with store.engine.begin() as conn:  # appending still works
        await conn.execute(
            text(
                "INSERT INTO audit_log (at, uid, action, conversation_id, route, client, status) "
                "VALUES (1, :uid, 'read', NULL, 'r', '', 200)"
            ),
            {"uid": uid},
        )
    assert len(await audit.entries(uid=uid)) == 2


@pytest.mark.parametrize(
    ("method", "template", "action"),
    [
        ("GET", "/v1/conversations", "list"),
        ("GET", "/v1/conversations/{conversation_id}", "read"),
        ("POST", "/v1/conversations/{conversation_id}/close", "change"),
        ("PATCH", "/v1/conversations/{conversation_id}/speakers", "change"),
        ("DELETE", "/v1/conversations/{conversation_id}", "delete"),
        ("GET", "/v1/memory/search", "search"),
        ("POST", "/v1/chat", "chat"),
        ("GET", "/v1/live", "read"),
        ("GET", "/v1/speakers", "list"),
        ("POST", "/v1/integrations/omi/memory-created", "change"),
        ("POST", "/v1/embeddings", None),
        ("DELETE", "/v1/users/me/data", "erase"),
    ],
)
def test_the_action_of_a_route(method: str, template: str, action: str | None):
    assert action_for(method, template) == action
