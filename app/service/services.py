"""The long-lived parts of the service, built once at startup from the settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from app.http.body_limits import ConnectLimiter, LocalConnectLimiter
from app.ops.keys import unlock
from app.ops.retention import Retention
from app.privacy import is_loopback
from app.service.firebase import FirebaseVerifier
from app.service.live_hub import LiveHub
from app.service.outbound import load_sinks
from app.settings import Settings, SettingsError
from core.metrics import Metrics
from ingest.asr import SpeechToText, StreamingSpeechToText, load_asr, load_refine_asr, load_streaming
from ingest.diarize import Diarizer, load_diarizer, load_embedded
from ingest.diarize.embedded import EmbeddedDiarizer
from ingest.identity import LiveSpeakers
from ingest.refine import KeptSpeech, Refiner, TextRefiner, chain
from ingest.stream import Transcriber
from ingest.vad import SileroVad, VadParams, load_vad
from memory.delivery.deliverer import Deliverer, DeliveryLock
from memory.delivery.stream_delivery import StreamDeliverer
from memory.letta.letta_chat import AgentChat
from memory.letta.letta_sink import LettaSink
from memory.redis_state import RedisConnectLimiter, RedisLeases, RedisLiveBus, RedisState
from memory.search.hybrid import MemorySearch, open_search
from memory.store.audit_log import AuditLog
from memory.store.conversation_store import ConversationStore
from memory.store.conversations import ConversationManager, clamp_timeout
from memory.store.day_summaries import DaySummaryStore
from memory.store.leases import Leases, LocalLeases
from memory.store.outbox import Outbox, RetryPolicy
from memory.store.tokens import TokenStore
from memory.store.voice_profiles import SpeakerStore

__all__ = ["Services", "check_can_serve"]

log = logging.getLogger(__name__)


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
    """Models, storage and the conversation manager, shared by every request."""

    settings: Settings
    store: ConversationStore
    conversations: ConversationManager
    transcriber: Transcriber
    vad: SileroVad
    metrics: Metrics
    speakers: SpeakerStore
    diarizer: Diarizer  # whole recordings (batch ingest)
    live_speakers: LiveSpeakers | None  # None when DIARIZER=none
    _voices: EmbeddedDiarizer | None = None
    memory: MemorySearch | None = None  # hybrid memory search; its embedder loads on first use
    outbox: Outbox | None = None
    deliverer: Deliverer | None = None  # delivery to the sinks; None when changes are not queued
    delivery_lock: DeliveryLock | None = None  # held while this process runs the delivery loops
    _warming: asyncio.Task[object] | None = None
    tokens: TokenStore | None = None  # per-user API tokens
    live: LiveHub = field(default_factory=LiveHub)  # the live transcript, fanned out to web pages
    chat: AgentChat | None = None  # chat with each user's Letta agent; None without Letta delivery
    kept_speech: KeptSpeech | None = None  # live speech held for the refinement pass at close (STT_REFINE_BACKEND)
    firebase: FirebaseVerifier | None = None  # Firebase ID tokens of the OMI app, when FIREBASE_PROJECT_ID is set
    streaming: StreamingSpeechToText | None = None  # live streams go to this service (STT_BACKEND=deepgram)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run first by stop()
    retention: Retention | None = None  # the retention purge (RETENTION_DAYS) and erasing a user's data
    audit: AuditLog | None = None  # who read, searched, changed or deleted what (written in batches)
    connect_limiter: ConnectLimiter = field(default_factory=lambda: LocalConnectLimiter(0.0))  # new streams per user
    redis: RedisState | None = None  # state shared with other workers (REDIS_URL)
    leases: Leases = field(default_factory=LocalLeases)  # which worker owns each user's in-progress conversation

    @property
    def voices(self) -> EmbeddedDiarizer:
        """The embedded diarizer that makes voice embeddings (live labels, voice profiles); loaded on first use."""
        if self._voices is None:
            self._voices = load_embedded(self.settings.diarization, self.vad)
        return self._voices

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
        ``deliver`` too, this process runs the delivery loops, unless another process (a running
        ``omi-letta serve``) holds the data directory's delivery lock, and the retention purge
        (``RETENTION_DAYS``).
        """
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        for counter in (
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
        ):
            metrics.inc(counter, 0.0)
        metrics.set_gauge("streams_active", 0)
        vad = load_vad()
        d = settings.diarization
        # The speaker encoder (torch) loads beside the speech-to-text model; with DIARIZER=none it
        # waits until a voice is enrolled.
        loading = asyncio.to_thread(load_embedded, d, vad) if d.backend != "none" else None
        engine: SpeechToText = asr if asr is not None else await asyncio.to_thread(load_asr, settings.asr)
        streaming = load_streaming(settings.asr)
        voices = await loading if loading else None
        diarizer = diarizer or load_diarizer(d, vad, voices)
        transcriber = Transcriber(engine, workers=settings.asr.workers, metrics=metrics)
        store = await ConversationStore.open(settings.database_url, sinks=settings.sinks if queue else ())
        try:
            await unlock(settings, store.engine)  # the encryption key, before anything reads what is stored
        except BaseException:
            await store.close()
            raise
        speakers = SpeakerStore(store.engine)
        live = (
            LiveSpeakers(
                voices, speakers, match_threshold=d.speaker_match_threshold, num_speakers=d.num_speakers or None
            )
            if voices is not None
            else None
        )
        refiners: list[Refiner] = []
        if live is not None:
            refiners.append(lambda uid, c: live.refine(uid, c.segments, c.started_at))
        kept: KeptSpeech | None = None
        if settings.asr.refine_backend != "none":
            kept = KeptSpeech()
            refiners.append(TextRefiner(await asyncio.to_thread(load_refine_asr, settings.asr), kept, metrics=metrics))
        refiner = chain(*refiners) if refiners else None
        redis, leases, hub = await _shared_state(settings, metrics)
        conversations = ConversationManager(
            store,
            sweep_interval_s=settings.conversation.sweep_interval_s,
            refiner=refiner,
            on_forget=(lambda uid: live.forget(uid)) if live else None,
            leases=leases,
            on_event=_forwarder(hub) if redis is not None else None,
        )
        await conversations.start()
        stt = f"{streaming.name} (live), {engine.name} (files)" if streaming else engine.name
        log.info("ready: speech-to-text %s, diarizer %s, database %s", stt, diarizer.name, store.dialect)
        memory = open_search(
            settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url
        )
        audit = AuditLog(store.engine)
        audit.start()
        services = cls(
            settings,
            store,
            conversations,
            transcriber,
            vad,
            metrics,
            speakers,
            diarizer,
            live,
            voices,
            memory=memory,
            tokens=TokenStore(store.engine),
            kept_speech=kept,
            firebase=(
                FirebaseVerifier(a.firebase_project_id, a.firebase_jwks_url, leeway_s=a.token_leeway_s)
                if (a := settings.auth).firebase_project_id
                else None
            ),
            live=hub or LiveHub(conversations.subscribe),
            streaming=streaming,
            audit=audit,
            connect_limiter=(
                RedisConnectLimiter(redis, settings.stream.connect_interval_s)
                if redis is not None
                else LocalConnectLimiter(settings.stream.connect_interval_s)
            ),
            redis=redis,
            leases=leases,
        )
        services.live.start()
        services.retention = Retention(
            conversations,
            speakers,
            services.tokens or TokenStore(store.engine),
            DaySummaryStore(store.engine),
            days=settings.retention.days,
            interval_s=settings.retention.interval_s,
            live=live,
            kept=kept,
            metrics=metrics,
        )
        if queue:
            services.outbox, services.deliverer = delivery_for(settings, store, memory, metrics, redis=redis)
            letta = next((s for s in services.deliverer.sinks if isinstance(s, LettaSink)), None)
            if letta is not None:
                services.chat = AgentChat(letta, timeout_s=settings.llm.chat_timeout_s)
            if deliver:
                await services._start_delivery()
                services.retention.start()  # its deletions are queued, so they reach the sinks too
        return services

    async def _start_delivery(self) -> None:
        """Run the delivery loops here, unless another process does."""
        if self.deliverer is None:
            return
        if self.delivery_lock is None:
            lock = DeliveryLock(self.settings.server.data_dir)
            if not lock.acquire():
                log.warning("another process delivers from %s; this one only queues", self.settings.server.data_dir)
                return
            self.delivery_lock = lock
            self.store.on_enqueue = self.deliverer.wake
            self.deliverer.start()
            if self.memory is not None:  # delivery embeds every turn: load the model now, not on the first one
                self._warming = asyncio.create_task(self.memory.embedder(), name="load-embedder")

    async def stop(self) -> None:
        """Stop background work and close the database."""
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("a shutdown step failed")
        self.live.close()
        if self.retention is not None:
            await self.retention.stop()
        await self.conversations.stop()
        if self.deliverer is not None:
            await self.deliverer.stop()
        if self.delivery_lock is not None:
            self.delivery_lock.release()
        self.transcriber.close()
        if self.audit is not None:
            await self.audit.close()  # the last entries, before the database closes
        await self.store.close()
        if self.memory is not None:
            await self.memory.close()
        if self.redis is not None:
            await self.redis.close()

    def vad_params(self) -> VadParams:
        """Endpointing tunables from the settings."""
        s = self.settings.stream
        return VadParams(
            threshold=s.vad_threshold,
            min_silence_ms=s.vad_min_silence_ms,
            speech_pad_ms=s.vad_speech_pad_ms,
            max_utterance_s=s.max_utterance_s,
            partial_interval_s=s.partial_interval_s,
        )

    def conversation_timeout(self, requested: int | None) -> int:
        """The conversation timeout to use for a client's request."""
        c = self.settings.conversation
        return clamp_timeout(requested, default=c.default_timeout_s, minimum=c.min_timeout_s)


def delivery_for(
    settings: Settings,
    store: ConversationStore,
    memory: MemorySearch,
    metrics: Metrics,
    *,
    sinks: tuple[str, ...] | None = None,
    redis: RedisState | None = None,
) -> tuple[Outbox, Deliverer]:
    """The outbox and a (not yet started) deliverer for ``sinks`` (default: the configured ones); with
    ``redis``, one that shares the work with other workers through Redis Streams."""
    d = settings.delivery
    outbox = Outbox(
        store.engine, RetryPolicy(max_attempts=d.max_attempts, base_delay_s=d.base_delay_s, max_delay_s=d.max_delay_s)
    )
    chosen = load_sinks(settings, store, memory, sinks)
    if redis is not None:
        c = settings.cluster
        streams = StreamDeliverer(
            store,
            outbox,
            chosen,
            metrics=metrics,
            redis=redis,
            poll_s=d.poll_s,
            claim_idle_s=c.claim_idle_s,
            lock_ttl_s=c.lease_ttl_s,
        )
        return outbox, streams
    return outbox, Deliverer(store, outbox, chosen, metrics=metrics, poll_s=d.poll_s)


async def _shared_state(settings: Settings, metrics: Metrics) -> tuple[RedisState | None, Leases, LiveHub | None]:
    """With REDIS_URL: the Redis connection, leases in it and a live hub on its pub/sub; else local ones."""
    url = settings.cluster.redis_url
    if not url:
        return None, LocalLeases(), None
    redis = RedisState(url, worker=settings.cluster.worker_id or None)
    try:
        await redis.ping()
    except RedisError as exc:  # an outage must not stop ingest; what needs Redis waits for it
        redis.failed("starting", exc)
    log.info("sharing live state through Redis at %s as worker %s", redis.host, redis.worker)
    if settings.database_url.startswith("sqlite") or settings.vector_index.backend == "local":
        log.warning(
            "REDIS_URL is set, but the database or the vector index is this machine's own (SQLite, "
            "VECTOR_INDEX=local): other workers cannot share them; use a PostgreSQL DATABASE_URL and "
            "VECTOR_INDEX=pgvector or pinecone"
        )
    return redis, RedisLeases(redis, settings.cluster.lease_ttl_s), LiveHub(bus=RedisLiveBus(redis))


def _forwarder(hub: LiveHub | None) -> Callable[[str, Any], Awaitable[None]]:
    """Conversation events of every user, to the live hub's bus."""

    async def forward(uid: str, event: Any) -> None:
        if hub is not None:
            hub.forward(uid, event)

    return forward
