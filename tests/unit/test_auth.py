"""Bearer tokens: ADMIN_KEY + uid, and the local-development bypass."""

from __future__ import annotations

import logging

import pytest

from app.service.auth import DEV_UID, AuthError, resolve_uid
from app.settings import AuthSettings

KEY = AuthSettings(admin_key="s3cret-key")


def test_admin_key_prefix_gives_the_uid():
    assert resolve_uid("Bearer s3cret-keyalice", KEY) == "alice"
    assert resolve_uid("anything s3cret-key42", KEY) == "42"  # the scheme word is not checked, as in OMI


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authorization header not found"),
        ("", "Authorization header not found"),
        ("Bearer", "Invalid authorization header"),
        ("Bearer a b", "Invalid authorization header"),
        ("Bearer s3cret-key", "Invalid authorization token"),
        ("Bearer s3cret-kez-alice", "Invalid authorization token"),
    ],
)
def test_bad_tokens_are_refused(header: str | None, message: str):
    with pytest.raises(AuthError, match=message):
        resolve_uid(header, KEY)


def test_local_development_accepts_anything_as_uid_123_and_warns(caplog: pytest.LogCaptureFixture):
    dev = AuthSettings(local_development=True)
    with caplog.at_level(logging.WARNING):
        assert resolve_uid("Bearer dev-token", dev) == DEV_UID == "123"
    assert "LOCAL_DEVELOPMENT" in caplog.text


@pytest.mark.parametrize("real", [{"admin_key": "s3cret-key"}, {"firebase_project_id": "omi-app"}])
def test_local_development_cannot_be_combined_with_real_auth(real: dict[str, str]):
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match="LOCAL_DEVELOPMENT=true accepts any token"):
        AuthSettings(local_development=True, **real)


def test_local_development_serves_only_on_loopback():
    from app.service.services import check_can_serve
    from app.settings import SettingsError, load_settings

    check_can_serve(load_settings({"LOCAL_DEVELOPMENT": "true", "HOST": "127.0.0.1"}, env_file=None))
    with pytest.raises(SettingsError, match="only on a loopback HOST"):
        check_can_serve(load_settings({"LOCAL_DEVELOPMENT": "true", "HOST": "0.0.0.0"}, env_file=None))


def test_no_admin_key_means_no_token_is_valid():
    with pytest.raises(AuthError):
        resolve_uid("Bearer alice", AuthSettings())
