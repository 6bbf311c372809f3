"""The OMI app's conversation list (``GET /v1/conversations``) for a user with 10k conversations.

A fresh ``omi-letta serve`` (its own ``DATA_DIR``, SQLite, default settings, no Letta) holds
``--conversations`` completed conversations of one user, ``--turns`` turns each, written into its
database before anything is timed (``bench/_common.store_synthetic``). Then ``--requests`` requests
of each kind are timed client side, the kinds taking turns request by request:

- **first page**: ``limit=50``, what the app asks for when it opens;
- **deep page**: ``limit=50`` at a random offset (the app scrolling far back);
- **in progress**: ``statuses=in_progress&limit=1``, the app's start-up restore;
- **starred**: ``starred=true&limit=50`` (one conversation in 100 starred);
- **baseline**: ``GET /v1/conversations/{id}``, one conversation by its key, on the same server.

Each page answer is parsed, and its length checked, so a page that is fast because it is empty
does not count.

    .venv/bin/python bench/app_list.py [--conversations 10000] [--turns 8] [--requests 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._common import ADMIN_KEY, Server, pct, print_machine, save_json, store_synthetic, table

UID = "bench-list"
PAGE = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=8, help="turns per conversation")
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print_machine()

    with Server() as server:
        started = time.monotonic()
        turns = store_synthetic({"DATA_DIR": str(server.data_dir)}, UID, args.conversations, args.turns)
        print(f"stored {args.conversations} conversations ({turns} turns) in {time.monotonic() - started:.0f} s")
        headers = {"Authorization": f"Bearer {ADMIN_KEY}{UID}"}
        with httpx.Client(base_url=server.base, headers=headers, timeout=60) as http:
            ids = _all_ids(http, args.conversations)
            for cid in ids[:: max(1, len(ids) // 100)][:100]:
                http.patch(f"/v1/conversations/{cid}/starred", params={"starred": "true"}).raise_for_status()
            kinds = _kinds(ids, args.conversations)
            for request in kinds.values():  # warm-up
                request(http)
            times: dict[str, list[float]] = {name: [] for name in kinds}
            for _ in range(args.requests):
                for name, request in kinds.items():
                    t = time.perf_counter()
                    request(http)
                    times[name].append((time.perf_counter() - t) * 1000)

    rows = [[name, len(ms), pct(ms, 50), pct(ms, 95), max(ms)] for name, ms in times.items()]
    print(f"\n{args.conversations} conversations x {args.turns} turns, one user, SQLite; ms, client side")
    print(table(["request", "n", "p50 ms", "p95 ms", "max ms"], rows))
    save_json(
        args.json,
        {
            "conversations": args.conversations,
            "turns_per_conversation": args.turns,
            "ms": {name: {"p50": pct(ms, 50), "p95": pct(ms, 95), "max": max(ms)} for name, ms in times.items()},
        },
    )


def _all_ids(http: httpx.Client, expected: int) -> list[str]:
    """Every conversation id, through the app's own list (and the check that all are there)."""
    body = http.get("/v1/conversations", params={"limit": 10_000}).json()
    ids = [c["id"] for c in body]
    assert len(ids) == min(expected, 10_000), f"listed {len(ids)} of {expected}"
    return ids


def _kinds(ids: list[str], total: int) -> dict[str, Any]:
    rng = random.Random(7)

    def page(params: dict[str, Any] | Callable[[], dict[str, Any]], expect: int) -> Any:
        def run(http: httpx.Client) -> None:
            got = http.get("/v1/conversations", params=params() if callable(params) else params)
            got.raise_for_status()
            assert len(got.json()) == expect, got.text[:200]

        return run

    def one(http: httpx.Client) -> None:
        got = http.get(f"/v1/conversations/{rng.choice(ids)}")
        got.raise_for_status()
        assert got.json()["id"]

    return {
        "first page (limit=50)": page({"limit": PAGE}, PAGE),
        "deep page (random offset)": page(lambda: {"limit": PAGE, "offset": rng.randrange(total - PAGE)}, PAGE),
        "in progress (limit=1)": page({"statuses": "in_progress", "limit": 1}, 0),
        "starred (limit=50)": page({"starred": "true", "limit": PAGE}, PAGE),
        "baseline: one by id": one,
    }


if __name__ == "__main__":
    main()
