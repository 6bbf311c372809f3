"""Egress check: the whole chain in ``PRIVACY_MODE=local`` inside a network namespace with only loopback.

    python scripts/egress_check.py                   # prints a summary; exit 0 when nothing left loopback
    python scripts/egress_check.py --out DIR         # keep the capture, the logs and summary.json in DIR
    python scripts/egress_check.py --no-trap         # leave the namespace without the route into `lo`

It re-runs itself under ``unshare --net`` (root, or CAP_SYS_ADMIN), brings ``lo`` up and starts
``tcpdump -i any`` before anything else. Inside it shows there is no way out (a connection to
1.1.1.1:443 fails with "Network is unreachable", and names do not resolve), then runs the real chain
on default local settings: the local Letta server with its PostgreSQL, ``omi-letta serve``, and a
scripted OpenAI-compatible model on 127.0.0.1 (tests/llm_standin.py). A two-voice espeak-ng
dialogue streams through ``/v4/listen``; the check waits until its passages are in the user's
Letta agent, finds it with ``GET /v1/memory/search``, and asks ``POST /v1/chat``, whose answer must
come through the ``search_memory`` tool. Each step asserts its result. Then the capture is read
back: it must hold packets, all from and to 127.0.0.0/8 or ::1, and no log may show a failed
attempt to reach out.

With only ``lo``, an attempt to leave fails in the kernel before any packet exists, and a capture
could not show it. So after the probe the check adds a default route into ``lo`` (the trap): an
attempt then becomes a captured packet to a foreign address, which is dropped there, and the
capture names what tried to reach out and where (a DNS query names the host). ``--no-trap`` runs
without it, where such an attempt fails at once and shows only as a failed step or a log line.

Installing the Letta server's environment is the one step that needs the network: it runs before
the namespace is entered, once (``~/.cache/omi-letta``, as the tests' ``letta`` fixture).

Exit status: 0 passed, 1 a step failed, 2 this machine cannot run the check (the reason is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.ops.letta_local import REQUIREMENTS, LocalLetta, LocalLettaError, default_cache_dir  # noqa: E402

DIALOGUE = [
    ("en-us", "Good morning. Did you finish the report about the new clinic?"),
    ("en-us+f3", "Yes, I sent it to the whole team yesterday evening."),
    ("en-us", "Great. Please remind me to call the pharmacy after lunch."),
    ("en-us+f3", "I will. The pharmacy closes at five on Fridays."),
]
WORD = "pharmacy"  # spoken in the dialogue; what search and chat must find
QUESTION = "When does the pharmacy close?"
# Short lifecycle and retry timings, as the integration tests use; every other setting is the default.
FAST = {
    "CONVERSATION_TIMEOUT_MIN_S": "2",
    "CONVERSATION_SWEEP_INTERVAL_S": "0.5",
    "OUTBOX_BASE_DELAY_S": "0.2",
    "OUTBOX_MAX_DELAY_S": "2",
    "OUTBOX_POLL_S": "0.2",
    "LETTA_TIMEOUT_S": "10",
}
# What a process writes when it tried to reach another machine and the namespace stopped it.
EGRESS_ERRORS = re.compile(
    r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"No address associated with hostname|nodename nor servname|getaddrinfo failed|ENETUNREACH",
    re.IGNORECASE,
)
PACKET = re.compile(r"^\S+\s+(?P<iface>\S+)\s+(?P<dir>In|Out|B|M|P|\S+)\s+(?P<proto>\S+)\s+(?P<rest>.*)$")


class CheckFailedError(Exception):
    """A step of the check did not give what it must."""


class CannotRunError(Exception):
    """This machine cannot run the check (no namespace, a missing tool); the message says why."""


@dataclass
class Summary:
    """What the check saw; written as ``summary.json``."""

    trap: bool  # a default route into `lo` made attempts to leave visible in the capture
    unreachable: str = ""  # how the probe to 1.1.1.1:443 failed
    steps: list[str] = field(default_factory=list)
    packets: int = 0
    interfaces: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # capture lines with an address off loopback
    unparsed: list[str] = field(default_factory=list)  # capture lines that are not IP
    egress_log_lines: list[str] = field(default_factory=list)  # "file: line" of failed attempts to reach out
    passed: bool = False
    error: str = ""


class Logs:
    """Log files to scan for failed attempts to reach out, each from where it ended when it was added."""

    def __init__(self) -> None:
        self.offsets: dict[Path, int] = {}

    def add(self, *paths: Path) -> None:
        for path in paths:
            self.offsets.setdefault(path, path.stat().st_size if path.is_file() else 0)

    def scan(self, summary: Summary) -> None:
        """Note the lines written since they were added that tell of an attempt to reach another machine."""
        for path, offset in self.offsets.items():
            if not path.is_file():
                continue
            with path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            summary.egress_log_lines += [
                f"{path.name}: {line.strip()[:200]}" for line in text.splitlines() if EGRESS_ERRORS.search(line)
            ]


def say(line: str) -> None:
    print(f"egress: {line}", flush=True)


# --- outside the namespace ---------------------------------------------------------------------


def _missing_tools() -> list[str]:
    return [tool for tool in ("unshare", "ip", "tcpdump", "espeak-ng") if shutil.which(tool) is None]


def namespace_refusal() -> str:
    """Why ``unshare --net`` cannot run here, or ``""`` when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"unshare --net is refused here: {done.stderr.strip() or f'exit status {done.returncode}'}"
    return ""


def letta_root() -> Path:
    """The directory of the local Letta server: OMI_LETTA_LOCAL_DIR, else the tests' cache."""
    return Path(os.environ.get("OMI_LETTA_LOCAL_DIR") or default_cache_dir())


def prepare() -> None:
    """Install the Letta server's environment while the network is there (first run only)."""
    root = letta_root()
    root.mkdir(parents=True, exist_ok=True)
    letta = LocalLetta(root, progress=say)
    try:
        letta.prepare()
    except LocalLettaError as exc:
        if "another omi-letta letta-local" not in str(exc):
            raise CannotRunError(f"the local Letta server's environment could not be installed: {exc}") from exc
        # Another run uses it: the check will run on a database of its own beside that environment.
        if not letta.installed():
            raise CannotRunError(
                f"another run holds {root}, whose environment lacks {', '.join(REQUIREMENTS)}; try when it is free"
            ) from exc


def outside(args: argparse.Namespace) -> int:
    if missing := _missing_tools():
        raise CannotRunError(f"missing {', '.join(missing)}: `make system-deps` installs them")
    if refusal := namespace_refusal():
        raise CannotRunError(refusal)
    prepare()
    out = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="omi-letta-egress-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()), "--inside", "--out", str(out)]
    if not args.trap:
        cmd.append("--no-trap")
    say(f"entering a new network namespace; capture and logs in {out}")
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if not args.out and code == 0:
        shutil.rmtree(out, ignore_errors=True)
    return code


# --- inside the namespace ----------------------------------------------------------------------


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise CannotRunError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def capture(pcap: Path) -> Iterator[None]:
    """``tcpdump -i any -w pcap -U`` from before the body runs until after it ends."""
    err = pcap.with_suffix(".tcpdump.log")
    with err.open("w") as log:
        proc = subprocess.Popen(["tcpdump", "-i", "any", "-n", "-U", "-w", str(pcap)], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while "listening on" not in err.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise CannotRunError(f"tcpdump did not start: {err.read_text().strip()}")
        time.sleep(0.05)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def probe_unreachable() -> str:
    """Show that nothing leaves: a TCP connection to 1.1.1.1:443 and a DNS lookup both fail at once."""
    try:
        with socket.create_connection(("1.1.1.1", 443), timeout=5):
            pass
    except OSError as exc:
        if exc.errno != errno.ENETUNREACH:
            raise CheckFailedError(f"connecting to 1.1.1.1:443 failed, but not for want of a route: {exc!r}") from exc
        reason = f"1.1.1.1:443: {exc.strerror}"
    else:
        raise CheckFailedError("1.1.1.1:443 answered from inside the namespace: it has a route out")
    try:
        socket.getaddrinfo("pypi.org", 443)
    except socket.gaierror as exc:
        return f"{reason}; pypi.org: {exc.strerror}"
    raise CheckFailedError("pypi.org resolved from inside the namespace")


def start_letta(service: tuple[str, str], logs: Logs) -> tuple[LocalLetta, Path | None]:
    """The local Letta server, as the tests' ``letta`` fixture starts it; and its scratch dir, if any."""
    from tests.support import free_port

    root = letta_root()
    server = LocalLetta(root, port=free_port(), service=service, progress=say)
    logs.add(server.server_log, server.postgres_log)
    try:
        server.start()
        return server, None
    except LocalLettaError as exc:
        if "another omi-letta letta-local" not in str(exc):
            raise CheckFailedError(f"the local Letta server did not start: {exc}") from exc
    # Another session holds the cache: a throwaway database beside the same installed environment.
    scratch = Path(tempfile.mkdtemp(prefix="omi-letta-letta-"))
    scratch.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    server = LocalLetta(scratch, port=free_port(), venv=root / "venv", service=service, progress=say)
    logs.add(server.server_log, server.postgres_log)
    try:
        server.start()
    except LocalLettaError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise CheckFailedError(f"the local Letta server did not start: {exc}") from exc
    return server, scratch


def until(what: str, found: Callable[[], Any], timeout_s: float = 90) -> Any:
    """``found()`` once it is truthy; CheckFailedError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = found()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailedError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)


def pending(http: str) -> float | None:
    """Records waiting in the outbox for either sink, from /metrics; None until both gauges are there."""
    from tests.support import ADMIN_KEY

    text = httpx.get(f"{http}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).text
    found = re.findall(r"^omi_letta_outbox_pending_(?:letta|index) (\S+)$", text, re.M)
    return sum(float(v) for v in found) if len(found) == 2 else None


def pipeline(out: Path, summary: Summary, logs: Logs) -> None:
    """Ingest, deliver to Letta, search and chat, asserting each; ``logs`` gets the log files of each part."""
    from letta_client import Letta

    from app.cli.simulator import simulate
    from tests.llm_standin import ScriptedLlm
    from tests.support import ServerProcess, chat_events, free_port, synthesize, token

    def step(line: str) -> None:
        summary.steps.append(line)
        say(f"ok: {line}")

    wav, truth = synthesize(DIALOGUE, out / "dialogue.wav")
    step(f"synthesized {len(truth)} turns in {len({t.speaker for t in truth})} espeak-ng voices")
    service = (f"http://127.0.0.1:{free_port()}/v1", token("letta"))
    letta, scratch = start_letta(service, logs)
    try:
        step(f"the local Letta server answers at {letta.base_url}")
        with ScriptedLlm() as llm:
            env = {
                **FAST,
                "PRIVACY_MODE": "local",
                "LETTA_DELIVERY": "true",
                "LETTA_BASE_URL": letta.base_url,
                "LLM_BASE_URL": llm.base_url,
                "LLM_MODEL": llm.model,
            }
            server = ServerProcess(out / "service", env=env)
            logs.add(server.log_path)
            server.start(timeout_s=180)
            try:
                step(f"omi-letta serve is healthy at {server.http} (PRIVACY_MODE=local)")
                uid = f"egress-{uuid.uuid4().hex[:8]}"
                streamed = asyncio.run(simulate(wav, server.ws, token=token(uid), speed=2, settle_s=4))
                if WORD not in streamed.text().lower():
                    raise CheckFailedError(f"the live transcript lacks {WORD!r} ({len(streamed.segments)} segments)")
                step(f"streamed the dialogue through /v4/listen: {len(streamed.segments)} segments came back")

                listed = until(
                    "a stored conversation", lambda: server.get("/v1/conversations/page", uid=uid).json()["items"]
                )
                conversation = listed[0]["id"]
                closed = server.post(f"/v1/conversations/{conversation}/close", uid=uid)
                if closed.status_code != 200:
                    raise CheckFailedError(f"closing the conversation answered {closed.status_code}")
                until("the outbox drained", lambda: pending(server.http) == 0, timeout_s=120)
                stored = server.get(f"/v1/conversations/{conversation}", uid=uid).json()
                speakers = {s["speaker"] for s in stored["transcript_segments"]}
                step(f"conversation stored and closed with {len(speakers)} speakers; the outbox drained")

                client = Letta(base_url=letta.base_url, max_retries=0, timeout=60)
                agents = until(
                    "the user's Letta agent", lambda: list(client.agents.list(tags=[f"omi-uid:{uid}"], limit=2))
                )
                passages = [
                    p
                    for p in client.agents.passages.list(agents[0].id, limit=1000)
                    if f"conv:{conversation}" in (p.tags or [])
                ]
                if not any(WORD in p.text.lower() for p in passages):
                    raise CheckFailedError(f"the agent's {len(passages)} passages of the conversation lack {WORD!r}")
                step(f"delivered to Letta: {len(passages)} passages of the conversation in the user's agent")

                hits = server.get("/v1/memory/search", uid=uid, params={"q": QUESTION}).json()["items"]
                if not hits or WORD not in hits[0]["text"].lower() or hits[0]["conversation_id"] != conversation:
                    raise CheckFailedError(f"GET /v1/memory/search did not rank the {WORD} turn first")
                step(f"GET /v1/memory/search found the turn first among {len(hits)} hits")

                events = asyncio.run(chat_events(server.http, token(uid), QUESTION))
                kinds = [e for e, _ in events]
                calls = [d["name"] for e, d in events if e == "tool_call"]
                returns = [d["text"] for e, d in events if e == "tool_return"]
                answer = "".join(d["text"] for e, d in events if e == "assistant")
                if "search_memory" not in calls or not any(WORD in str(r).lower() for r in returns):
                    raise CheckFailedError(f"the agent did not find the turn with search_memory (events: {kinds})")
                if WORD not in answer.lower() or not kinds or kinds[-1] != "done":
                    raise CheckFailedError(f"the chat answer does not come from the memory (events: {kinds})")
                if server.metric("mcp_calls_search_memory_total") < 1:
                    raise CheckFailedError("search_memory did not go through this service's MCP server")
                step(f"POST /v1/chat answered from search_memory through /mcp ({len(llm.requests)} model requests)")
            finally:
                server.stop()
    finally:
        letta.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def address_of(end: str) -> tuple[str, bool]:
    """The address of one end of a packet as tcpdump prints it (``127.0.0.1.5432``, ``::1.80``, ``::1``),
    and whether it is loopback; ``(end, False)`` when it is no address."""
    for candidate in (end, end.rsplit(".", 1)[0]):
        try:
            return candidate, ipaddress.ip_address(candidate).is_loopback
        except ValueError:
            continue
    return end, False


def read_capture(pcap: Path, summary: Summary) -> None:
    """Read ``pcap`` back with ``tcpdump -nn -r`` and :func:`tally` it into ``summary``."""
    done = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckFailedError(f"tcpdump could not read the capture: {done.stderr.strip()}")
    tally(done.stdout.splitlines(), summary)


def tally(lines: list[str], summary: Summary) -> None:
    """Count packets (lines of ``tcpdump -nn -r`` on a ``-i any`` capture), their interfaces and addresses,
    and note each line with an address off loopback, or that is no IP packet."""
    addresses: set[str] = set(summary.addresses)
    interfaces: set[str] = set(summary.interfaces)
    for line in lines:
        match = PACKET.match(line)
        if match is None:
            summary.unparsed.append(line[:200])
            continue
        summary.packets += 1
        interfaces.add(match["iface"])
        ends = re.match(r"(\S+) > (\S+): ", match["rest"]) if match["proto"] in ("IP", "IP6") else None
        if ends is None:
            summary.unparsed.append(line[:200])
            continue
        found = [address_of(end) for end in ends.groups()]
        addresses.update(address for address, _ in found)
        if not all(loopback for _, loopback in found):
            summary.foreign.append(line[:200])
    summary.addresses = sorted(addresses)
    summary.interfaces = sorted(interfaces)


def inside(args: argparse.Namespace) -> int:
    out: Path = args.out
    summary = Summary(trap=args.trap)
    ip("link", "set", "lo", "up")
    pcap = out / "egress.pcap"
    logs = Logs()
    try:
        with capture(pcap):
            say(f"capturing on all interfaces into {pcap}")
            summary.unreachable = probe_unreachable()
            say(f"ok: no way out: {summary.unreachable}")
            if args.trap:
                ip("route", "add", "default", "dev", "lo")
                ip("-6", "route", "add", "default", "dev", "lo")
                say("trap: every address off this machine now routes into lo, where the capture sees it")
            pipeline(out, summary, logs)
    except CheckFailedError as exc:
        summary.error = str(exc)
    except Exception as exc:  # a step broke: still read the capture and the logs, which may say why
        traceback.print_exc()
        summary.error = f"{type(exc).__name__}: {exc}"
    try:
        read_capture(pcap, summary)
        logs.scan(summary)
        if summary.packets == 0:
            raise CheckFailedError("the capture holds no packet: it did not work")
        if summary.foreign or summary.unparsed:
            raise CheckFailedError(
                f"{len(summary.foreign)} packets with an address off loopback, {len(summary.unparsed)} not IP; "
                f"first: {(summary.foreign or summary.unparsed)[0]}"
            )
        if summary.egress_log_lines:
            raise CheckFailedError(f"a process tried to reach another machine: {summary.egress_log_lines[0]}")
    except CheckFailedError as exc:
        summary.error = summary.error or str(exc)
    summary.passed = not summary.error
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    say(
        f"{summary.packets} packets on {', '.join(summary.interfaces) or 'no interface'}; "
        f"addresses: {', '.join(summary.addresses) or 'none'}; "
        f"off loopback: {len(summary.foreign)}; attempts in logs: {len(summary.egress_log_lines)}"
    )
    for line in summary.foreign[:5] + summary.egress_log_lines[:5]:
        say(f"  {line}")
    if not summary.passed:
        print(f"egress check FAILED: {summary.error}", file=sys.stderr)
        return 1
    say("PASSED: the whole chain ran on loopback only")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the egress check; see the module docstring."""
    parser = argparse.ArgumentParser(
        description="Run the whole chain in PRIVACY_MODE=local inside a network namespace with only loopback, "
        "capture every packet, and check that none left loopback.",
    )
    parser.add_argument("--out", type=Path, help="keep the capture, the logs and summary.json in this directory")
    parser.add_argument(
        "--no-trap",
        dest="trap",
        action="store_false",
        help="do not route other addresses into lo: an attempt to reach out then fails at once, uncaptured",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        return inside(args) if args.inside else outside(args)
    except CannotRunError as exc:
        print(f"egress check cannot run here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
