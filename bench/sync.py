"""Offline sync: throughput on an hour of device audio, and what it costs a live stream meanwhile.

An hour of the OMI device's offline recordings is built the way the device keeps them: sixty
60 s files of ``opus_fs320`` frames (written as the OMI app writes them), about half of the time
speech (distinct espeak-ng sentences, in stretches that become conversations), the rest silence.
It is uploaded to a fresh ``omi-letta serve`` with ``POST /v2/sync-local-files``, and the job is
polled until it ends.

- Throughput: audio seconds / wall seconds from the upload to the job's end, as a multiple of
  real time (decode, VAD, speech-to-text, diarization, voice profiles and storage included).
- Live latency: one real-time ``opus_fs320`` stream (as ``bench/latency.py``: end of utterance
  → final segment) runs while the sync works, and the same stream runs again on the same server
  with no sync, in the same run; both p50/p95 are printed side by side.

The server runs with its defaults (``SYNC_WORKERS=1``, ``STT_WORKERS=2``) and
``LETTA_DELIVERY=false`` (delivery to the index still runs).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ADMIN_KEY,
    SAMPLE_RATE,
    SENTENCES,
    Server,
    build_track,
    encode,
    final_lags,
    print_machine,
    require_tools,
    save_json,
    stream_packets,
    summary,
    synth_many,
    table,
)

FILE_S = 60.0
UPLOAD_BATCH = 4
VOICES = ("en-us", "en-us+f3", "en-gb+m3", "en-us+f4")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="device audio to sync (default: 60)")
    p.add_argument("--speech", type=float, default=0.5, help="share of it that is speech (default: 0.5)")
    p.add_argument("--live-sentences", type=int, default=12, help="utterances of the live stream (default: 12)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    return p


def device_hour(minutes: float, speech: float, seed: int, cache: Path) -> tuple[list[tuple[str, bytes]], float]:
    """The offline files of ``minutes`` of device audio, ``speech`` of it spoken; and its speech seconds."""
    from tests.offline_files import app_file

    rng = random.Random(seed)
    clips = synth_many([(s, VOICES[i % len(VOICES)]) for i, s in enumerate(SENTENCES)], 170, cache)
    total = int(minutes * 60 * SAMPLE_RATE)
    audio = np.zeros(total, dtype=np.float32)
    spoken = 0
    pos = 0
    while pos < total and spoken < speech * total:
        stretch = rng.uniform(60, 240) * SAMPLE_RATE  # a conversation's worth of talk
        end = min(total, pos + int(stretch))
        while pos < end:
            clip = clips[rng.randrange(len(clips))]
            take = min(clip.size, total - pos)
            audio[pos : pos + take] = clip[:take]
            pos += take + int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
            spoken += take
        quiet = (1 - speech) / max(speech, 1e-6) * stretch  # keep the speech share
        pos += int(quiet)
    start = time.time() - minutes * 60 - 3600
    step = int(FILE_S * SAMPLE_RATE)
    files = [app_file(audio[i : i + step], "opus_fs320", start + i / SAMPLE_RATE) for i in range(0, total, step)]
    return files, spoken / SAMPLE_RATE


def upload(server: Server, uid: str, files: list[tuple[str, bytes]]) -> str:
    import httpx

    parts = [("files", (name, body, "application/octet-stream")) for name, body in files]
    reply = httpx.post(
        f"{server.base}/v2/sync-local-files",
        files=parts,
        headers={"Authorization": f"Bearer {ADMIN_KEY}{uid}"},
        timeout=600,
    )
    reply.raise_for_status()
    return str(reply.json()["job_id"])


def job(server: Server, uid: str, job_id: str) -> dict[str, Any]:
    import json

    request = urllib.request.Request(
        f"{server.base}/v2/sync-local-files/{job_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}{uid}"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return dict(json.loads(r.read()))


async def live_stream(server: Server, sentences: int, cache: Path, seed: int) -> list[float]:
    """One real-time stream of ``sentences`` utterances; the end-of-utterance → final-segment lags."""
    rng = random.Random(seed)
    texts = rng.sample(SENTENCES, min(sentences, len(SENTENCES)))
    clips = synth_many([(t, "en-us") for t in texts], 170, cache)
    track = build_track(clips, texts, [2.0] * len(clips), lead_s=0.5, tail_s=2.0)
    packets, period = encode(track)
    result = await stream_packets(server.ws_url, f"{ADMIN_KEY}live-{seed}", packets, period)
    if result.error:
        raise RuntimeError(result.error)
    return final_lags(result, track, period).found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(tempfile.gettempdir()) / "omi-letta-bench-tts"
    cache.mkdir(exist_ok=True)
    files, speech_s = device_hour(args.minutes, args.speech, args.seed, cache)
    audio_s = args.minutes * 60
    print(f"{len(files)} files, {audio_s / 60:.0f} min of device audio, {speech_s / 60:.1f} min of speech", flush=True)
    with Server({"PARTIAL_INTERVAL_S": "0"}) as server:
        idle = await live_stream(server, args.live_sentences, cache, args.seed)  # also warms the models
        started = time.monotonic()
        # The app uploads what it pulled off the device a few files at a time, one job per request.
        job_ids = [
            await asyncio.to_thread(upload, server, "bench-sync", files[i : i + UPLOAD_BATCH])
            for i in range(0, len(files), UPLOAD_BATCH)
        ]
        uploaded = time.monotonic() - started
        live = asyncio.create_task(live_stream(server, args.live_sentences, cache, args.seed + 1))
        states: dict[str, dict[str, Any]] = {}
        while len(states) < len(job_ids):
            for job_id in job_ids:
                if job_id not in states:
                    state = await asyncio.to_thread(job, server, "bench-sync", job_id)
                    if state["status"] in ("completed", "partial_failure", "failed"):
                        states[job_id] = state
            await asyncio.sleep(1.0)
        wall = time.monotonic() - started
        during = await live
        quiet = await live_stream(server, args.live_sentences, cache, args.seed + 2)
    results = [state.get("result") or {} for state in states.values()]
    statuses = sorted({state["status"] for state in states.values()})
    return {
        "audio_s": audio_s,
        "speech_s": speech_s,
        "files": len(files),
        "upload_s": uploaded,
        "wall_s": wall,
        "x_real_time": audio_s / wall,
        "jobs": len(job_ids),
        "status": ",".join(statuses),
        "pieces": sum(state["total_segments"] for state in states.values()),
        "conversations": len({c for r in results for c in r.get("new_memories", []) + r.get("updated_memories", [])}),
        "live_p50_p95_s": {
            "before (no sync)": summary(idle)[:2],
            "during sync": summary(during)[:2],
            "after (no sync)": summary(quiet)[:2],
        },
        "live_found": {"before": len(idle), "during": len(during), "after": len(quiet)},
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    require_tools("espeak-ng", "sox")
    print_machine()
    figures = asyncio.run(run(args))
    print(
        f"sync: {figures['audio_s'] / 60:.0f} min of device audio ({figures['files']} files, {figures['pieces']} "
        f"pieces of speech, {figures['conversations']} conversations) in {figures['wall_s']:.0f} s: "
        f"{figures['x_real_time']:.1f}x real time (upload {figures['upload_s']:.1f} s; job {figures['status']})"
    )
    rows = [[name, p50, p95] for name, (p50, p95) in figures["live_p50_p95_s"].items()]
    print(table(["live stream, end of utterance → final segment", "p50 s", "p95 s"], rows))
    save_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
