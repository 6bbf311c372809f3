"""Running the service: `serve`, the local Letta server, and `doctor`."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import load_settings

if TYPE_CHECKING:
    pass

import signal
import sys

from app.cli.cli_support import Commands, Handler, unlock_data
from app.ops.letta_local import LocalLetta, LocalLettaError, log_tail

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    serve = commands.add_parser("serve", help="run the service (WebSocket /v4/listen, HTTP API, /docs)")
    serve.add_argument("--host", help="bind address (default: HOST setting, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT setting, 8000)")

    local = commands.add_parser(
        "letta-local",
        help="run a local Letta server (for development and tests)",
        description="Run the pinned open-source Letta server (0.16.8) on 127.0.0.1 with its own PostgreSQL and "
        "pgvector, until Ctrl-C. The first run installs it into its own virtual environment under DIR (about "
        "1 GB, under a minute with uv); later runs reuse the environment, the database and the schema. Logs go "
        "to DIR/logs. When LETTA_API_KEY is set, the server requires it. Nothing is sent off the machine.",
    )
    local.add_argument("--port", type=int, help="server port (default: LETTA_LOCAL_PORT setting, 8283)")
    local.add_argument("--dir", type=Path, metavar="DIR", help="where it lives (default: DATA_DIR/letta)")
    local.add_argument(
        "--unless-configured",
        action="store_true",
        help="do nothing when LETTA_BASE_URL is set (how `make run` starts it beside the service)",
    )

    doctor = commands.add_parser(
        "doctor",
        help="show which data goes to which host, and check that each backend answers",
        description="For the current settings (.env and the environment): every backend, what it is sent "
        "(audio, transcripts, embeddings) and to which host, whether PRIVACY_MODE allows it, and whether it "
        "is reachable and accepts its credentials; and users with more than one Letta agent (`omi-letta "
        "merge-agents` merges them). Exits 1 if anything is refused or failing.",
    )
    doctor.add_argument("--offline", action="store_true", help="only show the data flows; reach nothing")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http.server import configure_logging, create_app
    from app.service.services import check_can_serve

    settings = load_settings()
    server = replace(settings.server, host=args.host or settings.server.host, port=args.port or settings.server.port)
    settings = replace(settings, server=server)  # the port also tells Letta where our embeddings are
    configure_logging(settings.server.log_level)
    check_can_serve(settings)  # fail before binding the port
    unlock_data(settings)  # a key that does not fit the data, too
    uvicorn.run(
        create_app(settings),
        host=server.host,
        port=server.port,
        log_level=settings.server.log_level.lower(),
        # /v4/listen closes with 1009 and a reason over WS_MAX_FRAME_BYTES; the protocol layer refuses
        # (also with 1009) what is far over it before reading it in.
        ws_max_size=2 * settings.stream.max_frame_bytes,
        # Open streams (a device's, a web page's) get this long to finish before shutdown goes on.
        timeout_graceful_shutdown=10,
    )
    return 0


def _letta_local(args: argparse.Namespace) -> int:

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere; `serve` checks the rest
    if args.unless_configured and settings.letta.base_url:
        print(f"letta-local: LETTA_BASE_URL is set ({settings.letta.base_url}); not starting a local Letta server")
        return 0
    root = args.dir or settings.server.data_dir / "letta"
    # The server's agents embed through this service's /v1/embeddings, as a user named `letta`.
    service = (f"{settings.service_url}/v1", f"{settings.auth.admin_key}letta")
    return run_forever(root, args.port or settings.letta.local_port, password=settings.letta.api_key, service=service)


def _doctor(args: argparse.Namespace) -> int:
    from app.ops.doctor import agent_problems, check_all, report

    settings = load_settings(enforce_privacy=False)  # show what the privacy mode would refuse
    checked = None if args.offline else asyncio.run(check_all(settings))
    problems = None if args.offline else asyncio.run(agent_problems(settings))
    text, ok = report(settings, checked, problems)
    print(text)
    return 0 if ok else 1


HANDLERS: dict[str, Handler] = {
    "serve": _serve,
    "letta-local": _letta_local,
    "doctor": _doctor,
}


def run_forever(root: Path, port: int, password: str = "", service: tuple[str, str] | None = None) -> int:
    """``omi-letta letta-local``: start, print where things are, and stop both on Ctrl-C or SIGTERM."""

    def say(line: str) -> None:
        print(f"letta-local: {line}", flush=True)

    def interrupt(signum: int, frame: object) -> None:
        # Once: a second Ctrl-C, or make's SIGTERM after it, must not interrupt the shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    # Make a backgrounded run (`make run`) stop on SIGINT and SIGTERM as well.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    letta = LocalLetta(root, port, password=password, service=service, progress=say)
    try:
        url = letta.start()
        say(f"ready: LETTA_BASE_URL={url}  (data: {letta.pg_root / 'data'}, logs: {letta.logs}); Ctrl-C stops it")
        code = letta.wait()
        say(f"the Letta server exited with status {code}; see {letta.server_log}")
        return 1
    except KeyboardInterrupt:
        return 0
    except LocalLettaError as exc:
        print(f"omi-letta letta-local: {exc}", file=sys.stderr)
        if exc.log is not None and exc.log.is_file():
            print(log_tail(exc.log), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        letta.stop()
