"""Bearer tokens: ``ADMIN_KEY`` followed by the uid, or anything in local development."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from app.service.firebase import looks_like_jwt
from app.settings import AuthSettings
from core.errors import AuthError
from memory.store.tokens import PREFIX as TOKEN_PREFIX

if TYPE_CHECKING:
    from app.service.services import Services

__all__ = ["DEV_UID", "AuthError", "authenticate", "check_operator", "resolve_uid"]

log = logging.getLogger(__name__)

DEV_UID = "123"


def resolve_uid(authorization: str | None, settings: AuthSettings) -> str:
    """The uid a request's ``Authorization`` header stands for.

    The header must be two space-separated words (``Bearer <token>``); as in the OMI backend the
    scheme word itself is not checked. The admin-key prefix is compared in constant time.

    Raises:
        AuthError: missing header, malformed header, or a token that is not valid.
    """
    if not authorization:
        if settings.local_development:
            return _dev_uid()
        raise AuthError("Authorization header not found")
    parts = authorization.split(" ")
    if len(parts) != 2 or not parts[1]:
        raise AuthError("Invalid authorization header; expected 'Bearer <token>'")
    token = parts[1]
    key = settings.admin_key
    if key and len(token) > len(key):
        prefix = token[: len(key)].encode()
        if hmac.compare_digest(prefix, key.encode()):
            return token[len(key) :]
    if settings.local_development:
        return _dev_uid()
    raise AuthError("Invalid authorization token")


def check_operator(authorization: str | None, settings: AuthSettings) -> None:
    """Let the service's operator through: ``Bearer <ADMIN_KEY>`` or ``Bearer <METRICS_TOKEN>``, nothing else.

    Both are compared whole and in constant time. A user's token (``<ADMIN_KEY><uid>``, an API token,
    a Firebase ID token) does not qualify. Under LOCAL_DEVELOPMENT anyone passes, with a warning.

    Raises:
        AuthError: no header, or a token that is neither secret.
    """
    if settings.local_development:
        log.warning("LOCAL_DEVELOPMENT=true: serving an operator route without a token")
        return
    if not authorization:
        raise AuthError("Authorization header not found")
    token = authorization.split(" ")[-1].encode()
    secrets = [s.encode() for s in (settings.admin_key, settings.metrics_token) if s]
    # Every secret is compared, so the time taken does not tell which one was close.
    matches = [hmac.compare_digest(token, secret) for secret in secrets]
    if not any(matches):
        raise AuthError("Invalid authorization token; this route takes ADMIN_KEY or METRICS_TOKEN")


async def authenticate(authorization: str | None, services: Services) -> str:
    """The uid of ``Authorization: Bearer <token>``: a Firebase ID token (the OMI app), a user's API token
    (``olt_…``), or ``<ADMIN_KEY><uid>``.

    Raises:
        AuthError: no usable token; the message is safe to show the client.
    """
    token = authorization.split(" ")[-1] if authorization else ""
    if services.firebase is not None and looks_like_jwt(token):
        return await services.firebase.uid(token)
    if token.startswith(TOKEN_PREFIX) and services.storage.tokens is not None:
        uid = await services.storage.tokens.resolve(token)
        if uid is not None:
            return uid
        if not services.settings.auth.local_development:
            raise AuthError("Invalid or revoked API token")
    return resolve_uid(authorization, services.settings.auth)


def _dev_uid() -> str:
    log.warning("LOCAL_DEVELOPMENT=true: accepting a request as uid %s without a valid token", DEV_UID)
    return DEV_UID
