"""Running it always: `service install | uninstall | status | print` (systemd on Linux, launchd on macOS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.cli_support import Commands, Handler

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    service = commands.add_parser(
        "service",
        help="run omi-letta always: install it as a systemd unit (Linux) or launchd agent (macOS)",
        description="Start `omi-letta serve` at boot and restart it if it stops, with the local Letta server "
        "(`omi-letta letta-local`) as a job of its own unless LETTA_BASE_URL is set. The definitions run the "
        "installed omi-letta by its absolute path in the working directory, which holds .env: the service "
        "reads its settings there, never from the shell that installs it. Output goes to DATA_DIR/logs.",
    )
    verbs = service.add_subparsers(dest="verb", required=True, metavar="VERB")
    helps = {
        "install": "write the definitions, then enable and start them (systemctl / launchctl)",
        "uninstall": "stop and disable them, and delete the definitions",
        "status": "say what is installed, whether it runs, and since when",
        "print": "write the definitions to stdout; nothing is installed",
    }
    for verb, text in helps.items():
        cmd = verbs.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument(
            "--platform",
            choices=("linux", "macos"),
            help="systemd (linux) or launchd (macos); default: this machine's",
        )
        scope = cmd.add_mutually_exclusive_group()
        scope.add_argument(
            "--user",
            dest="system",
            action="store_false",
            default=False,
            help="for your user (default): ~/.config/systemd/user, or ~/Library/LaunchAgents",
        )
        scope.add_argument(
            "--system",
            dest="system",
            action="store_true",
            help="for the machine, run as you (needs root): /etc/systemd/system, or /Library/LaunchDaemons",
        )
        cmd.add_argument(
            "--workdir",
            type=Path,
            default=Path.cwd(),
            metavar="DIR",
            help="the folder holding .env, where the service runs (default: this one)",
        )
        if verb != "print":
            cmd.add_argument(
                "--dir",
                type=Path,
                metavar="DIR",
                help="put the definitions in DIR instead of the service manager's folder (then nothing is started)",
            )
        if verb == "install":
            cmd.add_argument("--no-start", action="store_true", help="only write the definitions")


def _service(args: argparse.Namespace) -> int:
    from app.ops.autostart import AutostartError, current_platform, install, plan, status, uninstall

    name = f"omi-letta service {args.verb}"
    workdir = args.workdir.absolute()
    if args.verb == "install" and not (workdir / ".env").is_file():
        print(
            f"{name}: there is no .env in {workdir}, where the service would run: it would start without "
            "ADMIN_KEY and stop. Write one (`make env`) or give --workdir",
            file=sys.stderr,
        )
        return 2
    try:
        found = plan(
            workdir,
            platform=args.platform or current_platform(),
            system=args.system,
            folder=getattr(args, "dir", None),
        )
        if args.verb == "print":
            for d in found.definitions:
                print(f"# {d.path}")
                print(d.text)
            return 0
        if args.verb == "install":
            lines = install(found, start=not args.no_start)
        elif args.verb == "uninstall":
            lines = uninstall(found)
        else:
            lines = status(found)
    except AutostartError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if args.verb == "install":
        print(f"logs: {found.logs}; `omi-letta service status` says what runs")
    return 0


HANDLERS: dict[str, Handler] = {"service": _service}
