"""One user's turns in memory as columns: the shard both the vector index and the lexical index are built on.

Row ``i`` of every column is the same turn: its id and text in lists, its conversation and speaker
as small integer codes, its times and ``is_user`` in numpy arrays, plus whatever columns an index
adds (the vector index a ``(capacity, dim)`` matrix, the lexical index row lengths). Columns grow
by doubling. Filters (:class:`~memory.search.vector_index.TurnFilter`) become boolean masks over
rows, so a search scores the rows that pass without a loop in Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from memory.search.vector_index import IndexHit, TurnFilter, TurnText

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["TurnColumns"]

_KINDS = ("conversation", "speaker")


class TurnColumns:
    """Columns of one user's turns (see the module docstring); ``n`` rows are in use.

    Args:
        extra: the index's own columns, ``name: (trailing shape, dtype)``; ``(capacity, *shape)`` each.
    """

    def __init__(self, capacity: int = 1024, extra: dict[str, tuple[tuple[int, ...], Any]] | None = None) -> None:
        self.n = 0
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.row: dict[str, int] = {}  # turn id -> row
        self.codes: dict[str, dict[str, int]] = {kind: {} for kind in _KINDS}
        self.names: dict[str, list[str]] = {kind: [] for kind in _KINDS}
        self._columns: dict[str, tuple[tuple[int, ...], Any]] = {
            "conversation": ((), np.int32),  # code of conversation_id
            "speaker": ((), np.int32),  # code of speaker
            "start": ((), np.float64),
            "end": ((), np.float64),
            "is_user": ((), bool),
            **(extra or {}),
        }
        for name, (shape, dtype) in self._columns.items():
            setattr(self, name, np.zeros((capacity, *shape), dtype=dtype))

    conversation: NDArray[np.int32]
    speaker: NDArray[np.int32]
    start: NDArray[np.float64]
    end: NDArray[np.float64]
    is_user: NDArray[np.bool_]

    @property
    def capacity(self) -> int:
        """Rows the columns hold before they grow."""
        return len(self.start)

    def code(self, kind: str, value: str) -> int:
        """The code of a conversation id or a speaker name (``kind``), made on first sight."""
        codes = self.codes[kind]
        if value not in codes:
            codes[value] = len(codes)
            self.names[kind].append(value)
            self.new_code(kind)
        return codes[value]

    def new_code(self, kind: str) -> None:
        """Called when a new conversation or speaker gets a code."""

    def grow(self, needed: int) -> None:
        """Make room for ``needed`` rows."""
        if needed <= self.capacity:
            return
        self.resize(max(needed, self.capacity * 2))

    def resize(self, capacity: int, keep: NDArray[np.intp] | None = None) -> None:
        """Reallocate every column for ``capacity`` rows, keeping rows ``keep`` (default: the first ``n``) in order."""
        for name, (shape, dtype) in self._columns.items():
            old = getattr(self, name)
            new = np.zeros((capacity, *shape), dtype=dtype)
            if keep is None:
                new[: self.n] = old[: self.n]
            else:
                new[: len(keep)] = old[keep]
            setattr(self, name, new)

    def append(self, turn_id: str, text: str) -> int:
        """A new row for a turn; its columns are set by :meth:`set_meta` and the index."""
        self.grow(self.n + 1)
        i = self.n
        self.n += 1
        self.ids.append(turn_id)
        self.texts.append(text)
        self.row[turn_id] = i
        return i

    def set_meta(self, i: int, turn: TurnText) -> None:
        """Row ``i``'s conversation, speaker, times and ``is_user``, from ``turn``."""
        self.conversation[i] = self.code("conversation", turn.conversation_id)
        self.speaker[i] = self.code("speaker", turn.speaker)
        self.start[i] = turn.start
        self.end[i] = turn.end
        self.is_user[i] = turn.is_user

    def move(self, source: int, target: int) -> None:
        """Copy row ``source`` over row ``target`` (every column, its id and text)."""
        for name in self._columns:
            column = getattr(self, name)
            column[target] = column[source]
        self.ids[target] = self.ids[source]
        self.texts[target] = self.texts[source]
        self.row[self.ids[target]] = target

    def hit(self, i: int, score: float) -> IndexHit:
        """Row ``i`` as a search hit."""
        return IndexHit(
            turn_id=self.ids[i],
            conversation_id=self.names["conversation"][self.conversation[i]],
            speaker=self.names["speaker"][self.speaker[i]],
            is_user=bool(self.is_user[i]),
            start=float(self.start[i]),
            end=float(self.end[i]),
            text=self.texts[i],
            score=score,
        )

    def mask(self, where: TurnFilter, rows: NDArray[np.intp] | None = None) -> NDArray[np.bool_] | None:
        """Which of ``rows`` (default: all ``n``) pass ``where``; None when it filters nothing.

        A speaker or conversation this user does not have passes no row.
        """
        keep: NDArray[np.bool_] | None = None
        size = self.n if rows is None else len(rows)

        def both(more: NDArray[np.bool_]) -> NDArray[np.bool_]:
            return more if keep is None else keep & more

        for kind, value in (("conversation", where.conversation_id), ("speaker", where.speaker)):
            if value is None:
                continue
            code = self.codes[kind].get(value)
            if code is None:
                return np.zeros(size, dtype=bool)
            column = getattr(self, kind)
            keep = both((column[: self.n] if rows is None else column[rows]) == code)
        if where.since is not None:
            keep = both((self.end[: self.n] if rows is None else self.end[rows]) >= where.since)
        if where.until is not None:
            keep = both((self.start[: self.n] if rows is None else self.start[rows]) <= where.until)
        return keep
