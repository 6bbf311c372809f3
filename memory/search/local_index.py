"""The local vector index: SQLite under ``DATA_DIR`` on disk, one numpy matrix per user in memory.

Every turn is a row of ``DATA_DIR/index/vectors.db`` (metadata plus the float32 vector as a
blob), written in one transaction per call, so a crash loses nothing acknowledged. A user's
turns are read into a contiguous ``(n, dim)`` float32 matrix on first use, with filter
columns beside it (conversation and speaker as integer codes, start and end times); writes
update the matrix in place. A search is one exact matrix-vector product over the user's
turns (about 8 ms for 100k 384-d turns on 2 cores), with filtered-out rows masked, then a
partial sort for the top ``limit``. A very selective filter gathers its rows first instead.

On disk each turn's text and vector are encrypted (:mod:`memory.store.crypto`, the installed keyring);
ids, speaker names and times are not. The matrix in memory is plaintext.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from core.errors import VectorIndexError
from memory.search.turn_columns import TurnColumns
from memory.search.vector_index import DenseView, IndexHit, IndexItem, TurnFilter, TurnText, VectorIndex
from memory.store.crypto import installed
from memory.store.sqlite_file import SqliteFile

__all__ = ["TEXT_PLACE", "VECTOR_PLACE", "LocalVectorIndex"]

TEXT_PLACE = "index/vectors.db:turns.text"
"""Where a turn's text is encrypted for (the associated data of its ciphertext)."""
VECTOR_PLACE = "index/vectors.db:turns.vector"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    uid TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    speaker TEXT NOT NULL,
    is_user INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (uid, turn_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_turns_uid_conversation ON turns (uid, conversation_id);
"""

_GATHER_FRACTION = 0.15  # below this share of rows passing the filters, gather them before scoring


class _Shard(TurnColumns):
    """One user's turns in memory, with the ``(capacity, dim)`` matrix of their vectors."""

    matrix: NDArray[np.float32]

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        super().__init__(capacity, {"matrix": ((dim,), np.float32)})
        self.dim = dim

    def put(self, item: IndexItem, vector: NDArray[np.float32]) -> None:
        i = self.row.get(item.turn_id)
        if i is None:
            i = self.append(item.turn_id, item.text)
        else:
            self.texts[i] = item.text
        self.matrix[i] = vector
        self.set_meta(i, item)

    def remove(self, turn_ids: Iterable[str]) -> None:
        """Drop turns by moving the last row into each hole."""
        for turn_id in turn_ids:
            i = self.row.pop(turn_id, None)
            if i is None:
                continue
            last = self.n - 1
            if i != last:
                self.move(last, i)
            self.ids.pop()
            self.texts.pop()
            self.n = last

    def view(self, vector: NDArray[np.float32], limit: int, where: TurnFilter, ids: Sequence[str]) -> DenseView:
        """The top ``limit``, the cosines of ``ids``, and the exact mean and spread over the rows that pass."""
        n = self.n
        scores = self.matrix[:n] @ vector  # (n,)
        mask = self.mask(where)
        values = scores if mask is None else scores[mask]
        if len(values) == 0:
            return DenseView(hits=[], scores={}, mean=0.0, sd=0.0)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        k = min(limit, len(values))
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")][:k]
        hits = [self.hit(int(j), float(scores[j])) for j in top]
        extra = {h.turn_id: h.score for h in hits}
        for turn_id in ids:
            i = self.row.get(turn_id)
            if i is not None and turn_id not in extra and np.isfinite(scores[i]):
                extra[turn_id] = float(scores[i])
        return DenseView(hits=hits, scores=extra, mean=float(values.mean()), sd=float(values.std()))

    def search(self, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        n = self.n
        mask = self.mask(where)
        if mask is None:
            rows = None
            scores = self.matrix[:n] @ vector  # (n,)
        else:
            rows = np.flatnonzero(mask)
            if len(rows) == 0:
                return []
            if len(rows) < _GATHER_FRACTION * n:
                scores = self.matrix[rows] @ vector  # (len(rows),)
            else:
                scores = self.matrix[:n] @ vector
                scores[~mask] = -np.inf
                rows = None
        candidates = len(scores) if rows is not None else (n if mask is None else int(mask.sum()))
        k = min(limit, candidates)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self.hit(int(rows[j]) if rows is not None else int(j), float(scores[j])) for j in top]


class LocalVectorIndex(SqliteFile, VectorIndex):
    """Exact cosine search over vectors kept in ``folder/vectors.db`` (see the module docstring)."""

    name = "local"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder / "vectors.db", _SCHEMA, "local vector index")
        self._shards: dict[str, _Shard | None] = {}  # None: the user has no turns

    def _shard(self, uid: str) -> _Shard | None:
        if uid in self._shards:
            return self._shards[uid]
        rows = self._db.execute(
            'SELECT turn_id, conversation_id, speaker, is_user, start, "end", text, vector FROM turns WHERE uid = ?',
            (uid,),
        ).fetchall()
        shard: _Shard | None = None
        if rows:
            keys = installed()
            vectors = [keys.decrypt_bytes(r[7], VECTOR_PLACE) for r in rows]
            dim = len(vectors[0]) // 4
            shard = _Shard(dim, capacity=max(1024, len(rows)))
            shard.matrix[: len(rows)] = np.frombuffer(b"".join(vectors), dtype="<f4").reshape(-1, dim)
            for turn_id, conversation_id, speaker, is_user, start, end, text, _ in rows:
                i = shard.append(turn_id, keys.decrypt_text(text, TEXT_PLACE))
                meta = TurnText(
                    turn_id=turn_id,
                    conversation_id=conversation_id,
                    speaker=speaker,
                    is_user=bool(is_user),
                    start=start,
                    end=end,
                    text="",
                )
                shard.set_meta(i, meta)
        self._shards[uid] = shard
        return shard

    async def upsert(self, items: Sequence[IndexItem]) -> None:
        await self.run(self._upsert, items)

    def _upsert(self, items: Sequence[IndexItem]) -> None:
        vectors = [np.ascontiguousarray(item.vector, dtype="<f4").reshape(-1) for item in items]
        for item, vector in zip(items, vectors, strict=True):
            shard = self._shard(item.uid)
            if shard is not None and shard.dim != len(vector):
                raise VectorIndexError(
                    f"a {len(vector)}-d vector does not fit the index of {shard.dim}-d vectors; "
                    "the embedding model changed: delete the index and backfill"
                )
        keys = installed()
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                'INSERT OR REPLACE INTO turns (uid, turn_id, conversation_id, speaker, is_user, start, "end", '
                "text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.uid,
                        i.turn_id,
                        i.conversation_id,
                        i.speaker,
                        int(i.is_user),
                        i.start,
                        i.end,
                        keys.encrypt_text(i.text, TEXT_PLACE),
                        keys.encrypt_bytes(v.tobytes(), VECTOR_PLACE),
                    )
                    for i, v in zip(items, vectors, strict=True)
                ],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for item, vector in zip(items, vectors, strict=True):
            shard = self._shards.get(item.uid)
            if shard is None:
                shard = self._shards[item.uid] = _Shard(len(vector))
            shard.put(item, vector)

    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        await self.run(self._delete, uid, ids, conversation_id)

    def _delete(self, uid: str, ids: Sequence[str] | None, conversation_id: str | None) -> None:
        if ids is not None:
            gone = list(ids)
            self._db.executemany("DELETE FROM turns WHERE uid = ? AND turn_id = ?", [(uid, t) for t in gone])
        elif conversation_id is not None:
            gone = [
                r[0]
                for r in self._db.execute(
                    "SELECT turn_id FROM turns WHERE uid = ? AND conversation_id = ?", (uid, conversation_id)
                )
            ]
            self._db.execute("DELETE FROM turns WHERE uid = ? AND conversation_id = ?", (uid, conversation_id))
        else:
            self._db.execute("DELETE FROM turns WHERE uid = ?", (uid,))
            self._shards.pop(uid, None)
            return
        shard = self._shards.get(uid)
        if shard is not None:
            shard.remove(gone)

    async def nearest(self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        return await self.run(self._nearest, uid, vector, limit, where)

    def _nearest(self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        shard = self._shard(uid)
        if shard is None or shard.n == 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if len(query) != shard.dim:
            raise VectorIndexError(f"a {len(query)}-d query does not fit the index of {shard.dim}-d vectors")
        return shard.search(query, limit, where)

    async def scored(
        self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter, ids: Sequence[str] = ()
    ) -> DenseView:
        return await self.run(self._view, uid, vector, limit, where, ids)

    def _view(
        self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter, ids: Sequence[str]
    ) -> DenseView:
        shard = self._shard(uid)
        if shard is None or shard.n == 0:
            return DenseView(hits=[], scores={}, mean=0.0, sd=0.0)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if len(query) != shard.dim:
            raise VectorIndexError(f"a {len(query)}-d query does not fit the index of {shard.dim}-d vectors")
        return shard.view(query, limit, where, ids)

    def view_sync(
        self,
        uid: str,
        vector: NDArray[np.float32],
        limit: int,
        where: TurnFilter | None = None,
        ids: Sequence[str] = (),
    ) -> DenseView:
        """:meth:`scored` without a worker thread (benchmarks)."""
        return self.locked(self._view, uid, vector, limit, where or TurnFilter(), ids)

    def search_sync(
        self, uid: str, vector: NDArray[np.float32], *, limit: int, where: TurnFilter | None = None
    ) -> list[IndexHit]:
        """:meth:`query` without a worker thread (benchmarks, scripts)."""
        return self.locked(self._nearest, uid, vector, limit, where or TurnFilter())

    async def fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        return await self.run(self._fetch, uid, ids)

    def _fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        found: dict[str, IndexItem] = {}
        keys = installed()
        for turn_id in ids:
            row = self._db.execute(
                'SELECT conversation_id, speaker, is_user, start, "end", text, vector FROM turns '
                "WHERE uid = ? AND turn_id = ?",
                (uid, turn_id),
            ).fetchone()
            if row is not None:
                found[turn_id] = IndexItem(
                    uid=uid,
                    turn_id=turn_id,
                    conversation_id=row[0],
                    speaker=row[1],
                    is_user=bool(row[2]),
                    start=row[3],
                    end=row[4],
                    text=keys.decrypt_text(row[5], TEXT_PLACE),
                    vector=np.frombuffer(keys.decrypt_bytes(row[6], VECTOR_PLACE), dtype="<f4").astype(np.float32),
                )
        return [found[t] for t in ids if t in found]

    async def count(self, uid: str) -> int:
        return await self.run(self._count, uid)

    def _count(self, uid: str) -> int:
        shard = self._shards.get(uid)
        if shard is not None:
            return shard.n
        return int(self._db.execute("SELECT count(*) FROM turns WHERE uid = ?", (uid,)).fetchone()[0])

    async def close(self) -> None:
        await self.run(self._db.close)
