"""Every encrypted place on disk, looked at without decrypting: which key each value uses, and re-encryption.

The places are the database columns of the :mod:`memory.store.encrypted` types, the text of the
pgvector index's ``turn_vectors`` table when the database has one, the text and vectors of
the local index files (``DATA_DIR/index/vectors.db`` and ``lexical.db``), and the offline
recordings waiting under ``DATA_DIR/sync`` (:mod:`memory.store.sealed_files`). Only the header of
each value (``enc:v1:<key id>:``) is read, except to re-encrypt it. A file or table that does
not exist is left alone, never created.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, LargeBinary, String, Table, cast, func, inspect, literal, select, text, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from memory.search import lexical, local_index, pgvector_index
from memory.store.crypto import PREFIX, Keyring, installed, key_id_of
from memory.store.encrypted import Encrypted, EncryptedBytes, EncryptedJSON
from memory.store.models import Base
from memory.store.sealed_files import PLACE as SEALED_PLACE
from memory.store.sealed_files import SealedFiles
from memory.store.sync_jobs import SYNC_DIR

__all__ = ["PLAINTEXT", "Census", "census", "compact", "count_rows", "rotate", "samples"]

PLAINTEXT = "plaintext"
"""The key id :func:`census` counts a value written before encryption under."""
BATCH = 500

Census = dict[str, Counter[str]]
"""Per place (``segments.text``, ``index/vectors.db:turns.vector``), how many values use each key id."""
Progress = Callable[[int], object]


@dataclass(frozen=True)
class _File:
    """A table written without the ORM (``turns`` of an index file, or a table of the database named ``name``):
    its key columns, and its encrypted columns, each with its place and whether it holds bytes."""

    name: str
    keys: tuple[str, ...]
    columns: dict[str, tuple[str, bool]]


_FILES = (
    _File(
        "vectors.db",
        ("uid", "turn_id"),
        {"text": (local_index.TEXT_PLACE, False), "vector": (local_index.VECTOR_PLACE, True)},
    ),
    _File("lexical.db", ("id",), {"text": (lexical.TEXT_PLACE, False)}),
)
_RAW_TABLES = (_File("turn_vectors", ("uid", "turn_id"), {"text": (pgvector_index.WHERE_TEXT, False)}),)


def _sealed(index_dir: Path) -> SealedFiles:
    return SealedFiles(index_dir.parent / SYNC_DIR)


def _tables() -> list[tuple[Table, Column[Any], list[Column[Any]]]]:
    """``(table, primary key, encrypted columns)`` of every table with an encrypted column."""
    found = []
    for table in Base.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, Encrypted)]
        if columns:
            [pk] = table.primary_key.columns
            found.append((table, pk, columns))
    return found


def _raw(column: Column[Any]) -> Any:
    """The column as stored, without decrypting (JSON decoded, so an encrypted JSON value is a string)."""
    assert isinstance(column.type, Encrypted)
    return type_coerce(column, column.type.impl)


def _where(column: Column[Any]) -> str:
    assert isinstance(column.type, Encrypted)
    return column.type.where


def _decrypted(column: Column[Any], value: Any, dialect: Dialect) -> Any:
    """A stored value of ``column`` as the ORM reads it, to be written back (encrypted with the current key)."""
    assert isinstance(column.type, Encrypted)
    return column.type.process_result_value(value, dialect)


def _header_of(value: Any) -> str:
    kid = key_id_of(value) if isinstance(value, str | bytes) else None
    return kid or PLAINTEXT


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=30, isolation_level=None)


# --- Samples: one encrypted value of each place, to check a key against at startup -----------


async def samples(engine: AsyncEngine, index_dir: Path) -> list[tuple[str, str | bytes]]:
    """One encrypted value (as stored) of each place that holds any, with its place."""
    found: list[tuple[str, str | bytes]] = []
    async with engine.connect() as conn:
        for _table, _, columns in _tables():
            for column in columns:
                query: Any
                if isinstance(column.type, EncryptedBytes):
                    stored = type_coerce(column, LargeBinary)
                    query = select(stored).where(
                        func.substr(stored, 1, len(PREFIX)) == literal(PREFIX.encode(), LargeBinary)
                    )
                elif isinstance(column.type, EncryptedJSON):
                    query = select(_raw(column)).where(cast(column, String).like(f'"{PREFIX}%'))
                else:
                    query = select(_raw(column)).where(type_coerce(column, String).like(f"{PREFIX}%"))
                value = (await conn.execute(query.limit(1))).scalar()
                if isinstance(value, str | bytes):
                    found.append((_where(column), value))
        for spec in await _raw_tables(conn):
            for name, (place, binary) in spec.columns.items():
                value = (
                    await conn.execute(
                        text(f"SELECT {name} FROM {spec.name} WHERE substr({name}, 1, {len(PREFIX)}) = :p LIMIT 1"),
                        {"p": PREFIX.encode() if binary else PREFIX},
                    )
                ).scalar()
                if isinstance(value, str | bytes):
                    found.append((place, value))
    sealed = _sealed(index_dir)
    smallest = min(sealed.names(), key=lambda n: sealed.path(n).stat().st_size, default=None)
    if smallest is not None and key_id_of(sealed.header(smallest)):
        found.append((sealed.where(smallest), sealed.path(smallest).read_bytes()))
    return found + await asyncio.to_thread(_file_samples, index_dir)


async def _raw_tables(conn: AsyncConnection) -> list[_File]:
    """The tables of :data:`_RAW_TABLES` that the database has."""
    names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    return [spec for spec in _RAW_TABLES if spec.name in names]


def _file_samples(index_dir: Path) -> list[tuple[str, str | bytes]]:
    found: list[tuple[str, str | bytes]] = []
    for spec in _FILES:
        path = index_dir / spec.name
        if not path.is_file():
            continue
        db = _connect(path)
        try:
            for column, (place, binary) in spec.columns.items():
                test = f"substr({column}, 1, {len(PREFIX)}) = ?"
                row = db.execute(
                    f"SELECT {column} FROM turns WHERE {test} LIMIT 1", (PREFIX.encode() if binary else PREFIX,)
                ).fetchone()
                if row is not None:
                    found.append((place, row[0]))
        finally:
            db.close()
    return found


# --- Census: which key every value uses ------------------------------------------------------


async def census(engine: AsyncEngine, index_dir: Path) -> Census:
    """How many values of each place use each key id (:data:`PLAINTEXT`: written before encryption)."""
    counts: Census = {}
    async with engine.connect() as conn:
        for _table, pk, columns in _tables():
            for column in columns:
                counts[_where(column)] = Counter()
            last: Any = None
            while True:
                query = select(pk, *(_raw(c) for c in columns)).order_by(pk).limit(BATCH)
                rows = (await conn.execute(query if last is None else query.where(pk > last))).all()
                for row in rows:
                    for column, value in zip(columns, row[1:], strict=True):
                        if value is not None:
                            counts[_where(column)][_header_of(value)] += 1
                if len(rows) < BATCH:
                    break
                last = rows[-1][0]
        for spec in await _raw_tables(conn):
            for name, (place, _) in spec.columns.items():
                counts[place] = Counter()
                for (value,) in await conn.execute(text(f"SELECT substr({name}, 1, 32) FROM {spec.name}")):
                    counts[place][_header_of(value)] += 1
    counts.update(await asyncio.to_thread(_file_census, index_dir))
    sealed = _sealed(index_dir)
    names = list(sealed.names())
    if names:
        counts[SEALED_PLACE] = Counter(_header_of(sealed.header(n)) for n in names)
    return counts


def _file_census(index_dir: Path) -> Census:
    counts: Census = {}
    for spec in _FILES:
        path = index_dir / spec.name
        if not path.is_file():
            continue
        db = _connect(path)
        try:
            for column, (place, _) in spec.columns.items():
                counts[place] = Counter()
                for (value,) in db.execute(f"SELECT substr({column}, 1, 32) FROM turns"):
                    counts[place][_header_of(value)] += 1
        finally:
            db.close()
    return counts


async def count_rows(engine: AsyncEngine, index_dir: Path) -> int:
    """Rows holding encrypted places, across the database and the index files (for a progress bar)."""
    total = 0
    async with engine.connect() as conn:
        for table, _, _ in _tables():
            total += int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)
        for spec in await _raw_tables(conn):
            total += int((await conn.execute(text(f"SELECT count(*) FROM {spec.name}"))).scalar() or 0)

    def files() -> int:
        n = 0
        for spec in _FILES:
            if (index_dir / spec.name).is_file():
                db = _connect(index_dir / spec.name)
                try:
                    n += int(db.execute("SELECT count(*) FROM turns").fetchone()[0])
                finally:
                    db.close()
        return n

    return total + await asyncio.to_thread(files) + len(list(_sealed(index_dir).names()))


# --- Rotation --------------------------------------------------------------------------------


async def rotate(engine: AsyncEngine, index_dir: Path, progress: Progress | None = None) -> int:
    """Re-encrypt, with the installed keyring's current key, every value that another key (or none) protects.

    The installed keyring must also hold every key in use. Rows are read and written in batches
    of :data:`BATCH`, one transaction each; ``progress`` is told how many rows each batch looked
    at. Nothing may write meanwhile (stop the service). Returns how many values were rewritten.
    """
    keys = installed()
    rewritten = 0
    for table, pk, columns in _tables():
        last: Any = None
        while True:
            async with engine.begin() as conn:
                query = select(pk, *(_raw(c) for c in columns)).order_by(pk).limit(BATCH)
                rows = (await conn.execute(query if last is None else query.where(pk > last))).all()
                for row in rows:
                    stale = {
                        c.name: _decrypted(c, value, conn.dialect)
                        for c, value in zip(columns, row[1:], strict=True)
                        if value is not None and not (isinstance(value, str | bytes) and keys.is_current(value))
                    }
                    if stale:
                        await conn.execute(table.update().where(pk == row[0]).values(**stale))
                        rewritten += len(stale)
            if progress is not None:
                progress(len(rows))
            if len(rows) < BATCH:
                break
            last = rows[-1][0]
    async with engine.connect() as conn:
        raw_tables = await _raw_tables(conn)
    for spec in raw_tables:
        after: tuple[Any, ...] | None = None
        while True:
            async with engine.begin() as conn:
                found = (await conn.execute(*_next_batch(spec, after, named=True))).all()
                for row in found:
                    stale = _restale(spec, row[len(spec.keys) :], keys)
                    if stale:
                        await conn.execute(*_update(spec, stale, row[: len(spec.keys)], named=True))
                        rewritten += len(stale)
            if progress is not None:
                progress(len(found))
            if len(found) < BATCH:
                break
            after = tuple(found[-1][: len(spec.keys)])
    rewritten += await asyncio.to_thread(_rotate_files, index_dir, keys, progress)
    sealed = _sealed(index_dir)
    for name in list(sealed.names()):
        rewritten += await asyncio.to_thread(sealed.reseal, name)
        if progress is not None:
            progress(1)
    return rewritten


def _restale(spec: _File, values: Sequence[Any], keys: Keyring) -> dict[str, Any]:
    """The row's encrypted columns that another key (or none) protects, re-encrypted with the current key."""
    stale: dict[str, Any] = {}
    for (column, (place, binary)), value in zip(spec.columns.items(), values, strict=True):
        if value is None or keys.is_current(value):
            continue
        if binary:
            stale[column] = keys.encrypt_bytes(keys.decrypt_bytes(bytes(value), place), place)
        else:
            stale[column] = keys.encrypt_text(keys.decrypt_text(value, place), place)
    return stale


def _next_batch(spec: _File, after: tuple[Any, ...] | None, *, named: bool) -> tuple[Any, ...]:
    """The statement and parameters reading the batch of rows after the key ``after`` (the first batch if None)."""
    table = spec.name if named else "turns"
    keys = ", ".join(spec.keys)
    sql = f"SELECT {keys}, {', '.join(spec.columns)} FROM {table}"
    marks = [f":k{i}" if named else "?" for i in range(len(spec.keys))]
    if after is not None:
        sql += f" WHERE ({keys}) > ({', '.join(marks)})"
    sql += f" ORDER BY {keys} LIMIT {BATCH}"
    params: Any = () if after is None else after
    if named:
        return text(sql), {f"k{i}": v for i, v in enumerate(params)}
    return sql, params


def _update(spec: _File, stale: dict[str, Any], key: Sequence[Any], *, named: bool) -> tuple[Any, ...]:
    """The statement and parameters writing ``stale`` into the row with ``key``."""
    table = spec.name if named else "turns"
    if named:
        sets = ", ".join(f"{c} = :v{i}" for i, c in enumerate(stale))
        match = " AND ".join(f"{k} = :k{i}" for i, k in enumerate(spec.keys))
        params = {**{f"v{i}": v for i, v in enumerate(stale.values())}, **{f"k{i}": v for i, v in enumerate(key)}}
        return text(f"UPDATE {table} SET {sets} WHERE {match}"), params
    sets = ", ".join(f"{c} = ?" for c in stale)
    match = " AND ".join(f"{k} = ?" for k in spec.keys)
    return f"UPDATE {table} SET {sets} WHERE {match}", (*stale.values(), *key)


def _rotate_files(index_dir: Path, keys: Keyring, progress: Progress | None) -> int:
    rewritten = 0
    for spec in _FILES:
        path = index_dir / spec.name
        if not path.is_file():
            continue
        db = _connect(path)
        try:
            after: tuple[Any, ...] | None = None
            while True:
                found = db.execute(*_next_batch(spec, after, named=False)).fetchall()
                db.execute("BEGIN IMMEDIATE")
                try:
                    for row in found:
                        stale = _restale(spec, row[len(spec.keys) :], keys)
                        if stale:
                            db.execute(*_update(spec, stale, row[: len(spec.keys)], named=False))
                            rewritten += len(stale)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                if progress is not None:
                    progress(len(found))
                if len(found) < BATCH:
                    break
                after = tuple(found[-1][: len(spec.keys)])
        finally:
            db.close()
    return rewritten


async def compact(engine: AsyncEngine, index_dir: Path) -> None:
    """Rewrite the SQLite database and index files (``VACUUM``, then empty their write-ahead logs), so no
    earlier copy of a re-encrypted value, under an old key or none, stays in their free pages.

    A Postgres database is left alone: ``VACUUM FULL`` does the same there.
    """
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("VACUUM")
            await auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def files() -> None:
        for spec in _FILES:
            if (index_dir / spec.name).is_file():
                db = _connect(index_dir / spec.name)
                try:
                    db.execute("VACUUM")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    db.close()

    await asyncio.to_thread(files)
