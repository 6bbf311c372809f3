"""Load: N simultaneous real-time device streams held for ``--minutes`` (default 10) on loopback.

Each of N clients (a different user each) streams ``opus_fs320`` speech at real time, one 20 ms
Opus packet per message, for the whole run: espeak-ng sentences with 1-3 s pauses, and every
``--conversation-s`` a silence longer than the conversation timeout, so conversations close,
are stored and delivered (vector index, and Letta with ``--config LETTA_BASE_URL=...``) while the
other streams go on, as a day of real devices would. Server: ``CONVERSATION_TIMEOUT_MIN_S`` and the
clients' ``conversation_timeout`` are ``--timeout`` (default 30 s) so the run sees many closes.

Every ``--sample-s`` the server's resident memory (VmRSS), CPU use and ``/metrics`` are sampled.
Reported:
- per minute: final-segment lag p50/p95 (end of an utterance's last packet → its final segment),
  server cores, RSS, audio dropped, outbox backlog;
- side by side, minute 1 (the baseline) against the last minute: lag p95, RSS, server cores;
- memory growth over the run (RSS at the end of minute 1 → at the end of the run);
- frames dropped: ``audio_dropped_seconds_total`` on the server, and packets not sent by the clients;
- delivery backlog (``outbox_pending_*``) when the streams end, and how long it takes to drain.
The streams hold when lag p95 stays under ``--threshold`` in every minute, no frame is dropped, every
utterance gets a final segment and the backlog drains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
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
    Utt,
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--streams", type=int, default=12, help="simultaneous streams (default 12)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long every stream lasts, min (default 10)")
    p.add_argument(
        "--conversation-s", type=float, default=150.0, help="speech between conversation breaks, s (default 150)"
    )
    p.add_argument("--timeout", type=int, default=30, help="conversation_timeout of the streams, s (default 30)")
    p.add_argument("--threshold", type=float, default=2.0, help="p95 lag that still holds, s (default 2.0)")
    p.add_argument("--sample-s", type=float, default=10.0, help="sampling interval of the server, s (default 10)")
    p.add_argument("--drain-s", type=float, default=180.0, help="longest wait for the backlog to drain (default 180)")
    p.add_argument(
        "--config", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]", help="extra server settings"
    )
    p.add_argument("--seed", type=int, default=11, help="random seed of the stream contents (default 11)")
    p.add_argument("--rate", type=int, default=160, help="espeak-ng words per minute (default 160)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


@dataclass
class LongTrack:
    """A long recording made of conversations separated by silences longer than the timeout."""

    track: Track
    parts: list[list[int]]  # utterance indexes of each conversation
    breaks: list[int]  # sample where each silence between conversations is half over


def make_long_track(
    seconds: float, conversation_s: float, gap_s: float, voice: str, seed: int, clips: dict[tuple[str, str], NDArray]
) -> LongTrack:
    """About ``seconds`` of speech and pauses for one device, with a ``gap_s`` silence every ``conversation_s``."""
    rng = np.random.default_rng(seed)
    lead = float(rng.uniform(0.2, 5.0))
    audio: list[NDArray[np.float32]] = [np.zeros(int(lead * SAMPLE_RATE), np.float32)]
    utts: list[Utt] = []
    parts: list[list[int]] = [[]]
    breaks: list[int] = []
    pos = audio[0].size
    since_break = 0.0
    while pos / SAMPLE_RATE < seconds - 10.0:
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        clip = clips[(text, voice)]
        utts.append(Utt(pos, pos + clip.size, text))
        parts[-1].append(len(utts) - 1)
        pause = float(rng.uniform(1.0, 3.0))
        since_break += clip.size / SAMPLE_RATE + pause
        if since_break >= conversation_s and pos / SAMPLE_RATE + gap_s < seconds - 30.0:
            pause, since_break = gap_s, 0.0
            breaks.append(pos + clip.size + int(gap_s / 2 * SAMPLE_RATE))
            parts.append([])
        silence = np.zeros(int(pause * SAMPLE_RATE), np.float32)
        audio += [clip, silence]
        pos += clip.size + silence.size
    audio.append(np.zeros(int(1.5 * SAMPLE_RATE), np.float32))
    return LongTrack(Track(np.concatenate(audio), utts), [p for p in parts if p], breaks)


def utterance_lags(result: StreamResult, long: LongTrack, period: float) -> list[tuple[float, float | None]]:
    """(end of utterance on the stream's clock, lag or None) for every utterance.

    Segment times count from each conversation's start, so messages are split at the breaks
    (a message belongs to the conversation being spoken when it arrived) and matched per part.
    """
    samples_per_packet = round(period * SAMPLE_RATE)
    cut_times = [
        result.send_times[min(b // samples_per_packet, len(result.send_times) - 1)]
        for b in long.breaks
        if result.send_times
    ]
    out: list[tuple[float, float | None]] = []
    for k, part in enumerate(long.parts):
        lo = cut_times[k - 1] if k > 0 and k - 1 < len(cut_times) else -np.inf
        hi = cut_times[k] if k < len(cut_times) else np.inf
        sub = StreamResult(
            send_times=result.send_times, messages=[m for m in result.messages if lo <= m[0] < hi], started=0.0
        )
        track = Track(long.track.audio, [long.track.utts[i] for i in part])
        lags = final_lags(sub, track, period)
        out += [(u.end_s, lag) for u, lag in zip(track.utts, lags.lags, strict=True)]
    return out


@dataclass
class Sample:
    """The server at one moment of the run."""

    t: float  # seconds since the streams started
    rss_mb: float
    cpu_s: float
    metrics: dict[str, float] = field(default_factory=dict)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pending(metrics: dict[str, float]) -> float:
    """Outbox records waiting, over every sink."""
    return sum(v for k, v in metrics.items() if k.startswith("omi_letta_outbox_pending_"))


class Sampler(threading.Thread):
    """Samples the server every ``interval`` seconds until stopped."""

    def __init__(self, server: Server, interval: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.server, self.interval, self.t0 = server, interval, t0
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def sample(self) -> Sample:
        assert self.server.proc is not None
        s = Sample(
            time.monotonic() - self.t0, rss_mb(self.server.proc.pid), self.server.cpu_seconds(), self.server.metrics()
        )
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sample()
            except OSError as exc:  # the server went away: reported by the streams
                print(f"  sampler: {exc}", flush=True)


def counter(samples: list[Sample], name: str, a: int, b: int) -> float:
    """Increase of counter ``omi_letta_<name>`` between samples ``a`` and ``b``."""
    key = f"omi_letta_{name}"
    return samples[b].metrics.get(key, 0.0) - samples[a].metrics.get(key, 0.0)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    require_tools("espeak-ng", "sox")
    print_machine()
    seconds = args.minutes * 60.0
    gap_s = args.timeout + 12.0
    voices = [VOICES[i % len(VOICES)] for i in range(args.streams)]
    with tempfile.TemporaryDirectory(prefix="omi-bench-load-") as tmp:
        needed = sorted({(t, v) for v in voices for t in SENTENCES})
        clips = dict(zip(needed, synth_many(needed, args.rate, Path(tmp)), strict=True))
        warm_track = build_track(
            synth_many([(WARMUP_SENTENCE, VOICES[0])], args.rate, Path(tmp)),
            [WARMUP_SENTENCE],
            [],
            lead_s=0.5,
            tail_s=1,
        )
    longs = [
        make_long_track(seconds, args.conversation_s, gap_s, voices[i], args.seed + i, clips)
        for i in range(args.streams)
    ]
    encoded = [encode(lt.track) for lt in longs]
    period = encoded[0][1]
    print(
        f"{args.streams} streams of {seconds / 60:.1f} min, {np.mean([len(lt.track.utts) for lt in longs]):.0f} "
        f"utterances and {np.mean([len(lt.parts) for lt in longs]):.1f} conversations each",
        flush=True,
    )
    env = {
        "CONVERSATION_TIMEOUT_MIN_S": str(args.timeout),
        "CONVERSATION_SWEEP_INTERVAL_S": "1",
        **parse_env(args.config),
    }
    with Server(env) as server:
        print(f"server {server.base} env={env}", flush=True)
        asyncio.run(stream_packets(server.ws_url, f"{ADMIN_KEY}warmup", *encode(warm_track), settle_s=1.0))
        url = f"{server.ws_url}"
        start_at = time.monotonic() + 2.0
        sampler = Sampler(server, args.sample_s, start_at)
        sampler.sample()
        sampler.start()

        async def run_all() -> list[StreamResult]:
            return await asyncio.gather(
                *(
                    stream_packets(
                        url,
                        f"{ADMIN_KEY}load{i}",
                        packets,
                        period,
                        start_at=start_at,
                        settle_s=5.0,
                        query=f"&conversation_timeout={args.timeout}",
                    )
                    for i, (packets, _) in enumerate(encoded)
                )
            )

        results = asyncio.run(run_all())
        streams_end = sampler.sample()
        drained_at: float | None = None
        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline:
            time.sleep(2.0)
            s = sampler.sample()
            # a conversation closes ``timeout`` s after its last speech; its records are queued then
            if s.t > streams_end.t + args.timeout + 5 and pending(s.metrics) == 0:
                drained_at = s.t
                break
        sampler.stopped.set()
        sampler.join()
        warnings = server.log_warnings()
        stored = conversation_counts(server, args.streams)
        turns = turn_count(server, args.streams)
        disk = {
            p.name: p.stat().st_size
            for p in [*server.data_dir.glob("*.db"), *(server.data_dir / "index").glob("*.db")]
            if p.is_file()  # write-ahead logs left out: bounded, and folded in at checkpoints
        }

    samples = sampler.samples
    errors = [r.error for r in results if r.error]
    unsent = sum(len(p) - len(r.send_times) for (p, _), r in zip(encoded, results, strict=True))
    lags = [  # (seconds into the run, lag)
        (end, lag) for r, lt in zip(results, longs, strict=True) for end, lag in utterance_lags(r, lt, period)
    ]
    minutes = int(np.ceil(seconds / 60.0))
    rows = []
    for m in range(minutes):
        in_min = [lag for end, lag in lags if m * 60 <= end < (m + 1) * 60]
        found = [x for x in in_min if x is not None]
        a = max((i for i, s in enumerate(samples) if s.t <= m * 60), default=0)
        b = max((i for i, s in enumerate(samples) if s.t <= (m + 1) * 60), default=len(samples) - 1)
        dt = max(samples[b].t - samples[a].t, 1e-3)
        p50, p95, mx = summary(found)
        rows.append(
            {
                "minute": m + 1,
                "utterances": len(in_min),
                "missing": len(in_min) - len(found),
                "p50": p50,
                "p95": p95,
                "max": mx,
                "cores": (samples[b].cpu_s - samples[a].cpu_s) / dt,
                "rss_mb": samples[b].rss_mb,
                "dropped_s": counter(samples, "audio_dropped_seconds_total", a, b),
                "behind": counter(samples, "stream_behind_total", a, b),
                "backlog": pending(samples[b].metrics),
            }
        )
    print()
    print(
        table(
            [
                "min",
                "utts",
                "missing",
                "lag p50 s",
                "lag p95 s",
                "lag max s",
                "cores",
                "RSS MB",
                "dropped s",
                "behind",
                "backlog",
            ],
            [
                [
                    r["minute"],
                    r["utterances"],
                    r["missing"],
                    r["p50"],
                    r["p95"],
                    r["max"],
                    r["cores"],
                    r["rss_mb"],
                    r["dropped_s"],
                    int(r["behind"]),
                    int(r["backlog"]),
                ]
                for r in rows
            ],
        )
    )
    first, last = rows[0], rows[-1]
    total_dropped = counter(samples, "audio_dropped_seconds_total", 0, len(samples) - 1)
    missing = sum(r["missing"] for r in rows)
    rss_start = first["rss_mb"]
    rss_end = streams_end.rss_mb
    holds = (
        not errors
        and unsent == 0
        and total_dropped == 0
        and missing == 0
        and all(r["p95"] < args.threshold for r in rows if r["utterances"])
        and drained_at is not None
        and stored == [len(lt.parts) for lt in longs]
    )
    print()
    print(f"side by side: minute 1 (baseline) and minute {last['minute']} of the same run")
    print(
        table(
            ["", "lag p95 s", "lag max s", "server cores", "RSS MB"],
            [
                ["minute 1", first["p95"], first["max"], first["cores"], first["rss_mb"]],
                [f"minute {last['minute']}", last["p95"], last["max"], last["cores"], last["rss_mb"]],
            ],
        )
    )
    print()
    print(f"streams: {args.streams}, each {seconds / 60:.1f} min; stream errors: {len(errors)} {errors[:2]}")
    print(
        f"memory: RSS {rss_start:.0f} MB after minute 1 → {rss_end:.0f} MB at the end ({rss_end - rss_start:+.0f} MB)"
    )
    print(f"frames dropped: server audio_dropped_seconds_total {total_dropped:g} s; packets not sent {unsent}")
    print(f"utterances without a final segment: {missing} of {len(lags)}")
    print(
        f"delivery backlog when the streams ended: {int(pending(streams_end.metrics))} records; "
        + (
            f"drained {drained_at - streams_end.t:.0f} s later"
            if drained_at is not None
            else f"NOT drained within {args.drain_s:.0f} s ({int(pending(samples[-1].metrics))} left)"
        )
    )
    expected = [len(lt.parts) for lt in longs]
    print(f"conversations stored per stream: {stored} (spoken: {expected})")
    device_hours = args.streams * seconds / 3600
    per_hour_mb = sum(disk.values()) / device_hours / 1e6
    print(
        f"per device-hour: {turns / device_hours:.0f} turns stored; disk {per_hour_mb:.2f} MB "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sorted(disk.items()))} for {device_hours:.2f} device-hours); "
        f"server CPU {np.mean([r['cores'] for r in rows]) / args.streams * 3600:.0f} core-seconds"
    )
    if warnings:
        print(f"server warnings: {len(warnings)}, e.g. {warnings[0][:160]}")
    print(f"HOLDS: {'yes' if holds else 'NO'} (p95 < {args.threshold:g} s in every minute, nothing dropped, drained)")
    print(f"(machine has {os.cpu_count()} CPUs; clients run on the same machine)")
    save_json(
        args.json,
        {
            "streams": args.streams,
            "minutes": args.minutes,
            "rows": rows,
            "errors": errors,
            "unsent": unsent,
            "dropped_s": total_dropped,
            "rss_start_mb": rss_start,
            "rss_end_mb": rss_end,
            "backlog_at_end": pending(streams_end.metrics),
            "drain_s": None if drained_at is None else drained_at - streams_end.t,
            "holds": holds,
            "turns": turns,
            "disk_bytes": disk,
        },
    )
    return 0 if holds else 1


def turn_count(server: Server, streams: int) -> int:
    """Segments stored over every stream's user, through the API."""
    import json

    total = 0
    for i in range(streams):
        headers = {"Authorization": f"Bearer {ADMIN_KEY}load{i}"}
        req = urllib.request.Request(f"{server.base}/v1/conversations/page?limit=100", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            total += sum(len(c["transcript_segments"]) for c in json.loads(r.read())["items"])
    return total


def conversation_counts(server: Server, streams: int) -> list[int]:
    """Completed conversations each stream's user has, through the API."""
    import json

    counts = []
    for i in range(streams):
        req = urllib.request.Request(
            f"{server.base}/v1/conversations/page?limit=1", headers={"Authorization": f"Bearer {ADMIN_KEY}load{i}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            counts.append(int(json.loads(r.read()).get("total", -1)))
    return counts


if __name__ == "__main__":
    sys.exit(main())
