"""Per-user API tokens: for clients other than the device (scripts, MCP, chat, the web page).

A token is ``olt_`` followed by 32 random URL-safe characters, shown once when created. Only its
SHA-256 digest is stored, so a copy of the database gives no usable token; a token is found by
its digest. Revoked tokens stay listed but no longer resolve.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.errors import NotFoundError
from memory.store.models import ApiTokenRow

__all__ = ["PREFIX", "ApiToken", "TokenStore", "digest"]

PREFIX = "olt_"
_USED_EVERY_S = 60.0  # last_used_at is written at most this often per token


class ApiToken(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: never the token itself."""

    id: str
    uid: str
    name: str
    hint: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


def digest(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _listed(row: ApiTokenRow) -> ApiToken:
    return ApiToken(
        id=row.id,
        uid=row.uid,
        name=row.name,
        hint=row.hint,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class TokenStore:
    """Creates, lists, revokes and resolves API tokens; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(self, uid: str, name: str = "", *, token: str | None = None) -> tuple[str, ApiToken]:
        """A new token for ``uid``: the token (shown once) and how it is listed.

        ``token`` sets its value (one the service derives itself); by default it is random.
        """
        if not uid:
            raise ValueError("a token needs a uid")
        if token is not None and (not token.startswith(PREFIX) or len(token) < 24):
            raise ValueError(f"a token starts with {PREFIX} and has at least 24 characters")
        token = token or PREFIX + secrets.token_urlsafe(24)
        row = ApiTokenRow(
            id=str(uuid.uuid4()),
            uid=uid,
            name=(name.strip() or "token")[:100],
            digest=digest(token),
            hint=token[:10],
            created_at=time.time(),
            last_used_at=None,
            revoked_at=None,
        )
        async with self._sessions() as session, session.begin():
            session.add(row)
        return token, _listed(row)

    async def list(self, uid: str | None = None) -> list[ApiToken]:
        """Tokens, oldest first; only ``uid``'s when given."""
        query = select(ApiTokenRow).order_by(ApiTokenRow.created_at)
        if uid is not None:
            query = query.where(ApiTokenRow.uid == uid)
        async with self._sessions() as session:
            return [_listed(r) for r in (await session.scalars(query)).all()]

    async def revoke(self, token_id: str, uid: str | None = None) -> ApiToken:
        """Revoke a token (of ``uid``, when given).

        Raises:
            NotFoundError: no such token.
        """
        async with self._sessions() as session, session.begin():
            row = await session.get(ApiTokenRow, token_id)
            if row is None or (uid is not None and row.uid != uid):
                raise NotFoundError(f"token {token_id} not found")
            if row.revoked_at is None:
                row.revoked_at = time.time()
            return _listed(row)

    async def delete_all(self, uid: str) -> int:
        """Delete every token of the user, revoked or not (their data is erased); how many there were."""
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(delete(ApiTokenRow).where(ApiTokenRow.uid == uid))
            return int(result.rowcount or 0)

    async def resolve(self, token: str) -> str | None:
        """The uid of a valid, unrevoked token, or None."""
        if not token.startswith(PREFIX):
            return None
        async with self._sessions() as session:
            row = await session.scalar(select(ApiTokenRow).where(ApiTokenRow.digest == digest(token)))
            if row is None or row.revoked_at is not None:
                return None
            now = time.time()
            if row.last_used_at is None or now - row.last_used_at > _USED_EVERY_S:
                await session.execute(update(ApiTokenRow).where(ApiTokenRow.id == row.id).values(last_used_at=now))
                await session.commit()
            return row.uid
