"""The connect limiter, the body limit of mounted apps, operator tokens, CORS and security header settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.config.cors import CORSConfig

from app.http.body_limits import describe_size, limit_body
from app.http.security import SECURITY_HEADERS, cors_config, security_headers
from app.service.auth import AuthError, check_operator
from app.service.connect_limits import ConnectLimiter, LocalConnectLimiter
from app.settings import AuthSettings, ServerSettings, SettingsError, load_settings

ADMIN_KEY = "unit-admin-key-0001"
METRICS_TOKEN = "prometheus-scrape-token-01"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_user_gets_one_slot_per_interval_and_other_users_are_not_held_up() -> None:
    clock = Clock()
    limiter = LocalConnectLimiter(7.0, clock=clock)
    assert isinstance(limiter, ConnectLimiter)
    assert await limiter.acquire("alice")
    assert not await limiter.acquire("alice")
    assert await limiter.acquire("bob")
    clock.now += 6.9
    assert not await limiter.acquire("alice")  # refused attempts do not extend the interval...
    clock.now += 0.1
    assert await limiter.acquire("alice")  # ...so 7 s after the first, alice is let in
    assert not await limiter.acquire("alice")


async def test_expired_slots_are_pruned() -> None:
    clock = Clock()
    limiter = LocalConnectLimiter(7.0, clock=clock)
    for i in range(100):
        assert await limiter.acquire(f"user-{i}")
    assert len(limiter) == 100
    clock.now += 7.0
    assert await limiter.acquire("late")
    assert len(limiter) == 1


async def test_an_interval_of_zero_disables_the_limit() -> None:
    limiter = LocalConnectLimiter(0.0)
    assert all([await limiter.acquire("alice") for _ in range(5)])
    assert len(limiter) == 0


def test_sizes_read_as_people_write_them() -> None:
    assert describe_size(16 * 2**20) == "16 MiB"
    assert describe_size(64 * 1024) == "64 KiB"
    assert describe_size(1000) == "1000 bytes"


def test_the_operator_routes_take_admin_key_or_metrics_token_and_nothing_else() -> None:
    settings = AuthSettings(admin_key=ADMIN_KEY, metrics_token=METRICS_TOKEN)
    check_operator(f"Bearer {ADMIN_KEY}", settings)
    check_operator(f"Bearer {METRICS_TOKEN}", settings)
    for refused in (None, "", f"Bearer {ADMIN_KEY}alice", f"Bearer {ADMIN_KEY[:-1]}", f"Bearer {METRICS_TOKEN}x"):
        with pytest.raises(AuthError):
            check_operator(refused, settings)
    with pytest.raises(AuthError):
        check_operator(f"Bearer {METRICS_TOKEN}", AuthSettings(admin_key=ADMIN_KEY))


def test_local_development_opens_the_operator_routes() -> None:
    check_operator(None, AuthSettings(local_development=True))


def test_a_short_metrics_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="METRICS_TOKEN"):
        AuthSettings(admin_key=ADMIN_KEY, metrics_token="short")


def test_cors_is_off_unless_origins_are_named() -> None:
    assert cors_config(ServerSettings()) is None
    config = cors_config(ServerSettings(cors_origins=" https://app.example.com/, http://127.0.0.1:5173 "))
    assert isinstance(config, CORSConfig)
    assert config.is_origin_allowed("https://app.example.com")
    assert config.is_origin_allowed("http://127.0.0.1:5173")
    assert not config.is_origin_allowed("https://evil.example.com")
    assert not config.allow_credentials


@pytest.mark.parametrize("value", ["*", "app.example.com", "https://app.example.com/path", "ftp://x.example"])
def test_cors_origins_must_be_origins(value: str) -> None:
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load_settings({"CORS_ORIGINS": value, "ADMIN_KEY": ADMIN_KEY}, env_file=None)


def test_the_new_limits_are_read_from_the_environment() -> None:
    env = {
        "WS_CONNECT_INTERVAL_S": "0",
        "WS_MAX_FRAME_BYTES": "4096",
        "MAX_BODY_BYTES": "65536",
        "HSTS_MAX_AGE_S": "3600",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    settings = load_settings(env, env_file=None)
    assert settings.stream.connect_interval_s == 0.0
    assert settings.stream.max_frame_bytes == 4096
    assert settings.server.max_body_bytes == 65536
    assert settings.server.hsts_max_age_s == 3600
    assert settings.auth.metrics_token == METRICS_TOKEN
    with pytest.raises(SettingsError, match="WS_MAX_FRAME_BYTES"):
        load_settings({"WS_MAX_FRAME_BYTES": "10"}, env_file=None)


async def _send_headers(hook: Any, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    message: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": headers}
    await hook(message, {"type": "http"})
    return {k.decode(): v.decode() for k, v in message["headers"]}


async def test_security_headers_fill_in_what_a_response_did_not_set() -> None:
    hook = security_headers(ServerSettings())
    plain = await _send_headers(hook, [(b"content-type", b"application/json")])
    assert {k: plain[k.lower()] for k in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "strict-transport-security" not in plain
    page_policy = b"default-src 'none'; frame-ancestors 'none'"
    page = await _send_headers(hook, [(b"content-security-policy", page_policy), (b"cache-control", b"no-cache")])
    assert page["content-security-policy"] == page_policy.decode()
    assert page["cache-control"] == "no-cache"
    behind_tls = await _send_headers(security_headers(ServerSettings(hsts_max_age_s=3600)), [])
    assert behind_tls["strict-transport-security"] == "max-age=3600"


class Recorder:
    """A mounted ASGI app that answers with the body it read."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def _call(app: Any, chunks: list[bytes], length: int | None) -> tuple[int, bytes]:
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "headers": headers}, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_mounted_app_gets_bodies_within_the_limit_whole() -> None:
    inner = Recorder()
    status, body = await _call(limit_body(inner, 1024), [b"a" * 600, b"b" * 424], None)
    assert (status, body) == (200, b"a" * 600 + b"b" * 424)


@pytest.mark.parametrize(("chunks", "length"), [([b"x" * 10], 2048), ([b"x" * 1000, b"y" * 100], None)])
async def test_a_larger_body_gets_413_before_the_mounted_app_sees_it(chunks: list[bytes], length: int | None) -> None:
    inner = Recorder()
    status, body = await _call(limit_body(inner, 1024), chunks, length)
    assert status == 413
    assert json.loads(body)["detail"] == "the request body is larger than the 1 KiB this route accepts"
    assert inner.calls == 0
