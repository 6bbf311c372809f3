"""Per-user API tokens on a real SQLite database: stored as digests, resolved until revoked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.errors import NotFoundError
from memory.store.conversation_store import ConversationStore
from memory.store.tokens import TokenStore, digest


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    yield opened
    await opened.close()


async def test_a_token_is_stored_only_as_its_digest_and_resolves_to_its_user(store: ConversationStore):
    tokens = TokenStore(store.engine)
    token, record = await tokens.create("alice", "laptop")
    other, _ = await tokens.create("bob")
    assert token.startswith("olt_") and len(token) > 30 and token != other
    async with store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_tokens"))).all()
    assert token not in repr(rows) and digest(token) in repr(rows)
    assert await tokens.resolve(token) == "alice"
    assert await tokens.resolve(other) == "bob"
    assert await tokens.resolve(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert await tokens.resolve("test-admin-key-0001alice") is None
    [listed] = await tokens.list("alice")
    assert listed.id == record.id and listed.hint == token[:10] and listed.last_used_at is not None


async def test_a_revoked_token_no_longer_resolves(store: ConversationStore):
    tokens = TokenStore(store.engine)
    token, record = await tokens.create("alice")
    with pytest.raises(NotFoundError):
        await tokens.revoke(record.id, uid="bob")
    revoked = await tokens.revoke(record.id, uid="alice")
    assert revoked.revoked_at is not None
    assert await tokens.resolve(token) is None
    assert (await tokens.revoke(record.id)).revoked_at == revoked.revoked_at, "revoking twice changes nothing"
