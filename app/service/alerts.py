"""Alerts to ``ALERT_WEBHOOK_URL``: one JSON POST when a problem starts, and one when it clears.

One body serves both kinds of receiver. ntfy reads ``topic``, ``title``, ``message``, ``tags`` and
``priority`` when the body is posted to its root URL (``https://ntfy.sh/``) and ignores the rest;
chat webhooks (Slack, Mattermost) show ``text``; any other receiver has the fields it needs to
route or deduplicate (``status``, ``check``, ``key``, ``since``, ``host``)::

    {"topic": "omi-letta", "title": "omi-letta: Letta is unreachable",
     "message": "http://127.0.0.1:8283 does not answer (ConnectError). Since 2026-12-08 10:02 UTC, on imac.",
     "tags": ["warning"], "priority": 4,
     "text": "omi-letta: Letta is unreachable\\nhttp://127.0.0.1:8283 does not answer ...",
     "service": "omi-letta", "status": "firing", "check": "letta", "key": "letta",
     "problem": "Letta is unreachable", "detail": "http://127.0.0.1:8283 does not answer (ConnectError)",
     "since": "2026-12-08T10:02:11Z", "at": "2026-12-08T10:02:11Z", "host": "imac"}

A resolved alert has ``"status": "resolved"``, the ``white_check_mark`` tag, priority 3, and a
title starting ``resolved:``. A body names the problem and carries counts, times, hosts and uids,
never what anyone said: no transcript text, audio or embedding.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["Alerter", "Problem", "alert_body"]

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


class Problem:
    """Something wrong that one alert announces and a second one clears."""

    __slots__ = ("check", "clear", "detail", "key", "title")

    def __init__(self, check: str, title: str, detail: str, *, clear: str = "", key: str = "") -> None:
        self.check = check  # the /health check it belongs to, e.g. "letta"
        self.key = key or check  # one alert per key: "device_silence:alice"
        self.title = title  # in words, e.g. "Letta is unreachable"
        self.detail = detail
        self.clear = clear or "It is fine again."

    def as_json(self) -> dict[str, str]:
        return {"check": self.check, "key": self.key, "title": self.title, "detail": self.detail, "clear": self.clear}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Problem:
        return cls(
            str(raw["check"]), str(raw["title"]), str(raw["detail"]), clear=str(raw["clear"]), key=str(raw["key"])
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _took(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def alert_body(problem: Problem, *, resolved: bool, since: float, now: float, topic: str, host: str) -> dict[str, Any]:
    """The JSON of one alert (see the module docstring)."""
    if resolved:
        title = f"omi-letta: resolved: {problem.title}"
        message = f"{problem.clear} It lasted {_took(now - since)}, from {_minute(since)}, on {host}."
    else:
        title = f"omi-letta: {problem.title}"
        message = f"{problem.detail}. Since {_minute(since)}, on {host}."
    return {
        "topic": topic,
        "title": title,
        "message": message,
        "tags": ["white_check_mark"] if resolved else ["warning"],
        "priority": 3 if resolved else 4,
        "text": f"{title}\n{message}",
        "service": "omi-letta",
        "status": "resolved" if resolved else "firing",
        "check": problem.check,
        "key": problem.key,
        "problem": problem.title,
        "detail": problem.detail,
        "since": _iso(since),
        "at": _iso(now),
        "host": host,
    }


class Alerter:
    """Posts alert bodies to the webhook; a failed post is kept and tried again with the next ones."""

    def __init__(self, url: str, *, topic: str = "omi-letta", token: str = "", host: str | None = None) -> None:
        self.url = url
        self.topic = topic
        self.host = host or socket.gethostname()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._unsent: list[dict[str, Any]] = []
        self._warned = False

    def queue(self, problem: Problem, *, resolved: bool, since: float, now: float) -> None:
        """Queue the alert of ``problem`` starting (or, ``resolved``, clearing)."""
        body = alert_body(problem, resolved=resolved, since=since, now=now, topic=self.topic, host=self.host)
        self._unsent.append(body)
        del self._unsent[:-200]  # a receiver away for long gets the latest ones

    async def flush(self) -> int:
        """Post every queued alert, in order, until one fails; returns how many are still unsent."""
        if not self._unsent:
            return 0
        async with httpx.AsyncClient(timeout=TIMEOUT_S, headers=self._headers) as client:
            while self._unsent:
                body = self._unsent[0]
                try:
                    response = await client.post(self.url, json=body)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    if not self._warned:
                        log.warning("cannot post an alert to ALERT_WEBHOOK_URL (%s); retrying", type(exc).__name__)
                        self._warned = True
                    break
                self._unsent.pop(0)
                self._warned = False
                log.info("alert sent: %s %s", body["status"], body["key"])
        return len(self._unsent)
