"""How many simultaneous real-time ``opus_fs320`` streams one server holds with segment lag p95 < 2 s.

For each N (``--streams``, default 1,2,4,6,8,10,12) N clients stream at once to a fresh
``omi-letta serve`` (token ``ADMIN_KEY + uid``: every stream is a different user). Each streams
``--seconds`` of espeak-ng speech (its own voice, sentence order, 1-3 s pauses and 0.2-5 s of
leading silence, so the streams are out of step as real devices are) at real time,
one 20 ms Opus packet per message, with the server's default partial results on.

Segment lag = arrival of an utterance's final segment − sending of the packet holding its last
sample (a final not received within 5 s of quiet after the stream ends counts as missing, and
an N with a missing final fails). Per N: lag p50/p95/max over all utterances of all streams; the server's counters from
GET /metrics (``audio_dropped_seconds_total``, ``partials_skipped_total``,
``stream_behind_total``) for that run; the server's CPU use (cores, out of ``nproc``, averaged
from the first packet to the last segment) and the benchmark client's. The answer is the largest
N with p95 < ``--threshold``. Baseline, side by side in the same run: N=1 (single-stream lag).

``--config`` runs the sweep once per server configuration (e.g. ``STT_WORKERS=1,STT_CPU_THREADS=2``)
and prints them side by side. A sweep stops early once an N is clearly overloaded (p95 ≥ twice the
threshold, a stream error or an utterance without a final segment) unless ``--keep-going``.
The clients run on the same machine as the server (their CPU use is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ADMIN_KEY,
    SAMPLE_RATE,
    SENTENCES,
    VOICES,
    WARMUP_SENTENCE,
    Server,
    StreamResult,
    Track,
    build_track,
    encode,
    final_lags,
    parse_env,
    print_machine,
    require_tools,
    save_json,
    stream_packets,
    summary,
    synth_many,
    table,
)

COUNTERS = ("audio_dropped_seconds_total", "partials_skipped_total", "stream_behind_total")
TARGET_STREAMS = 8
SETTLE_S = 5.0  # quiet time before a stream closes; a final later than this counts as missing (a fail)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/streams.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--streams", default="1,2,4,6,8,10,12", help="comma-separated stream counts (default 1,2,4,6,8,10,12)"
    )
    p.add_argument("--seconds", type=float, default=40.0, help="length of each stream, s (default 40)")
    p.add_argument("--threshold", type=float, default=2.0, help="p95 lag that still holds, s (default 2.0)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="server settings for one sweep, 'default' for none (repeatable; default: one default sweep)",
    )
    p.add_argument("--keep-going", action="store_true", help="run every N even when one is overloaded")
    p.add_argument("--seed", type=int, default=7, help="random seed of the stream contents (default 7)")
    p.add_argument("--rate", type=int, default=160, help="espeak-ng words per minute (default 160)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


def make_tracks(count: int, seconds: float, seed: int, rate: int, cache: Path) -> list[Track]:
    """``count`` different streams of about ``seconds`` each."""
    voices = [VOICES[i % len(VOICES)] for i in range(count)]
    needed = sorted({(t, v) for v in voices for t in SENTENCES})
    clips = dict(zip(needed, synth_many(needed, rate, cache), strict=True))
    tracks = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        lead = float(rng.uniform(0.2, 5.0))  # random phase: devices do not start in step
        texts: list[str] = []
        audio: list[NDArray[np.float32]] = []
        pauses: list[float] = []
        total = lead
        for j in rng.permutation(len(SENTENCES)):
            text = SENTENCES[int(j)]
            clip = clips[(text, voices[i])]
            pause = float(rng.uniform(1.0, 3.0))
            if total + clip.size / SAMPLE_RATE + 1.5 > seconds and texts:
                break
            texts.append(text)
            audio.append(clip)
            pauses.append(pause)
            total += clip.size / SAMPLE_RATE + pause
        tracks.append(build_track(audio, texts, pauses[:-1], lead_s=lead, tail_s=1.5))
    return tracks


@dataclass
class Row:
    """The outcome of one N."""

    n: int
    utterances: int
    missing: int
    errors: int
    p50: float
    p95: float
    max: float
    counters: dict[str, float]
    server_cores: float
    client_cores: float
    wall_s: float
    threshold: float

    @property
    def holds(self) -> bool:
        """p95 under the threshold, every stream completed and every utterance got its final segment."""
        return self.errors == 0 and self.missing == 0 and self.p95 < self.threshold


async def run_streams(
    server: Server, tracks: list[Track], encoded: list[tuple[list[bytes], float]], tag: str
) -> list[StreamResult]:
    """Stream every track at once (after all have connected)."""
    start_at = time.monotonic() + 1.0
    return await asyncio.gather(
        *(
            stream_packets(
                server.ws_url, f"{ADMIN_KEY}{tag}s{i}", packets, period, start_at=start_at, settle_s=SETTLE_S
            )
            for i, (packets, period) in enumerate(encoded[: len(tracks)])
        )
    )


def sweep(
    env: dict[str, str],
    counts: list[int],
    tracks: list[Track],
    encoded: list[tuple[list[bytes], float]],
    warm: tuple[list[bytes], float],
    *,
    threshold: float,
    keep_going: bool,
) -> list[Row]:
    """One server, every N in ``counts``."""
    rows: list[Row] = []
    with Server(env) as server:
        print(f"server {server.base} env={env or 'defaults'}", flush=True)
        asyncio.run(stream_packets(server.ws_url, f"{ADMIN_KEY}warmup", *warm, settle_s=1.0))
        for n in counts:
            before, cpu0, client0, t0 = server.metrics(), server.cpu_seconds(), time.process_time(), time.monotonic()
            results = asyncio.run(run_streams(server, tracks[:n], encoded, f"n{n}"))
            wall = time.monotonic() - t0
            # CPU is averaged over the busy window (first packet → last segment), not the connect/settle time
            busy = max(
                max([r.send_times[-1] for r in results if r.send_times] + [m[0] for r in results for m in r.messages])
                - min(r.started for r in results if r.started),
                1e-3,
            )
            after, cpu1, client1 = server.metrics(), server.cpu_seconds(), time.process_time()
            lags: list[float] = []
            missing = errors = utterances = 0
            for result, track in zip(results, tracks[:n], strict=True):
                if result.error:
                    errors += 1
                    print(f"  stream error: {result.error}", flush=True)
                got = final_lags(result, track, encoded[0][1])
                lags += got.found
                missing += got.missing
                utterances += len(track.utts)
            p50, p95, mx = summary(lags)
            row = Row(
                n=n,
                utterances=utterances,
                missing=missing,
                errors=errors,
                p50=p50,
                p95=p95,
                max=mx,
                counters={c: after.get(f"omi_letta_{c}", 0.0) - before.get(f"omi_letta_{c}", 0.0) for c in COUNTERS},
                server_cores=(cpu1 - cpu0) / busy,
                client_cores=(client1 - client0) / busy,
                wall_s=wall,
                threshold=threshold,
            )
            rows.append(row)
            print(
                f"  N={n:2d}: lag p50 {p50:.2f} p95 {p95:.2f} max {mx:.2f} s, {missing} missing, "
                f"server {row.server_cores:.2f} cores, client {row.client_cores:.2f} cores "
                + " ".join(f"{c}={v:g}" for c, v in row.counters.items()),
                flush=True,
            )
            if not keep_going and (row.errors or row.missing or row.p95 >= 2 * threshold):
                print("  (stopping this sweep: overloaded; --keep-going runs the rest)", flush=True)
                break
        warnings = server.log_warnings()
    if warnings:
        print(f"  server warnings: {len(warnings)}, e.g. {warnings[0][:160]}", flush=True)
    return rows


def render(rows: list[Row]) -> str:
    return table(
        [
            "N",
            "utts",
            "missing",
            "lag p50 s",
            "lag p95 s",
            "lag max s",
            "dropped s",
            "partials skipped",
            "behind",
            "server cores",
            "client cores",
            "holds",
        ],
        [
            [
                r.n,
                r.utterances,
                r.missing + r.errors,
                r.p50,
                r.p95,
                r.max,
                r.counters["audio_dropped_seconds_total"],
                int(r.counters["partials_skipped_total"]),
                int(r.counters["stream_behind_total"]),
                r.server_cores,
                r.client_cores,
                "yes" if r.holds else "NO",
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    counts = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    configs = [{} if c.strip() in ("", "default") else parse_env([c]) for c in (args.config or ["default"])]
    require_tools("espeak-ng", "sox")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="omi-bench-streams-") as tmp:
        cache = Path(tmp)
        tracks = make_tracks(max(counts), args.seconds, args.seed, args.rate, cache)
        encoded = [encode(t) for t in tracks]
        warm_track = build_track(
            synth_many([(WARMUP_SENTENCE, VOICES[0])], args.rate, cache), [WARMUP_SENTENCE], [], lead_s=0.5, tail_s=1.5
        )
        warm = encode(warm_track)
    speech = np.mean([sum(u.seconds for u in t.utts) / t.seconds for t in tracks])
    print(
        f"{len(tracks)} distinct streams of {np.mean([t.seconds for t in tracks]):.0f} s, "
        f"{np.mean([len(t.utts) for t in tracks]):.0f} utterances each, {speech:.0%} speech",
        flush=True,
    )
    results: list[tuple[dict[str, str], list[Row]]] = []
    for env in configs:
        results.append(
            (env, sweep(env, counts, tracks, encoded, warm, threshold=args.threshold, keep_going=args.keep_going))
        )

    print()
    summary_rows = []
    for env, rows in results:
        label = ",".join(f"{k}={v}" for k, v in env.items()) or "default (STT_WORKERS=2, STT_CPU_THREADS=1)"
        print(f"### {label}")
        print(render(rows))
        held = [r.n for r in rows if r.holds]
        best = max(held) if held else 0
        base = rows[0] if rows and rows[0].n == 1 else None
        summary_rows.append(
            [
                label,
                base.p95 if base else float("nan"),
                best,
                "PASS" if best >= TARGET_STREAMS else "FAIL",
            ]
        )
        print()
    print(f"largest N with p95 < {args.threshold:g} s (target ≥ {TARGET_STREAMS}); baseline = single-stream p95 lag")
    print(table(["server config", "baseline N=1 p95 s", "largest N", f"≥ {TARGET_STREAMS}"], summary_rows))
    print(f"(machine has {os.cpu_count()} CPUs)")
    save_json(
        args.json,
        {"configs": [{"env": env, "rows": [r.__dict__ for r in rows]} for env, rows in results]},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
