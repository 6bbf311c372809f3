"""The health monitor across a restart, and alerts waiting for a receiver that was away (real SQLite, real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.service.alerts import Alerter, Problem, alert_body
from app.service.health_checks import HealthMonitor
from app.settings import load_settings
from core.metrics import Metrics
from memory.store.conversation_store import ConversationStore
from tests.support import AlertReceiver


@pytest.fixture
def receiver() -> Iterator[AlertReceiver]:
    found = AlertReceiver().start()
    yield found
    found.stop()


async def monitor_of(data_dir: Path, receiver: AlertReceiver, **env: str) -> tuple[HealthMonitor, ConversationStore]:
    settings = load_settings(
        {"DATA_DIR": str(data_dir), "LETTA_DELIVERY": "false", "ALERT_WEBHOOK_URL": receiver.url, **env},
        env_file=None,
    )
    store = await ConversationStore.open(settings.database_url)
    return HealthMonitor(settings, Metrics(), store.engine, alerter=Alerter(receiver.url)), store


async def test_a_restart_neither_repeats_an_alert_nor_forgets_to_clear_it(tmp_path: Path, receiver: AlertReceiver):
    full = {"ALERT_DISK_FREE_MB": "1000000000"}  # more than any disk has: the disk is "filling"
    first, store = await monitor_of(tmp_path, receiver, **full)
    try:
        assert set(await first.check_once(now=1000.0)) == {"disk"}
        assert not first.report()["disk"]["ok"] and first.report()["letta"]["ok"]
        assert [b["status"] for b in receiver.of("disk")] == ["firing"]
    finally:
        await store.close()

    again, store = await monitor_of(tmp_path, receiver, **full)  # the service restarted
    try:
        await again.check_once(now=2000.0)
        assert [b["status"] for b in receiver.of("disk")] == ["firing"], "not announced twice"
    finally:
        await store.close()

    freed, store = await monitor_of(tmp_path, receiver, ALERT_DISK_FREE_MB="1")
    try:
        assert await freed.check_once(now=3000.0) == {}
        firing, resolved = receiver.of("disk")
        assert resolved["status"] == "resolved" and resolved["since"] == firing["since"] == "1970-01-01T00:16:40Z"
        assert "It lasted 33 min" in resolved["message"] and freed.healthy
    finally:
        await store.close()


async def test_alerts_wait_in_order_while_the_receiver_is_away():
    away = AlertReceiver()  # bound, not serving yet
    alerter = Alerter(away.url, topic="t", host="box")
    problem = Problem("letta", "Letta is unreachable", "http://127.0.0.1:1 does not answer (ConnectError)")
    alerter.queue(problem, resolved=False, since=10.0, now=10.0)
    alerter.queue(problem, resolved=True, since=10.0, now=70.0)
    away.httpd.socket.close()  # refused: nothing listens
    assert await alerter.flush() == 2, "kept for the next check"
    back = AlertReceiver().start()
    try:
        alerter.url = back.url
        assert await alerter.flush() == 0
        assert [b["status"] for b in back.of("letta")] == ["firing", "resolved"]
    finally:
        back.stop()


def test_an_alert_body_reads_for_ntfy_and_for_a_generic_receiver():
    problem = Problem("backup", "The scheduled backup failed", "cannot write into /b", clear="A backup was written.")
    body = alert_body(problem, resolved=False, since=0.0, now=60.0, topic="my-topic", host="imac")
    assert {"topic", "title", "message", "tags", "priority"} <= set(body), "ntfy's JSON publishing fields"
    assert body["topic"] == "my-topic" and body["title"] == "omi-letta: The scheduled backup failed"
    assert body["message"] == "cannot write into /b. Since 1970-01-01 00:00 UTC, on imac."
    assert (body["status"], body["check"], body["key"], body["host"]) == ("firing", "backup", "backup", "imac")
    assert body["text"].startswith(body["title"]), "Slack- and Mattermost-style receivers show `text`"
    done = alert_body(problem, resolved=True, since=0.0, now=7200.0, topic="my-topic", host="imac")
    assert done["message"] == "A backup was written. It lasted 2.0 h, from 1970-01-01 00:00 UTC, on imac."
