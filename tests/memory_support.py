"""Test support for memory search: the local embedder (loaded once) and local fake API servers.

``FakePinecone`` speaks the Pinecone data-plane REST API (upsert, query with metadata filters,
fetch, delete, describe_index_stats) and ``FakeOpenAI`` the OpenAI embeddings API, each an
HTTP server on 127.0.0.1 in a thread, so the real SDKs are exercised without a network.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from memory.search.embeddings import E5Embedder, LocalEmbedder
from memory.search.hybrid import Turn

# Who says each line of pyannote's sample (sample.rttm): Diane in New Jersey and Sheila in Texas.
SAMPLE_SPEAKERS = ["Diane", "Sheila", "Diane", "Diane", "Sheila", "Diane", "Diane", "Sheila", "Diane", "Diane"]
SAMPLE_SPEAKERS += ["Sheila", "Sheila", "Diane"]
SAMPLE_LINES = [
    "Hello?",
    "Hello?",
    "Oh, hello.",
    "I didn't know you were there.",
    "Neither did I.",
    "Okay, then I thought you know, I heard a beep.",
    "This is Diane in New Jersey.",
    "And I'm Sheila in Texas, originally from Chicago.",
    "Oh, I'm originally from Chicago also.",
    "I'm in New Jersey now though.",
    "Well, there isn't that much difference.",
    "At least you know, they all call me a Yankee down here, so what can I say?",
    "Oh, I don't hear that in New Jersey now.",
]
T0 = 1_761_645_720.0  # 2025-10-28 10:02 UTC


def sample_turns(uid: str, conversation_id: str = "conv-sample", t0: float = T0) -> list[Turn]:
    """The pyannote sample conversation as turns, 3 s apart."""
    return [
        Turn(
            uid=uid,
            turn_id=f"{conversation_id}-{i}",
            conversation_id=conversation_id,
            speaker=speaker,
            is_user=speaker == "Diane",
            start=t0 + 3 * i,
            end=t0 + 3 * i + 2.5,
            text=text,
        )
        for i, (speaker, text) in enumerate(zip(SAMPLE_SPEAKERS, SAMPLE_LINES, strict=True))
    ]


@lru_cache(maxsize=1)
def e5_embedder() -> E5Embedder:
    """The bundled multilingual-e5-small (the default model), loaded once per test session."""
    return E5Embedder()


@lru_cache(maxsize=1)
def local_embedder() -> LocalEmbedder:
    """The bundled all-MiniLM-L6-v2, loaded once per test session."""
    return LocalEmbedder()


class _JsonServer:
    """A threaded HTTP server that answers JSON through ``handle(method, path, query, body, headers)``."""

    def __init__(self, handle: Callable[[str, str, dict[str, list[str]], Any, dict[str, str]], tuple[int, Any]]):
        outer = handle

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, payload = outer(method, url.path, parse_qs(url.query), body, dict(self.headers))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _JsonServer:
        self.thread.start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _matches(meta: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """Pinecone's metadata filter language (the operators we use, and a few more)."""
    if not flt:
        return True
    for key, cond in flt.items():
        if key == "$and":
            if not all(_matches(meta, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(_matches(meta, c) for c in cond):
                return False
            continue
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        value = meta.get(key)
        for op, arg in cond.items():
            ok = {
                "$eq": lambda v, a: v == a,
                "$ne": lambda v, a: v != a,
                "$gt": lambda v, a: v is not None and v > a,
                "$gte": lambda v, a: v is not None and v >= a,
                "$lt": lambda v, a: v is not None and v < a,
                "$lte": lambda v, a: v is not None and v <= a,
                "$in": lambda v, a: v in a,
                "$nin": lambda v, a: v not in a,
            }[op](value, arg)
            if not ok:
                return False
    return True


class FakePinecone(_JsonServer):
    """Pinecone's data plane for one dense cosine index, in memory."""

    def __init__(self, api_key: str = "pc-test-key") -> None:
        self.api_key = api_key
        self.namespaces: dict[str, dict[str, dict[str, Any]]] = {}
        self.dimension: int | None = None
        self.lock = threading.Lock()
        super().__init__(self.handle)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        self.requests.append((method, path))
        if {k.lower(): v for k, v in headers.items()}.get("api-key") != self.api_key:
            return 401, {"code": 16, "message": "Invalid API Key"}
        with self.lock:
            if (method, path) == ("POST", "/vectors/upsert"):
                ns = self.namespaces.setdefault(body.get("namespace", ""), {})
                for v in body["vectors"]:
                    if self.dimension is None:
                        self.dimension = len(v["values"])
                    if len(v["values"]) != self.dimension:
                        return 400, {"code": 3, "message": f"Vector dimension {len(v['values'])} does not match"}
                    ns[v["id"]] = {"id": v["id"], "values": v["values"], "metadata": v.get("metadata")}
                return 200, {"upsertedCount": len(body["vectors"])}
            if (method, path) == ("POST", "/query"):
                ns = self.namespaces.get(body.get("namespace", ""), {})
                q = np.asarray(body["vector"], dtype=np.float64)
                scored = []
                for rec in ns.values():
                    if not _matches(rec["metadata"] or {}, body.get("filter")):
                        continue
                    v = np.asarray(rec["values"], dtype=np.float64)
                    score = float(q @ v / (np.linalg.norm(q) * np.linalg.norm(v) + 1e-12))
                    scored.append((score, rec))
                scored.sort(key=lambda s: -s[0])
                matches = [
                    {
                        "id": rec["id"],
                        "score": score,
                        "values": rec["values"] if body.get("includeValues") else [],
                        **({"metadata": rec["metadata"]} if body.get("includeMetadata") else {}),
                    }
                    for score, rec in scored[: body["topK"]]
                ]
                return 200, {"matches": matches, "namespace": body.get("namespace", ""), "usage": {"readUnits": 1}}
            if (method, path) == ("GET", "/vectors/fetch"):
                namespace = query.get("namespace", [""])[0]
                ns = self.namespaces.get(namespace, {})
                vectors = {i: ns[i] for i in query.get("ids", []) if i in ns}
                return 200, {"vectors": vectors, "namespace": namespace, "usage": {"readUnits": 1}}
            if (method, path) == ("POST", "/vectors/delete"):
                ns = self.namespaces.get(body.get("namespace", ""), {})
                if body.get("deleteAll"):
                    ns.clear()
                for i in body.get("ids", []):
                    ns.pop(i, None)
                if body.get("filter"):
                    for i in [i for i, rec in ns.items() if _matches(rec["metadata"] or {}, body["filter"])]:
                        del ns[i]
                return 200, {}
            if (method, path) == ("POST", "/describe_index_stats"):
                namespaces = {n: {"vectorCount": len(v)} for n, v in self.namespaces.items() if v}
                return 200, {
                    "namespaces": namespaces,
                    "dimension": self.dimension or 0,
                    "indexFullness": 0.0,
                    "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
                    "metric": "cosine",
                    "vectorType": "dense",
                }
        return 404, {"code": 5, "message": f"no route {method} {path}"}


class FakeOpenAI(_JsonServer):
    """OpenAI's ``POST /v1/embeddings``, answered with vectors from ``embed``."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], api_key: str = "sk-test", model: str = "") -> None:
        self.embed = embed
        self.api_key = api_key
        self.model = model
        self.batches: list[int] = []
        super().__init__(self.handle)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any]:
        self.requests.append((method, path))
        if {k.lower(): v for k, v in headers.items()}.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
        if (method, path) != ("POST", "/v1/embeddings"):
            return 404, {"error": {"message": "not found"}}
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        self.batches.append(len(texts))
        vectors = self.embed(texts) * 3.0  # not unit length: the client must normalise
        return 200, {
            "object": "list",
            "data": [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)],
            "model": self.model or body["model"],
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
