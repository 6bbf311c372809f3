"""Always on: ``omi-letta serve`` (and the local Letta server) as a launchd agent on macOS or a systemd unit on Linux.

:func:`plan` writes the definitions for one working directory, the one holding ``.env``:

- **Linux**: ``omi-letta.service`` (``Restart=always``) and, unless ``LETTA_BASE_URL`` is set,
  ``omi-letta-letta.service`` running ``omi-letta letta-local``, which the service wants and starts
  after. A user unit (``~/.config/systemd/user``, ``WantedBy=default.target``) or a system one
  (``/etc/systemd/system``, ``User=``, ``WantedBy=multi-user.target``).
- **macOS**: ``com.omi-letta.serve.plist`` and ``com.omi-letta.letta.plist`` (``RunAtLoad``,
  ``KeepAlive``), launch agents of the user (``~/Library/LaunchAgents``) or daemons
  (``/Library/LaunchDaemons``, ``UserName``). launchd knows no order between jobs; the service
  waits out a Letta that starts after it, as it waits out any Letta outage (the outbox).

Each runs the installed ``omi-letta`` by its absolute path, in the working directory, so the app
reads ``.env`` there itself; no variable of the shell that installs them is copied in, only a
``PATH`` that starts with the virtual environment. Output goes to ``DATA_DIR/logs``.

:func:`install`, :func:`uninstall` and :func:`status` drive ``systemctl`` or ``launchctl`` when they
are there, and say what to run when they are not.
"""

from __future__ import annotations

import getpass
import os
import plistlib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LABELS",
    "PLATFORMS",
    "UNITS",
    "AutostartError",
    "Definition",
    "Plan",
    "current_platform",
    "install",
    "plan",
    "status",
    "uninstall",
]

PLATFORMS = ("linux", "macos")
UNITS = {"serve": "omi-letta.service", "letta": "omi-letta-letta.service"}
LABELS = {"serve": "com.omi-letta.serve", "letta": "com.omi-letta.letta"}
DESCRIPTIONS = {
    "serve": "omi-letta: OMI audio into stored conversations and a Letta agent's memory",
    "letta": "omi-letta: the local Letta server (omi-letta letta-local)",
}
LOGS = {"serve": "omi-letta.log", "letta": "letta-local.log"}
TIMEOUT_S = 60


class AutostartError(Exception):
    """The definitions cannot be made or installed; the message says why and what to do."""


@dataclass(frozen=True)
class Definition:
    """One unit or launchd job: what runs, and where its definition goes."""

    job: str  # serve | letta
    name: str  # omi-letta.service, or com.omi-letta.serve
    path: Path
    text: str


@dataclass(frozen=True)
class Plan:
    """The definitions of one working directory, for one platform and scope."""

    platform: str
    system: bool
    workdir: Path
    logs: Path
    definitions: list[Definition] = field(default_factory=list)
    custom_dir: bool = False  # written to a folder of the caller's, which no service manager reads

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.definitions]


def current_platform() -> str:
    """``macos`` on a Mac, else ``linux``."""
    return "macos" if sys.platform == "darwin" else "linux"


def executable() -> Path:
    """The installed ``omi-letta`` beside this Python (the virtual environment's), by its absolute path."""
    here = Path(sys.executable).absolute().parent  # not resolved: the venv's python is a link out of it
    script = here / "omi-letta"
    if not script.is_file():
        raise AutostartError(f"there is no omi-letta beside {sys.executable}: install the project (make install)")
    return script


def _default_dir(platform: str, system: bool) -> Path:
    if platform == "macos":
        return Path("/Library/LaunchDaemons") if system else Path.home() / "Library" / "LaunchAgents"
    return Path("/etc/systemd/system") if system else Path.home() / ".config" / "systemd" / "user"


def _path_variable(program: Path) -> str:
    return ":".join([str(program.parent), "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin"])


def _quote(arg: str) -> str:
    """An ExecStart= word: quoted when it holds a space, ``%`` and ``$`` escaped."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    return f'"{arg}"' if any(c in arg for c in ' \t"\\') else arg


def _systemd(job: str, program: Path, workdir: Path, log: Path, *, system: bool, letta: bool) -> str:
    command = " ".join(_quote(a) for a in (str(program), "serve" if job == "serve" else "letta-local"))
    after = f"network-online.target {UNITS['letta']}" if job == "serve" and letta else "network-online.target"
    # Wants, not Requires: a Letta restart must not restart the service, which waits out Letta's outages.
    unit = ["[Unit]", f"Description={DESCRIPTIONS[job]}", f"After={after}", f"Wants={after}"]
    service = [
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={workdir}",
        f"ExecStart={command}",
        f'Environment="PATH={_path_variable(program)}" PYTHONUNBUFFERED=1',
        "Restart=always",
        "RestartSec=5",
        f"StandardOutput=append:{log}",
        "StandardError=inherit",
    ]
    if job == "letta":  # letta-local stops its server and PostgreSQL itself on SIGTERM
        service += ["KillMode=mixed", f"TimeoutStopSec={TIMEOUT_S}"]
    else:
        service.append("TimeoutStopSec=30")
    if system:
        service.append(f"User={getpass.getuser()}")
    install_section = ["[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}"]
    return "\n".join([*unit, "", *service, "", *install_section]) + "\n"


def _launchd(job: str, program: Path, workdir: Path, log: Path, *, system: bool) -> str:
    body: dict[str, object] = {
        "Label": LABELS[job],
        "ProgramArguments": [str(program), "serve" if job == "serve" else "letta-local"],
        "WorkingDirectory": str(workdir),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": TIMEOUT_S if job == "letta" else 30,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        "EnvironmentVariables": {"PATH": _path_variable(program), "PYTHONUNBUFFERED": "1"},
    }
    if system:
        body["UserName"] = getpass.getuser()
    return plistlib.dumps(body, sort_keys=False).decode()


def plan(
    workdir: Path,
    *,
    platform: str,
    system: bool = False,
    folder: Path | None = None,
    program: Path | None = None,
) -> Plan:
    """The definitions for ``omi-letta serve`` in ``workdir`` (and ``letta-local`` unless LETTA_BASE_URL is set).

    The settings are read from ``workdir/.env`` alone, as the service will read them, not from
    this process's environment.

    Raises:
        AutostartError: no ``omi-letta`` is installed beside this Python.
        SettingsError: ``.env`` holds a wrong value.
    """
    from app.settings import load_settings

    if platform not in PLATFORMS:
        raise AutostartError(f"--platform must be one of {', '.join(PLATFORMS)}")
    workdir = workdir.absolute()
    program = program or executable()
    settings = load_settings({}, env_file=workdir / ".env", enforce_privacy=False)
    data_dir = settings.server.data_dir
    logs = (data_dir if data_dir.is_absolute() else workdir / data_dir) / "logs"
    jobs = ["serve"] if settings.letta.base_url or not settings.letta.delivery else ["letta", "serve"]
    where = folder.absolute() if folder is not None else _default_dir(platform, system)
    found = Plan(platform, system, workdir, logs, custom_dir=folder is not None)
    for job in jobs:
        log = logs / LOGS[job]
        if platform == "linux":
            text = _systemd(job, program, workdir, log, system=system, letta="letta" in jobs)
            found.definitions.append(Definition(job, UNITS[job], where / UNITS[job], text))
        else:
            text = _launchd(job, program, workdir, log, system=system)
            found.definitions.append(Definition(job, LABELS[job], where / f"{LABELS[job]}.plist", text))
    return found


# --- driving the service manager ---------------------------------------------------------------


def _run(args: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def _systemctl(found: Plan) -> list[str] | None:
    tool = shutil.which("systemctl")
    if tool is None:
        return None
    return [tool] if found.system else [tool, "--user"]


def _domain(found: Plan) -> str:
    return "system" if found.system else f"gui/{os.getuid()}"


def install(found: Plan, *, start: bool = True) -> list[str]:
    """Write the definitions (and DATA_DIR/logs), then enable and start them unless ``start`` is False or they
    went to a folder of the caller's. Returns what happened, line by line.

    Raises:
        AutostartError: a file cannot be written, or the service manager refused.
    """
    said: list[str] = []
    try:
        found.logs.mkdir(parents=True, exist_ok=True)
        for d in found.definitions:
            d.path.parent.mkdir(parents=True, exist_ok=True)
            d.path.write_text(d.text)
            said.append(f"wrote {d.path}")
    except OSError as exc:
        hint = " (a system install needs root: sudo)" if found.system else ""
        raise AutostartError(f"cannot write {exc.filename}: {exc.strerror}{hint}") from exc
    if found.custom_dir or not start:
        said.append("not started: " + ("a folder no service manager reads" if found.custom_dir else "--no-start"))
        return said
    if found.platform == "linux":
        tool = _systemctl(found)
        scope = "" if found.system else " --user"
        manual = f"systemctl{scope} daemon-reload && systemctl{scope} enable --now {' '.join(found.names)}"
        if tool is None:
            return [*said, f"systemctl is not on this machine: start them with `{manual}` where systemd runs"]
        for args in ([*tool, "daemon-reload"], [*tool, "enable", "--now", *found.names]):
            ok, out = _run(args)
            if not ok:
                raise AutostartError(f"`{' '.join(args)}` failed: {out or 'no reason given'}; the files are written")
        said.append(f"enabled and started {', '.join(found.names)}")
        if not found.system:
            said.append(f"to start them at boot before you log in: loginctl enable-linger {getpass.getuser()}")
        return said
    tool_path = shutil.which("launchctl")
    if tool_path is None:
        paths = " ".join(str(d.path) for d in found.definitions)
        return [*said, f"launchctl is not here: load them with `launchctl bootstrap {_domain(found)} {paths}`"]
    for d in found.definitions:
        _run([tool_path, "bootout", _domain(found), str(d.path)])  # an older one of ours, if loaded
        ok, out = _run([tool_path, "bootstrap", _domain(found), str(d.path)])
        if not ok:
            ok, out = _run([tool_path, "load", "-w", str(d.path)])
        if not ok:
            raise AutostartError(f"launchctl could not load {d.path}: {out or 'no reason given'}; the file is written")
    said.append(f"loaded {', '.join(found.names)}")
    return said


def uninstall(found: Plan) -> list[str]:
    """Stop and disable the jobs (unless in a folder of the caller's), then delete their definitions."""
    said: list[str] = []
    present = [d for d in found.definitions if d.path.exists()]
    if not found.custom_dir and present:
        if found.platform == "linux":
            tool = _systemctl(found)
            if tool is not None:
                ok, out = _run([*tool, "disable", "--now", *(d.name for d in present)])
                said.append(f"stopped and disabled {', '.join(d.name for d in present)}" if ok else f"systemctl: {out}")
        elif (launchctl := shutil.which("launchctl")) is not None:
            for d in present:
                ok, out = _run([launchctl, "bootout", _domain(found), str(d.path)])
                said.append(f"unloaded {d.name}" if ok else f"launchctl: {out}")
    for d in present:
        try:
            d.path.unlink()
        except OSError as exc:
            raise AutostartError(f"cannot delete {d.path}: {exc.strerror}") from exc
        said.append(f"deleted {d.path}")
    if not found.custom_dir and present and found.platform == "linux" and (tool := _systemctl(found)) is not None:
        _run([*tool, "daemon-reload"])
    if not present:
        said.append("nothing to remove: " + ", ".join(str(d.path) for d in found.definitions) + " are not there")
    return said


def _since(pid: str) -> str:
    ok, out = _run(["ps", "-o", "lstart=", "-p", pid])
    return out if ok and out else "?"


def status(found: Plan) -> list[str]:
    """For each job: installed or not, and whether it runs, since when (as the service manager says)."""
    lines: list[str] = []
    tool = _systemctl(found) if found.platform == "linux" else None
    launchctl = shutil.which("launchctl") if found.platform == "macos" else None
    for d in found.definitions:
        if not d.path.exists():
            lines.append(f"{d.name}: not installed ({d.path} is not there)")
            continue
        head = f"{d.name}: installed at {d.path}"
        if found.custom_dir:
            lines.append(f"{head}; a folder no service manager reads")
        elif tool is not None:
            props = "ActiveState,SubState,ActiveEnterTimestamp,MainPID,NRestarts"
            ok, out = _run([*tool, "show", d.name, f"--property={props}"])
            info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if ok else {}
            if not info:
                lines.append(f"{head}; systemctl cannot tell whether it runs: {out or 'no answer'}")
                continue
            state = f"{info.get('ActiveState', '?')} ({info.get('SubState', '?')})"
            if info.get("ActiveState") == "active":
                state += f" since {info.get('ActiveEnterTimestamp') or '?'}, pid {info.get('MainPID', '?')}"
            lines.append(f"{head}; {state}, restarted {info.get('NRestarts', '0')} time(s)")
        elif launchctl is not None:
            ok, out = _run([launchctl, "print", f"{_domain(found)}/{d.name}"])
            if not ok:
                lines.append(f"{head}; not loaded (launchctl print: {out.splitlines()[0] if out else 'no answer'})")
                continue
            fields = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in out.splitlines()) if v}
            state = fields.get("state", "?")
            if "pid" in fields:
                state += f" since {_since(fields['pid'])}, pid {fields['pid']}"
            lines.append(f"{head}; {state}, {fields.get('runs', '?')} run(s)")
        else:
            manager = "systemctl" if found.platform == "linux" else "launchctl"
            lines.append(f"{head}; {manager} is not on this machine, so whether it runs is unknown")
    return lines
