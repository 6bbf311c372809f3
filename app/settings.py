"""Service settings: one dataclass per concern, read from the environment and `.env`.

The ingest and memory packages declare their own sections (``ingest.ingest_settings``,
``memory.memory_settings``); this module adds the service's own and composes them all into
:class:`Settings`. Every field carries its environment variable name and a one-line meaning in its
metadata, so `.env.example` and the configuration reference are generated from here (and a test
checks they agree). A wrong value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import get_type_hints

from app.privacy import refusals
from core.config import build_section, check_range, duration_s, env_rows, read_env_file, setting
from core.errors import SettingsError
from ingest.ingest_settings import AsrSettings, DiarizationSettings
from memory.memory_settings import (
    ClusterSettings,
    ConversationSettings,
    DeliverySettings,
    EmbeddingSettings,
    EncryptionSettings,
    LettaSettings,
    LlmSettings,
    StorageSettings,
    VectorIndexSettings,
)

__all__ = [
    "AlertSettings",
    "AuthSettings",
    "BackupSettings",
    "PrivacySettings",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "StreamSettings",
    "SyncSettings",
    "WebhookSettings",
    "env_table",
    "get_settings",
    "load_settings",
    "read_env_file",
]

_TOPIC = re.compile(r"[-_A-Za-z0-9]{1,64}")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class PrivacySettings:
    """What may leave the machine."""

    mode: str = setting(
        "PRIVACY_MODE",
        "local",
        "`local`: no audio, transcript or embedding leaves this machine, and settings that would send them "
        "elsewhere are refused at startup; `cloud`: endpoints on other machines are allowed.",
        choices=("local", "cloud"),
    )


@dataclass(frozen=True)
class ServerSettings:
    """Where the service listens and keeps its state."""

    host: str = setting("HOST", "0.0.0.0", "Address `omi-letta serve` binds to.")
    port: int = setting("PORT", 8000, "TCP port `omi-letta serve` listens on.")
    data_dir: Path = setting(
        "DATA_DIR",
        Path("data"),
        "Directory holding all state (database, index, keys). Models are not kept here: they load from installed "
        "packages (or the Hugging Face cache).",
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES",
        1_048_576,
        "Largest HTTP request body, in bytes, of routes without a limit of their own (those: voice enrollment "
        "50 MiB, the OMI webhooks memory-created 32 MiB and audio-bytes 16 MiB, `/v1/embeddings` 8 MiB); a larger "
        "one gets 413.",
    )
    cors_origins: str = setting(
        "CORS_ORIGINS",
        "",
        "Origins whose web pages may call the API from a browser, comma-separated (e.g. "
        "`https://app.example.com`); empty allows no other origin. The web page at `/` needs none.",
    )
    hsts_max_age_s: int = setting(
        "HSTS_MAX_AGE_S",
        0,
        "When browsers reach the service only through HTTPS (a TLS proxy in front), send "
        "`Strict-Transport-Security` with this max-age, in s; 0 sends none (the service itself speaks plain HTTP).",
    )

    def __post_init__(self) -> None:
        check_range("PORT", self.port, 1, 65535)
        check_range("MAX_BODY_BYTES", self.max_body_bytes, 1024, 2**30)
        check_range("HSTS_MAX_AGE_S", self.hsts_max_age_s, 0, 2 * 365 * 86_400)
        for origin in self.cors_origin_list:
            if not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"CORS_ORIGINS: {origin!r} is not an origin; give scheme://host[:port] such as "
                    "https://app.example.com (no path, no `*`)"
                )

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """CORS_ORIGINS as a tuple, without blanks or trailing slashes."""
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())


@dataclass(frozen=True)
class AuthSettings:
    """Who may connect: Firebase ID tokens (the OMI app), `ADMIN_KEY` followed by the uid, or API tokens."""

    admin_key: str = setting(
        "ADMIN_KEY", "", "Secret prefix of a bearer token `Bearer <ADMIN_KEY><uid>`; empty disables such tokens."
    )
    local_development: bool = setting(
        "LOCAL_DEVELOPMENT",
        False,
        "Accept any token as uid `123` (development only: refused unless HOST is a loopback address and no "
        "ADMIN_KEY or FIREBASE_PROJECT_ID is set; logs a warning on every connection).",
    )
    firebase_project_id: str = setting(
        "FIREBASE_PROJECT_ID",
        "",
        "Firebase project of the OMI app whose ID tokens are accepted (audience and issuer); empty disables them.",
    )
    firebase_jwks_url: str = setting(
        "FIREBASE_JWKS_URL",
        "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com",
        "Where the keys that sign Firebase ID tokens are published (JWKS).",
    )
    token_leeway_s: float = setting("TOKEN_LEEWAY_S", 30.0, "Clock skew allowed when checking a token's expiry, in s.")
    metrics_token: str = setting(
        "METRICS_TOKEN",
        "",
        "Bearer token that may read `/metrics` (for Prometheus), besides ADMIN_KEY itself; empty: only ADMIN_KEY. "
        "`/metrics` is open without a token only under LOCAL_DEVELOPMENT.",
    )

    def __post_init__(self) -> None:
        if self.admin_key and len(self.admin_key) < 8:
            raise SettingsError("ADMIN_KEY must be at least 8 characters long")
        if self.metrics_token and len(self.metrics_token) < 16:
            raise SettingsError("METRICS_TOKEN must be at least 16 characters long")
        check_range("TOKEN_LEEWAY_S", self.token_leeway_s, 0.0, 300.0)
        if self.local_development and (self.admin_key or self.firebase_project_id):
            raise SettingsError(
                "LOCAL_DEVELOPMENT=true accepts any token, so it cannot be combined with ADMIN_KEY or "
                "FIREBASE_PROJECT_ID: unset one of them"
            )


@dataclass(frozen=True)
class StreamSettings:
    """Live stream behaviour: voice activity, partial results, back-pressure, keepalive."""

    vad_threshold: float = setting("VAD_THRESHOLD", 0.5, "Speech probability that starts an utterance (0-1).")
    vad_min_silence_ms: int = setting("VAD_MIN_SILENCE_MS", 400, "Silence that ends an utterance, in ms.")
    vad_speech_pad_ms: int = setting(
        "VAD_SPEECH_PAD_MS", 300, "Audio kept before and after speech, in ms (at most VAD_MIN_SILENCE_MS)."
    )
    max_utterance_s: float = setting("MAX_UTTERANCE_S", 25.0, "Longest utterance before it is cut and finalized, in s.")
    partial_interval_s: float = setting(
        "PARTIAL_INTERVAL_S", 2.0, "Send a growing partial segment every this many seconds of speech (0 disables)."
    )
    max_queued_audio_s: float = setting(
        "MAX_QUEUED_AUDIO_S", 120.0, "Untranscribed speech a stream may queue before its oldest is dropped, in s."
    )
    ping_interval_s: float = setting("WS_PING_INTERVAL_S", 10.0, "Interval of the `ping` text frame, in s.")
    inactivity_timeout_s: float = setting(
        "WS_INACTIVITY_TIMEOUT_S", 90.0, "Close with 1001 after this long without a client message, in s."
    )
    connect_interval_s: float = setting(
        "WS_CONNECT_INTERVAL_S",
        7.0,
        "Shortest time between two new `/v4/listen` streams of one user, in s (the OMI backend's 7 s lock); a "
        "quicker one is closed with 1008 `Rate limited, retry later`. 0 disables the limit.",
    )
    max_frame_bytes: int = setting(
        "WS_MAX_FRAME_BYTES",
        262_144,
        "Largest `/v4/listen` message, in bytes; a larger one closes the stream with 1009. OMI sends one Opus "
        "packet (under 1.3 KB) or a PCM chunk (3.2 KB per 100 ms at 16 kHz) per message.",
    )

    def __post_init__(self) -> None:
        check_range("VAD_THRESHOLD", self.vad_threshold, 0.01, 0.99)
        check_range("VAD_MIN_SILENCE_MS", self.vad_min_silence_ms, 32, 10_000)
        check_range("VAD_SPEECH_PAD_MS", self.vad_speech_pad_ms, 0, self.vad_min_silence_ms)
        check_range("MAX_UTTERANCE_S", self.max_utterance_s, 1.0, 30.0)
        check_range("PARTIAL_INTERVAL_S", self.partial_interval_s, 0.0, 30.0)
        check_range("MAX_QUEUED_AUDIO_S", self.max_queued_audio_s, 1.0, 3600.0)
        check_range("WS_PING_INTERVAL_S", self.ping_interval_s, 0.1, 600.0)
        check_range("WS_INACTIVITY_TIMEOUT_S", self.inactivity_timeout_s, 0.5, 3600.0)
        check_range("WS_CONNECT_INTERVAL_S", self.connect_interval_s, 0.0, 3600.0)
        check_range("WS_MAX_FRAME_BYTES", self.max_frame_bytes, 1024, 64 * 2**20)


@dataclass(frozen=True)
class RetentionSettings:
    """How long conversations are kept."""

    days: int = setting(
        "RETENTION_DAYS",
        0,
        "Delete conversations that finished more than this many days ago, everywhere: the database, the memory "
        "index and the Letta agents' passages (voice profiles stay); 0 keeps them forever.",
    )
    interval_s: float = setting(
        "RETENTION_INTERVAL_S",
        3600.0,
        "How often `omi-letta serve` deletes conversations older than RETENTION_DAYS, in s (and once at startup).",
    )

    def __post_init__(self) -> None:
        check_range("RETENTION_DAYS", self.days, 0, 36_500)
        check_range("RETENTION_INTERVAL_S", self.interval_s, 1.0, 86_400.0)


@dataclass(frozen=True)
class SyncSettings:
    """The OMI device's offline recordings, uploaded by the app (`/v1/sync-local-files`, `/v2/...`)."""

    workers: int = setting(
        "SYNC_WORKERS", 1, "Uploads processed at once, in the background; live streams go first whatever it is."
    )
    keep_audio_days: int = setting(
        "SYNC_KEEP_AUDIO_DAYS",
        0,
        "Keep an upload's audio (encrypted, under `DATA_DIR/sync`) this many days after it was processed; 0 "
        "deletes it as soon as its conversations are stored and delivered.",
    )
    max_files: int = setting("SYNC_MAX_FILES", 20, "Most files one upload may hold (the OMI app sends 1 to 4).")
    max_file_s: float = setting(
        "SYNC_MAX_FILE_S", 3600.0, "Most audio one uploaded file may hold, in s (the device writes 60 s files)."
    )
    max_upload_mb: int = setting(
        "SYNC_MAX_UPLOAD_MB", 256, "Largest upload, in MiB; a larger request gets 413 before it is read."
    )
    merge_gap_s: float = setting(
        "SYNC_MERGE_GAP_S",
        120.0,
        "Speech less than this far apart in a recording is one piece (and becomes one conversation), in s.",
    )

    def __post_init__(self) -> None:
        check_range("SYNC_WORKERS", self.workers, 1, 16)
        check_range("SYNC_KEEP_AUDIO_DAYS", self.keep_audio_days, 0, 3650)
        check_range("SYNC_MAX_FILES", self.max_files, 1, 1000)
        check_range("SYNC_MAX_FILE_S", self.max_file_s, 1.0, 86_400.0)
        check_range("SYNC_MAX_UPLOAD_MB", self.max_upload_mb, 1, 16_384)
        check_range("SYNC_MERGE_GAP_S", self.merge_gap_s, 1.0, 3600.0)


@dataclass(frozen=True)
class BackupSettings:
    """Backups `omi-letta serve` writes on a schedule (docs/always-on.md)."""

    every: str = setting(
        "BACKUP_EVERY",
        "",
        "While `omi-letta serve` runs, write a backup (the archive of `omi-letta backup`) this often, e.g. `24h`, "
        "`30m` or `7d` (a number alone is seconds), and check it opens and its checksums hold; a failure is an "
        "alert and is tried again within 10 minutes. Empty or 0: no scheduled backups.",
    )
    folder: str = setting(
        "BACKUP_DIR",
        "",
        "Folder of the scheduled backups (made with mode 0700); empty means `DATA_DIR/backups`. Another disk "
        "guards against losing this one.",
    )
    keep: int = setting(
        "BACKUP_KEEP", 7, "Scheduled backups kept in BACKUP_DIR; once a new one is checked, older ones are deleted."
    )
    keys: bool = setting(
        "BACKUP_KEYS",
        True,
        "Put the encryption key file in each scheduled backup (as `omi-letta backup` does): the archive then "
        "decrypts the data by itself. `false` leaves it out (as `--no-keys`); keep the key apart then.",
    )

    def __post_init__(self) -> None:
        every = duration_s("BACKUP_EVERY", self.every)
        if every and every < 1.0:
            raise SettingsError(f"BACKUP_EVERY={self.every!r} is under a second")
        check_range("BACKUP_KEEP", self.keep, 1, 10_000)

    @property
    def every_s(self) -> float:
        """BACKUP_EVERY in seconds; 0 when scheduled backups are off."""
        return duration_s("BACKUP_EVERY", self.every)


@dataclass(frozen=True)
class AlertSettings:
    """What `omi-letta serve` checks, and where it says so when something breaks (docs/always-on.md)."""

    webhook_url: str = setting(
        "ALERT_WEBHOOK_URL",
        "",
        "Where alerts go: one JSON POST when a problem starts and one when it clears, readable by ntfy (its root "
        "URL, e.g. `https://ntfy.sh/`, with ALERT_TOPIC) and by generic JSON webhooks. Alerts name the problem "
        "and never carry transcript text, audio or embeddings, so PRIVACY_MODE=local allows another machine. "
        "Empty: none are sent; `/health` still shows the checks.",
    )
    topic: str = setting(
        "ALERT_TOPIC",
        "omi-letta",
        "The `topic` of every alert: the ntfy topic it is published to (anyone who knows it can subscribe: pick "
        "one hard to guess). Letters, digits, `-` and `_`.",
    )
    token: str = setting(
        "ALERT_WEBHOOK_TOKEN",
        "",
        "Sent with every alert as `Authorization: Bearer <token>` (an ntfy access token, say); empty sends none.",
    )
    check_interval_s: float = setting(
        "ALERT_CHECK_INTERVAL_S", 60.0, "How often `omi-letta serve` runs its checks (those of `/health`), in s."
    )
    backlog_age_s: float = setting(
        "ALERT_BACKLOG_AGE_S",
        900.0,
        "Alert when a change has waited this long for delivery to Letta or the memory index, in s.",
    )
    disk_free_mb: float = setting(
        "ALERT_DISK_FREE_MB",
        1024.0,
        "Alert when the disk of DATA_DIR (or of BACKUP_DIR) has less free space than this, in MB; 0: never.",
    )
    silence_h: float = setting(
        "ALERT_SILENCE_H",
        24.0,
        "Alert when a device that streamed in the last 7 days has sent no audio for this long, in hours; 0: never.",
    )

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise SettingsError("ALERT_WEBHOOK_URL must start with http:// or https://")
        if not _TOPIC.fullmatch(self.topic):
            raise SettingsError(f"ALERT_TOPIC={self.topic!r} must be 1-64 letters, digits, `-` or `_`")
        check_range("ALERT_CHECK_INTERVAL_S", self.check_interval_s, 0.1, 86_400.0)
        check_range("ALERT_BACKLOG_AGE_S", self.backlog_age_s, 1.0, 30 * 86_400.0)
        check_range("ALERT_DISK_FREE_MB", self.disk_free_mb, 0.0, 1e9)
        check_range("ALERT_SILENCE_H", self.silence_h, 0.0, 24 * 30.0)


@dataclass(frozen=True)
class WebhookSettings:
    """The OMI cloud's developer webhooks (`/v1/integrations/omi/...`)."""

    reply: str = setting(
        "OMI_WEBHOOK_REPLY",
        "",
        'Message the memory-created and day-summary webhooks return to the OMI cloud as `{"message": ...}` '
        "(the OMI app may show it); empty returns `{}`.",
    )


@dataclass(frozen=True)
class Settings:
    """All settings of the service."""

    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    diarization: DiarizationSettings = field(default_factory=DiarizationSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    letta: LettaSettings = field(default_factory=LettaSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    embeddings: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    vector_index: VectorIndexSettings = field(default_factory=VectorIndexSettings)

    def check_privacy(self) -> None:
        """Refuse, in ``PRIVACY_MODE=local``, any backend that would send data to another machine.

        Raises:
            SettingsError: naming the backend, its setting, and PRIVACY_MODE=cloud, which allows it.
        """
        if self.privacy.mode == "local" and (found := refusals(self)):
            raise SettingsError(
                f"{found[0]}, but PRIVACY_MODE=local keeps audio, transcripts and embeddings on this machine. "
                "Point it at this machine (127.0.0.1), or set PRIVACY_MODE=cloud to allow it."
                + (f" ({len(found) - 1} more: see `omi-letta doctor`)" if len(found) > 1 else "")
            )

    @property
    def service_url(self) -> str:
        """Where the Letta server reaches this service: LETTA_SERVICE_URL, else 127.0.0.1 on PORT."""
        return self.letta.service_url.rstrip("/") or f"http://127.0.0.1:{self.server.port}"

    @property
    def sinks(self) -> tuple[str, ...]:
        """The delivery sinks every stored change is queued for: the vector index, and Letta unless disabled."""
        return ("index", "letta") if self.letta.delivery else ("index",)

    @property
    def encryption_key_file(self) -> Path:
        """The effective key file: ENCRYPTION_KEY_FILE, else ``DATA_DIR/keys/omi-letta.key``."""
        if self.encryption.key_file:
            return Path(self.encryption.key_file).expanduser()
        return self.server.data_dir / "keys" / "omi-letta.key"

    @property
    def backup_dir(self) -> Path:
        """The folder of scheduled backups: BACKUP_DIR, else ``DATA_DIR/backups``."""
        return Path(self.backup.folder).expanduser() if self.backup.folder else self.server.data_dir / "backups"

    @property
    def database_url(self) -> str:
        """The effective database URL."""
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite+aiosqlite:///{(self.server.data_dir / 'omi-letta.db').resolve()}"


SECTIONS: tuple[type, ...] = (
    PrivacySettings,
    ServerSettings,
    AuthSettings,
    AsrSettings,
    StreamSettings,
    ConversationSettings,
    DiarizationSettings,
    StorageSettings,
    EncryptionSettings,
    RetentionSettings,
    BackupSettings,
    AlertSettings,
    EmbeddingSettings,
    VectorIndexSettings,
    LettaSettings,
    LlmSettings,
    DeliverySettings,
    ClusterSettings,
    WebhookSettings,
    SyncSettings,
)


def load_settings(
    environ: dict[str, str] | None = None, env_file: Path | None = Path(".env"), *, enforce_privacy: bool = True
) -> Settings:
    """Build settings from ``environ`` (default: the process environment) over ``env_file``.

    Raises:
        SettingsError: a value is malformed or out of range, or (with ``enforce_privacy``) the
            privacy mode refuses a backend; the message names the variable.
    """
    env = read_env_file(env_file) if env_file else {}
    env.update(os.environ if environ is None else environ)
    hints = get_type_hints(Settings)
    sections = {f.name: build_section(hints[f.name], env) for f in fields(Settings)}
    settings = Settings(**sections)
    if enforce_privacy:
        settings.check_privacy()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()


def env_table() -> list[tuple[str, str, str]]:
    """Every setting as ``(ENV_NAME, default, meaning)``, in declaration order."""
    return env_rows(SECTIONS)
