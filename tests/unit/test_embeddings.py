"""Text embeddings: the bundled local model, and the OpenAI adapter through the real SDK."""

from __future__ import annotations

import numpy as np
import pytest

from app.settings import SettingsError, load_settings
from core.errors import EmbeddingError
from memory.memory_settings import EmbeddingSettings
from memory.search.embeddings import LOCAL_MODEL, LocalEmbedder, OpenAIEmbedder, load_embedder
from tests.memory_support import FakeOpenAI, local_embedder

TEXTS = [
    "This is Diane in New Jersey.",
    "And I'm Sheila in Texas, originally from Chicago.",
    "Remember that the dentist moved my appointment to Friday morning.",
    "Hello?",
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return local_embedder()


def test_local_embedder_is_bundled_minilm_with_unit_vectors(embedder: LocalEmbedder):
    assert (embedder.name, embedder.dim) == (LOCAL_MODEL, 384)
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_local_embedder_matches_sentence_transformers(embedder: LocalEmbedder):
    """Our mean pooling over transformers gives what sentence-transformers gives for the same model."""
    from sentence_transformers import SentenceTransformer

    from memory.search.embeddings import bundled_model_path

    reference = SentenceTransformer(str(bundled_model_path()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(embedder.embed(TEXTS), reference, atol=1e-4)


def test_batching_and_order_do_not_change_vectors(embedder: LocalEmbedder):
    one_by_one = np.stack([embedder.embed_one(t) for t in TEXTS])
    small_batches = LocalEmbedder(batch_size=3).embed(TEXTS)  # sorted by length, padded per batch
    assert np.allclose(embedder.embed(TEXTS), one_by_one, atol=1e-5)
    assert np.allclose(small_batches, one_by_one, atol=1e-5)


def test_meaning_is_close_and_unrelated_is_far(embedder: LocalEmbedder):
    query = embedder.embed_one("where does Diane live")
    scores = embedder.embed(TEXTS) @ query
    assert int(np.argmax(scores)) == 0


def test_openai_adapter_through_the_real_sdk(embedder: LocalEmbedder):
    with FakeOpenAI(embedder.embed) as server:
        remote = OpenAIEmbedder("text-embedding-3-small", api_key="sk-test", base_url=f"{server.url}/v1", batch_size=3)
        assert remote.dim == 1536  # the published size of text-embedding-3-small, without a call
        vectors = remote.embed(TEXTS)
        assert server.batches == [3, 1]
        assert np.allclose(vectors, embedder.embed(TEXTS), atol=1e-5)  # normalised again by the client
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert remote.dim == 384  # what the server actually answered wins

        other = OpenAIEmbedder("my-local-model", api_key="sk-test", base_url=f"{server.url}/v1")
        assert other.dim == 384  # learnt from the server's answer

        wrong_key = OpenAIEmbedder("text-embedding-3-small", api_key="sk-wrong", base_url=f"{server.url}/v1")
        with pytest.raises(EmbeddingError, match="embedding with text-embedding-3-small failed"):
            wrong_key.embed(["hello"])


def test_settings_choose_the_backend(embedder: LocalEmbedder):
    settings = load_settings({}, env_file=None).embeddings
    assert (settings.backend, settings.model, settings.batch_size) == ("local", "", 64)
    with pytest.raises(SettingsError, match="EMBEDDINGS_BACKEND=openai needs OPENAI_API_KEY"):
        load_settings({"EMBEDDINGS_BACKEND": "openai"}, env_file=None)
    with pytest.raises(SettingsError, match="EMBEDDINGS_BACKEND"):
        load_settings({"EMBEDDINGS_BACKEND": "cohere"}, env_file=None)
    with FakeOpenAI(embedder.embed) as server:
        chosen = load_embedder(
            EmbeddingSettings(backend="openai", openai_api_key="sk-test", openai_base_url=f"{server.url}/v1")
        )
        assert isinstance(chosen, OpenAIEmbedder) and chosen.name == "text-embedding-3-small"
        assert chosen.embed(["hi"]).shape == (1, 384)  # the fake answers with the local model
    with pytest.raises(EmbeddingError, match="is not a model directory"):
        LocalEmbedder("/nonexistent/model")
