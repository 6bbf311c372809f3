"""Backups while serving: every ``BACKUP_EVERY``, the archive of ``omi-letta backup``, checked, and rotated.

Each run writes ``BACKUP_DIR/omi-letta-backup-<UTC time>.tar.gz`` with
:func:`~app.ops.backup.create_backup` (in a thread: the service goes on recording meanwhile), then
reads the whole archive back with :func:`~app.ops.backup_archive.read_archive` (it opens, every
file is there and every checksum holds). Only after that are the oldest archives beyond
``BACKUP_KEEP`` deleted, so a failing backup never costs a good one. A failure is kept in
:attr:`BackupSchedule.failure` (the health checks turn it into an alert) and tried again within
:data:`RETRY_S`; the next good backup clears it.

The schedule survives restarts: the next backup is due ``BACKUP_EVERY`` after the newest archive in
``BACKUP_DIR``, and at once when there is none. Only files named as ours are ever deleted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.ops.backup import create_backup, default_archive_name, sqlite_path
from app.ops.backup_archive import BackupError, read_archive

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["ARCHIVE_NAME", "RETRY_S", "BackupResult", "BackupSchedule"]

log = logging.getLogger(__name__)

ARCHIVE_NAME = re.compile(r"omi-letta-backup-\d{8}T\d{6}Z\.tar\.gz")
RETRY_S = 600.0  # a failed backup is tried again this soon (or at BACKUP_EVERY, if that is sooner)


@dataclass(frozen=True)
class BackupResult:
    """One scheduled backup: where it went, or why it failed."""

    at: float
    path: Path
    error: str | None = None  # None: written and checked
    size: int = 0


class BackupSchedule:
    """Runs the scheduled backups of one DATA_DIR (see the module docstring)."""

    def __init__(self, settings: Settings, *, every_s: float, folder: Path, keep: int, keys: bool = True) -> None:
        self.settings = settings
        self.every_s = every_s
        self.folder = folder
        self.keep = keep
        self.keys = keys
        self.database = sqlite_path(settings.database_url) is not None  # PostgreSQL: pg_dump backs it up
        self.last: BackupResult | None = None
        self.failure: BackupResult | None = None  # the last failure, until a backup succeeds
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BackupSchedule | None:
        """The schedule of BACKUP_EVERY, BACKUP_DIR, BACKUP_KEEP and BACKUP_KEYS; None when BACKUP_EVERY is off."""
        b = settings.backup
        if not b.every_s:
            return None
        return cls(settings, every_s=b.every_s, folder=settings.backup_dir, keep=b.keep, keys=b.keys)

    def archives(self) -> list[Path]:
        """The scheduled archives in the folder, oldest first (their names sort by time)."""
        try:
            return sorted(p for p in self.folder.iterdir() if ARCHIVE_NAME.fullmatch(p.name) and p.is_file())
        except OSError:
            return []

    def due_in(self, now: float | None = None) -> float:
        """Seconds until the next backup is due."""
        now = time.time() if now is None else now
        if self.failure is not None and self.last is self.failure:
            return max(0.0, self.failure.at + min(self.every_s, RETRY_S) - now)
        found = self.archives()
        if not found:
            return 0.0
        try:
            newest = found[-1].stat().st_mtime
        except OSError:
            return 0.0
        return max(0.0, newest + self.every_s - now)

    def run_once(self) -> BackupResult:
        """Write, check and rotate one backup now (blocking: run it in a thread). Never raises."""
        started = time.time()
        dest = self.folder / default_archive_name(started)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)  # the archives hold the encryption key, unless BACKUP_KEYS=false
            create_backup(self.settings, dest, keys=self.keys, database=self.database)
            dest.chmod(0o600)
            try:
                read_archive(dest)
            except BackupError:
                dest.unlink(missing_ok=True)  # not a backup to keep, nor one to count against BACKUP_KEEP
                raise
            result = BackupResult(started, dest, size=dest.stat().st_size)
        except BackupError as exc:
            result = BackupResult(started, dest, error=exc.detail)
        except OSError as exc:
            result = BackupResult(started, dest, error=f"cannot write into {self.folder}: {exc.strerror or exc}")
        if result.error is None:
            self._rotate()
        return result

    def _rotate(self) -> None:
        for old in self.archives()[: -self.keep]:
            try:
                old.unlink()
            except OSError as exc:
                log.warning("could not delete the old backup %s (%s)", old, exc.strerror or exc)

    async def run_now(self) -> BackupResult:
        """One backup in a thread, remembered as the last (and as the failure, if it failed)."""
        result = await asyncio.to_thread(self.run_once)
        self.last = result
        if result.error is None:
            self.failure = None
            log.info("backup written and checked: %s (%.1f MB)", result.path, result.size / 1e6)
        else:
            self.failure = result
            log.error("the scheduled backup failed: %s", result.error)
        return result

    def start(self) -> None:
        """Back up in the background, on schedule, until :meth:`stop`."""
        if self._task is None:
            if not self.database:
                log.warning(
                    "BACKUP_EVERY: DATABASE_URL is PostgreSQL, so scheduled backups hold the memory index, the keys "
                    "and DATA_DIR's state files but not the database: back it up with pg_dump"
                )
            self._task = asyncio.create_task(self._forever(), name="scheduled-backups")

    async def stop(self) -> None:
        """Stop backing up (a backup under way finishes in its thread)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.due_in())
            await self.run_now()
