"""``omi-letta sync``: the device's offline recordings from a terminal, uploaded to a server or ingested here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.cli_support import Commands, Handler, print_json
from app.settings import load_settings

__all__ = ["HANDLERS", "add_parsers"]

POLL_S = 0.5


def add_parsers(commands: Commands) -> None:
    """Add the ``sync`` command."""
    sync = commands.add_parser(
        "sync",
        help="add the OMI device's offline recordings (audio_*.bin files) to a user's conversations",
        description="Add the files the OMI app keeps while the device is away from the phone "
        "(audio_{device}_{codec}_{rate}_{channels}_fs{frame}_{timestamp}.bin) to a user's conversations, as the "
        "app's offline sync does: each piece of speech joins the conversation it overlaps or lies nearest to, or "
        "starts one at its own time. The same files again add nothing. With --url they are uploaded to a "
        "running service (POST /v2/sync-local-files); without, they are processed here and the running service "
        "delivers them to Letta and the memory index.",
    )
    sync.add_argument("files", nargs="+", type=Path, metavar="FILE")
    sync.add_argument("--uid", default="123", help="owner of the conversations (default: 123)")
    sync.add_argument("--language", default="en", help="spoken language (default: en)")
    sync.add_argument("--url", help="upload to this service instead (e.g. http://127.0.0.1:8000)")
    sync.add_argument("--token", help="bearer token for --url (default: ADMIN_KEY followed by --uid)")
    sync.add_argument("--json", action="store_true", help="print the job as JSON to stdout")


def _sync(args: argparse.Namespace) -> int:
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"omi-letta sync: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    uploads = [(f.name, f.read_bytes()) for f in args.files]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    view = _upload(args, uploads) if args.url else asyncio.run(_here(args, uploads))
    if view is None:
        return 1
    if args.json:
        print_json(view)
    result = view.get("result") or {}
    print(
        f"{view.get('status')}: {len(result.get('new_memories', []))} new and "
        f"{len(result.get('updated_memories', []))} extended conversation(s) from {view.get('total_segments', 0)} "
        f"piece(s) of speech",
        file=sys.stderr,
    )
    for error in result.get("errors", []):
        print(f"  {error}", file=sys.stderr)
    return 0 if view.get("status") == "completed" else 1


def _bar(total_files: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=0, unit="piece", file=sys.stderr, disable=not sys.stderr.isatty(), desc=f"{total_files} file(s)")


def _show(bar: Any, view: dict[str, Any]) -> None:
    bar.total = view.get("total_segments", 0)
    bar.n = view.get("processed_segments", 0)
    bar.set_postfix(status=view.get("status"), failed=view.get("failed_segments", 0))
    bar.refresh()


def _refused(body: dict[str, Any]) -> None:
    for error in body.get("errors", []):
        print(f"omi-letta sync: {error['detail']}", file=sys.stderr)


def _upload(args: argparse.Namespace, uploads: list[tuple[str, bytes]]) -> dict[str, Any] | None:
    """POST the files to ``--url`` and follow the job; its last state."""
    token = args.token or f"{load_settings().auth.admin_key}{args.uid}"
    base = args.url.rstrip("/")
    files = [("files", (name, body, "application/octet-stream")) for name, body in uploads]
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
        try:
            reply = http.post(f"{base}/v2/sync-local-files", files=files, params={"language": args.language})
        except httpx.HTTPError as exc:
            print(f"omi-letta sync: cannot reach {base}: {exc}", file=sys.stderr)
            return None
        body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
        if reply.status_code == 409:
            print("omi-letta sync: these files are being processed already; try again shortly", file=sys.stderr)
            return None
        if reply.status_code not in (202, 400, 413) or "job_id" not in body:
            _refused(body)
            print(
                f"omi-letta sync: the service answered {reply.status_code}: {body.get('detail', '')}", file=sys.stderr
            )
            return None
        _refused(body)
        with _bar(len(uploads)) as bar:
            while True:
                view = http.get(f"{base}/v2/sync-local-files/{body['job_id']}").json()
                _show(bar, view)
                if view.get("status") in ("completed", "partial_failure", "failed"):
                    return dict(view)
                time.sleep(POLL_S)


async def _here(args: argparse.Namespace, uploads: list[tuple[str, bytes]]) -> dict[str, Any] | None:
    """Process the files in this process; the job's last state."""
    from app.http.sync_routes import job_view
    from app.service.services import Services

    services = await Services.start(load_settings(), queue=True, deliver=False)
    try:
        assert services.sync is not None
        submission = await services.sync.submit(args.uid, uploads, language=args.language)
        for refused in submission.rejected:
            print(f"omi-letta sync: {refused.detail}", file=sys.stderr)
        if submission.job is None:
            return None
        job_id = submission.job.id
        running = asyncio.create_task(services.sync.run(job_id))
        with _bar(len(uploads)) as bar:
            while not running.done():
                job = await services.sync.jobs.get(job_id)
                if job is not None:
                    _show(bar, job_view(job))
                await asyncio.wait({running}, timeout=POLL_S)
            job = running.result() or await services.sync.jobs.get(job_id)
            assert job is not None
            view = job_view(job)
            _show(bar, view)
        return view
    finally:
        await services.stop()


HANDLERS: dict[str, Handler] = {"sync": _sync}
