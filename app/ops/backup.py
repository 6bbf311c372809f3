"""``omi-letta backup`` and ``restore``: one archive of the database, the memory index and the keys.

An archive is a gzipped tar::

    manifest.json        format version, creation time, service version, schema revision,
                         and each file's name, kind, size and sha256
    data/omi-letta.db    the store (SQLite), wherever DATABASE_URL puts it
    data/index/*.db      the local vector and lexical index
    data/keys/...        the encryption key file, unless left out (``--no-keys``)
    data/...             the other small state files of DATA_DIR (``letta-tools.token``)

SQLite files are copied with SQLite's online backup API, each as one consistent snapshot, while
the service goes on reading and writing them. The store is copied before the index: a turn the
copied store counts as delivered is then in the copied index too, and what reached the index
only after the store's copy is delivered again, idempotently, from the restored outbox.

Not copied: the local Letta server (``DATA_DIR/letta``, its own PostgreSQL; ``omi-letta
backfill`` refills it), model caches, SQLite's ``-wal``, ``-shm`` and ``-journal`` files, locks,
logs and earlier backups.

A restore reads the whole archive and checks every checksum before it writes anything, writes
each file beside its place and renames it there, then migrates the store to the newest schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, cast

from sqlalchemy.engine import make_url

from app import __version__
from app.settings import Settings, SettingsError

__all__ = [
    "FORMAT_VERSION",
    "BackupError",
    "BackupReport",
    "FileEntry",
    "Hook",
    "Manifest",
    "RestoreReport",
    "create_backup",
    "default_archive_name",
    "read_archive",
    "restore_backup",
    "sqlite_path",
]

FORMAT = "omi-letta-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA = "data/"
STORE_NAME = "omi-letta.db"
KEYS_DIR = "keys"
SQLITE_MAGIC = b"SQLite format 3\x00"
KINDS = ("database", "sqlite", "key", "file")

# Not ours to copy, or not state: the local Letta server and model caches (top-level folders of
# DATA_DIR), SQLite's side files, locks, logs, partial writes, and backups kept in DATA_DIR.
SKIP_DIRS = frozenset({"letta", "models", "cache", ".cache", "huggingface", "hf", "tmp"})
SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".log", ".tmp", ".partial")
SKIP_PREFIXES = ("omi-letta-backup-", ".omi-letta-backup-", ".restore-")
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
            _check_name(entry.name)
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


@dataclass(frozen=True)
class BackupReport:
    """What :func:`create_backup` wrote."""

    path: Path
    manifest: Manifest
    key_from_env: bool
    """The encryption key is set in the environment (``ENCRYPTION_KEY``), so no archive holds it."""
    keys_left_out: tuple[str, ...]
    """Key files left out on request (``--no-keys``)."""


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore_backup` wrote."""

    manifest: Manifest
    written: tuple[Path, ...]
    revision: str | None
    """The store's schema revision after the migrations; None without a store in the archive."""
    key_missing: Path | None
    """Where the encryption key file should be but is not, while ENCRYPTION_KEY is not set either."""
    key_problem: str | None
    """Why the configured key cannot open the restored data; None if it can, or there is no key."""


@dataclass(frozen=True)
class _Source:
    name: str
    kind: str
    path: Path


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite ``DATABASE_URL``; None for another database (PostgreSQL)."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def default_archive_name(now: float | None = None) -> str:
    """``omi-letta-backup-<UTC time>.tar.gz``."""
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"omi-letta-backup-{when:%Y%m%dT%H%M%SZ}.tar.gz"


def create_backup(
    settings: Settings, dest: Path, *, keys: bool = True, database: bool = True, hook: Hook | None = None
) -> BackupReport:
    """Write one archive of the store, the memory index, the keys and DATA_DIR's other state to ``dest``.

    Safe while ``omi-letta serve`` runs. The archive appears at ``dest`` only once complete.

    Args:
        settings: where DATA_DIR and the database are.
        dest: the archive to write (replaced if it exists).
        keys: include the encryption key file; the archive then decrypts the data by itself.
        database: include the store; False archives the rest (for a PostgreSQL ``DATABASE_URL``).
        hook: progress, in bytes, over copying and then archiving.

    Raises:
        BackupError: the database is not SQLite (and ``database`` is set), or a file cannot be read.
    """
    data_dir = settings.server.data_dir
    store = sqlite_path(settings.database_url)
    if database and store is None:
        raise BackupError(
            "DATABASE_URL names a PostgreSQL database, which this command cannot copy consistently: back it up "
            "with `pg_dump` (and restore with `pg_restore` or psql). `omi-letta backup --skip-database` archives "
            "the memory index, the keys and the other state files of DATA_DIR"
        )
    if database and store is not None and not store.is_file():
        raise BackupError(f"there is no database at {store} to back up (is DATA_DIR={data_dir} right?)")
    sources, left_out = _sources(
        data_dir, store if database else None, settings.encryption_key_file, keys=keys, skip=dest
    )
    sizes = {s.name: s.path.stat().st_size for s in sources}
    total = 2 * sum(sizes.values())
    done = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".omi-letta-backup-", dir=dest.parent))
    partial = dest.with_name(f"{dest.name}.partial")
    try:
        entries: list[FileEntry] = []
        for source in sources:
            copy = staging / f"{len(entries)}"
            try:
                if source.kind in ("database", "sqlite"):
                    _snapshot(source.path, copy)
                else:
                    shutil.copyfile(source.path, copy)
            except (OSError, sqlite3.Error) as exc:
                raise BackupError(f"cannot copy {source.path}: {exc}") from exc
            entries.append(FileEntry(source.name, source.kind, copy.stat().st_size, _sha256(copy)))
            done += sizes[source.name]
            if hook is not None:
                hook(source.name, done, total)
        revision = _revision(staging / "0") if entries and entries[0].kind == "database" else None
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            service_version=__version__,
            alembic_revision=revision,
            files=tuple(entries),
        )
        with partial.open("wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                _add(tar, MANIFEST, io.BytesIO(manifest.to_json()), len(manifest.to_json()), 0o600)
                for i, entry in enumerate(entries):
                    with (staging / f"{i}").open("rb") as f:
                        counted = cast("IO[bytes]", _Counting(f, hook, entry.name, done, total))
                        _add(tar, DATA + entry.name, counted, entry.size, 0o600 if entry.kind == "key" else 0o644)
                    done += sizes[entry.name]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, dest)
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return BackupReport(dest, manifest, key_from_env=bool(settings.encryption.key), keys_left_out=left_out)


def read_archive(archive: Path, hook: Hook | None = None) -> Manifest:
    """Read all of ``archive`` and check it against its manifest; nothing is written.

    Raises:
        BackupError: the archive is missing, corrupt or truncated, of an unknown format version,
            lacks a file its manifest lists, holds one it does not, or a checksum differs.
    """
    with _open(archive) as tar:
        manifest = _manifest_of(tar, archive)
        total = 2 * sum(e.size for e in manifest.files)
        done = 0
        for entry, reader in _files(tar, manifest, archive):
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


def restore_backup(
    settings: Settings, archive: Path, *, force: bool = False, hook: Hook | None = None
) -> RestoreReport:
    """Restore ``archive`` into DATA_DIR (and the SQLite ``DATABASE_URL``), then migrate the store.

    Every checksum is checked before anything is written; each file is written beside its place
    and renamed there. Stop ``omi-letta serve`` on this DATA_DIR first.

    Args:
        settings: where DATA_DIR, the database and the key file go.
        archive: an archive written by :func:`create_backup`.
        force: replace files that are there (a database among them); otherwise a DATA_DIR that
            holds a database is refused.
        hook: progress, in bytes, over checking and then writing.

    Raises:
        BackupError: the archive is bad (see :func:`read_archive`), DATA_DIR holds a database and
            ``force`` is not set, a running service uses DATA_DIR, or the database is not SQLite.
    """
    from memory.delivery.deliverer import DeliveryLock
    from memory.store.migrate import upgrade

    data_dir = settings.server.data_dir
    manifest = read_archive(archive, hook)
    store = sqlite_path(settings.database_url)
    if manifest.has_database and store is None:
        raise BackupError(
            "the archive holds a SQLite database, but DATABASE_URL names PostgreSQL: unset DATABASE_URL to restore "
            "into DATA_DIR/omi-letta.db (or move the data over with your own tools)"
        )
    targets = {e.name: _target(e, data_dir, store, settings.encryption_key_file) for e in manifest.files}
    if not force:
        there = [p for p in _databases(data_dir, store) if p.stat().st_size > 0]
        if there:
            raise BackupError(
                f"{data_dir} already holds a database ({there[0]}): restore into an empty DATA_DIR, or give --force "
                "to replace what the archive holds (stop `omi-letta serve` first)"
            )
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DeliveryLock(data_dir)
    if not lock.acquire():
        raise BackupError(f"a running `omi-letta serve` uses {data_dir}: stop it before restoring")
    total = 2 * sum(e.size for e in manifest.files)
    done = total // 2
    staged: list[tuple[Path, Path, FileEntry]] = []
    try:
        with _open(archive) as tar:
            if _manifest_of(tar, archive) != manifest:
                raise BackupError(f"{archive} changed while it was restored; nothing was replaced")
            for entry, reader in _files(tar, manifest, archive):
                target = targets[entry.name]
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.parent == data_dir / KEYS_DIR:
                    target.parent.chmod(0o700)
                temp = target.with_name(f".restore-{os.getpid()}-{target.name}")
                staged.append((temp, target, entry))
                digest = hashlib.sha256()
                with temp.open("wb") as out:
                    while chunk := reader.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if hook is not None:
                            hook(entry.name, done, total)
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != entry.sha256:
                    raise BackupError(f"{archive} changed while it was restored ({entry.name}); nothing was replaced")
                temp.chmod(0o600 if entry.kind != "file" else 0o644)
        for temp, target, entry in staged:
            if entry.kind in ("database", "sqlite"):
                for side in ("-wal", "-shm", "-journal"):  # an old log must not be replayed onto the new file
                    target.with_name(target.name + side).unlink(missing_ok=True)
            os.replace(temp, target)
            _fsync_dir(target.parent)
        staged.clear()
    except OSError as exc:
        raise BackupError(f"cannot write into {data_dir}: {exc}") from exc
    finally:
        for temp, _, _ in staged:
            temp.unlink(missing_ok=True)
        lock.release()
    revision = None
    if manifest.has_database and store is not None:
        upgrade(settings.database_url)
        revision = _revision(store)
    key_file = settings.encryption_key_file
    missing = None if settings.encryption.key or key_file.exists() else key_file
    problem = asyncio.run(_key_problem(settings)) if manifest.has_database and missing is None else None
    return RestoreReport(manifest, tuple(targets.values()), revision, missing, problem)


# --- helpers ------------------------------------------------------------------------------------


async def _key_problem(settings: Settings) -> str | None:
    """Why the configured encryption key cannot open the restored store and index; None if it can."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.ops.keys import unlock

    engine = create_async_engine(settings.database_url)
    try:
        await unlock(settings, engine)
    except SettingsError as exc:
        return str(exc)
    finally:
        await engine.dispose()
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _sources(
    data_dir: Path, store: Path | None, key_file: Path, *, keys: bool, skip: Path
) -> tuple[list[_Source], tuple[str, ...]]:
    """What to copy, the store first and the other SQLite files next; and the key files left out."""
    found: list[_Source] = []
    left_out: list[str] = []
    if store is not None:
        found.append(_Source(STORE_NAME, "database", store))
    if data_dir.is_dir():
        for path in sorted(_walk(data_dir)):
            name = path.relative_to(data_dir).as_posix()
            if (store is not None and path.resolve() == store.resolve()) or path.resolve() == skip.resolve():
                continue
            if name == STORE_NAME and store is None:
                continue  # a store beside a PostgreSQL DATABASE_URL is not the data
            kind = "key" if name.startswith(f"{KEYS_DIR}/") else "sqlite" if _is_sqlite(path) else "file"
            if kind == "key" and not keys:
                left_out.append(name)
                continue
            found.append(_Source(name, kind, path))
    if key_file.is_file() and not (data_dir.is_dir() and _inside(key_file, data_dir)):
        name = f"{KEYS_DIR}/{key_file.name}"
        if keys and name not in {s.name for s in found}:
            found.append(_Source(name, "key", key_file))
        elif not keys:
            left_out.append(str(key_file))
    found.sort(key=lambda s: KINDS.index(s.kind))  # stable: the store, the other SQLite files, the rest
    return found, tuple(left_out)


def _walk(data_dir: Path) -> Iterator[Path]:
    """Regular files under ``data_dir`` that are state: no caches, Letta, side files, links."""
    for root, dirs, files in os.walk(data_dir):
        here = Path(root)
        if here == data_dir:
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        dirs[:] = [d for d in dirs if not d.startswith(SKIP_PREFIXES) and not (here / d).is_symlink()]
        for name in files:
            path = here / name
            if name.endswith(SKIP_SUFFIXES) or name.startswith(SKIP_PREFIXES) or path.is_symlink():
                continue
            if path.is_file():
                yield path


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _snapshot(source: Path, dest: Path) -> None:
    """Copy SQLite file ``source`` to ``dest`` as one consistent snapshot (the online backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)  # one step: a read transaction over the whole copy, so one point in time
            found = out.execute("PRAGMA quick_check").fetchone()[0]
            if found != "ok":
                raise sqlite3.DatabaseError(f"the copy fails SQLite's check: {found}")
        finally:
            out.close()
    finally:
        src.close()


def _revision(path: Path) -> str | None:
    """The Alembic revision of the store at ``path``."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            return None
    return str(row[0]) if row else None


def _databases(data_dir: Path, store: Path | None) -> list[Path]:
    """The store and the SQLite files under ``data_dir`` (not the local Letta server's)."""
    found = [store] if store is not None and store.is_file() else []
    if data_dir.is_dir():
        found += [p for p in sorted(_walk(data_dir)) if _is_sqlite(p) and p not in found]
    return found


def _target(entry: FileEntry, data_dir: Path, store: Path | None, key_file: Path) -> Path:
    """Where an archived file goes: the store to DATABASE_URL, a key file to ENCRYPTION_KEY_FILE."""
    if entry.kind == "database" and store is not None:
        return store
    if entry.kind == "key" and entry.name == f"{KEYS_DIR}/{key_file.name}" and not _inside(key_file, data_dir):
        return key_file
    return data_dir.joinpath(*PurePosixPath(entry.name).parts)


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        raise BackupError(f"the archive names a file outside DATA_DIR ({name!r}); it is not restored")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _add(tar: tarfile.TarFile, name: str, f: IO[bytes], size: int, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, f)


class _Counting(io.RawIOBase):
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
def _open(archive: Path) -> Iterator[tarfile.TarFile]:
    """``archive`` as a stream of tar members; its read errors become :class:`BackupError`."""
    if not archive.is_file():
        raise BackupError(f"no such archive: {archive}")
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BackupError(f"{archive} is corrupt or truncated ({exc}); nothing was restored") from exc


def _manifest_of(tar: tarfile.TarFile, archive: Path) -> Manifest:
    """The manifest, which comes first."""
    member = tar.next()
    if member is None or member.name != MANIFEST:
        raise BackupError(f"{archive} does not start with a manifest.json: it is not an omi-letta backup")
    if not member.isfile() or member.size > 16 << 20:
        raise BackupError("the archive's manifest.json is not a plain file of a sane size")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return Manifest.from_json(f.read())


def _files(tar: tarfile.TarFile, manifest: Manifest, archive: Path) -> Iterator[tuple[FileEntry, IO[bytes]]]:
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
