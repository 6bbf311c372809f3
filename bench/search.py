"""Local memory search latency at 10k and 100k turns, against naive baselines, and embedding throughput.

Turns are synthetic but speech-like: sentences about people, places, days and errands, said by
a handful of speakers over many conversations. Embedding 100k texts would take minutes on a
laptop CPU, so a pool of distinct sentences is embedded with the real model and each turn
takes a pool vector plus a little noise (search time does not depend on the values).

Measured per query, in process, after one warm-up query:

- vector: ``LocalVectorIndex`` exact cosine top-10 (no filter, and with a speaker filter);
- lexical: the FTS5 BM25 top-50 of ``LexicalIndex``;
- hybrid: both plus fusion, as ``GET /v1/memory/search`` runs them (query embedding apart);
- baselines in the same run: a pure-Python cosine loop over the turns, and a SQL ``LIKE`` scan.

    .venv/bin/python bench/search.py [--sizes 10000 100000] [--queries 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import pct, print_machine, save_json, table
from memory.embeddings import LocalEmbedder, normalize
from memory.index import IndexItem
from memory.index.local import LocalVectorIndex
from memory.search import CANDIDATES, LexicalIndex, Turn, fuse

NAMES = ["Diane", "Sheila", "Bob", "Priya", "Marcus", "Elena", "Tom", "Aisha", "Kenji", "Laura"]
PLACES = ["New Jersey", "Texas", "Chicago", "the office", "the clinic", "Lisbon", "the airport", "the gym"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "tomorrow", "next week"]
TEMPLATES = [
    "{name} said she would meet us in {place} on {day}.",
    "Remind me to call {name} about the budget before {day}.",
    "I think {name} moved to {place} last year.",
    "The meeting with {name} got pushed to {day} afternoon.",
    "Can you pick up {name} from {place} on {day}?",
    "{name} wants the report finished by {day}.",
    "We had dinner with {name} near {place}.",
    "My appointment in {place} is on {day} at nine.",
    "{name} told me the flight to {place} was delayed.",
    "Don't forget the groceries, {name} is coming over {day}.",
]
QUERIES = [
    "where does Diane live",
    "when is my appointment",
    "what did Marcus say about the budget",
    "who is flying to Lisbon",
    "dinner with Elena",
    "report deadline Friday",
    "pick up from the airport",
    "meeting moved to Thursday",
]


def sentences(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        out.add(rng.choice(TEMPLATES).format(name=rng.choice(NAMES), place=rng.choice(PLACES), day=rng.choice(DAYS)))
    return sorted(out)


def embedding_throughput(embedder: LocalEmbedder, texts: list[str]) -> dict[str, float]:
    embedder.embed(texts[:8])  # warm up
    t = time.perf_counter()
    embedder.embed(texts)
    batched = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    for text in texts:
        embedder.embed([text])
    single = len(texts) / (time.perf_counter() - t)
    return {"batched_texts_per_s": batched, "one_by_one_texts_per_s": single, "texts": len(texts)}


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn(0)
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def run_size(n: int, pool: list[str], pool_vectors: np.ndarray, query_vectors: np.ndarray, repeats: int) -> dict:
    rng = np.random.default_rng(n)
    folder = Path(tempfile.mkdtemp(prefix="omi-letta-bench-search-"))
    index = LocalVectorIndex(folder)
    lexical = LexicalIndex(folder)
    which = rng.integers(0, len(pool), n)
    vectors = normalize(pool_vectors[which] + 0.05 * rng.standard_normal((n, pool_vectors.shape[1])))
    t0 = 1_761_645_720.0
    turns = [
        Turn(
            uid="bench",
            turn_id=f"t{i}",
            conversation_id=f"c{i // 40}",
            speaker=NAMES[i % 5] if i % 3 else "me",
            is_user=i % 3 == 0,
            start=t0 + 30 * i,
            end=t0 + 30 * i + 4,
            text=pool[which[i]],
        )
        for i in range(n)
    ]
    t = time.perf_counter()
    for first in range(0, n, 5000):
        chunk = turns[first : first + 5000]
        index._upsert(
            [
                IndexItem(**{f: getattr(x, f) for f in x.__struct_fields__}, vector=v)
                for x, v in zip(chunk, vectors[first : first + 5000], strict=True)
            ]
        )
        lexical.upsert_sync(chunk)
    insert_s = time.perf_counter() - t
    # Reopen so the first query loads the user's matrix from disk, as after a restart.
    index = LocalVectorIndex(folder)
    t = time.perf_counter()
    index.search_sync("bench", query_vectors[0], limit=10)
    load_s = time.perf_counter() - t

    nq = len(query_vectors)
    results = {
        "vector top-10": timed(lambda i: index.search_sync("bench", query_vectors[i % nq], limit=10), repeats),
        "vector top-10, speaker filter": timed(
            lambda i: index.search_sync("bench", query_vectors[i % nq], limit=10, speaker="Diane"), repeats
        ),
        "vector top-10, last 30 days": timed(
            lambda i: index.search_sync("bench", query_vectors[i % nq], limit=10, since=t0 + 30 * n - 30 * 86_400),
            repeats,
        ),
        "lexical BM25 top-50": timed(lambda i: lexical.query_sync("bench", QUERIES[i % nq], CANDIDATES), repeats),
        "hybrid (vector + lexical + fusion)": timed(
            lambda i: fuse(
                [
                    lexical.query_sync("bench", QUERIES[i % nq], CANDIDATES),
                    index.search_sync("bench", query_vectors[i % nq], limit=CANDIDATES),
                ],
                10,
            ),
            repeats,
        ),
    }
    # Baselines: a pure-Python cosine loop, and a full LIKE scan, on the same turns.
    rows = [v.tolist() for v in vectors]

    def python_loop(i: int) -> None:
        q = query_vectors[i % nq].tolist()
        scores = [(sum(a * b for a, b in zip(row, q, strict=True)), j) for j, row in enumerate(rows)]
        scores.sort(reverse=True)

    db = sqlite3.connect(folder / "lexical.db")

    def like_scan(i: int) -> None:
        word = QUERIES[i % nq].split()[-1]
        db.execute(
            "SELECT turn_id FROM turns WHERE uid = ? AND text LIKE ? LIMIT 50", ("bench", f"%{word}%")
        ).fetchall()
        db.execute("SELECT count(*) FROM turns WHERE uid = ? AND text LIKE ?", ("bench", f"%{word}%")).fetchall()

    results["baseline: Python cosine loop"] = timed(python_loop, max(3, min(repeats, 200_000 // n)))
    results["baseline: SQL LIKE scan"] = timed(like_scan, repeats)
    return {
        "turns": n,
        "insert_turns_per_s": n / insert_s,
        "first_query_load_s": load_s,
        "latency_ms": {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="turns per run")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per measure")
    parser.add_argument("--pool", type=int, default=2000, help="distinct sentences embedded with the model")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print_machine()
    embedder = LocalEmbedder()
    pool = sentences(args.pool)
    t = time.perf_counter()
    pool_vectors = embedder.embed(pool)
    print(f"embedded {len(pool)} pool sentences in {time.perf_counter() - t:.1f} s")
    throughput = embedding_throughput(embedder, pool[:256])
    query_vectors = embedder.embed(QUERIES)
    t = time.perf_counter()
    for q in QUERIES * 4:
        embedder.embed_one(q)
    query_embed_ms = (time.perf_counter() - t) * 1000 / (4 * len(QUERIES))
    runs = [run_size(n, pool, pool_vectors, query_vectors, args.queries) for n in args.sizes]

    print()
    print(
        f"embedding ({embedder.name}, batch {embedder.batch_size}): "
        f"{throughput['batched_texts_per_s']:.0f} texts/s batched, "
        f"{throughput['one_by_one_texts_per_s']:.0f} texts/s one by one; one query {query_embed_ms:.1f} ms"
    )
    headers = (
        ["measure (ms)"] + [f"{r['turns'] // 1000}k p50" for r in runs] + [f"{r['turns'] // 1000}k p95" for r in runs]
    )
    rows = []
    for key in runs[0]["latency_ms"]:
        rows.append([key] + [r["latency_ms"][key]["p50"] for r in runs] + [r["latency_ms"][key]["p95"] for r in runs])
    print(table(headers, rows))
    for r in runs:
        print(
            f"{r['turns']} turns: inserted at {r['insert_turns_per_s']:.0f} turns/s; "
            f"first query after reopening (loads the matrix) {r['first_query_load_s']:.2f} s"
        )
    p95 = runs[-1]["latency_ms"]["hybrid (vector + lexical + fusion)"]["p95"]
    verdict = "PASS" if p95 + query_embed_ms <= 20 else "FAIL"
    print(
        f"target: search p95 <= 20 ms at {runs[-1]['turns']} turns -> hybrid p95 {p95:.1f} ms "
        f"(+{query_embed_ms:.1f} ms query embedding) {verdict}"
    )
    save_json(args.json, {"embedding": throughput, "query_embed_ms": query_embed_ms, "runs": runs})
    assert not math.isnan(p95)


if __name__ == "__main__":
    main()
