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
logs (``DATA_DIR/logs``), the alert state (``DATA_DIR/run``) and earlier backups (``DATA_DIR/backups``).

A restore reads the whole archive and checks every checksum before it writes anything, writes
each file beside its place and renames it there, then migrates the store to the newest schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, cast

from sqlalchemy.engine import make_url

from app import __version__
from app.ops.backup_archive import (
    CHUNK,
    DATA,
    KINDS,
    MANIFEST,
    BackupError,
    CountingReader,
    FileEntry,
    Hook,
    Manifest,
    add_file,
    files_of,
    fsync_dir,
    manifest_of,
    open_archive,
    read_archive,
    sha256_of,
)
from app.settings import Settings, SettingsError

__all__ = ["BackupReport", "RestoreReport", "create_backup", "default_archive_name", "restore_backup", "sqlite_path"]

STORE_NAME = "omi-letta.db"
KEYS_DIR = "keys"
SQLITE_MAGIC = b"SQLite format 3\x00"

# Not ours to copy, or not state: the local Letta server and model caches (top-level folders of
# DATA_DIR), the scheduled backups, the service's logs and run state (alerts), SQLite's side files,
# locks, logs, partial writes, and backups kept in DATA_DIR.
SKIP_DIRS = frozenset({"letta", "models", "cache", ".cache", "huggingface", "hf", "tmp", "backups", "logs", "run"})
SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock", ".log", ".tmp", ".partial")
SKIP_PREFIXES = ("omi-letta-backup-", ".omi-letta-backup-", ".restore-")


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
            entries.append(FileEntry(source.name, source.kind, copy.stat().st_size, sha256_of(copy)))
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
                add_file(tar, MANIFEST, io.BytesIO(manifest.to_json()), len(manifest.to_json()), 0o600)
                for i, entry in enumerate(entries):
                    with (staging / f"{i}").open("rb") as f:
                        counted = cast("IO[bytes]", CountingReader(f, hook, entry.name, done, total))
                        add_file(tar, DATA + entry.name, counted, entry.size, 0o600 if entry.kind == "key" else 0o644)
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
        with open_archive(archive) as tar:
            if manifest_of(tar, archive) != manifest:
                raise BackupError(f"{archive} changed while it was restored; nothing was replaced")
            for entry, reader in files_of(tar, manifest, archive):
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
            fsync_dir(target.parent)
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
    """Whether ``path`` is a SQLite database, asked of SQLite itself.

    Never by opening the file: closing any descriptor of a file drops every POSIX lock this process
    holds on it, so in ``omi-letta serve`` (scheduled backups) reading a live index file's header
    would strip the service's own connection of its locks, and SQLite would then delete the WAL
    index under it. SQLite's own connections share one descriptor per file within a process.
    """
    try:
        if path.stat().st_size < len(SQLITE_MAGIC):
            return False
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as db:
            db.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error):
        return False
    return True


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
