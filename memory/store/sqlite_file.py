"""A SQLite file used from async code: one connection, one call at a time, in a worker thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from core.errors import StorageFullError, VectorIndexError, is_disk_full

__all__ = ["SqliteFile"]

P = ParamSpec("P")
T = TypeVar("T")


class SqliteFile:
    """Base of the local index files: WAL mode, a lock around the connection, errors made ours."""

    def __init__(self, path: Path, schema: str, label: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._label = label
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(schema)
        self._lock = threading.RLock()

    def locked(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` holding the connection (blocking).

        Raises:
            StorageFullError: the disk holding the file is full.
            VectorIndexError: SQLite failed otherwise; the message names the file.
        """
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except (sqlite3.Error, OSError) as exc:
                if is_disk_full(exc):
                    detail = f"the disk is full: the {self._label} at {self.path} could not be written"
                    raise StorageFullError(detail) from exc
                if isinstance(exc, OSError):
                    raise
                raise VectorIndexError(f"the {self._label} at {self.path} failed: {exc}") from exc

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`locked` in a worker thread."""

        def call() -> T:
            return self.locked(fn, *args, **kwargs)

        return await asyncio.to_thread(call)
