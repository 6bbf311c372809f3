"""The audit log on a real server: who read, searched, changed or deleted which conversation, and nothing they said."""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.test_mcp import call
from tests.integration.test_webhooks import MEMORY, api_token, post_hook
from tests.support import ADMIN_KEY, ServerProcess, token

UID = "audit-alice"
SEARCHED = "Zanzibarquest"  # searched for over HTTP
ASKED = "Xylophonetic"  # searched for through MCP
NAMED = "Ottoline Quibble"  # a speaker's name typed in a relabel
CHATTED = "Where did Marigold park the tractor?"
TEXTS = [s["text"] for s in MEMORY["transcript_segments"]]
COLUMNS = ("uid", "action", "conversation_id", "route", "client", "status")


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("audit-server"), env={"DIARIZER": "none"}).start()
    yield proc
    proc.stop()


def audit_rows(server: ServerProcess, at_least: int, last_uid: str | None = None) -> list[dict[str, Any]]:
    """The server's audit log, read from its database once it holds ``at_least`` entries (and the last is
    ``last_uid``'s, if given): the server writes them in batches, a moment after each access."""
    deadline = time.monotonic() + 15
    while True:
        with sqlite3.connect(f"file:{server.data_dir / 'omi-letta.db'}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM audit_log ORDER BY id")]
        done = len(rows) >= at_least and (last_uid is None or rows[-1]["uid"] == last_uid)
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=server.data_dir,
        env={**os.environ, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_every_access_is_recorded_in_order_with_nothing_that_was_said(audit_server: ServerProcess):
    server = audit_server
    key = api_token(server, UID)
    memory = copy.deepcopy(MEMORY)
    assert post_hook(server, "memory-created", key, f"uid={UID}", body=memory).status_code == 200
    [listed] = server.get("/v1/conversations/page", uid=UID).json()["items"]
    cid = listed["id"]
    assert server.get(f"/v1/conversations/{cid}", uid=UID).status_code == 200
    assert server.get("/v1/memory/search", uid=UID, params={"q": SEARCHED}).status_code == 200
    relabel = {"speaker_id": 1, "name": NAMED}
    assert server.patch(f"/v1/conversations/{cid}/speakers", uid=UID, json=relabel).status_code == 200
    await call(server, token(UID), "search_memory", query=ASKED)
    assert (await call(server, key, "get_conversation", id=cid)).startswith(f"Conversation {cid}")
    assert server.post("/v1/chat", uid=UID, json={"message": CHATTED}).status_code == 503  # no Letta here
    assert server.delete(f"/v1/conversations/{cid}", uid=UID).status_code == 204
    bad = {"Authorization": "Bearer not-a-valid-token"}
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        assert (await http.get(f"/v1/conversations/{cid}", headers=bad)).status_code == 401
        assert (await http.post("/mcp", json={"jsonrpc": "2.0"})).status_code == 401
        assert (await http.get("/health")).status_code == 200  # not audited: no one authenticated

    async with websockets.connect(server.ws, additional_headers={"Authorization": f"Bearer {token(UID)}"}) as ws:
        while "ready" not in await asyncio.wait_for(ws.recv(), 30):
            pass
    assert len(audit_rows(server, 12)) == 12, "the stream is recorded once it closed"
    async with websockets.connect(server.ws, additional_headers=bad) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1008

    conversation = "/v1/conversations/{conversation_id}"
    expected = [
        (UID, "change", None, "POST /v1/integrations/omi/memory-created", "127.0.0.1", 200),
        (UID, "list", None, "GET /v1/conversations/page", "127.0.0.1", 200),
        (UID, "read", cid, f"GET {conversation}", "127.0.0.1", 200),
        (UID, "search", None, "GET /v1/memory/search", "127.0.0.1", 200),
        (UID, "change", cid, f"PATCH {conversation}/speakers", "127.0.0.1", 200),
        (UID, "search", None, "mcp:search_memory", "127.0.0.1", 200),
        (UID, "read", cid, "mcp:get_conversation", "127.0.0.1", 200),
        (UID, "chat", None, "POST /v1/chat", "127.0.0.1", 503),
        (UID, "delete", cid, f"DELETE {conversation}", "127.0.0.1", 204),
        ("", "auth-failure", cid, f"GET {conversation}", "127.0.0.1", 401),
        ("", "auth-failure", None, "POST /mcp", "127.0.0.1", 401),
        (UID, "stream", None, "ws:/v4/listen", "127.0.0.1", 1001),
        ("", "auth-failure", None, "ws:/v4/listen", "127.0.0.1", 1008),
    ]
    rows = audit_rows(server, len(expected))
    assert [tuple(r[c] for c in COLUMNS) for r in rows] == expected
    assert all(earlier["at"] <= later["at"] for earlier, later in itertools.pairwise(rows))

    stored = repr(rows)
    for secret in (SEARCHED, ASKED, NAMED, CHATTED, *TEXTS, key, ADMIN_KEY, "not-a-valid-token"):
        assert secret not in stored, secret
    for word in ("timeline", "launches", "Quibble", "Marigold", "olt_"):
        assert word.lower() not in stored.lower(), word


def test_the_database_refuses_to_change_or_delete_an_entry(audit_server: ServerProcess):
    assert httpx.get(f"{audit_server.http}/v1/conversations", timeout=10).status_code == 401
    before = audit_rows(audit_server, 1)
    with sqlite3.connect(audit_server.data_dir / "omi-letta.db", timeout=30) as db:
        for statement in (
            "UPDATE audit_log SET uid = 'someone-else'",
            "UPDATE audit_log SET action = 'read' WHERE action = 'delete'",
            "DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)",
            "DELETE FROM audit_log",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
    assert audit_rows(audit_server, len(before)) == before


def test_the_audit_command_exports_the_log_and_records_the_export(audit_server: ServerProcess):
    assert audit_server.get("/v1/speakers", uid="audit-bob").status_code == 200
    rows = audit_rows(audit_server, 1, last_uid="audit-bob")
    assert rows[-1]["uid"] == "audit-bob"

    exported = cli(audit_server, "audit", "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == rows
    after = audit_rows(audit_server, len(rows) + 1)
    assert len(after) == len(rows) + 1
    export = after[-1]
    assert (export["uid"], export["action"], export["conversation_id"], export["route"], export["status"]) == (
        "",
        "export",
        None,
        "cli:audit",
        200,
    )
    assert export["client"].startswith("cli")

    mine = cli(audit_server, "audit", "--uid", UID, "--csv")
    assert mine.returncode == 0, mine.stderr
    table = list(csv.DictReader(io.StringIO(mine.stdout)))
    assert [int(r["id"]) for r in table] == [r["id"] for r in rows if r["uid"] == UID]
    assert table[0]["at"].startswith("20") and table[0]["route"] == "POST /v1/integrations/omi/memory-created"

    assert json.loads(cli(audit_server, "audit", "--json", "--since", "2999-01-01").stdout) == []
    plain = cli(audit_server, "audit", "--uid", "audit-bob")
    assert plain.returncode == 0 and "GET /v1/speakers" in plain.stdout and "list" in plain.stdout
    assert [r["action"] for r in audit_rows(audit_server, len(after) + 3)[-3:]] == ["export"] * 3
