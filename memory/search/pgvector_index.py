"""The vector index in PostgreSQL with the pgvector extension: no Pinecone account needed.

One table, ``turn_vectors``, keyed by ``(uid, turn_id)``, created with the extension on first
use. A search is exact: the user's rows, ordered by cosine distance (``<=>``) to the query,
which the ``(uid, conversation_id)`` index keeps to one user's turns, so its cost follows that
user's turn count, as the local index's does. Turn text is encrypted at rest like the store's
(:mod:`memory.store.crypto`); the vectors cannot be, since the database computes with them.
Several service workers may share the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.errors import VectorIndexError
from memory.search.vector_index import IndexHit, IndexItem, TurnFilter, VectorIndex
from memory.store import crypto

__all__ = ["PgVectorIndex"]

WHERE_TEXT = "turn_vectors.text"
UPSERT_BATCH = 200

_SCHEMA = (
    "CREATE EXTENSION IF NOT EXISTS vector",
    """CREATE TABLE IF NOT EXISTS turn_vectors (
        uid varchar(128) NOT NULL,
        turn_id varchar(64) NOT NULL,
        conversation_id varchar(64) NOT NULL,
        speaker varchar(128) NOT NULL,
        is_user boolean NOT NULL,
        start_s double precision NOT NULL,
        end_s double precision NOT NULL,
        text text NOT NULL,
        embedding vector NOT NULL,
        PRIMARY KEY (uid, turn_id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_turn_vectors_uid_conversation ON turn_vectors (uid, conversation_id)",
    "CREATE TABLE IF NOT EXISTS turn_versions (uid varchar(128) PRIMARY KEY, version bigint NOT NULL)",
)
_BUMP = text(
    "INSERT INTO turn_versions (uid, version) VALUES (:uid, 1) "
    "ON CONFLICT (uid) DO UPDATE SET version = turn_versions.version + 1"
)


_COLUMNS = "turn_id, conversation_id, speaker, is_user, start_s, end_s, text"
"""A turn's columns, in the order :func:`_fields` and :meth:`PgVectorIndex.turns` read them."""


def _fields(row: Any, keyring: crypto.Keyring) -> dict[str, Any]:
    """The :class:`IndexHit` / :class:`IndexItem` fields of a row selected with :data:`_COLUMNS`."""
    return {
        "turn_id": row.turn_id,
        "conversation_id": row.conversation_id,
        "speaker": row.speaker,
        "is_user": row.is_user,
        "start": row.start_s,
        "end": row.end_s,
        "text": keyring.decrypt_text(row.text, WHERE_TEXT),
    }


def _literal(vector: NDArray[np.float32]) -> str:
    """A vector as pgvector's text form, ``[0.1,0.2,...]``."""
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, np.float32).tolist()) + "]"


def _parse(value: str) -> NDArray[np.float32]:
    return np.asarray([float(x) for x in value.strip("[]").split(",")], np.float32)


@contextmanager
def _map_errors(action: str) -> Iterator[None]:
    """Database errors become :class:`VectorIndexError`, naming the action but never the text."""
    try:
        yield
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise VectorIndexError(f"pgvector {action} failed: {type(cause).__name__}") from exc
    except OSError as exc:
        raise VectorIndexError(f"pgvector {action} failed: {exc.strerror or exc}") from exc


class PgVectorIndex(VectorIndex):
    """Turn vectors in a PostgreSQL database with pgvector (``postgresql+asyncpg://`` URL)."""

    name = "pgvector"

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        if not url.startswith("postgresql+asyncpg://"):
            raise ValueError("the pgvector index needs a postgresql+asyncpg:// URL")
        self._engine = engine or create_async_engine(url, pool_pre_ping=True)
        self._ready = False

    async def _schema(self) -> None:
        if self._ready:
            return
        with _map_errors("creating its table"):
            async with self._engine.begin() as conn:
                # one creator at a time when several workers start together
                await conn.execute(text("SELECT pg_advisory_xact_lock(726354)"))
                for statement in _SCHEMA:
                    await conn.execute(text(statement))
        self._ready = True

    async def upsert(self, items: Sequence[IndexItem]) -> None:
        if not items:
            return
        await self._schema()
        keyring = crypto.installed()
        rows = [
            {
                "uid": i.uid,
                "turn_id": i.turn_id,
                "conversation_id": i.conversation_id,
                "speaker": i.speaker,
                "is_user": i.is_user,
                "start_s": i.start,
                "end_s": i.end,
                "text": keyring.encrypt_text(i.text, WHERE_TEXT),
                "embedding": _literal(i.vector),
            }
            for i in items
        ]
        statement = text(
            """INSERT INTO turn_vectors
                (uid, turn_id, conversation_id, speaker, is_user, start_s, end_s, text, embedding)
            VALUES (:uid, :turn_id, :conversation_id, :speaker, :is_user, :start_s, :end_s, :text,
                CAST(:embedding AS vector))
            ON CONFLICT (uid, turn_id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id,
                speaker = EXCLUDED.speaker, is_user = EXCLUDED.is_user, start_s = EXCLUDED.start_s,
                end_s = EXCLUDED.end_s, text = EXCLUDED.text, embedding = EXCLUDED.embedding"""
        )
        with _map_errors("upsert"):
            async with self._engine.begin() as conn:
                for k in range(0, len(rows), UPSERT_BATCH):
                    await conn.execute(statement, rows[k : k + UPSERT_BATCH])
                await conn.execute(_BUMP, [{"uid": uid} for uid in sorted({i.uid for i in items})])

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        await self._schema()
        params: dict[str, Any]
        if ids is not None:
            if not ids:
                return
            sql, params = "DELETE FROM turn_vectors WHERE uid = :uid AND turn_id = ANY(:ids)", {"ids": list(ids)}
        elif conversation_id is not None:
            sql, params = (
                "DELETE FROM turn_vectors WHERE uid = :uid AND conversation_id = :cid",
                {"cid": conversation_id},
            )
        else:
            sql, params = "DELETE FROM turn_vectors WHERE uid = :uid", {}
        with _map_errors("delete"):
            async with self._engine.begin() as conn:
                await conn.execute(text(sql), {"uid": uid, **params})
                await conn.execute(_BUMP, {"uid": uid})

    async def nearest(self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        await self._schema()
        clauses = ["uid = :uid"]
        params: dict[str, Any] = {"uid": uid, "q": _literal(vector), "limit": limit}
        for clause, name, value in (
            ("speaker = :speaker", "speaker", where.speaker),
            ("conversation_id = :cid", "cid", where.conversation_id),
            ("end_s >= :since", "since", where.since),
            ("start_s <= :until", "until", where.until),
        ):
            if value is not None:
                clauses.append(clause)
                params[name] = value
        sql = (
            f"SELECT {_COLUMNS}, 1 - (embedding <=> CAST(:q AS vector)) AS score FROM turn_vectors "
            f"WHERE {' AND '.join(clauses)} ORDER BY embedding <=> CAST(:q AS vector), turn_id LIMIT :limit"
        )
        with _map_errors("query"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(text(sql), params)).all()
        keyring = crypto.installed()
        return [IndexHit(**_fields(r, keyring), score=float(r.score)) for r in rows]

    async def fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        if not ids:
            return []
        await self._schema()
        with _map_errors("fetch"):
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            f"SELECT {_COLUMNS}, embedding::text AS embedding FROM turn_vectors "
                            "WHERE uid = :uid AND turn_id = ANY(:ids)"
                        ),
                        {"uid": uid, "ids": list(ids)},
                    )
                ).all()
        keyring = crypto.installed()
        found = {r.turn_id: IndexItem(uid=uid, **_fields(r, keyring), vector=_parse(r.embedding)) for r in rows}
        return [found[i] for i in ids if i in found]

    async def count(self, uid: str) -> int:
        await self._schema()
        with _map_errors("count"):
            async with self._engine.connect() as conn:
                value = (
                    await conn.execute(text("SELECT count(*) FROM turn_vectors WHERE uid = :uid"), {"uid": uid})
                ).scalar_one()
        return int(value)

    async def version(self, uid: str) -> int:
        """A number that changes whenever the user's turns change (0 before the first write)."""
        await self._schema()
        with _map_errors("version"):
            async with self._engine.connect() as conn:
                value = (
                    await conn.execute(text("SELECT version FROM turn_versions WHERE uid = :uid"), {"uid": uid})
                ).scalar()
        return int(value or 0)

    async def turns(self, uid: str) -> tuple[int, list[tuple[str, str, str, bool, float, float, str]]]:
        """The user's version and every turn as ``(turn_id, conversation_id, speaker, is_user, start, end, text)``."""
        await self._schema()
        with _map_errors("read"):
            async with self._engine.connect() as conn, conn.begin():
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                version = (
                    await conn.execute(text("SELECT version FROM turn_versions WHERE uid = :uid"), {"uid": uid})
                ).scalar()
                rows = (
                    await conn.execute(
                        text(f"SELECT {_COLUMNS} FROM turn_vectors WHERE uid = :uid"),
                        {"uid": uid},
                    )
                ).all()
        keyring = crypto.installed()
        return int(version or 0), [(*r[:6], keyring.decrypt_text(r[6], WHERE_TEXT)) for r in rows]

    async def close(self) -> None:
        await self._engine.dispose()
