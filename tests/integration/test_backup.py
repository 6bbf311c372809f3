"""`omi-letta backup` while a real server is being written to, and `restore` into an empty DATA_DIR.

A second server on the restored DATA_DIR must serve every conversation the first one had stored
when the backup began, with the same segments, and find each of them by search.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_webhooks import MEMORY, api_token, hook_url
from tests.support import ADMIN_KEY, ServerProcess

UIDS = ("backup-ann", "backup-ben")
SEEDED = 6  # conversations stored and indexed before the writes start
MARKER = re.compile(r"\bzq(\d{4})\b")


def conversation(n: int) -> dict[str, Any]:
    """An OMI cloud conversation (the memory_created webhook's body) that says the word ``zq<n>``."""
    memory = copy.deepcopy(MEMORY)
    memory["id"] = f"backup-{n:04d}"
    first, second = memory["transcript_segments"]
    first.update(id=f"backup-{n:04d}-a", text=f"Remember the errand zq{n:04d} for the clinic.")
    second.update(id=f"backup-{n:04d}-b", text=f"The pharmacy closes at {n % 12 + 1} o'clock.")
    memory["structured"]["title"] = f"Errand {n}"
    return memory


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``omi-letta ARGS`` as its own process on ``data_dir``."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=data_dir.parent,  # no developer .env
        env={**os.environ, "DATA_DIR": str(data_dir), "ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        timeout=300,
    )


def stored(server: ServerProcess, uid: str) -> dict[str, dict[str, Any]]:
    """Every conversation of ``uid`` with its segments, by id."""
    found: dict[str, dict[str, Any]] = {}
    for offset in itertools.count(0, 200):
        page = server.get("/v1/conversations/page", uid=uid, params={"limit": 200, "offset": offset})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        found.update((c["id"], c) for c in items)
        if len(items) < 200:
            return found
    raise AssertionError("unreachable")


def marker_of(item: dict[str, Any]) -> int:
    match = MARKER.search(item["transcript_segments"][0]["text"])
    assert match, item
    return int(match.group(1))


def searchable(server: ServerProcess, uid: str, n: int, conversation_id: str) -> bool:
    """Whether search finds conversation ``conversation_id`` by its word ``zq<n>``."""
    hits = server.get("/v1/memory/search", uid=uid, params={"q": f"zq{n:04d}", "limit": 5}).json()["items"]
    return conversation_id in {h["conversation_id"] for h in hits}


def wait_until_searchable(server: ServerProcess, wanted: dict[int, tuple[str, str]], timeout_s: float = 90) -> None:
    """Poll search until every ``marker: (uid, conversation id)`` is found."""
    deadline = time.monotonic() + timeout_s
    missing = dict(wanted)
    while missing:
        missing = {n: (u, c) for n, (u, c) in missing.items() if not searchable(server, u, n, c)}
        if missing:
            assert time.monotonic() < deadline, f"not found by search: {sorted(missing)}"
            time.sleep(0.5)


class Writer(threading.Thread):
    """Posts conversations to a server, one after another, until stopped; remembers each one acknowledged."""

    def __init__(self, server: ServerProcess, keys: dict[str, str], first: int) -> None:
        super().__init__(daemon=True)
        self.server, self.keys, self.next = server, keys, first
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.halt.is_set() and len(self.acked) < 2000:
                n, uid = self.next, UIDS[self.next % 2]
                self.next += 1
                url = hook_url(self.server, "memory-created", self.keys[uid], f"uid={uid}")
                reply = client.post(url, json=conversation(n))
                if reply.status_code != 200:
                    self.errors.append(f"{reply.status_code} {reply.text[:200]}")
                    return
                with self.lock:
                    self.acked.append(n)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < count:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server holding SEEDED indexed conversations, with an API token per user for the webhook."""
    proc = ServerProcess(tmp_path_factory.mktemp("backup") / "source").start()
    try:
        keys = {uid: api_token(proc, uid) for uid in UIDS}
        for n in range(SEEDED):
            uid = UIDS[n % 2]
            reply = httpx.post(hook_url(proc, "memory-created", keys[uid], f"uid={uid}"), json=conversation(n))
            assert reply.status_code == 200, reply.text
        ids = {marker_of(c): (uid, cid) for uid in UIDS for cid, c in stored(proc, uid).items()}
        wait_until_searchable(proc, ids)
        yield proc, keys
    finally:
        proc.stop()


def test_backup_while_writing_then_restore_gives_back_every_conversation(
    source: tuple[ServerProcess, dict[str, str]], tmp_path: Path
):
    server, keys = source
    writer = Writer(server, keys, first=1000)
    writer.start()
    try:
        writer.wait_for(2)
        acked_before = set(writer.acked[: writer.count()]) | set(range(SEEDED))
        archive = tmp_path / "backup.tar.gz"
        made = cli(server.data_dir, "backup", str(archive), "--json")
        assert made.returncode == 0, made.stderr
        writer.wait_for(writer.count() + 1)  # the writes went on past the backup
    finally:
        writer.halt.set()
        writer.join(timeout=60)
    assert not writer.errors, writer.errors
    manifest = json.loads(made.stdout)
    names = {f["name"]: f["kind"] for f in manifest["files"]}
    assert names["omi-letta.db"] == "database"
    assert {"index/vectors.db", "index/lexical.db"} <= {n for n, kind in names.items() if kind == "sqlite"}
    assert not [n for n in names if n.startswith("letta/") or n.endswith(("-wal", "-shm", ".lock", ".log"))]

    before = {uid: stored(server, uid) for uid in UIDS}  # everything, once the writes stopped
    by_marker = {marker_of(c): (uid, cid) for uid in UIDS for cid, c in before[uid].items()}
    assert acked_before <= set(by_marker)

    restored_dir = tmp_path / "restored" / "data"
    done = cli(restored_dir, "restore", str(archive))
    assert done.returncode == 0, done.stderr
    assert "omi-letta backfill" in done.stderr
    databases = sorted(restored_dir.rglob("*.db"))
    assert {p.relative_to(restored_dir).as_posix() for p in databases} >= {"omi-letta.db", "index/lexical.db"}
    for path in databases:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path

    restored = ServerProcess(restored_dir).start()
    try:
        after = {uid: stored(restored, uid) for uid in UIDS}
        for uid in UIDS:
            assert set(after[uid]) <= set(before[uid]), "nothing the first server did not have"
            for cid, item in after[uid].items():
                assert item == before[uid][cid], "a restored conversation is whole, as it was stored"
        expected = {n: by_marker[n] for n in acked_before}
        assert {cid for _, cid in expected.values()} <= {cid for uid in UIDS for cid in after[uid]}
        wait_until_searchable(restored, expected)

        again = cli(restored_dir, "restore", str(archive))
        assert again.returncode == 1 and "already holds a database" in again.stderr
        forced = cli(restored_dir, "restore", str(archive), "--force")
        assert forced.returncode == 1 and "running `omi-letta serve`" in forced.stderr
    finally:
        restored.stop()


def test_a_tampered_archive_is_refused_before_anything_is_written(
    source: tuple[ServerProcess, dict[str, str]], tmp_path: Path
):
    server, _ = source
    archive = tmp_path / "backup.tar.gz"
    assert cli(server.data_dir, "backup", str(archive)).returncode == 0
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "data/omi-letta.db":
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            out.addfile(member, io.BytesIO(data))
    target = tmp_path / "restored" / "data"
    refused = cli(target, "restore", str(tampered))
    assert refused.returncode == 1
    assert "does not match its manifest" in refused.stderr
    assert not target.exists()


def test_keys_are_in_the_archive_unless_no_keys(source: tuple[ServerProcess, dict[str, str]], tmp_path: Path):
    server, _ = source
    keys = sorted(
        p.relative_to(server.data_dir).as_posix() for p in (server.data_dir / "keys").rglob("*") if p.is_file()
    )
    if not keys:
        pytest.skip(f"the server made no key file under {server.data_dir / 'keys'} (encryption at rest is off)")
    with_keys = cli(server.data_dir, "backup", str(tmp_path / "with.tar.gz"), "--json")
    assert with_keys.returncode == 0, with_keys.stderr
    assert sorted(f["name"] for f in json.loads(with_keys.stdout)["files"] if f["kind"] == "key") == keys
    assert "WARNING: the archive holds the encryption key" in with_keys.stderr

    without = cli(server.data_dir, "backup", str(tmp_path / "without.tar.gz"), "--json", "--no-keys")
    assert without.returncode == 0, without.stderr
    assert not [f for f in json.loads(without.stdout)["files"] if f["kind"] == "key"]
    with tarfile.open(tmp_path / "without.tar.gz") as tar:
        assert not [n for n in tar.getnames() if n.startswith("data/keys/")]
    assert "is not in the archive (--no-keys)" in without.stderr
