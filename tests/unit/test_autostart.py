"""Issue "Always on": `omi-letta service` writes a systemd unit that systemd accepts and a launchd plist that parses."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.ops.autostart import LABELS, UNITS, plan

ROOT = Path(__file__).resolve().parents[2]
OMI_LETTA = Path(sys.executable).absolute().parent / "omi-letta"


def service(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``omi-letta service ARGS`` in ``workdir``, with a shell environment that must not reach the definitions."""
    return subprocess.run(
        [str(OMI_LETTA), "service", *args],
        cwd=workdir,
        env={**os.environ, "ADMIN_KEY": "from-the-shell-0001", "LETTA_BASE_URL": "http://shell.example:9", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "home dir"  # a space, as in a macOS user's folder names
    folder.mkdir()
    (folder / ".env").write_text("ADMIN_KEY=from-the-env-file-01\nDATA_DIR=data\n")
    return folder


def test_print_shows_both_units_from_env_not_from_the_shell(workdir: Path, tmp_path: Path):
    home = tmp_path / "home"
    done = service(workdir, "print", "--platform", "linux", HOME=str(home))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"# {home}/.config/systemd/user/{UNITS['serve']}" in out
    assert UNITS["letta"] in out, "LETTA_BASE_URL is not in .env: the local Letta server runs too"
    assert f'ExecStart="{OMI_LETTA}" serve' in out or f"ExecStart={OMI_LETTA} serve" in out
    assert f"ExecStart={OMI_LETTA} letta-local" in out or f'ExecStart="{OMI_LETTA}" letta-local' in out
    assert f"WorkingDirectory={workdir}" in out and f"append:{workdir}/data/logs/omi-letta.log" in out
    assert "Restart=always" in out and "WantedBy=default.target" in out
    assert "shell" not in out and "from-the" not in out, "nothing of the shell's environment, nor a secret"
    assert not home.exists() and not (workdir / "data").exists(), "print writes nothing"

    (workdir / ".env").write_text("ADMIN_KEY=from-the-env-file-01\nLETTA_BASE_URL=http://127.0.0.1:8283\n")
    only = service(workdir, "print", "--platform", "linux", "--system").stdout
    assert UNITS["letta"] not in only, "with LETTA_BASE_URL in .env, no local Letta server"
    assert "WantedBy=multi-user.target" in only and "User=" in only


@pytest.mark.parametrize("scope", ["--user", "--system"])
def test_the_units_pass_systemd_analyze_verify(workdir: Path, tmp_path: Path, scope: str):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; `make system-deps` installs it)")
    units = tmp_path / "units"
    done = service(workdir, "install", "--platform", "linux", scope, "--dir", str(units))
    assert done.returncode == 0, done.stderr
    paths = sorted(str(p) for p in units.glob("*.service"))
    assert [Path(p).name for p in paths] == sorted(UNITS.values())
    runtime = tmp_path / "runtime"  # where a user manager would keep its state; none runs here
    runtime.mkdir(mode=0o700)
    args = [tool, *(["--user"] if scope == "--user" else []), "verify", "--man=no", *paths]
    verified = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert verified.returncode == 0 and not verified.stdout + verified.stderr, verified.stdout + verified.stderr


def test_the_launchd_plists_parse_and_keep_the_service_running(workdir: Path, tmp_path: Path):
    agents = tmp_path / "LaunchAgents"
    done = service(workdir, "install", "--platform", "macos", "--dir", str(agents))
    assert done.returncode == 0, done.stderr
    serve = plistlib.loads((agents / f"{LABELS['serve']}.plist").read_bytes())
    letta = plistlib.loads((agents / f"{LABELS['letta']}.plist").read_bytes())
    for job, body in (("serve", serve), ("letta-local", letta)):
        assert body["ProgramArguments"] == [str(OMI_LETTA), job]
        assert body["RunAtLoad"] is True and body["KeepAlive"] is True
        assert body["WorkingDirectory"] == str(workdir)
        assert Path(body["StandardOutPath"]).parent == workdir / "data" / "logs"
        assert body["StandardErrorPath"] == body["StandardOutPath"]
        assert set(body["EnvironmentVariables"]) == {"PATH", "PYTHONUNBUFFERED"}, "no variable of the shell"
        assert body["EnvironmentVariables"]["PATH"].startswith(str(OMI_LETTA.parent))
    assert serve["Label"] == LABELS["serve"] and "UserName" not in serve
    assert (workdir / "data" / "logs").is_dir(), "the logs' folder is made"
    daemon = plan(workdir, platform="macos", system=True, folder=tmp_path / "daemons")
    assert plistlib.loads(daemon.definitions[0].text.encode())["UserName"]


def test_install_then_uninstall_writes_and_removes_the_definitions(workdir: Path, tmp_path: Path):
    units = tmp_path / "units"
    installed = service(workdir, "install", "--platform", "linux", "--dir", str(units))
    assert installed.returncode == 0, installed.stderr
    assert "not started" in installed.stdout
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS.values())
    shown = service(workdir, "status", "--platform", "linux", "--dir", str(units))
    assert shown.returncode == 0 and shown.stdout.count("installed at") == 2, shown.stdout

    removed = service(workdir, "uninstall", "--platform", "linux", "--dir", str(units))
    assert removed.returncode == 0, removed.stderr
    assert list(units.iterdir()) == []
    assert service(workdir, "status", "--platform", "linux", "--dir", str(units)).stdout.count("not installed") == 2
    again = service(workdir, "uninstall", "--platform", "linux", "--dir", str(units))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_install_refuses_a_folder_without_env(tmp_path: Path):
    done = service(tmp_path, "install", "--platform", "linux", "--dir", str(tmp_path / "units"))
    assert done.returncode == 2 and "no .env" in done.stderr
    assert not (tmp_path / "units").exists()
