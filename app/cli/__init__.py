"""``omi-letta``: the service and its tools (serve, ingest, search, chat, doctor, …); ``--help`` lists them.

Each command group is a module with its parsers and a dispatch table of handlers (``HANDLERS``);
:func:`main` parses, then runs the handler of the command given.
"""

from __future__ import annotations

import argparse
import sys

from app import __version__
from app.cli import admin, audio, deliveries, offline_sync, recall, service_cmds, serving
from app.cli.cli_support import Handler, unlock_data
from app.settings import SettingsError, load_settings

__all__ = ["main"]

GROUPS = (serving, service_cmds, audio, offline_sync, recall, deliveries, admin)
HANDLERS: dict[str, Handler] = {name: run for group in GROUPS for name, run in group.HANDLERS.items()}
"""Every command and the function that runs it."""

READS_STORED_DATA = frozenset(
    {"enroll", "speakers", "search", "outbox", "backfill", "merge-agents", "erase", "purge", "token", "audit"}
)
"""Commands that read or write stored data themselves: they load the encryption key first (serve and ingest
load it in ``Services.start``)."""


def parser() -> argparse.ArgumentParser:
    """The command line of ``omi-letta``."""
    root = argparse.ArgumentParser(
        prog="omi-letta",
        description="OMI-compatible live transcription into stored conversations and your Letta agent's memory.",
    )
    root.add_argument("--version", action="version", version=f"omi-letta {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    try:
        if args.command in READS_STORED_DATA:
            unlock_data(load_settings())
        return HANDLERS[args.command](args)
    except SettingsError as exc:
        print(f"omi-letta: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
