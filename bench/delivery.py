"""Delivery to Letta: turn finalized → passage visible, and backfill throughput.

Runs the pinned local Letta server (``omi-letta letta-local``'s environment, installed on first
use) and a fresh ``omi-letta serve`` delivering to it; agents embed through the service's own
``/v1/embeddings`` (all-MiniLM-L6-v2), as a default install does. Traffic stays on 127.0.0.1.

1. **Latency.** An espeak-ng conversation (two voices, ``--turns`` utterances with pauses) is
   streamed at real time through ``/v4/listen``. For every final segment the client receives, a
   watcher that lists the agent's passages every 50 ms notes when a passage tagged with that turn
   and holding its text appears. Latency = visible − segment received. The service's own
   ``delivery_delay_seconds_letta`` (outbox commit → Letta accepted) is printed beside it.
   Baseline, same run: one direct ``agents.passages.create`` per turn text from this client (what
   any pipeline pays for a Letta insert, with nothing else).
2. **Backfill.** ``--conversations`` × ``--per-conversation`` synthetic turns are stored (nothing
   queued), then ``omi-letta backfill --sink letta`` queues them while the service runs, and the
   service delivers them (passages grouped, batch insert through the agent's archive). Baseline,
   same run: one ``agents.passages.create`` per turn into another agent, for ``--baseline-turns``.

Targets (issue 4): latency p95 ≤ 2 s with Letta up; backfill ≥ 50 turns/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ADMIN_KEY, BIN, SENTENCES, Server, free_port, pct, print_machine, store_synthetic, table

VOICES = ("en-us", "en-us+f3")


def letta_server(root: Path | None) -> tuple[object, str]:
    """The local Letta server (installed on first use), with embeddings authorised as our user ``letta``."""
    from app.ops.letta_local import LocalLetta, default_cache_dir

    # Agents of the bench servers embed through those servers; the model list goes to a closed port.
    service = (f"http://127.0.0.1:{free_port()}/v1", f"{ADMIN_KEY}letta")
    letta = LocalLetta(root or default_cache_dir(), port=free_port(), service=service, progress=print)
    try:
        letta.start()
    except Exception as exc:
        if "another omi-letta letta-local" not in str(exc):
            raise
        scratch = Path(tempfile.mkdtemp(prefix="omi-bench-letta-"))
        scratch.chmod(0o755)
        letta = LocalLetta(scratch, port=free_port(), service=service, venv=letta.venv, progress=print)
        letta.start()
    return letta, letta.base_url


def conversation_wav(turns: int, folder: Path) -> Path:
    """``turns`` espeak sentences, voices alternating, 1.5 s apart, as one 16 kHz WAV."""
    from tests.support import synthesize

    lines = [(VOICES[i % 2], SENTENCES[i % len(SENTENCES)]) for i in range(turns)]
    path, _ = synthesize(lines, folder / "conversation.wav", gap_s=1.5)
    return path


class Watcher(threading.Thread):
    """Lists the agent's passages every ``period_s`` and notes when each turn's current text first shows."""

    def __init__(self, base_url: str, uid: str, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        from letta_client import Letta

        self.client = Letta(base_url=base_url, max_retries=0, timeout=30)
        self.uid = uid
        self.period_s = period_s
        self.wanted: dict[str, str] = {}  # turn id -> text it must show
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        self.agent: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            if self.agent is None:
                found = list(self.client.agents.list(tags=[f"omi-uid:{self.uid}"], limit=1))
                self.agent = found[0].id if found else None
            if self.agent is not None:
                now = time.monotonic()
                for p in self.client.agents.passages.list(self.agent, limit=1000):
                    for tag in p.tags or []:
                        if tag.startswith("turn:"):
                            turn = tag[5:]
                            text = self.wanted.get(turn)
                            if text and text in p.text:
                                self.seen.setdefault((turn, text), now)
            time.sleep(self.period_s)


async def latency(base_url: str, turns: int, folder: Path) -> dict[str, list[float]]:
    from app.cli.simulator import simulate

    wav = conversation_wav(turns, folder)
    env = {"LETTA_BASE_URL": base_url, "LETTA_DELIVERY": "true", "PARTIAL_INTERVAL_S": "0"}
    with Server(env) as server:
        uid = f"bench-{uuid.uuid4().hex[:8]}"
        watcher = Watcher(base_url, uid)
        watcher.start()
        received: dict[tuple[str, str], float] = {}

        def on_segments(segments: list[dict[str, object]]) -> None:
            now = time.monotonic()
            for s in segments:
                key = (str(s["id"]), str(s["text"]).strip())
                watcher.wanted[key[0]] = key[1]
                received.setdefault(key, now)

        await simulate(wav, server.ws_url, token=f"{ADMIN_KEY}{uid}", speed=1.0, settle_s=4.0, on_segments=on_segments)
        # A turn that merged with the next segment is superseded: only its final text must show.
        final = {turn: text for (turn, text) in received}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any((t, x) not in watcher.seen for t, x in final.items()):
            time.sleep(0.1)  # noqa: ASYNC251 - nothing else runs on this loop now
        watcher.stop.set()
        lags = [watcher.seen[(t, x)] - received[(t, x)] for t, x in final.items() if (t, x) in watcher.seen]
        missing = len(final) - len(lags)
        metrics = server.metrics()
        server_p = [
            metrics.get(f'omi_letta_delivery_delay_seconds_letta{{quantile="{q}"}}', float("nan")) for q in (0.5, 0.95)
        ]

        agent = watcher.agent
        assert agent is not None
        direct: list[float] = []
        for text in list(final.values())[:turns]:
            t = time.monotonic()
            watcher.client.agents.passages.create(agent, text=f"[bench] {text}", tags=["bench"])
            direct.append(time.monotonic() - t)
    print(f"latency: {len(final)} final turns, {missing} never seen in Letta")
    return {"ours": lags, "direct": direct, "server": server_p}


def backfill(base_url: str, conversations: int, per: int, baseline_turns: int) -> dict[str, float]:
    from letta_client import Letta

    with Server({"LETTA_BASE_URL": base_url, "LETTA_DELIVERY": "true"}) as server:
        uid = f"backfill-{uuid.uuid4().hex[:8]}"
        turns = store_synthetic({"DATA_DIR": str(server.data_dir)}, uid, conversations, per)
        env = {**os.environ, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY, "LETTA_BASE_URL": base_url}
        env["PORT"] = str(server.port)
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "omi-letta"), "backfill", "--uid", uid, "--sink", "letta"],
            cwd=server.data_dir,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(no output)")
        if done.returncode != 0:
            raise SystemExit(f"backfill failed:\n{done.stderr}\n{server.log_tail()}")
        client = Letta(base_url=base_url, max_retries=0, timeout=60)
        agent = next(iter(client.agents.list(tags=[f"omi-uid:{uid}"], limit=1))).id
        passages = len(list(client.agents.passages.list(agent, limit=10_000)))

        # Baseline: the same kind of turns, one insert each, into a second agent embedding the same way.
        other = client.agents.create(
            name="bench-one-by-one",
            tags=["bench"],
            llm_config={
                "model": "omi-letta",
                "model_endpoint_type": "openai",
                "model_endpoint": f"{server.base}/v1",
                "context_window": 8192,
            },
            embedding_config={
                "embedding_endpoint_type": "openai",
                "embedding_endpoint": f"{server.base}/v1",
                "embedding_model": "all-MiniLM-L6-v2",
                "embedding_dim": 384,
            },
        )
        t = time.monotonic()
        for i in range(baseline_turns):
            client.agents.passages.create(other.id, text=f"[2025-10-28 10:02] me: {SENTENCES[i % len(SENTENCES)]}")
        one_by_one = time.monotonic() - t
        client.agents.delete(other.id)
    return {
        "turns": turns,
        "passages": passages,
        "seconds": elapsed,
        "rate": turns / elapsed,
        "baseline_turns": baseline_turns,
        "baseline_seconds": one_by_one,
        "baseline_rate": baseline_turns / one_by_one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=16, help="utterances in the streamed conversation (default 16)")
    parser.add_argument("--conversations", type=int, default=20, help="conversations to backfill (default 20)")
    parser.add_argument("--per-conversation", type=int, default=50, help="turns per conversation (default 50)")
    parser.add_argument("--baseline-turns", type=int, default=100, help="one-by-one inserts timed (default 100)")
    parser.add_argument("--letta-dir", type=Path, help="local Letta directory (default: the tests' cache)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-backfill", action="store_true")
    args = parser.parse_args()

    print_machine()
    letta, base_url = letta_server(args.letta_dir)
    try:
        if not args.skip_latency:
            with tempfile.TemporaryDirectory() as folder:
                got = asyncio.run(latency(base_url, args.turns, Path(folder)))
            rows = [
                ["turn finalized → passage visible (watcher)", *_stats(got["ours"])],
                ["baseline: one direct passages.create", *_stats(got["direct"])],
            ]
            print(table(["measure (s)", "n", "p50", "p95", "max"], rows, ".3f"))
            print(f"service's delivery_delay_seconds_letta: p50 {got['server'][0]:.3f}, p95 {got['server'][1]:.3f}")
            verdict = "PASS" if got["ours"] and pct(got["ours"], 95) <= 2.0 else "FAIL"
            print(f"target p95 ≤ 2 s: {verdict}")
        if not args.skip_backfill:
            b = backfill(base_url, args.conversations, args.per_conversation, args.baseline_turns)
            rows = [
                ["omi-letta backfill (grouped, batched)", b["turns"], b["passages"], b["seconds"], b["rate"]],
                ["baseline: one passages.create per turn", b["baseline_turns"], b["baseline_turns"],
                 b["baseline_seconds"], b["baseline_rate"]],
            ]  # fmt: skip
            print(table(["backfill", "turns", "passages", "s", "turns/s"], rows, ".1f"))
            print(f"target ≥ 50 turns/s: {'PASS' if b['rate'] >= 50 else 'FAIL'}")
    finally:
        letta.stop()  # type: ignore[attr-defined]


def _stats(values: list[float]) -> list[object]:
    if not values:
        return [0, float("nan"), float("nan"), float("nan")]
    return [len(values), pct(values, 50), pct(values, 95), max(values)]


if __name__ == "__main__":
    main()
