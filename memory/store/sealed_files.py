"""Files kept encrypted at rest under one folder of ``DATA_DIR`` (the offline recordings waiting to be processed).

Each file holds the installed keyring's encryption of its content (:mod:`memory.store.crypto`),
bound to its path below the folder, so a file moved or renamed fails its check. A file is written
beside its place, flushed to disk and renamed there, so a crash leaves the old file or the new one,
never half of one. ``omi-letta rotate-key`` re-encrypts them (:mod:`memory.rekey`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from memory.store.crypto import installed

__all__ = ["PLACE", "SealedFiles"]

PLACE = "sealed files"
"""How :mod:`memory.rekey` names these files among the encrypted places."""


class SealedFiles:
    """Encrypted files below ``root``, named by ``/``-separated paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, name: str) -> str:
        """The place file ``name``'s content is encrypted for."""
        return f"file:{self.root.name}/{name}"

    def path(self, name: str) -> Path:
        """Where file ``name`` lies."""
        return self.root.joinpath(*name.split("/"))

    def write(self, name: str, data: bytes) -> None:
        """Encrypt ``data`` into file ``name``, durably."""
        self._put(name, installed().encrypt_bytes(data, self.where(name)))

    def read(self, name: str) -> bytes:
        """The content of file ``name``.

        Raises:
            OSError: there is no such file.
            EncryptionError: it was altered, moved, or its key is not loaded.
        """
        return installed().decrypt_bytes(self.path(name).read_bytes(), self.where(name))

    def header(self, name: str) -> bytes:
        """The first bytes of file ``name`` as stored (its key id is in them)."""
        with self.path(name).open("rb") as f:
            return f.read(64)

    def reseal(self, name: str) -> bool:
        """Re-encrypt file ``name`` with the current key if another key protects it; whether it did."""
        keys = installed()
        stored = self.path(name).read_bytes()
        if keys.is_current(stored):
            return False
        self._put(name, keys.encrypt_bytes(keys.decrypt_bytes(stored, self.where(name)), self.where(name)))
        return True

    def names(self) -> Iterator[str]:
        """Every file below the root, as its name."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()

    def remove(self, folder: str) -> None:
        """Delete a folder of files (nothing happens if it is gone)."""
        shutil.rmtree(self.root / folder, ignore_errors=True)

    def _put(self, name: str, sealed: bytes) -> None:
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp")
        with temp.open("wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())
        temp.replace(target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
