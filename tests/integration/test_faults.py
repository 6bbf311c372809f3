"""Faults, each counted in turns: no turn stored before the fault is lost or stored twice after it.

Every test streams espeak speech through a real ``omi-letta serve`` into a real SQLite database,
injects one fault, lets the service recover, and then checks each conversation three ways: the
database holds each turn once (no turn gone, none repeated in another or in itself), the user's
agent on the session's local Letta server holds each turn in exactly one passage, and the memory
index (read back through ``/v1/memory/search``) holds each turn once with its stored text.

The faults: the service SIGKILLed mid-stream while the device keeps streaming and reconnects by
itself; Letta unreachable for over two minutes with the default retry policy; the embedding model
answering errors, nothing, and garbage; the disk filling up under a live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from letta_client import Letta

from app.cli.simulator import Reconnect, SimulationResult, SimulatorError, simulate
from app.http.listen import STORAGE_FULL
from app.ops.letta_local import LocalLetta
from core.conversation import Conversation
from memory.understand.understanding import summary_document
from tests.conftest import FAST
from tests.integration.test_delivery import (
    LONG_DIALOGUE,
    agent_of,
    as_conversation,
    client_of,
    eventually_exactly_once,
    serve,
    wait_drained,
)
from tests.support import ServerProcess, StandInEmbeddings, Turn, free_port, normalize, synthesize, token

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def long_dialogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Turn]]:
    """Six espeak turns of two voices in one file (about 25 s)."""
    return synthesize(LONG_DIALOGUE, tmp_path_factory.mktemp("faults") / "six.wav")


@pytest.fixture(scope="module")
def later_turns(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Turn]]:
    """The last three of those turns, which go on from ``dialogue`` (about 13 s)."""
    return synthesize(LONG_DIALOGUE[3:], tmp_path_factory.mktemp("faults") / "later.wav")


@pytest.fixture(autouse=True)
def _no_cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's cloud keys out of the servers these tests start."""
    for name in [k for k in os.environ if k.endswith("_API_KEY")]:
        monkeypatch.delenv(name)
    yield


# --- counting turns ---------------------------------------------------------------------------


def stored(server: ServerProcess, uid: str) -> list[Conversation]:
    """Every conversation of ``uid``, with its turns, as the database holds them."""
    listed = server.get("/v1/conversations/page", uid=uid, params={"limit": 100}).json()["items"]
    return [as_conversation(server.get(f"/v1/conversations/{c['id']}", uid=uid).json(), uid) for c in listed]


def wait_stored(server: ServerProcess, uid: str, turns: int, timeout_s: float = 120) -> list[Conversation]:
    """The user's conversations once they hold at least ``turns`` turns in all."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = stored(server, uid)
        if sum(len(c.segments) for c in found) >= turns or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def snapshot(conversations: list[Conversation]) -> dict[str, str]:
    """``{turn id: text}`` of every stored turn."""
    return {s.id: s.text for c in conversations for s in c.segments}


def assert_each_turn_once(before: dict[str, str], after: list[Conversation]) -> None:
    """Every turn stored before the fault is stored once after it (its text may have grown by a merge),
    and no words were stored twice: no run of four words occurs twice in a conversation."""
    held = Counter(s.id for c in after for s in c.segments)
    assert set(before) <= set(held), f"turns lost: {sorted(set(before) - set(held))}"
    assert set(held.values()) == {1}, f"a turn id is stored twice: {held.most_common(2)}"
    now = snapshot(after)
    for turn_id, text in before.items():
        assert normalize(now[turn_id]).startswith(normalize(text)), "a stored turn lost its words"
    for conversation in after:
        words = normalize(" ".join(s.text for s in conversation.segments)).split()
        grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
        repeated = [" ".join(g) for g, n in grams.items() if n > 1]
        assert not repeated, f"words stored twice in conversation {conversation.id}: {repeated[:3]}"


def assert_indexed_once(server: ServerProcess, conversation: Conversation) -> None:
    """The memory index holds each of the conversation's turns once, with its stored text, and nothing else.

    A search filtered to one conversation ranks all of its turns (fewer than the candidates each
    ranking contributes), so it lists everything the index holds for it.
    """
    params = {"q": "what was said", "conversation_id": conversation.id, "limit": 100}
    response = server.get("/v1/memory/search", uid=conversation.uid, params=params)
    assert response.status_code == 200, response.text
    hits = response.json()["items"]
    assert Counter(h["turn_id"] for h in hits) == Counter(s.id for s in conversation.segments if s.text.strip())
    texts = {s.id: s.text for s in conversation.segments}
    assert all(h["text"] == texts[h["turn_id"]] for h in hits), "the index holds an old text of a turn"


def assert_delivered_once(server: ServerProcess, client: Letta, uid: str, conversations: list[Conversation]) -> None:
    """Each conversation is in the user's agent and in the memory index exactly once; nothing is a dead letter."""
    agent = agent_of(client, uid)
    for conversation in conversations:
        eventually_exactly_once(client, agent, conversation)
        assert_indexed_once(server, conversation)
    assert server.metric("outbox_dead_letta") == 0 and server.metric("outbox_dead_index") == 0


def close_all(server: ServerProcess, uid: str) -> list[Conversation]:
    """Close the user's conversation in progress (if any); all of the user's conversations, as stored."""
    for conversation in stored(server, uid):
        if conversation.status == "in_progress":
            response = server.post(f"/v1/conversations/{conversation.id}/close", uid=uid)
            assert response.status_code == 200, response.text
    return stored(server, uid)


# --- 1. SIGKILL mid-stream ----------------------------------------------------------------------


async def test_sigkill_mid_stream_the_device_reconnects_and_no_turn_is_lost_or_repeated(
    tmp_path: Path, letta: LocalLetta, long_dialogue: tuple[Path, list[Turn]]
):
    path, truth = long_dialogue
    server = serve(tmp_path, letta)
    uid = f"kill-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    restarted: ServerProcess | None = None
    try:
        # The device streams in real time and, like the OMI app, reopens a lost socket by itself.
        device = asyncio.create_task(
            simulate(
                path, server.ws, token=token(uid), speed=1.0, settle_s=6, reconnect=Reconnect(attempts=20, max_s=4)
            )
        )
        before = snapshot(await asyncio.to_thread(wait_stored, server, uid, 2))
        assert len(before) >= 2 and not device.done(), "the kill must come mid-stream"
        server.stop(kill=True)  # SIGKILL: no shutdown hook runs, the socket just dies
        restarted = ServerProcess(tmp_path, env=server.env, port=server.port).start()

        result: SimulationResult = await asyncio.wait_for(device, timeout=180)
        assert result.connections >= 2 and result.drops[0][0] == 1006, (result.connections, result.drops)
        after = stored(restarted, uid)
        assert_each_turn_once(before, after)
        heard_after = {i for i in result.segments if i not in before} & set(snapshot(after))
        assert heard_after, "the reconnected device streamed on: its later turns were stored and sent to it"
        assert sum(len(c.segments) for c in after) > len(before)

        wait_drained(restarted, timeout_s=120)
        closed = close_all(restarted, uid)
        wait_drained(restarted, timeout_s=120)
        assert_each_turn_once(before, closed)
        assert_delivered_once(restarted, client, uid, closed)
        assert len(truth) == len(LONG_DIALOGUE)
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


# --- 2. Letta unreachable for minutes -----------------------------------------------------------


class Link:
    """A TCP relay from a local port to the Letta server that a test can cut, as if Letta had stopped.

    While cut nothing listens on the port (connections are refused) and connections that were open
    are reset. Waiting threads block in ``accept``/``recv``, so a cut link costs no CPU.
    """

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Listen and relay again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and reset every open connection."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of its thread
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with self._lock:
                    self._open.discard(sock)


OUTAGE_S = 121.0  # "for minutes": a little over two


@pytest.mark.timeout(600)
async def test_letta_unreachable_for_minutes_then_back_delivers_every_turn_once(
    tmp_path: Path, letta: LocalLetta, dialogue: tuple[Path, list[Turn]], long_dialogue: tuple[Path, list[Turn]]
):
    link = Link(letta.port)
    link.restore()
    # The default retry policy (first retry after about 1 s, doubling, dead after 8 failures), with the
    # longest wait cut from 300 s to 30 s only so that delivery resumes within 30 s of Letta's return.
    env = {
        **FAST,
        "LETTA_DELIVERY": "true",
        "LETTA_BASE_URL": link.url,
        "LETTA_PASSAGE_MAX_CHARS": "300",  # as the exactly-once check groups turns
        "OUTBOX_MAX_DELAY_S": "30",
    }
    server = ServerProcess(tmp_path, env=env).start()
    uid = f"outage-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    try:
        await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
        delivered = close_all(server, uid)
        wait_drained(server, timeout_s=120)
        assert_delivered_once(server, client, uid, delivered)

        link.cut()
        cut_at = time.monotonic()
        failures = server.metric("delivery_failures_total_letta")
        for _ in range(2):  # two conversations are heard and closed while Letta is away
            await simulate(long_dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
            close_all(server, uid)
        during = stored(server, uid)
        assert len(during) == 3 and all(c.status == "completed" for c in during)
        before = snapshot(during)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))  # sleeping costs no CPU
        assert server.metric("outbox_pending_letta") > 0, "the turns wait for Letta"
        assert server.metric("delivery_failures_total_letta") >= failures + 8, "tried all along, more than 8 times"
        assert server.metric("outbox_dead_letta") == 0, "an outage must not turn turns into dead letters"
        assert server.metric("outbox_pending_index") == 0, "the index does not wait for Letta"

        link.restore()
        wait_drained(server, timeout_s=180)
        after = stored(server, uid)
        assert_each_turn_once(before, after)
        assert_delivered_once(server, client, uid, after)
    finally:
        server.stop()
        link.cut()


# --- 3. the embedding model failing -------------------------------------------------------------


async def test_embedding_model_failing_then_back_search_says_so_and_the_index_catches_up_once(
    tmp_path: Path, letta: LocalLetta, dialogue: tuple[Path, list[Turn]]
):
    model = StandInEmbeddings().start()
    model.hang_s = 4.0
    # The OpenAI-compatible model is on loopback, which PRIVACY_MODE=local allows.
    server = serve(
        tmp_path,
        letta,
        EMBEDDINGS_BACKEND="openai",
        OPENAI_BASE_URL=model.url,
        OPENAI_API_KEY="sk-stand-in",
        EMBEDDINGS_MODEL="stand-in",
        EMBEDDINGS_TIMEOUT_S="1.5",
    )
    uid = f"embed-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    try:
        await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
        delivered = close_all(server, uid)
        wait_drained(server, timeout_s=120)
        assert_delivered_once(server, client, uid, delivered)
        indexed = server.metric("delivered_total_index")

        for fault in ("error", "hang", "malformed"):
            model.fault = fault
            response = server.get("/v1/memory/search", uid=uid, params={"q": "pharmacy"})
            assert response.status_code == 503, (fault, response.status_code, response.text)
            body = response.json()
            assert body["status_code"] == 503 and "EMBEDDINGS_BACKEND=openai" in body["detail"], (fault, body)

        model.fault = "error"
        await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
        close_all(server, uid)
        during = stored(server, uid)
        assert len(during) == 2 and all(c.segments for c in during), "conversations are stored all the same"
        before = snapshot(during)
        for fault in ("hang", "malformed", "error"):  # delivery meets every kind of failure
            model.fault = fault
            tried = model.failed
            await asyncio.to_thread(_wait_for, lambda t=tried: model.failed > t + 1, 60)
        assert server.metric("outbox_pending_index") > 0, "the new turns wait for the model"
        assert server.metric("delivered_total_index") == indexed

        model.fault = ""
        wait_drained(server, timeout_s=120)
        after = stored(server, uid)
        assert_each_turn_once(before, after)
        assert_delivered_once(server, client, uid, after)
        hits = server.get("/v1/memory/search", uid=uid, params={"q": "pharmacy after lunch"}).json()["items"]
        found = {h["conversation_id"] for h in hits}
        summaries = {summary_document(c.id) for c in after}  # each conversation's summary may be found too
        assert found - summaries == {c.id for c in after} and found <= {c.id for c in after} | summaries
        assert "Traceback" not in server.log(), "failures are logged as one line each"
    finally:
        server.stop()
        model.stop()


def _wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)


# --- 4. the disk full ---------------------------------------------------------------------------


class Tmpfs:
    """A small tmpfs at ``path`` inside a private mount namespace, held open by a sleeping process.

    Servers run inside the namespace (``prefix``) and outlive each other on the same tmpfs; the
    test reaches the files through ``/proc/<holder>/root``.
    """

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self._holder: subprocess.Popen[str] | None = None

    def mount(self) -> Tmpfs:
        missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"the disk-full test needs {' and '.join(missing)} (util-linux) to mount a private tmpfs")
        self.path.mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs -o size={self.size_mb}m tmpfs '{self.path}' && echo mounted && exec sleep 100000"
        self._holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "mounted":
            _, err = self._holder.communicate(timeout=10)
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {err.strip()}")
        return self

    @property
    def prefix(self) -> list[str]:
        assert self._holder is not None
        return ["nsenter", "-t", str(self._holder.pid), "-m", "--"]

    @property
    def files(self) -> Path:
        """The tmpfs as the test sees it."""
        assert self._holder is not None
        return Path(f"/proc/{self._holder.pid}/root") / self.path.relative_to("/")

    def fill(self) -> Path:
        """Write a file until not one more byte fits; returns it."""
        filler = self.files / "filler"
        with filler.open("wb", buffering=0) as out:
            for chunk in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * chunk)
        return filler

    def unmount(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait()

    def integrity(self) -> dict[str, str]:
        """``PRAGMA integrity_check`` of every SQLite file on the tmpfs, by name.

        Run inside the namespace: SQLite resolves ``/proc/<pid>/root`` to this namespace's root.
        """
        script = (
            "import sqlite3, sys\n"
            "for path in sys.argv[1:]:\n"
            "    rows = sqlite3.connect(path).execute('PRAGMA integrity_check').fetchall()\n"
            "    print(path, ', '.join(str(r[0]) for r in rows))\n"
        )
        names = sorted(str(p.relative_to(self.files)) for p in self.files.rglob("*.db"))
        ran = subprocess.run(
            [*self.prefix, sys.executable, "-c", script, *(str(self.path / n) for n in names)],
            capture_output=True,
            text=True,
            check=True,
        )
        return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in ran.stdout.splitlines()}


async def test_disk_full_under_a_live_stream_is_a_clear_error_and_corrupts_nothing(
    tmp_path: Path, letta: LocalLetta, dialogue: tuple[Path, list[Turn]], later_turns: tuple[Path, list[Turn]]
):
    disk = Tmpfs(tmp_path / "data", size_mb=48).mount()
    # DATA_DIR on the tmpfs; the server's log, and every model (they ship in Python packages, loaded
    # from site-packages), stay off it.
    env = {
        **FAST,
        "DATA_DIR": str(disk.path),
        "LETTA_DELIVERY": "true",
        "LETTA_BASE_URL": letta.base_url,
        "LETTA_PASSAGE_MAX_CHARS": "300",
        "OUTBOX_BASE_DELAY_S": "0.2",
        "OUTBOX_MAX_DELAY_S": "2",
    }
    server = ServerProcess(tmp_path / "logs", env=env, prefix=disk.prefix).start()
    uid = f"full-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    restarted: ServerProcess | None = None
    try:
        await simulate(dialogue[0], server.ws, token=token(uid), speed=2, settle_s=4)
        wait_drained(server, timeout_s=120)
        before = snapshot(stored(server, uid))
        assert before

        ready = asyncio.Event()
        streaming = asyncio.create_task(
            simulate(
                later_turns[0],
                server.ws,
                token=token(uid),
                speed=1.0,
                settle_s=4,
                on_event=lambda e: ready.set() if e.get("status") == "ready" else None,
            )
        )
        await asyncio.wait_for(ready.wait(), 60)
        filler = await asyncio.to_thread(disk.fill)

        with pytest.raises(SimulatorError) as refused:
            await asyncio.wait_for(streaming, 120)
        assert (refused.value.code, refused.value.reason) == (1011, STORAGE_FULL)
        [current] = [c for c in stored(server, uid) if c.status == "in_progress"]
        closing = server.post(f"/v1/conversations/{current.id}/close", uid=uid)
        assert closing.status_code == 507, closing.text
        assert "disk is full" in closing.json()["detail"]
        assert re.search(r"ERROR .*the disk is full", server.log()), "the log says the disk is full"
        assert "Traceback" not in server.log(), "a full disk is reported in one line, not a traceback"

        filler.unlink()
        # The stream kept retrying what it heard; with space again it stores it (once), then ends.
        await asyncio.to_thread(_wait_for, lambda: server.log().count("stream closed") >= 2, 90)
        assert server.metric("segments_lost_total") == 0, "what was heard during the fault was stored after it"
        server.stop()
        checked = disk.integrity()
        assert str(disk.path / "omi-letta.db") in checked and set(checked.values()) == {"ok"}, checked
        big = [p.name for p in disk.files.rglob("*") if p.is_file() and p.stat().st_size > 8 << 20]
        assert not big, f"large files on the data disk (a models cache?): {big}"

        restarted = ServerProcess(tmp_path / "logs", env=env, port=server.port, prefix=disk.prefix).start()
        after = stored(restarted, uid)
        assert_each_turn_once(before, after)
        closed = close_all(restarted, uid)
        wait_drained(restarted, timeout_s=120)
        assert_each_turn_once(before, closed)
        assert_delivered_once(restarted, client, uid, closed)
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()
        disk.unmount()
