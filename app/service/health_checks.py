"""What `omi-letta serve` checks every ``ALERT_CHECK_INTERVAL_S``: the checks of ``/health``, and their alerts.

Each check is fine or names a problem in words:

- ``letta``: the Letta server does not answer ``/v1/health/`` (only with Letta delivery on);
- ``delivery_backlog``: a change has waited longer than ``ALERT_BACKLOG_AGE_S`` for a sink;
- ``dead_letters``: changes that gave up after ``OUTBOX_MAX_ATTEMPTS`` (``omi-letta outbox list``);
- ``disk``: the disk of DATA_DIR (or of BACKUP_DIR) has less than ``ALERT_DISK_FREE_MB`` free;
- ``backup``: the last scheduled backup failed (``BACKUP_EVERY``), until one succeeds;
- ``speech_to_text``: since the last check, speech was dropped untranscribed (the queue of a
  stream passed ``MAX_QUEUED_AUDIO_S``), or :data:`LATE_SEGMENTS` final segments came over 2 s after
  their utterance ended (``audio_dropped_seconds_total`` and ``stream_behind_total`` of
  ``/metrics``); it clears at the first check with neither;
- ``device_silence``: a user's device sent audio in the last :data:`NORMAL_DAYS` days ("normally
  connected") but none for ``ALERT_SILENCE_H`` hours; one problem per user.

A problem that starts is posted once to ``ALERT_WEBHOOK_URL`` (:mod:`app.service.alerts`), and
once more when it clears. Open problems are kept in ``DATA_DIR/run/alerts.json``, so a restart
neither repeats an alert nor forgets to clear one. Every ``omi-letta serve`` runs its own checks;
several workers each alert for themselves, naming their host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from app.service.alerts import Alerter, Problem
from memory.store.device_activity import DeviceActivity
from memory.store.outbox import Outbox

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.ops.backup_schedule import BackupSchedule
    from app.settings import Settings
    from core.metrics import Metrics

__all__ = ["CHECKS", "LATE_SEGMENTS", "NORMAL_DAYS", "HealthMonitor"]

log = logging.getLogger(__name__)

CHECKS = ("letta", "delivery_backlog", "dead_letters", "disk", "backup", "speech_to_text", "device_silence")
LATE_SEGMENTS = 3  # final segments over 2 s late, since the last check, that make speech-to-text "behind"
NORMAL_DAYS = 7.0  # a device that streamed within this many days is "normally connected"
PROBE_TIMEOUT_S = 5.0


@dataclass
class _Open:
    problem: Problem
    since: float


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class HealthMonitor:
    """Runs the checks (see the module docstring), keeps their state for ``/health``, and sends the alerts."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        engine: AsyncEngine,
        *,
        backups: BackupSchedule | None = None,
        alerter: Alerter | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backups = backups
        self.alerter = alerter
        self.outbox = Outbox(engine)
        self.activity = DeviceActivity(engine)
        self.state_path = settings.server.data_dir / "run" / "alerts.json"
        self.checked_at: float | None = None
        self.details: dict[str, str] = {}  # what each check found last, when fine
        self._open: dict[str, _Open] = self._load()
        self._heard: dict[str, float] = {}
        self._counters: dict[str, float] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- what the service tells it ---------------------------------------------------------------

    def heard(self, uid: str) -> None:
        """Audio arrived from ``uid``'s device just now (called per frame: it only notes the time)."""
        self._heard[uid] = time.time()

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Check now, then every ALERT_CHECK_INTERVAL_S, in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="health-checks")

    async def stop(self) -> None:
        """Stop checking; write the heard times one last time."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self._flush_heard()

    async def _forever(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the health checks failed; trying again")
            await asyncio.sleep(self.settings.alerts.check_interval_s)

    async def check_once(self, now: float | None = None) -> dict[str, Problem]:
        """Run every check; alert on problems that started or cleared; returns the problems open now."""
        now = time.time() if now is None else now
        found: list[Problem] = []
        for check in (self._letta, self._outbox, self._disk, self._backup, self._speech_to_text, self._silence):
            found += await check(now)
        problems = {p.key: p for p in found}
        for key, was in list(self._open.items()):
            if key not in problems:
                del self._open[key]
                log.warning("resolved: %s", was.problem.title)
                if self.alerter is not None:
                    self.alerter.queue(was.problem, resolved=True, since=was.since, now=now)
        for key, problem in problems.items():
            if key in self._open:
                self._open[key].problem = problem  # the latest detail, for /health
                continue
            self._open[key] = _Open(problem, now)
            log.warning("problem: %s: %s", problem.title, problem.detail)
            if self.alerter is not None:
                self.alerter.queue(problem, resolved=False, since=now, now=now)
        self._save()
        self.checked_at = now
        if self.alerter is not None:
            await self.alerter.flush()
        return problems

    # --- /health ---------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Every check as ``/health`` shows it: ``{name: {"ok", "detail", "since"}}`` (``since``: when it failed,
        in ISO 8601 UTC; null while fine)."""
        out: dict[str, Any] = {}
        for name in CHECKS:
            open_ = [o for o in self._open.values() if o.problem.check == name]
            if open_:
                since = datetime.fromtimestamp(min(o.since for o in open_), UTC)
                out[name] = {
                    "ok": False,
                    "detail": "; ".join(f"{o.problem.title}: {o.problem.detail}" for o in open_),
                    "since": since.isoformat(timespec="seconds"),
                }
            else:
                out[name] = {"ok": True, "detail": self.details.get(name, "not checked yet"), "since": None}
        return out

    @property
    def healthy(self) -> bool:
        """Whether no check fails."""
        return not self._open

    # --- the checks ------------------------------------------------------------------------------

    async def _letta(self, now: float) -> list[Problem]:
        letta = self.settings.letta
        if not letta.delivery:
            self.details["letta"] = "off (LETTA_DELIVERY=false)"
            return []
        url = letta.url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=min(PROBE_TIMEOUT_S, letta.timeout_s)) as client:
                response = await client.get(f"{url}/v1/health/")
        except httpx.HTTPError as exc:
            why = f"{url} does not answer ({type(exc).__name__})"
        else:
            if response.status_code < 500:
                self.details["letta"] = f"{url} answers"
                return []
            why = f"{url} answers {response.status_code} to /v1/health/"
        return [Problem("letta", "Letta is unreachable", why, clear=f"Letta at {url} answers again.")]

    async def _outbox(self, now: float) -> list[Problem]:
        stats = await self.outbox.stats(now=now)
        limit = self.settings.alerts.backlog_age_s
        out: list[Problem] = []
        late = {sink: s for sink, s in stats.items() if s["pending"] and s["oldest_pending_age_s"] > limit}
        if late:
            each = "; ".join(
                f"{n['pending']:.0f} change(s) waiting for {sink}, the oldest for {_ago(n['oldest_pending_age_s'])}"
                for sink, n in sorted(late.items())
            )
            out.append(
                Problem(
                    "delivery_backlog",
                    "Delivery is falling behind",
                    f"{each} (ALERT_BACKLOG_AGE_S={limit:g})",
                    clear="Delivery has caught up.",
                )
            )
        else:
            waiting = sum(s["pending"] for s in stats.values())
            self.details["delivery_backlog"] = f"{waiting:.0f} change(s) waiting, none for over {_ago(limit)}"
        dead = {sink: s["dead"] for sink, s in stats.items() if s["dead"]}
        if dead:
            each = ", ".join(f"{n:.0f} for {sink}" for sink, n in sorted(dead.items()))
            out.append(
                Problem(
                    "dead_letters",
                    "Changes could not be delivered",
                    f"dead letters: {each}; `omi-letta outbox list` shows why, `omi-letta outbox retry --all` tries "
                    "them again",
                    clear="No dead letters are left.",
                )
            )
        else:
            self.details["dead_letters"] = "none"
        return out

    async def _disk(self, now: float) -> list[Problem]:
        limit_mb = self.settings.alerts.disk_free_mb
        if limit_mb <= 0:
            self.details["disk"] = "off (ALERT_DISK_FREE_MB=0)"
            return []
        places = {"DATA_DIR": self.settings.server.data_dir}
        if self.backups is not None:
            places["BACKUP_DIR"] = self.backups.folder
        seen: set[int] = set()
        low: list[str] = []
        shown: list[str] = []
        for name, folder in places.items():
            existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
            if existing is None:
                continue
            try:
                device = os.stat(existing).st_dev
                free = shutil.disk_usage(existing).free
            except OSError:
                continue
            if device in seen:
                continue
            seen.add(device)
            shown.append(f"{_mb(free)} free for {name}")
            if free < limit_mb * 2**20:
                low.append(f"{_mb(free)} free on the disk of {name} ({folder})")
        if not low:
            self.details["disk"] = ", ".join(shown) or "no disk found"
            return []
        return [
            Problem(
                "disk",
                "The disk is filling up",
                f"{'; '.join(low)}, under ALERT_DISK_FREE_MB={limit_mb:g}",
                clear="There is enough free disk space again.",
            )
        ]

    async def _backup(self, now: float) -> list[Problem]:
        schedule = self.backups
        if schedule is None:
            self.details["backup"] = "off (BACKUP_EVERY)"
            return []
        failed = schedule.failure
        if failed is None:
            found = schedule.archives()
            last = f"newest: {found[-1].name}" if found else "none written yet"
            self.details["backup"] = f"{last} in {schedule.folder}; the next in {_ago(schedule.due_in(now))}"
            return []
        return [
            Problem(
                "backup",
                "The scheduled backup failed",
                failed.error or "it failed",
                clear=f"A backup was written and checked again, into {schedule.folder}.",
            )
        ]

    async def _speech_to_text(self, now: float) -> list[Problem]:
        names = ("audio_dropped_seconds_total", "stream_behind_total")
        counters = {n: self.metrics.counters.get(n, 0.0) for n in names}
        before, self._counters = self._counters, counters
        if before is None:
            self.details["speech_to_text"] = "keeping up"
            return []
        dropped = counters["audio_dropped_seconds_total"] - before["audio_dropped_seconds_total"]
        late = counters["stream_behind_total"] - before["stream_behind_total"]
        if dropped <= 0 and late < LATE_SEGMENTS:
            self.details["speech_to_text"] = "keeping up"
            return []
        lag = self.metrics.quantile("segment_lag_seconds", 0.95)
        shown = f"; segment lag p95 {lag:.1f} s" if lag is not None else ""
        return [
            Problem(
                "speech_to_text",
                "Speech-to-text is falling behind real time",
                f"since the last check {dropped:.1f} s of speech were dropped untranscribed and {late:.0f} final "
                f"segment(s) came over 2 s late{shown}",
                clear="Speech-to-text keeps up again.",
            )
        ]

    async def _silence(self, now: float) -> list[Problem]:
        await self._flush_heard()
        hours = self.settings.alerts.silence_h
        if hours <= 0:
            self.details["device_silence"] = "off (ALERT_SILENCE_H=0)"
            return []
        recent = await self.activity.since(now - NORMAL_DAYS * 86_400.0)
        quiet = {uid: at for uid, at in recent.items() if now - at > hours * 3600.0}
        self.details["device_silence"] = f"{len(recent) - len(quiet)} device(s) streaming, of {len(recent)} seen lately"
        return [
            Problem(
                "device_silence",
                f"No audio from {uid}'s device",
                f"the last came {_ago(now - at)} ago (ALERT_SILENCE_H={hours:g}); it streamed within the last "
                f"{NORMAL_DAYS:.0f} days",
                clear=f"{uid}'s device streams again.",
                key=f"device_silence:{uid}",
            )
            for uid, at in sorted(quiet.items())
        ]

    async def _flush_heard(self) -> None:
        if self._heard:
            heard, self._heard = self._heard, {}
            try:
                await self.activity.heard(heard)
            except Exception:
                for uid, at in heard.items():  # keep them for the next check
                    self._heard[uid] = max(at, self._heard.get(uid, 0.0))
                raise

    # --- the open problems, across restarts ------------------------------------------------------

    def _load(self) -> dict[str, _Open]:
        try:
            raw = json.loads(self.state_path.read_text())
            return {k: _Open(Problem.from_json(v["problem"]), float(v["since"])) for k, v in raw["open"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s)", self.state_path, type(exc).__name__)
            return {}

    def _save(self) -> None:
        body = {"open": {k: {"problem": o.problem.as_json(), "since": o.since} for k, o in self._open.items()}}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.state_path.with_name(f".{self.state_path.name}.tmp")
            temp.write_text(json.dumps(body, indent=1))
            os.replace(temp, self.state_path)
        except OSError as exc:  # a full disk among them: the checks go on, in memory
            log.warning("cannot write %s (%s)", self.state_path, exc.strerror or exc)
