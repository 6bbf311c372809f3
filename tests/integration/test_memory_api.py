"""Memory search and OpenAI-compatible embeddings over HTTP, on a real server process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from memory.search.hybrid import LexicalIndex, MemorySearch
from memory.search.local_index import LocalVectorIndex
from memory.store.crypto import encode_key, installed
from tests.memory_support import T0, e5_embedder, sample_turns
from tests.support import ADMIN_KEY, ServerProcess, token


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose memory index already holds the pyannote sample conversation for two users.

    Turns are indexed straight into the server's ``DATA_DIR/index`` before it starts (delivery
    from stored conversations comes with the outbox).
    """
    data_dir = tmp_path_factory.mktemp("memory-server")

    async def seed() -> None:
        folder = data_dir / "index"
        search = MemorySearch(e5_embedder(), LocalVectorIndex(folder), LexicalIndex(folder))  # the default model
        await search.add(sample_turns("mem-alice"))
        await search.add(sample_turns("mem-bob", conversation_id="bob-conv", t0=T0 + 86_400))
        await search.close()

    asyncio.run(seed())
    key = encode_key(installed().current)  # the key the seeded index is encrypted with
    proc = ServerProcess(data_dir, env={"DIARIZER": "none", "ENCRYPTION_KEY": key}).start()
    yield proc
    proc.stop()


def get(server: ServerProcess, path: str, uid: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(uid)}"} if uid else {}
    return httpx.get(f"{server.http}{path}", params=params, headers=headers, timeout=120)


def test_search_finds_where_diane_lives_for_the_caller_only(memory_server: ServerProcess):
    response = get(memory_server, "/v1/memory/search", "mem-alice", q="where does Diane live", limit=3)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 3
    assert set(items[0]) == {"turn_id", "conversation_id", "text", "speaker", "is_user", "start", "end", "score"}
    assert (items[0]["text"], items[0]["speaker"], items[0]["conversation_id"]) == (
        "This is Diane in New Jersey.",
        "Diane",
        "conv-sample",
    )
    assert items[0]["start"] == pytest.approx(T0 + 18)
    bob = get(memory_server, "/v1/memory/search", "mem-bob", q="where does Diane live").json()["items"]
    assert {h["conversation_id"] for h in bob} == {"bob-conv"}
    assert get(memory_server, "/v1/memory/search", "mem-eve", q="Diane").json()["items"] == []


def test_search_filters_and_errors(memory_server: ServerProcess):
    sheila = get(memory_server, "/v1/memory/search", "mem-alice", q="New Jersey", speaker="SHEILA", limit=50)
    assert {h["speaker"] for h in sheila.json()["items"]} == {"Sheila"}
    late = get(memory_server, "/v1/memory/search", "mem-alice", q="Hello", since=T0 + 30).json()["items"]
    assert late and all(h["end"] >= T0 + 30 for h in late)
    early = get(memory_server, "/v1/memory/search", "mem-alice", q="Hello", until=T0 + 4).json()["items"]
    assert {h["turn_id"] for h in early} == {"conv-sample-0", "conv-sample-1"}
    other = get(memory_server, "/v1/memory/search", "mem-alice", q="Diane", conversation_id="bob-conv")
    assert other.json()["items"] == []
    assert get(memory_server, "/v1/memory/search", None, q="Diane").status_code == 401
    assert get(memory_server, "/v1/memory/search", "mem-alice").status_code == 400
    assert get(memory_server, "/v1/memory/search", "mem-alice", q="x", limit=0).status_code == 400


def test_what_was_searched_stays_out_of_the_log(memory_server: ServerProcess):
    assert get(memory_server, "/v1/memory/search", "mem-alice", q="cardiologist appointment").status_code == 200
    log = memory_server.log()
    assert "GET /v1/memory/search?" in log, "the access log still shows the request"
    assert "cardiologist" not in log


def test_openai_sdk_embeds_through_the_service(memory_server: ServerProcess):
    client = openai.OpenAI(api_key=token("mem-alice"), base_url=f"{memory_server.http}/v1")
    texts = ["This is Diane in New Jersey.", "where does Diane live"]
    response = client.embeddings.create(model="multilingual-e5-small", input=texts)
    assert response.model == "multilingual-e5-small" and [d.index for d in response.data] == [0, 1]
    vectors = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    assert np.allclose(vectors, e5_embedder().embed(texts), atol=1e-5)
    single = client.embeddings.create(model="whatever", input="Hello?")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    plain = httpx.post(
        f"{memory_server.http}/v1/embeddings",
        json={"model": "m", "input": ["Hello?"]},
        headers={"Authorization": f"Bearer {token('mem-alice')}"},
    ).json()
    assert plain["data"][0]["embedding"] == pytest.approx(single.data[0].embedding, abs=1e-6)  # float by default
    assert plain["usage"]["total_tokens"] >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong-key-xx", base_url=f"{memory_server.http}/v1").embeddings.create(
            model="m", input="x"
        )
    assert ADMIN_KEY  # tokens are ADMIN_KEY + uid, as on every route


def test_an_api_token_acts_as_its_user_until_revoked(
    memory_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
):
    from app.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(memory_server.data_dir))
    monkeypatch.setenv("ENCRYPTION_KEY", memory_server.env["ENCRYPTION_KEY"])
    assert main(["token", "create", "--uid", "mem-alice", "--name", "notebook", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith("olt_") and created["uid"] == "mem-alice" and created["name"] == "notebook"

    def search(bearer: str) -> httpx.Response:
        return httpx.get(
            f"{memory_server.http}/v1/memory/search",
            params={"q": "New Jersey"},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=30,
        )

    hits = search(created["token"]).json()["items"]
    assert hits and {h["conversation_id"] for h in hits} == {"conv-sample"}, "alice's memory, not bob's"

    assert main(["token", "list", "--uid", "mem-alice"]) == 0
    listed = capsys.readouterr().out
    assert created["id"] in listed and "notebook" in listed and created["token"] not in listed
    assert "used 20" in listed, "last use is recorded"

    assert main(["token", "revoke", created["id"]]) == 0
    capsys.readouterr()
    refused = search(created["token"])
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert search("olt_not-a-token-at-all").status_code == 401
    assert main(["token", "revoke", "no-such-id"]) == 1
