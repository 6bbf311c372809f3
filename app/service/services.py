"""The composition root: the long-lived parts of the service, built once at startup from the settings."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.ops.backup_schedule import BackupSchedule
from app.ops.retention import Retention
from app.privacy import is_loopback
from app.service.alerts import Alerter
from app.service.cluster import Cluster
from app.service.firebase import FirebaseVerifier
from app.service.health_checks import HealthMonitor
from app.service.live_hub import LiveHub
from app.service.outbound import Outbound
from app.service.pipeline import Pipeline
from app.service.storage import Storage
from app.service.sync_runner import SyncRunner
from app.settings import Settings, SettingsError
from core.metrics import Metrics
from ingest.asr import SpeechToText
from ingest.diarize import Diarizer
from memory.store.conversations import ConversationManager, clamp_timeout
from memory.store.sealed_files import SealedFiles
from memory.store.sync_jobs import SYNC_DIR

__all__ = ["COUNTERS", "Services", "check_can_serve"]

log = logging.getLogger(__name__)

COUNTERS = (
    "streams_total",
    "audio_seconds_total",
    "decode_errors_total",
    "partials_skipped_total",
    "audio_dropped_seconds_total",
    "stream_behind_total",
    "stt_errors_total",
    "text_frames_ignored_total",
    "sink_retries_total",
    "segments_lost_total",
    "speaker_assignments_total",
    "speaker_assignments_rejected_total",
    "stt_reconnects_total",
    "stt_connect_failures_total",
    "stt_gaps_total",
    "stt_gap_seconds_total",
    "stt_refused_total",
    "retention_deleted_conversations_total",
    "erasures_total",
    "streams_rate_limited_total",
    "frames_too_large_total",
)
"""Counters shown in ``/metrics`` from the start, at 0."""


def check_can_serve(settings: Settings) -> None:
    """Refuse to serve clients when no token could ever be valid.

    Raises:
        SettingsError: neither ``ADMIN_KEY`` nor ``LOCAL_DEVELOPMENT`` is set, or the privacy mode
            refuses a backend.
    """
    settings.check_privacy()
    if settings.auth.local_development and not is_loopback(settings.server.host):
        raise SettingsError(
            f"LOCAL_DEVELOPMENT=true accepts any token, so it serves only on a loopback HOST (127.0.0.1), "
            f"not {settings.server.host}"
        )
    if not settings.auth.admin_key and not settings.auth.local_development:
        raise SettingsError(
            "ADMIN_KEY is empty: set ADMIN_KEY (tokens are ADMIN_KEY followed by a uid), "
            "or LOCAL_DEVELOPMENT=true to accept any token"
        )


@dataclass
class Services:
    """The service's parts, by concern: the ingest pipeline, storage, conversations, what goes out, and the cluster."""

    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    storage: Storage
    conversations: ConversationManager  # every user's in-progress conversation, closed on time
    outbound: Outbound  # memory search, delivery to the sinks, chat
    cluster: Cluster
    live: LiveHub  # the live transcript, fanned out to web pages
    retention: Retention  # the retention purge (RETENTION_DAYS) and erasing a user's data
    health: HealthMonitor  # the checks of /health, and their alerts (ALERT_WEBHOOK_URL)
    backups: BackupSchedule | None = None  # scheduled backups (BACKUP_EVERY), run where delivery runs
    firebase: FirebaseVerifier | None = None  # Firebase ID tokens of the OMI app, when FIREBASE_PROJECT_ID is set
    sync: SyncRunner | None = None  # the device's offline recordings; None when changes are not queued
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run first by stop()

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        asr: SpeechToText | None = None,
        diarizer: Diarizer | None = None,
        queue: bool = True,
        deliver: bool = True,
    ) -> Services:
        """Load models, migrate and open the database, load its encryption key, and start the conversation sweeper.

        With ``queue`` every stored change is queued in the outbox for the configured sinks; with
        ``deliver`` too (``omi-letta serve``), this process runs the health checks and their alerts,
        and, unless another process holds the data directory's delivery lock, the delivery loops,
        the retention purge (``RETENTION_DAYS``) and the scheduled backups (``BACKUP_EVERY``).
        """
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        for counter in COUNTERS:
            metrics.inc(counter, 0.0)
        metrics.set_gauge("streams_active", 0)
        storage = await Storage.open(settings, queue=queue)
        pipeline = await Pipeline.load(
            settings.asr, settings.diarization, storage.speakers, metrics, asr=asr, diarizer=diarizer
        )
        cluster = await Cluster.join(settings)
        live = pipeline.live_speakers
        hub = LiveHub(bus=cluster.bus) if cluster.bus is not None else None
        conversations = ConversationManager(
            storage.store,
            sweep_interval_s=settings.conversation.sweep_interval_s,
            refiner=pipeline.refiner,
            on_forget=live.forget if live is not None else None,
            leases=cluster.leases,
            on_event=_forwarder(hub) if hub is not None else None,
        )
        await conversations.start()
        log.info("ready: %s, database %s", pipeline.name, storage.store.dialect)
        outbound = Outbound.open(settings, storage.store, metrics, queue=queue, redis=cluster.redis)
        a = settings.auth
        backups = BackupSchedule.from_settings(settings)
        al = settings.alerts
        alerter = Alerter(al.webhook_url, topic=al.topic, token=al.token) if al.webhook_url else None
        services = cls(
            settings,
            metrics,
            pipeline,
            storage,
            conversations,
            outbound,
            cluster,
            hub or LiveHub(conversations.subscribe),
            Retention(
                conversations,
                storage.speakers,
                storage.tokens,
                storage.summaries,
                days=settings.retention.days,
                interval_s=settings.retention.interval_s,
                live=live,
                kept=pipeline.kept_speech,
                metrics=metrics,
                uploads=SealedFiles(settings.server.data_dir / SYNC_DIR),
            ),
            HealthMonitor(settings, metrics, storage.store.engine, backups=backups, alerter=alerter),
            firebase=(
                FirebaseVerifier(a.firebase_project_id, a.firebase_jwks_url, leeway_s=a.token_leeway_s)
                if a.firebase_project_id
                else None
            ),
        )
        services.live.start()
        if queue:
            services.sync = SyncRunner(settings, pipeline, storage, conversations, outbound.outbox)
        if queue and deliver and outbound.start_delivery(settings, storage.store):
            services.retention.start()  # its deletions are queued, so they reach the sinks too
            if services.sync is not None:
                await services.sync.start()
            if backups is not None:
                services.backups = backups
                backups.start()
        if queue and deliver:
            services.health.start()
        return services

    @property
    def delivers(self) -> bool:
        """Whether this process runs the delivery loops."""
        return self.outbound.lock is not None

    async def stop(self) -> None:
        """Stop background work and close the database."""
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("a shutdown step failed")
        if self.sync is not None:
            await self.sync.stop()
        self.live.close()
        await self.health.stop()
        if self.backups is not None:
            await self.backups.stop()
        await self.retention.stop()
        await self.conversations.stop()
        if self.outbound.deliverer is not None:
            await self.outbound.deliverer.stop()
        if self.outbound.lock is not None:
            self.outbound.lock.release()
        self.pipeline.close()
        await self.storage.close()  # the last audit entries too, before the database closes
        await self.outbound.search.close()
        await self.cluster.close()

    def conversation_timeout(self, requested: int | None) -> int:
        """The conversation timeout to use for a client's request."""
        c = self.settings.conversation
        return clamp_timeout(requested, default=c.default_timeout_s, minimum=c.min_timeout_s)


def _forwarder(hub: LiveHub | None) -> Callable[[str, Any], Awaitable[None]]:
    """Conversation events of every user, to the live hub's bus."""

    async def forward(uid: str, event: Any) -> None:
        if hub is not None:
            hub.forward(uid, event)

    return forward
