"""The ``search_memory`` MCP tool over streamable HTTP, on a real server, for a user with 10k turns.

A fresh ``omi-letta serve`` (its own ``DATA_DIR``, 127.0.0.1 only, default settings: the local
all-MiniLM-L6-v2 embedder and the local vector index) holds ``--turns`` turns of one user. They
are seeded as ``bench/search.py`` seeds them (speech-like sentences about people, places and days;
a pool of distinct sentences embedded with the real model, each turn a pool vector plus a little
noise), written into the server's vector and lexical index files before it starts. The script
checks the files hold every turn, and through the server that both indexes answer for the user's
last conversation, before anything is timed.

Then, after a warm-up, ``--queries`` varied queries (people, places, days, errands; one in four
with a speaker filter) are timed, client side, two ways that take turns query by query:

- **MCP**: ``tools/call search_memory`` with the official ``mcp`` client (``mcp.Client`` over
  ``streamable_http_client``, bearer token on its ``httpx2`` client), one client session, one call
  at a time, the tool's text answer read;
- **baseline**: the same query through the plain HTTP search, ``GET /v1/memory/search``, on the
  same server, with an ``httpx2`` client of its own, the JSON answer parsed.

Both run the same hybrid search (query embedding, BM25, exact cosine, fusion), so the difference
is what MCP adds: JSON-RPC, the SDK's session and tool dispatch on both sides, the text answer.

Target: MCP p95 ≤ 50 ms at 10k turns.

    .venv/bin/python bench/mcp.py [--turns 10000] [--queries 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    # Run as a script, this file's folder comes first on sys.path and its name would hide the `mcp` SDK.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import (
    ADMIN_KEY,
    DAYS,
    NAMES,
    PLACES,
    Server,
    embed_texts,
    indexed_counts,
    memory_sentences,
    memory_turns,
    parse_env,
    pct,
    print_machine,
    save_json,
    seed_indexes,
    table,
)

if TYPE_CHECKING:
    from memory.search.hybrid import Turn

UID = "bench"
TARGET_P95_MS = 50.0
MCP = "MCP tools/call search_memory"
HTTP = "baseline: GET /v1/memory/search"
QUESTIONS = [
    "where does {name} live",
    "when is {name} coming over",
    "what did {name} say about the budget",
    "who is flying to {place}",
    "dinner with {name} near {place}",
    "report deadline {day}",
    "pick up {name} from {place}",
    "meeting with {name} moved to {day}",
    "my appointment in {place}",
    "who was in {place} on {day}",
    "groceries before {day}",
    "{name} flight delayed",
    "did {name} move to {place}",
    "call {name} about the budget",
    "what happens on {day}",
]


def queries(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` varied search arguments: distinct queries (while they last), one in four with a speaker."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    misses = 0  # repeats drawn in a row; past 1000 the distinct queries have run out
    while len(out) < count:
        q = rng.choice(QUESTIONS).format(name=rng.choice(NAMES), place=rng.choice(PLACES), day=rng.choice(DAYS))
        if q in seen and misses < 1000:
            misses += 1
            continue
        misses = 0
        seen.add(q)
        args: dict[str, Any] = {"query": q, "limit": 10}
        if len(out) % 4 == 3:
            args["speaker"] = rng.choice([*NAMES[:5], "me"])  # the seeded turns' speakers
        out.append(args)
    return out


async def measure(
    server: Server, turns: list[Turn], timed: list[dict[str, Any]], warm: list[dict[str, Any]]
) -> dict[str, Any]:
    """Check the server's indexes, warm up, then time every query both ways, taking turns."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}{UID}"}
    mcp_requests = [0]

    async def count_mcp(request: httpx2.Request) -> None:
        if request.url.path.startswith("/mcp"):
            mcp_requests[0] += 1

    async with (
        httpx2.AsyncClient(headers=headers, timeout=120, trust_env=False, event_hooks={"request": [count_mcp]}) as mh,
        httpx2.AsyncClient(base_url=server.base, headers=headers, timeout=120, trust_env=False) as http,
        Client(streamable_http_client(f"{server.base}/mcp", http_client=mh)) as client,
    ):

        async def via_mcp(args: dict[str, Any], tool: str = "search_memory") -> str:
            result = await client.call_tool(tool, args)
            if result.is_error:
                raise RuntimeError(f"{tool} failed: {result}")
            return "\n".join(part.text for part in result.content if hasattr(part, "text"))

        async def via_http(args: dict[str, Any]) -> list[dict[str, Any]]:
            params = {("q" if k == "query" else k): v for k, v in args.items()}
            r = await http.get("/v1/memory/search", params=params)
            r.raise_for_status()
            return list(r.json()["items"])

        # The first search reads the user's indexes from the files (the model loaded at start-up).
        t = time.perf_counter()
        await via_http({"query": "where does Diane live", "limit": 10})
        first_s = time.perf_counter() - t

        # Both indexes answer for the last seeded turns, through the server.
        last = turns[-1]
        where = f"(conversation {last.conversation_id})"
        said = await via_mcp({"text": last.text}, "who_said")  # lexical alone; ties go to the later turn
        if where not in said:
            raise SystemExit(f"the lexical index on the server lacks the last turn ({last.turn_id}): {said}")
        in_last = {t.turn_id for t in turns if t.conversation_id == last.conversation_id}
        # No indexed word in the query: the lexical side finds nothing, so every hit is the vector index's.
        only_vector = await via_http({"query": "zqxjv", "limit": 100, "conversation_id": last.conversation_id})
        if {h["turn_id"] for h in only_vector} != in_last:
            raise SystemExit(
                f"the vector index on the server holds {len(only_vector)} of the {len(in_last)} turns of "
                f"{last.conversation_id}"
            )
        found = await via_mcp({"query": last.text, "limit": 10})
        if last.text not in found:
            raise SystemExit(f"search_memory does not find {last.text!r}: {found}")

        for args in warm:
            await via_mcp(args)
            await via_http(args)
        times: dict[str, list[float]] = {MCP: [], HTTP: []}
        cpu = {MCP: 0.0, HTTP: 0.0}  # the server process's CPU seconds, summed over the calls
        empty = {MCP: 0, HTTP: 0}
        mcp_requests[0] = 0
        before = cpu_split(server)
        for i, args in enumerate(timed):
            # Alternate which goes first, so that neither always follows the other.
            for name in (MCP, HTTP) if i % 2 == 0 else (HTTP, MCP):
                c = server.cpu_seconds()
                t = time.perf_counter()
                answer: str | list[dict[str, Any]] = await (via_mcp(args) if name == MCP else via_http(args))
                times[name].append((time.perf_counter() - t) * 1000)
                cpu[name] += server.cpu_seconds() - c
                if not answer or (isinstance(answer, str) and answer.startswith("Nothing in memory")):
                    empty[name] += 1
        requests_per_call = mcp_requests[0] / len(timed)
        during = {k: v - before[k] for k, v in cpu_split(server).items()}
    return {
        "first_search_s": first_s,
        "vector_turns_of_last_conversation": len(only_vector),
        "times": times,
        "server_cpu_ms_per_call": {name: 1000 * v / len(timed) for name, v in cpu.items()},
        "empty": empty,
        "mcp_http_requests_per_call": requests_per_call,
        "cpu_s_during_timing": during,
    }


def settle(server: Server, quiet: float = 0.05, timeout_s: float = 60.0) -> None:
    """Wait until the server has finished starting up (models loading in the background): until it
    uses less than ``quiet`` of a CPU over a second, for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c = server.cpu_seconds()
        time.sleep(1.0)
        if server.cpu_seconds() - c < quiet:
            return
    print(f"the server still keeps a CPU busy after {timeout_s:.0f} s; timing anyway")


def cpu_split(server: Server) -> dict[str, float]:
    """CPU seconds so far: the whole machine's (busy), the server's, this process's, and the wall clock."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    mine = os.times()
    return {
        "machine": busy,
        "server": server.cpu_seconds(),
        "client": mine.user + mine.system,
        "wall": time.monotonic(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10_000, help="turns the user holds (default 10000)")
    parser.add_argument("--queries", type=int, default=200, help="timed calls each way (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls each way first (default 10)")
    parser.add_argument(
        "--pool", type=int, default=1000, help="distinct sentences embedded with the model for the turns (default 1000)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting or environment variable, e.g. --env EMBEDDINGS_THREADS=2 (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.turns < 1 or args.queries < 1:
        parser.error("--turns and --queries must be at least 1")

    print_machine()
    load_before = os.getloadavg()
    from memory.search.embeddings import LocalEmbedder

    embedder = LocalEmbedder()  # the server's default: all-MiniLM-L6-v2, one thread a call
    pool = memory_sentences(args.pool)
    pool_vectors = embed_texts(embedder, pool, label="pool sentences")
    turns, vectors = memory_turns(args.turns, pool, pool_vectors, uid=UID)
    calls = queries(args.queries + args.warmup)
    # What one query's embedding costs in process: the larger part of either path's time.
    embedder.embed_one(calls[0]["query"])
    t = time.perf_counter()
    for call in calls[:40]:
        embedder.embed_one(call["query"])
    embed_ms = (time.perf_counter() - t) * 1000 / len(calls[:40])
    del embedder

    server = Server(parse_env(args.env))
    try:
        from app.ops.keys import write_key_file
        from memory.store.crypto import Keyring, install

        keyring = Keyring.generate()  # the server's key file, so it can read the index files seeded here
        write_key_file(server.data_dir / "keys" / "omi-letta.key", keyring)
        install(keyring)
        folder = server.data_dir / "index"
        seed_indexes(folder, turns, vectors, progress=True)
        counts = indexed_counts(folder, UID)
        if counts != {"vector": len(turns), "lexical": len(turns)}:
            raise SystemExit(f"the index files hold {counts} turns of {UID}, not {len(turns)}")
        print(f"indexed: {counts['vector']} turns (vector), {counts['lexical']} (lexical)")
    except BaseException:
        server.__exit__(None, None, None)
        raise
    with server:
        settle(server)
        extra = f" with {', '.join(args.env)}" if args.env else ""
        print(f"server up at {server.base}{extra}; timing {args.queries} queries each way after {args.warmup} warm-up")
        got = asyncio.run(measure(server, turns, calls[args.warmup :], calls[: args.warmup]))
        warnings = server.log_warnings()
    load_after = os.getloadavg()

    times = got["times"]
    stats = {
        name: {
            "n": len(v),
            "p50": pct(v, 50),
            "p95": pct(v, 95),
            "p99": pct(v, 99),
            "max": max(v),
            "server_cpu_ms": got["server_cpu_ms_per_call"][name],
            "empty_answers": got["empty"][name],
        }
        for name, v in times.items()
    }
    print()
    rows: list[list[Any]] = [
        [name, s["n"], s["p50"], s["p95"], s["p99"], s["max"], s["server_cpu_ms"]] for name, s in stats.items()
    ]
    print(table(["measure (ms)", "n", "p50", "p95", "p99", "max", "server CPU"], rows))
    diffs = [a - b for a, b in zip(times[MCP], times[HTTP], strict=True)]
    print(
        f"MCP over plain HTTP, query by query: p50 {pct(diffs, 50):+.2f} ms, p95 {pct(diffs, 95):+.2f} ms; "
        f"{got['mcp_http_requests_per_call']:.2f} HTTP requests per tools/call"
    )
    print(
        f"{len(turns)} turns in {len({t.conversation_id for t in turns})} conversations; "
        f"first search (reads the user's indexes from the files) {got['first_search_s']:.2f} s; "
        f"one query embedding in process {embed_ms:.1f} ms; "
        f"empty answers: {stats[MCP]['empty_answers']} (MCP), {stats[HTTP]['empty_answers']} (HTTP)"
    )
    c = got["cpu_s_during_timing"]
    others = max(0.0, c["machine"] - c["server"] - c["client"])
    print(
        f"CPU while timing ({c['wall']:.1f} s on {os.cpu_count()} CPUs): server {c['server']:.1f} s, "
        f"this client {c['client']:.1f} s, other processes {others:.1f} s"
    )
    p95 = stats[MCP]["p95"]
    verdict = "PASS" if p95 <= TARGET_P95_MS else "FAIL"
    print(f"target: MCP search_memory p95 <= {TARGET_P95_MS:.0f} ms at {len(turns)} turns -> {p95:.1f} ms {verdict}")
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    if warnings:
        print(f"server log warnings ({len(warnings)}):", *warnings[:10], sep="\n  ")
    save_json(
        args.json,
        {
            "turns": len(turns),
            "queries": args.queries,
            "warmup": args.warmup,
            "pool": args.pool,
            "server_env": parse_env(args.env),
            "latency_ms": stats,
            "mcp_minus_http_ms": {"p50": pct(diffs, 50), "p95": pct(diffs, 95)},
            "mcp_http_requests_per_call": got["mcp_http_requests_per_call"],
            "first_search_s": got["first_search_s"],
            "query_embed_ms_in_process": embed_ms,
            "vector_turns_of_last_conversation": got["vector_turns_of_last_conversation"],
            "cpu_s_during_timing": {**c, "others": others},
            "target_p95_ms": TARGET_P95_MS,
            "verdict": verdict,
            "load_average": {"before": load_before, "after": load_after},
        },
    )
    assert not math.isnan(p95)


if __name__ == "__main__":
    main()
