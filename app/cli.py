"""The ``omi-letta`` command: ``serve``, ``ingest`` and ``simulate``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app import __version__
from app.settings import SettingsError, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omi-letta",
        description="OMI-compatible live transcription into stored conversations (and your Letta agent).",
    )
    parser.add_argument("--version", action="version", version=f"omi-letta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service (WebSocket /v4/listen, HTTP API, /docs)")
    serve.add_argument("--host", help="bind address (default: HOST setting, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT setting, 8000)")

    ingest = commands.add_parser("ingest", help="transcribe audio files (WAV, FLAC, MP3, Ogg/Opus) into conversations")
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument("--uid", default="123", help="owner of the stored conversations (default: 123)")
    ingest.add_argument("--language", default="en", help="spoken language (default: en)")
    ingest.add_argument("--json", action="store_true", help="print the conversations as JSON to stdout")
    ingest.add_argument(
        "--no-deliver", action="store_true", help="store only; do not queue delivery to Letta and the vector index"
    )

    sim = commands.add_parser("simulate", help="stream a file to a server as an OMI device would")
    sim.add_argument("file", type=Path, metavar="FILE")
    sim.add_argument("--url", default="ws://127.0.0.1:8000/v4/listen", help="the server's /v4/listen URL")
    sim.add_argument("--codec", default="opus_fs320", choices=("opus_fs320", "opus", "pcm16"))
    sim.add_argument("--token", default="dev-token", help="bearer token: ADMIN_KEY followed by your uid")
    sim.add_argument("--speed", type=float, default=1.0, help="pace at real time × SPEED (default: 1)")
    sim.add_argument("--language", default="en")
    sim.add_argument("--json", action="store_true", help="print the final segment list as JSON to stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ingest":
            return _ingest(args)
        return _simulate(args)
    except SettingsError as exc:
        print(f"omi-letta: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.core import configure_logging, create_app
    from app.services import check_can_serve

    settings = load_settings()
    configure_logging(settings.server.log_level)
    check_can_serve(settings)  # fail before binding the port
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.server.host,
        port=args.port or settings.server.port,
        log_level=settings.server.log_level.lower(),
        ws_max_size=1 << 20,
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from ingest.errors import IngestError

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"omi-letta ingest: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        conversations = asyncio.run(_ingest_files(settings, args))
    except IngestError as exc:
        print(f"omi-letta ingest: {exc.detail}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(conversations, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        for c in conversations:
            print(f"{c['id']}  {c['started_at']}  {len(c['segments'])} segments", file=sys.stderr)
    return 0


async def _ingest_files(settings: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from app.services import Services
    from ingest.batch import transcribe_file
    from ingest.decode import audio_duration
    from memory.store import iso

    durations = [audio_duration(f) for f in args.files]  # fail on a bad file before loading models
    services = await Services.start(settings)
    out: list[dict[str, Any]] = []
    try:
        bar = tqdm(
            total=round(sum(durations), 1),
            unit="s audio",
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
        )
        with bar:
            for path, duration in zip(args.files, durations, strict=True):
                bar.set_description(path.name)
                transcript = await asyncio.to_thread(
                    transcribe_file,
                    path,
                    asr=services.transcriber.asr,
                    diarizer=services.transcriber.diarizer,
                    vad=services.vad,
                    params=services.vad_params(),
                    language=args.language,
                    gap_s=services.settings.conversation.default_timeout_s,
                    started_at=path.stat().st_mtime - duration,
                    hook=bar.update,
                    workers=services.settings.asr.workers,
                )
                for started_at, segments in transcript.conversations:
                    stored = await services.store.add_completed(
                        uid=args.uid,
                        source="sdcard",
                        language=args.language,
                        started_at=started_at,
                        segments=segments,
                        now=time.time(),
                    )
                    out.append(
                        {
                            "id": stored.id,
                            "started_at": iso(stored.started_at),
                            "finished_at": iso(stored.finished_at),
                            "segments": [
                                {
                                    k: getattr(s, k)
                                    for k in ("start", "end", "text", "speaker", "speaker_id", "is_user", "person_id")
                                }
                                for s in stored.segments
                            ],
                        }
                    )
    finally:
        await services.stop()
    return out


def _simulate(args: argparse.Namespace) -> int:
    from app.simulate import SimulatorError, print_live, simulate

    if not args.file.is_file():
        print(f"omi-letta simulate: no such file: {args.file}", file=sys.stderr)
        return 2
    live = sys.stderr if args.json else sys.stdout
    try:
        result = asyncio.run(
            simulate(
                args.file,
                args.url,
                codec=args.codec,
                token=args.token,
                speed=args.speed,
                language=args.language,
                on_segments=lambda segs: print_live(segs, live),
            )
        )
    except SimulatorError as exc:
        print(f"omi-letta simulate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"omi-letta simulate: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(result.ordered(), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
