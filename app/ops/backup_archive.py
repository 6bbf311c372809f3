"""The backup archive: a gzipped tar holding ``manifest.json`` and the files under ``data/``, with checksums.

Read through :func:`read_archive`, which checks every file against the manifest before anything is
written (see :mod:`app.ops.backup` for what goes in).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO

from app import __version__

__all__ = [
    "CHUNK",
    "DATA",
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "MANIFEST",
    "BackupError",
    "CountingReader",
    "FileEntry",
    "Hook",
    "Manifest",
    "add_file",
    "check_name",
    "files_of",
    "fsync_dir",
    "manifest_of",
    "open_archive",
    "read_archive",
    "sha256_of",
]

FORMAT = "omi-letta-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("database", "sqlite", "key", "file")
DATA = "data/"
CHUNK = 1 << 20


Hook = Callable[[str, int, int], None]
"""Progress: ``hook(file name, bytes done, bytes in all)``, called as the work goes on."""


class BackupError(Exception):
    """A backup or restore cannot go on; ``detail`` says why and what to do."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class FileEntry:
    """One file of an archive."""

    name: str
    """Its path under DATA_DIR (``/``-separated); the store is always ``omi-letta.db``."""
    kind: str
    """``database`` (the store), ``sqlite`` (another SQLite file), ``key`` or ``file``."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What an archive holds, written first into it as ``manifest.json``."""

    created_at: str
    service_version: str
    alembic_revision: str | None
    files: tuple[FileEntry, ...]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """The manifest as JSON."""
        body = {"format": FORMAT, **asdict(self), "files": [asdict(f) for f in self.files]}
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse and check a manifest.

        Raises:
            BackupError: not a manifest of ours, of a newer format, or malformed.
        """
        try:
            body = json.loads(raw)
        except ValueError:
            raise BackupError("the archive's manifest.json is not JSON") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BackupError("the archive is not an omi-letta backup (manifest.json names no omi-letta format)")
        version = body.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise BackupError(f"the archive's format version {version!r} is not valid")
        if version > FORMAT_VERSION:
            raise BackupError(
                f"the archive is backup format version {version}, made by a newer omi-letta; this one "
                f"({__version__}) reads version {FORMAT_VERSION}: restore it with a newer omi-letta"
            )
        try:
            files = tuple(FileEntry(**{f.name: entry[f.name] for f in fields(FileEntry)}) for entry in body["files"])
            manifest = cls(
                created_at=str(body["created_at"]),
                service_version=str(body["service_version"]),
                alembic_revision=body["alembic_revision"],
                files=files,
                format_version=version,
            )
        except (KeyError, TypeError):
            raise BackupError("the archive's manifest.json lacks a field or has one of the wrong type") from None
        for entry in files:
            if not (isinstance(entry.name, str) and isinstance(entry.size, int) and isinstance(entry.sha256, str)):
                raise BackupError("the archive's manifest.json has an entry with a field of the wrong type")
            check_name(entry.name)
            if entry.kind not in KINDS or entry.size < 0 or len(entry.sha256) != 64:
                raise BackupError(f"the archive's manifest.json has a malformed entry for {entry.name}")
        if len({f.name for f in files}) != len(files):
            raise BackupError("the archive's manifest.json lists a file twice")
        return manifest

    @property
    def has_database(self) -> bool:
        """Whether the store is in the archive."""
        return any(f.kind == "database" for f in self.files)

    @property
    def has_keys(self) -> bool:
        """Whether an encryption key file is in the archive."""
        return any(f.kind == "key" for f in self.files)


def read_archive(archive: Path, hook: Hook | None = None) -> Manifest:
    """Read all of ``archive`` and check it against its manifest; nothing is written.

    Raises:
        BackupError: the archive is missing, corrupt or truncated, of an unknown format version,
            lacks a file its manifest lists, holds one it does not, or a checksum differs.
    """
    with open_archive(archive) as tar:
        manifest = manifest_of(tar, archive)
        total = 2 * sum(e.size for e in manifest.files)
        done = 0
        for entry, reader in files_of(tar, manifest, archive):
            digest = hashlib.sha256()
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if hook is not None:
                    hook(entry.name, done, total)
            if digest.hexdigest() != entry.sha256:
                raise BackupError(
                    f"the checksum of {entry.name} in {archive} does not match its manifest: the archive is damaged "
                    "or was altered; nothing was restored"
                )
    return manifest


def check_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        raise BackupError(f"the archive names a file outside DATA_DIR ({name!r}); it is not restored")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_file(tar: tarfile.TarFile, name: str, f: IO[bytes], size: int, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, f)


class CountingReader(io.RawIOBase):
    """A readable file that reports, through ``hook``, ``done`` plus the bytes read from it so far."""

    def __init__(self, f: IO[bytes], hook: Hook | None, name: str, done: int, total: int) -> None:
        self._f = f
        self._hook = hook
        self._name = name
        self._done = done
        self._total = total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self._done += len(chunk)
        if self._hook is not None:
            self._hook(self._name, self._done, self._total)
        return chunk


@contextlib.contextmanager
def open_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    """``archive`` as a stream of tar members; its read errors become :class:`BackupError`."""
    if not archive.is_file():
        raise BackupError(f"no such archive: {archive}")
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BackupError(f"{archive} is corrupt or truncated ({exc}); nothing was restored") from exc


def manifest_of(tar: tarfile.TarFile, archive: Path) -> Manifest:
    """The manifest, which comes first."""
    member = tar.next()
    if member is None or member.name != MANIFEST:
        raise BackupError(f"{archive} does not start with a manifest.json: it is not an omi-letta backup")
    if not member.isfile() or member.size > 16 << 20:
        raise BackupError("the archive's manifest.json is not a plain file of a sane size")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return Manifest.from_json(f.read())


def files_of(tar: tarfile.TarFile, manifest: Manifest, archive: Path) -> Iterator[tuple[FileEntry, IO[bytes]]]:
    """The files after the manifest, each with a reader, checked against the manifest's names and sizes.

    A file the manifest does not list fails when it comes; one it lists but the archive lacks, at the end.
    """
    entries = {e.name: e for e in manifest.files}
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = member.name.removeprefix(DATA)
        entry = entries.get(name) if member.name.startswith(DATA) else None
        if entry is None or name in seen:
            raise BackupError(f"the archive holds {member.name!r}, which its manifest does not list; it was altered")
        if not member.isfile():
            raise BackupError(f"the archive's {name} is not a plain file; it was altered")
        if member.size != entry.size:
            raise BackupError(f"the archive's {name} is {member.size} bytes, not {entry.size} as its manifest says")
        seen.add(name)
        f = tar.extractfile(member)
        assert f is not None  # a regular file
        yield entry, f
    missing = sorted(set(entries) - seen)
    if missing:
        raise BackupError(f"{archive} lacks {', '.join(missing)}, which its manifest lists; nothing was restored")
