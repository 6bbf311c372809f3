"""Where the service sends what: the data flows of the current settings, and the ``local`` privacy mode.

Each :class:`Flow` says which data goes to which host for one backend. In ``PRIVACY_MODE=local``
(the default) a flow of audio, transcripts or embeddings to another machine is refused at startup,
with the setting that allows it; ``omi-letta doctor`` prints the flows and checks each backend.
Alerts (``ALERT_WEBHOOK_URL``) are a flow too, but carry none of those (the problem in words,
counts, times, the host and uids), so they may go to another machine in either mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from ingest.ingest_settings import AsrSettings
    from memory.memory_settings import (
        ClusterSettings,
        EmbeddingSettings,
        LettaSettings,
        LlmSettings,
        VectorIndexSettings,
    )

__all__ = ["Flow", "Routed", "flows", "is_loopback", "refusals"]


class _Alerts(Protocol):
    @property
    def webhook_url(self) -> str: ...


class Routed(Protocol):
    """What decides where data goes: the backend sections of the settings (``app.settings.Settings`` is one)."""

    @property
    def asr(self) -> AsrSettings: ...
    @property
    def embeddings(self) -> EmbeddingSettings: ...
    @property
    def vector_index(self) -> VectorIndexSettings: ...
    @property
    def cluster(self) -> ClusterSettings: ...
    @property
    def letta(self) -> LettaSettings: ...
    @property
    def llm(self) -> LlmSettings: ...
    @property
    def alerts(self) -> _Alerts: ...
    @property
    def database_url(self) -> str: ...


# Letta model handles served by a provider on the Letta server's own machine.
LOCAL_PROVIDERS = ("ollama/", "vllm/", "lmstudio/", "lmstudio_openai/")


def is_loopback(url: str) -> bool:
    """Whether ``url`` (or a bare host) points at this machine: ``localhost`` or a loopback address."""
    host = (urlparse(url).hostname if "//" in url else url.split(":")[0]) or ""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, for people to read."""
    parsed = urlparse(url)
    return parsed.netloc.rsplit("@", 1)[-1] or url


@dataclass(frozen=True)
class Flow:
    """One backend: what it is sent, where, and the setting that chooses it."""

    backend: str  # e.g. "speech-to-text: Deepgram"
    data: str  # e.g. "audio"
    host: str  # "this machine", or host[:port]
    setting: str  # the setting that chose it, e.g. "LLM_BASE_URL=https://api.openai.com/v1"
    url: str = ""  # what `doctor` checks, when it can
    off_machine: bool = False
    personal: bool = True  # it carries audio, transcripts or embeddings; False: PRIVACY_MODE=local allows it anywhere


def _deepgram_url(settings: Routed) -> str:
    return settings.asr.deepgram_url or "https://api.deepgram.com"


def _to(backend: str, data: str, url: str, setting: str) -> Flow:
    """A flow to ``url``, chosen by ``setting`` (``NAME=value``)."""
    return Flow(backend, data, host_of(url), setting, url, not is_loopback(url))


def flows(settings: Routed) -> list[Flow]:
    """Every data flow of ``settings``, in the order data moves: audio, text, embeddings, agents."""
    here = "this machine"
    out: list[Flow] = []
    asr = settings.asr
    if asr.backend == "deepgram":
        url = _deepgram_url(settings)
        out.append(_to("speech-to-text: Deepgram", "audio", url, f"STT_BACKEND=deepgram with DEEPGRAM_URL={url}"))
    else:
        out.append(Flow(f"speech-to-text: {asr.backend} ({asr.model})", "audio", here, f"STT_BACKEND={asr.backend}"))
    db = settings.database_url
    if db.startswith("sqlite"):
        out.append(Flow("database: SQLite", "transcripts, voice profiles", here, "DATABASE_URL"))
    else:
        host = urlparse(db).hostname or "localhost"
        shown = f"DATABASE_URL=…@{host}"  # never the password
        flow = _to("database: PostgreSQL", "transcripts, voice profiles", f"postgresql://{host}", shown)
        out.append(Flow(flow.backend, flow.data, host_of(db), shown, db, flow.off_machine))
    emb = settings.embeddings
    if emb.backend == "openai":
        url = emb.openai_base_url or "https://api.openai.com/v1"
        out.append(_to("embeddings: OpenAI-compatible", "transcript text", url, f"EMBEDDINGS_BACKEND=openai at {url}"))
    else:
        out.append(Flow("embeddings: local model", "transcript text", here, "EMBEDDINGS_BACKEND=local"))
    index = settings.vector_index
    if index.backend == "pinecone":
        url = index.pinecone_host or "https://api.pinecone.io"
        url = url if "//" in url else f"https://{url}"
        out.append(_to("vector index: Pinecone", "embeddings, transcript text", url, f"VECTOR_INDEX=pinecone at {url}"))
    elif index.backend == "pgvector":
        pg = index.pgvector_url or db
        host = urlparse(pg).hostname or "localhost"
        shown = f"VECTOR_INDEX=pgvector at …@{host}"
        flow = _to("vector index: pgvector", "embeddings, transcript text", f"postgresql://{host}", shown)
        out.append(Flow(flow.backend, flow.data, host_of(pg), shown, pg, flow.off_machine))
    else:
        out.append(Flow("vector index: local files", "embeddings, transcript text", here, "VECTOR_INDEX=local"))
    if settings.cluster.redis_url:
        redis_url = settings.cluster.redis_url
        host = urlparse(redis_url).hostname or "localhost"
        shown = f"REDIS_URL=…@{host}" if "@" in redis_url else f"REDIS_URL={redis_url}"
        data = "live transcript and speaker voices (encrypted), which user streams where"
        flow = _to("shared state: Redis", data, f"redis://{host}", shown)
        out.append(Flow(flow.backend, flow.data, host_of(redis_url), shown, redis_url, flow.off_machine))
    if settings.alerts.webhook_url:
        url = settings.alerts.webhook_url
        shown = f"ALERT_WEBHOOK_URL at {host_of(url)}"  # not the path: an ntfy topic is a secret
        flow = _to("alerts: webhook", "problem names, counts, uids (no transcript)", url, shown)
        out.append(Flow(flow.backend, flow.data, flow.host, flow.setting, url, flow.off_machine, personal=False))
    if settings.llm.understand == "llm":  # each closed conversation's transcript, to be summarised
        url = settings.llm.base_url
        setting = f"UNDERSTAND_CONVERSATIONS=llm at LLM_BASE_URL={url}"
        out.append(_to(f"conversation summaries and facts ({settings.llm.model})", "transcripts", url, setting))
    letta = settings.letta
    if not letta.delivery:
        return out
    out.append(_to("Letta server", "transcripts, chat", letta.url, f"LETTA_BASE_URL={letta.url}"))
    if letta.model:
        local = letta.model.startswith(LOCAL_PROVIDERS)
        out.append(
            Flow(
                "agents' model (through Letta)",
                "transcripts, chat",
                "the Letta server's provider",
                f"LETTA_MODEL={letta.model}",
                "",
                not local,
            )
        )
    else:
        url = settings.llm.base_url
        out.append(_to(f"agents' model ({settings.llm.model})", "transcripts, chat", url, f"LLM_BASE_URL={url}"))
    if letta.embedding:
        local = letta.embedding.startswith(LOCAL_PROVIDERS)
        out.append(
            Flow(
                "agents' embeddings (through Letta)",
                "transcript text",
                "the Letta server's provider",
                f"LETTA_EMBEDDING={letta.embedding}",
                "",
                not local,
            )
        )
    return out


def refusals(settings: Routed) -> list[str]:
    """Why ``PRIVACY_MODE=local`` refuses these settings: one line per flow of personal data to another machine."""
    return [
        f"{f.backend} would send {f.data} to {f.host} ({f.setting})"
        for f in flows(settings)
        if f.off_machine and f.personal
    ]
