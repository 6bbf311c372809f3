"""Memory recall on LoCoMo: does search find the turns that answer a question?

Each LoCoMo conversation (two people, ~19 dated sessions, questions whose evidence turns are
annotated) goes through the service's own path: every session is stored as a completed
conversation (``ConversationStore.put_completed``, as the ``memory-created`` webhook does), the
outbox delivers it to the index sink (embedding and indexing every turn), and every question is
asked of ``MemorySearch.search`` (what ``GET /v1/memory/search`` awaits). In the same run, on the
same turns read back from the store, two baselines: plain BM25 over "speaker: text" (Okapi, k1
1.2, b 0.75, lower case, no stemming, no stopwords) and dense all-MiniLM-L6-v2 over the bare text.

Reported: recall@5 and @10 of the evidence turns per category (1 multi-hop, 2 temporal, 3
open-domain, 4 single-hop; 5 adversarial is shown apart: its questions have no answer), for the
shipped weights, for each step that added a part (what each change bought), and held out: the
weights picked by a small grid on one conversation, scored on the other, both ways. With an LLM
(``--llm-base-url``, OpenAI-compatible) it also answers each question from the top 10 and has the
LLM judge the answer against LoCoMo's (accuracy, as the mem0 and Zep papers report).

Each session is understood when it closes, as the service does (``--understand``, default
``extractive``: no model): its summary document is indexed beside its turns and competes with
them for the top k; it is never an evidence turn, so it can only cost recall.

    .venv/bin/python bench/recall.py [--data ../shared/data/locomo] [--conversations 26 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, save_json, table
from bench.recall_judge import judge_answers
from core.conversation import Conversation
from core.metrics import Metrics
from core.segments import TranscriptSegment
from memory.delivery.deliverer import Deliverer
from memory.delivery.index_sink import IndexSink
from memory.search.embeddings import E5Embedder, Embedder, LocalEmbedder
from memory.search.hybrid import LexicalIndex, MemorySearch, SearchTuning
from memory.search.lexical_shard import LexicalWeights
from memory.search.local_index import LocalVectorIndex
from memory.store.conversation_store import ConversationStore
from memory.store.crypto import Keyring, install
from memory.store.facts import FactStore
from memory.store.outbox import Outbox
from memory.understand.structure import Structurer
from memory.understand.understanding import Understanding

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
KS = (5, 10)
SHIPPED = SearchTuning()
PLAIN = LexicalWeights(speaker=0.5, date=0.0, near=0.0, far=0.0)
# What each change bought: each step adds one part to the one before (the last is the shipped search).
STEPS: list[tuple[str, SearchTuning]] = [
    ("earlier search: BM25 (speaker 0.5) + vectors, RRF", SearchTuning(lexical=PLAIN, fusion="rrf")),
    (
        "words only: BM25 over the turn and its speaker",
        SearchTuning(lexical=PLAIN, dense_weight=0.0, speaker_boost=0.0, date_boost=0.0),
    ),
    (
        "+ speaker's name at weight 1",
        SearchTuning(lexical=replace(PLAIN, speaker=1.0), dense_weight=0.0, speaker_boost=0.0, date_boost=0.0),
    ),
    (
        "+ the day it was said",
        SearchTuning(
            lexical=replace(PLAIN, speaker=1.0, date=0.5), dense_weight=0.0, speaker_boost=0.0, date_boost=0.0
        ),
    ),
    ("+ neighbours ±1, ±2 (0.5 each)", SearchTuning(dense_weight=0.0, speaker_boost=0.0, date_boost=0.0)),
    ("+ vectors (previous + current line), z-score fusion", SearchTuning(speaker_boost=0.0, date_boost=0.0)),
    ("+ boost for the speaker the question names", SearchTuning(date_boost=0.0)),
    ("+ boost for the period the question names (shipped)", SHIPPED),
]
RRF_ALL = ("shipped parts, fused by RRF instead of z-scores", replace(SHIPPED, fusion="rrf"))
GRID = {  # the held-out check: picked on one conversation, scored on the other
    "dense_weight": (0.5, 1.0, 1.5),
    "speaker_boost": (0.0, 1.0, 2.0, 3.0),
    "date": (0.0, 0.5, 1.0),
    "k1": (0.9, 1.2, 2.0),
}


@dataclass
class Question:
    question: str
    answer: str
    evidence: list[str]  # turn ids
    category: int


@dataclass
class Locomo:
    name: str
    uid: str
    sessions: list[Conversation]
    questions: list[Question]


def session_time(text: str) -> float:
    """LoCoMo's "1:56 pm on 8 May, 2023" as epoch seconds (UTC)."""
    return datetime.strptime(text.replace(",", ""), "%I:%M %p on %d %B %Y").replace(tzinfo=UTC).timestamp()


def load(path: Path) -> Locomo:
    """One LoCoMo conversation: its sessions as conversations of user ``locomo-<name>``, and its questions."""
    raw = json.loads(path.read_text())
    c, name = raw.get("conversation", raw), path.stem
    uid = f"locomo-{name}"
    speakers = [c["speaker_a"], c["speaker_b"]]
    sessions: list[Conversation] = []
    n = 1
    while f"session_{n}" in c:
        started = session_time(c[f"session_{n}_date_time"])
        segments = [
            TranscriptSegment(
                id=f"{name}-{t['dia_id']}",
                text=t["text"],
                speaker=f"SPEAKER_{speakers.index(t['speaker'])}",
                speaker_id=speakers.index(t["speaker"]),
                speaker_name=t["speaker"],
                start=10.0 * i,
                end=10.0 * i + 8,
            )
            for i, t in enumerate(c[f"session_{n}"])
        ]
        end = started + (segments[-1].end if segments else 0.0)
        sessions.append(
            Conversation(
                id=f"{uid}-s{n}",
                uid=uid,
                status="completed",
                source="omi",
                language="en",
                created_at=started,
                started_at=started,
                finished_at=end,
                last_speech_at=end,
                timeout_s=120,
                segments=segments,
            )
        )
        n += 1
    known = {s.id for conv in sessions for s in conv.segments}
    questions = []
    for q in raw["qa"]:
        ids = [f"{name}-{p}" for e in q.get("evidence", []) for p in re.split(r"[;,\s]+", e) if p]
        evidence = list(dict.fromkeys(i for i in ids if i in known))
        if evidence:
            answer = str(q.get("answer", q.get("adversarial_answer", "")))
            questions.append(Question(q["question"], answer, evidence, int(q["category"])))
    return Locomo(name, uid, sessions, questions)


class CachedEmbedder(Embedder):
    """An embedder that remembers query vectors, so many weightings can be scored on one embedding each."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.queries: dict[str, NDArray[np.float32]] = {}
        self.query_ms: list[float] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> NDArray[np.float32]:
        if text not in self.queries:
            t = time.perf_counter()
            self.queries[text] = self.inner.embed_query(text)
            self.query_ms.append((time.perf_counter() - t) * 1000)
        return self.queries[text]


async def build_service(
    folder: Path, embedder: Embedder, convs: list[Locomo], structurer: Structurer | None = None
) -> tuple[MemorySearch, float]:
    """Store every session and deliver it to the index sink through the outbox; the search, and seconds taken."""
    store = await ConversationStore.open(f"sqlite+aiosqlite:///{folder / 'omi-letta.db'}", sinks=("index",))
    search = MemorySearch(embedder, LocalVectorIndex(folder / "index"), LexicalIndex(folder / "index"))
    sink = IndexSink(search)
    if structurer is not None:  # each session understood when it closes, as the service does
        understanding = Understanding(store, FactStore(store.engine), structurer, search)
        sink = IndexSink(search, on_closed=understanding.conversation, on_deleted=understanding.forget)
    deliverer = Deliverer(store, Outbox(store.engine), [sink], metrics=Metrics())
    t = time.perf_counter()
    for conv in convs:
        for session in conv.sessions:
            await store.put_completed(session)
        delivered = await deliverer.run_once(sink)
        print(f"  {conv.name}: {len(conv.sessions)} sessions stored, {delivered} outbox records delivered", flush=True)
    seconds = time.perf_counter() - t
    await store.close()
    return search, seconds


# --- Baselines ---------------------------------------------------------------------------------


def plain_bm25(turns: list[tuple[str, str, str]], k1: float = 1.2, b: float = 0.75) -> Callable[[str], list[str]]:
    """Okapi BM25 over "speaker: text", lower case, no stemming, no stopwords (rank_bm25's idf floor 0.25 * mean)."""
    words = re.compile(r"\w+")
    docs = [Counter(words.findall(f"{spk}: {text}".lower())) for _, spk, text in turns]
    lengths = np.array([sum(d.values()) for d in docs], dtype=np.float64)
    avgdl = lengths.mean()
    df: Counter[str] = Counter(w for d in docs for w in d)
    n = len(docs)
    idf = {w: math.log((n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
    floor = 0.25 * (sum(idf.values()) / len(idf))
    idf = {w: (v if v > 0 else floor) for w, v in idf.items()}
    ids = [t for t, _, _ in turns]

    def rank(question: str) -> list[str]:
        scores = np.zeros(n)
        for w in words.findall(question.lower()):
            if w in idf:
                f = np.array([d.get(w, 0) for d in docs], dtype=np.float64)
                scores += idf[w] * f * (k1 + 1) / (f + k1 * (1 - b + b * lengths / avgdl))
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]

    return rank


def dense_bare(turns: list[tuple[str, str, str]], embedder: Embedder) -> Callable[[str], list[str]]:
    """Cosine over the bare turn text with ``embedder`` (queries embedded the same way)."""
    matrix = embedder.embed([text for _, _, text in turns])
    ids = [t for t, _, _ in turns]

    def rank(question: str) -> list[str]:
        scores = matrix @ embedder.embed_query(question)
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]

    return rank


# --- Scoring -----------------------------------------------------------------------------------


def score(questions: list[Question], ranked: list[list[str]]) -> dict[str, float]:
    """Mean recall@k of the evidence per category, over 1-4 and over 1-5; ``n:`` keys count questions."""
    per: dict[str, list[float]] = defaultdict(list)
    for q, ids in zip(questions, ranked, strict=True):
        for k in KS:
            r = sum(e in set(ids[:k]) for e in q.evidence) / len(q.evidence)
            keys = [str(q.category), "1-5"] + (["1-4"] if q.category != 5 else [])
            for key in keys:
                per[f"{key}@{k}"].append(r)
    out = {key: float(np.mean(v)) for key, v in per.items()}
    out.update({f"n:{key[:-3]}": float(len(v)) for key, v in per.items() if key.endswith("@10")})
    return out


async def ours(search: MemorySearch, conv: Locomo, tuning: SearchTuning) -> list[list[str]]:
    return [
        [h.turn_id for h in await search.search(conv.uid, q.question, limit=10, tuning=tuning)] for q in conv.questions
    ]


def cells(res: dict[str, float]) -> list[str]:
    out = []
    for c in ("1", "2", "3", "4", "1-4", "5", "1-5"):
        out.append(f"{res[c + '@5']:.2f} / {res[c + '@10']:.2f}" if c + "@5" in res else "–")
    return out


HEAD = ["multi-hop", "temporal", "open-domain", "single-hop", "**1–4**", "adversarial", "1–5"]


def grid() -> list[tuple[dict[str, float], SearchTuning]]:
    out = []
    for values in itertools.product(*GRID.values()):
        p = dict(zip(GRID, values, strict=True))
        lexical = replace(SHIPPED.lexical, date=p["date"], k1=p["k1"])
        out.append(
            (p, replace(SHIPPED, lexical=lexical, dense_weight=p["dense_weight"], speaker_boost=p["speaker_boost"]))
        )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    install(Keyring.generate())  # the index files are encrypted at rest, as a server's are
    convs = [load(args.data / f"{name}.json") for name in args.conversations]
    for c in convs:
        print(
            f"{c.name}: {sum(len(s.segments) for s in c.sessions)} turns in {len(c.sessions)} sessions, "
            f"{len(c.questions)} questions with evidence"
        )
    e5 = CachedEmbedder(E5Embedder(threads=args.threads))
    minilm = CachedEmbedder(LocalEmbedder(threads=args.threads))
    folder = Path(tempfile.mkdtemp(prefix="omi-letta-bench-recall-"))
    print("indexing through the store, the outbox and the index sink (multilingual-e5-small):")
    structurer = None
    if args.understand != "off":  # the sessions' summaries (and facts) are searched beside the turns
        url = args.llm_base_url if args.understand == "llm" else ""
        structurer = Structurer(url, args.llm_model, args.llm_api_key)
    search, index_s = await build_service(folder / "e5", e5, convs, structurer)
    turns_total = sum(len(s.segments) for c in convs for s in c.sessions)
    print(f"  {turns_total} turns in {index_s:.1f} s ({turns_total / index_s:.0f} turns/s, embedding included)")
    searches = {"e5": search}
    if not args.no_minilm:
        print("indexing again with EMBEDDINGS_MODEL=all-MiniLM-L6-v2:")
        searches["minilm"], _ = await build_service(folder / "minilm", minilm, convs, structurer)

    rows: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for conv in convs:
        stored = [(s.id, s.speaker_name or "", s.text) for session in conv.sessions for s in session.segments]
        bm25, dense = plain_bm25(stored), dense_bare(stored, minilm)
        rows['baseline: plain BM25 over "speaker: text"'][conv.name] = score(
            conv.questions, [bm25(q.question) for q in conv.questions]
        )
        rows["baseline: dense all-MiniLM-L6-v2, bare text"][conv.name] = score(
            conv.questions, [dense(q.question) for q in conv.questions]
        )
        for label, tuning in [*STEPS, RRF_ALL]:
            rows[label][conv.name] = score(conv.questions, await ours(search, conv, tuning))
        if "minilm" in searches:
            rows["shipped search with all-MiniLM-L6-v2 vectors"][conv.name] = score(
                conv.questions, await ours(searches["minilm"], conv, SHIPPED)
            )

    held: dict[str, Any] = {}
    if len(convs) == 2 and not args.no_tune:
        configs = grid()
        for tune, test in (convs, convs[::-1]):
            t = time.perf_counter()
            results = []
            for p, tuning in configs:
                results.append((score(tune.questions, await ours(search, tune, tuning))["1-4@10"], p, tuning))
            top, picked, tuning = max(results, key=lambda r: r[0])
            on_test = score(test.questions, await ours(search, test, tuning))
            bm = rows['baseline: plain BM25 over "speaker: text"'][test.name]
            held[f"{tune.name}→{test.name}"] = {"picked": picked, "tune_1-4@10": top, "test": on_test, "bm25": bm}
            print(
                f"tuned on {tune.name} ({len(configs)} weightings, {time.perf_counter() - t:.0f} s): {picked}, "
                f"recall@10 1–4 {top:.3f}; on {test.name}: {on_test['1-4@10']:.3f} (plain BM25 {bm['1-4@10']:.3f})"
            )

    judged: dict[str, Any] = {}
    if args.llm_base_url:
        for conv in convs:
            hits = [await search.search(conv.uid, q.question, limit=10) for q in conv.questions]
            judged[conv.name] = await judge_answers(
                args.llm_base_url, args.llm_model, args.llm_api_key, conv.questions, hits
            )
    await asyncio.gather(*(s.close() for s in searches.values()))
    return {
        "rows": rows,
        "held_out": held,
        "judged": judged,
        "index_s": index_s,
        "turns": turns_total,
        "query_embed_ms": {
            "e5": float(np.median(e5.query_ms)),
            "minilm": float(np.median(minilm.query_ms)) if minilm.query_ms else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parent.parent.parent / "shared/data/locomo",
        help="folder of LoCoMo conversations (default: ../shared/data/locomo)",
    )
    parser.add_argument("--conversations", nargs="+", default=["26", "30"], help="file names without .json")
    parser.add_argument("--threads", type=int, default=2, help="threads of the embedding models")
    parser.add_argument("--no-minilm", action="store_true", help="skip the shipped search with all-MiniLM-L6-v2")
    parser.add_argument("--no-tune", action="store_true", help="skip the held-out check")
    parser.add_argument(
        "--understand",
        choices=("off", "extractive", "llm"),
        default="extractive",
        help="understand each session when it closes, as the service does (UNDERSTAND_CONVERSATIONS): its "
        "summary, and with llm (--llm-base-url) its facts, are indexed beside the turns and take places in "
        "the top k (they are never evidence); default extractive, what a service without a model indexes",
    )
    parser.add_argument("--llm-base-url", default="", help="OpenAI-compatible LLM for answer accuracy (LLM judge)")
    parser.add_argument("--llm-model", default="llama3.2")
    parser.add_argument("--llm-api-key", default="")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"{args.data} is not a folder of LoCoMo conversations")
    print_machine()
    result = asyncio.run(run(args))
    for conv in args.conversations:
        print(f"\nconversation {conv}: recall@5 / recall@10 of the evidence turns")
        print(
            table(
                ["search", *HEAD], [[label, *cells(res[conv])] for label, res in result["rows"].items() if conv in res]
            )
        )
    if result["held_out"]:
        print("\nheld out: weights picked on one conversation, scored on the other (recall@5 / @10)")
        body = []
        for direction, h in result["held_out"].items():
            body.append([f"ours, tuned {direction}", *cells(h["test"])])
            body.append([f"plain BM25 on {direction[-2:]}", *cells(h["bm25"])])
        print(table(["search", *HEAD], body))
        for direction, h in result["held_out"].items():
            gap = h["test"]["1-4@10"] - h["bm25"]["1-4@10"]
            ok = h["test"]["1-4@10"] >= 0.70 and gap >= 0.10
            print(
                f"target {direction}: recall@10 (1–4) >= 0.70 and >= plain BM25 + 0.10 -> "
                f"{h['test']['1-4@10']:.3f} ({gap:+.3f}) {'PASS' if ok else 'FAIL'}"
            )
    for conv, j in result["judged"].items():
        print(f"answer accuracy on {conv} (LLM judge): {j}")
    q = result["query_embed_ms"]
    print(
        f"\none query embedding: {q['e5']:.1f} ms (multilingual-e5-small)"
        + (f", {q['minilm']:.1f} ms (all-MiniLM-L6-v2)" if q["minilm"] else "")
        + " median"
    )
    save_json(args.json, result)


if __name__ == "__main__":
    main()
